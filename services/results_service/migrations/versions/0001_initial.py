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


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "predictions" not in existing:
        op.create_table(
            "predictions",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("request_id", sa.String(128), nullable=False, unique=True),
            sa.Column("user_hash", sa.String(64), nullable=False),
            sa.Column("client_id", sa.String(64), nullable=False, server_default=""),
            sa.Column("detections", sa.JSON, nullable=False),
            sa.Column("detection_count", sa.Integer, nullable=False),
            sa.Column("features", sa.JSON, nullable=True),
            sa.Column("model_name", sa.String(64), nullable=False, server_default="car_detector"),
            sa.Column("model_version", sa.String(32), nullable=False),
            sa.Column("inference_time_ms", sa.Float, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )
        op.create_index("ix_predictions_user_hash", "predictions", ["user_hash"])
        op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    if "audit_events" not in existing:
        op.create_table(
            "audit_events",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("action", sa.String(32), nullable=False),
            sa.Column("actor_role", sa.String(16), nullable=False),
            sa.Column("actor_id", sa.String(64), nullable=False),
            sa.Column("user_hash", sa.String(64), nullable=True),
            sa.Column("request_id", sa.String(128), nullable=True),
            sa.Column("record_count", sa.Integer, nullable=False, server_default="0"),
        )
        op.create_index("ix_audit_events_at", "audit_events", ["at"])
        op.create_index("ix_audit_events_user_hash", "audit_events", ["user_hash"])
    if "feedback" not in existing:
        op.create_table(
            "feedback",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("request_id", sa.String(128), nullable=False),
            sa.Column("user_hash", sa.String(64), nullable=False),
            sa.Column("client_id", sa.String(64), nullable=False, server_default=""),
            sa.Column("actor_role", sa.String(16), nullable=False),
            sa.Column("correct", sa.Boolean, nullable=False),
            sa.Column("reason", sa.String(500), nullable=False),
            sa.Column("comment", sa.String(2000), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )
        op.create_index("ix_feedback_request_id", "feedback", ["request_id"])
        op.create_index("ix_feedback_user_hash", "feedback", ["user_hash"])
        op.create_index("ix_feedback_created_at", "feedback", ["created_at"])


def downgrade() -> None:
    for table in ("feedback", "audit_events", "predictions"):
        op.drop_table(table)
