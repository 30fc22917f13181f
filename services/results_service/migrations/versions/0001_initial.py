"""The schema as it was before migrations (store.py's create_all, up to 2026-12-01).

A database created by that code already has these tables: only what is missing is
created, so such a database is upgraded in place by the next revisions.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# store.py's tables as its create_all made them; the migration tests build such a
# pre-migration database from this (tests/system/test_migrations.py).
schema = sa.MetaData()
sa.Table("predictions", schema,
         sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
         sa.Column("request_id", sa.String(128), nullable=False, unique=True),
         sa.Column("user_hash", sa.String(64), nullable=False, index=True),
         sa.Column("client_id", sa.String(64), nullable=False, server_default=""),
         sa.Column("detections", sa.JSON, nullable=False),
         sa.Column("detection_count", sa.Integer, nullable=False),
         sa.Column("features", sa.JSON, nullable=True),
         sa.Column("model_name", sa.String(64), nullable=False, server_default="car_detector"),
         sa.Column("model_version", sa.String(32), nullable=False),
         sa.Column("inference_time_ms", sa.Float, nullable=False),
         sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True))
sa.Table("audit_events", schema,
         sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
         sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
         sa.Column("action", sa.String(32), nullable=False),
         sa.Column("actor_role", sa.String(16), nullable=False),
         sa.Column("actor_id", sa.String(64), nullable=False),
         sa.Column("user_hash", sa.String(64), nullable=True, index=True),
         sa.Column("request_id", sa.String(128), nullable=True),
         sa.Column("record_count", sa.Integer, nullable=False, server_default="0"))
sa.Table("feedback", schema,
         sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
         sa.Column("request_id", sa.String(128), nullable=False, index=True),
         sa.Column("user_hash", sa.String(64), nullable=False, index=True),
         sa.Column("client_id", sa.String(64), nullable=False, server_default=""),
         sa.Column("actor_role", sa.String(16), nullable=False),
         sa.Column("correct", sa.Boolean, nullable=False),
         sa.Column("reason", sa.String(500), nullable=False),
         sa.Column("comment", sa.String(2000), nullable=True),
         sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True))


def upgrade() -> None:
    # checkfirst: a database made before migrations already has these tables; they stay as they are.
    schema.create_all(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    for table in ("feedback", "audit_events", "predictions"):
        op.drop_table(table)
