"""Alembic migrations of the results database (PostgreSQL and SQLite).

`upgrade_to_head` runs at every service start (store.make_engine) and from
`make migrate`; it is safe when several workers or pods start at once: PostgreSQL
serialises them with an advisory lock, SQLite with a lock file next to the database.
Revision 0001 is the schema as it was before migrations existed (it creates only what
is missing, so a database made by that code is upgraded in place).
"""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

HERE = Path(__file__).resolve().parent
ADVISORY_LOCK_ID = 5_002_001  # any constant shared by every results-service process


def alembic_config(connection: Connection | None = None):  # -> alembic.config.Config
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _sqlite_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade_to_head(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    if engine.dialect.name == "sqlite":
        with _sqlite_lock(engine), engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)
        return
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
        command.upgrade(alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
