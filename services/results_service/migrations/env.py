"""Alembic environment: the results store's metadata, and either the connection
handed over by upgrade_to_head or one opened on DATABASE_URL (alembic CLI)."""
from __future__ import annotations

from alembic import context

from services.results_service import store


def _run(connection) -> None:
    # render_as_batch: SQLite alters tables by copying them; PostgreSQL gets plain ALTERs.
    context.configure(connection=connection, target_metadata=store.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = store.make_engine(context.config.get_main_option("sqlalchemy.url") or store.database_url(), upgrade=False)
    with engine.begin() as opened:
        _run(opened)
    engine.dispose()
