"""Storage of predictions: one schema and one code path for PostgreSQL and SQLite.

PostgreSQL (through psycopg2) when DATABASE_URL is set, else an embedded SQLite
file under var/. User ids arrive in clear and are stored only as a keyed hash.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from services.common import config

metadata = sa.MetaData()

predictions = sa.Table(
    "predictions",
    metadata,
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
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
)

# Journal of who touched personal data; it holds hashes, never a raw user id.
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("actor_role", sa.String(16), nullable=False),
    sa.Column("actor_id", sa.String(64), nullable=False),
    sa.Column("user_hash", sa.String(64), nullable=True, index=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("record_count", sa.Integer, nullable=False, server_default="0"),
)


# Feedback and recourse (GDPR Art. 22(3) spirit, AI Act transparency): a data subject or
# client contests a prediction. Free-text comments may hold personal data: they are
# exported with the user's data and erased with it.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False, index=True),
    sa.Column("user_hash", sa.String(64), nullable=False, index=True),
    sa.Column("client_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("actor_role", sa.String(16), nullable=False),
    sa.Column("correct", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("comment", sa.String(2000), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
)


class DuplicateRequest(Exception):
    """A prediction with this request id is already stored."""


def database_url() -> str:
    config.var_dir()  # the default SQLite file lives there
    return config.DATABASE_URL


def make_engine(url: str | None = None) -> Engine:
    url = url or database_url()
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            # WAL lets readers and the writer of several workers proceed together;
            # secure_delete overwrites erased rows so no readable residue stays in the file.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8, pool_timeout=10,
                                  connect_args={"connect_timeout": 5})
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            break
        except (IntegrityError, ProgrammingError, OperationalError):
            # Several gunicorn workers may create the schema at once; the loser retries.
            if attempt == 2:
                raise
    return engine


def _as_dict(row: sa.Row) -> dict[str, Any]:
    record = dict(row._mapping)
    record.pop("id", None)
    created = record.get("created_at")
    if isinstance(created, datetime):
        if created.tzinfo is None:  # SQLite returns naive datetimes
            created = created.replace(tzinfo=timezone.utc)
        record["created_at"] = created.isoformat()
    return record


class ResultsStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def add(self, record: dict[str, Any]) -> None:
        record = {**record, "created_at": record.get("created_at") or datetime.now(timezone.utc)}
        try:
            with self.engine.begin() as connection:
                connection.execute(predictions.insert().values(**record))
        except IntegrityError:
            raise DuplicateRequest(record["request_id"]) from None

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(predictions).where(predictions.c.request_id == request_id)).first()
        return _as_dict(row) if row else None

    def for_user(self, user_hash: str, client_id: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(predictions).where(predictions.c.user_hash == user_hash)
        if client_id is not None:
            query = query.where(predictions.c.client_id == client_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(predictions.c.created_at, predictions.c.id)).all()
        return [_as_dict(row) for row in rows]

    def erase_user(self, user_hash: str) -> int:
        return self.erase_user_data(user_hash)["predictions"]

    def erase_user_data(self, user_hash: str) -> dict[str, int]:
        """Right to erasure: every row about the user (predictions, feedback) in one
        transaction; the journal keeps only the pseudonymous hash and counts."""
        with self.engine.begin() as connection:
            deleted = connection.execute(predictions.delete().where(predictions.c.user_hash == user_hash)).rowcount
            erased_feedback = connection.execute(feedback.delete().where(feedback.c.user_hash == user_hash)).rowcount
        self._flush_residue()
        return {"predictions": deleted, "feedback": erased_feedback}

    # -- feedback, export and retention (governance)
    def add_feedback(self, record: dict[str, Any]) -> int:
        record = {**record, "created_at": record.get("created_at") or datetime.now(timezone.utc)}
        with self.engine.begin() as connection:
            return int(connection.execute(feedback.insert().values(**record)).inserted_primary_key[0])

    def feedback_for_user(self, user_hash: str, client_id: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(feedback).where(feedback.c.user_hash == user_hash)
        if client_id is not None:
            query = query.where(feedback.c.client_id == client_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(feedback.c.created_at, feedback.c.id)).all()
        return [{**_as_dict(row), "feedback_id": row.id} for row in rows]

    def audit_for_user(self, user_hash: str, actor_id: str | None = None) -> list[dict[str, Any]]:
        """The journal entries about one data subject (who accessed their data, when, how)."""
        query = sa.select(audit_events).where(audit_events.c.user_hash == user_hash)
        if actor_id is not None:
            query = query.where(audit_events.c.actor_id == actor_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(audit_events.c.at, audit_events.c.id)).all()
        out = []
        for row in rows:
            entry = dict(row._mapping)
            entry.pop("id", None)
            at = entry["at"]
            entry["at"] = (at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at).isoformat()
            out.append(entry)
        return out

    def purge_expired(self, days: int, audit_days: int | None = None) -> dict[str, int]:
        """Retention: delete predictions older than `days` and the feedback about them
        (and, if `audit_days` is given, journal entries older than that)."""
        cutoff = datetime.now(timezone.utc) - timedelta(days=days)
        with self.engine.begin() as connection:
            expired = sa.select(predictions.c.request_id).where(predictions.c.created_at < cutoff)
            fb = connection.execute(feedback.delete().where(
                sa.or_(feedback.c.request_id.in_(expired), feedback.c.created_at < cutoff))).rowcount
            preds = connection.execute(predictions.delete().where(predictions.c.created_at < cutoff)).rowcount
            audit = 0
            if audit_days is not None:
                audit_cutoff = datetime.now(timezone.utc) - timedelta(days=audit_days)
                audit = connection.execute(audit_events.delete().where(audit_events.c.at < audit_cutoff)).rowcount
        self._flush_residue()
        return {"predictions": preds, "feedback": fb, "audit_events": audit}

    def purge_older_than(self, days: int) -> int:
        cutoff = datetime.now(timezone.utc) - timedelta(days=days)
        with self.engine.begin() as connection:
            deleted = connection.execute(predictions.delete().where(predictions.c.created_at < cutoff)).rowcount
        self._flush_residue()
        return deleted

    def journal(self, action: str, actor_role: str, actor_id: str, user_hash: str | None = None,
                request_id: str | None = None, record_count: int = 0) -> None:
        with self.engine.begin() as connection:
            connection.execute(audit_events.insert().values(
                at=datetime.now(timezone.utc), action=action, actor_role=actor_role, actor_id=actor_id,
                user_hash=user_hash, request_id=request_id, record_count=record_count,
            ))

    def _flush_residue(self) -> None:
        """Fold SQLite's write-ahead log into the (securely overwritten) main file,
        so erased rows leave no copy in the -wal file either."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
