"""Tenants and pseudonym key ids.

- predictions: a request id is unique per client (client_id, request_id), no longer
  globally; request_id keeps a plain index for dpo/admin lookups.
- predictions, feedback: `key_id`, the pseudonymisation key a hash was made under.
  Rows already stored were hashed under the key in use now (there was no rotation).
- feedback: `actor_id`, who gave it. Before, only the role was kept: a client's own
  feedback is attributed to it (a client could contest only its own predictions), a
  dpo's or admin's to "unknown".

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.common.pseudonym import key_id

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# SQLite's unique constraint of 0001 has no name: give reflected ones a predictable one.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_unique_name() -> str:
    return "predictions_request_id_key" if op.get_bind().dialect.name == "postgresql" else "uq_predictions_request_id"


def upgrade() -> None:
    current = key_id()
    with op.batch_alter_table("predictions", naming_convention=NAMING) as batch:
        batch.add_column(sa.Column("key_id", sa.String(8), nullable=True))
        batch.drop_constraint(_old_unique_name(), type_="unique")
        batch.create_unique_constraint("uq_predictions_client_request", ["client_id", "request_id"])
        batch.create_index("ix_predictions_request_id", ["request_id"])
    op.execute(sa.text("UPDATE predictions SET key_id = :k").bindparams(k=current))
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column("key_id", existing_type=sa.String(8), nullable=False)

    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("key_id", sa.String(8), nullable=True))
        batch.add_column(sa.Column("actor_id", sa.String(64), nullable=True))
    op.execute(sa.text("UPDATE feedback SET key_id = :k, actor_id = CASE WHEN actor_role = 'client' "
                       "THEN client_id ELSE 'unknown' END").bindparams(k=current))
    with op.batch_alter_table("feedback") as batch:
        batch.alter_column("key_id", existing_type=sa.String(8), nullable=False)
        batch.alter_column("actor_id", existing_type=sa.String(64), nullable=False)


def downgrade() -> None:
    """Back to one global namespace of request ids: fails if two clients used the same one."""
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("actor_id")
        batch.drop_column("key_id")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_index("ix_predictions_request_id")
        batch.drop_constraint("uq_predictions_client_request", type_="unique")
        batch.create_unique_constraint(_old_unique_name(), ["request_id"])
        batch.drop_column("key_id")
