"""Storage of predictions: one schema and one code path for PostgreSQL and SQLite.

PostgreSQL (through psycopg2) when DATABASE_URL is set, else an embedded SQLite
file under var/. User ids are stored only as a keyed hash, with the id of the key.
The schema is owned by the Alembic revisions in migrations/ (applied by make_engine):
a change to a table here needs a new revision there.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from services.common import config, pseudonym

metadata = sa.MetaData()

# A tenant's request ids are its own: (client_id, request_id) is the key, so another
# client's use of the same id neither collides nor reveals anything.
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False, index=True),
    sa.Column("user_hash", sa.String(64), nullable=False, index=True),
    sa.Column("key_id", sa.String(8), nullable=False),  # pseudonymisation key of user_hash
    sa.Column("client_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("detections", sa.JSON, nullable=False),
    sa.Column("detection_count", sa.Integer, nullable=False),
    sa.Column("features", sa.JSON, nullable=True),
    sa.Column("model_name", sa.String(64), nullable=False, server_default="car_detector"),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("inference_time_ms", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.UniqueConstraint("client_id", "request_id", name="uq_predictions_client_request"),
)

_INSERT_PREDICTION = predictions.insert()
_PREDICTION_COLUMNS = frozenset(predictions.columns.keys())

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
# exported with the user's data and erased with it. `client_id` is the prediction's
# owner, `actor_id` who gave the feedback (a client's export holds only its own).
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False, index=True),
    sa.Column("user_hash", sa.String(64), nullable=False, index=True),
    sa.Column("key_id", sa.String(8), nullable=False),
    sa.Column("client_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("actor_role", sa.String(16), nullable=False),
    sa.Column("actor_id", sa.String(64), nullable=False),
    sa.Column("correct", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("comment", sa.String(2000), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
)

# The tables that hold personal data (erased per subject, compacted after deletes).
SUBJECT_TABLES = ("predictions", "feedback")


class DuplicateRequest(Exception):
    """This client already stored a prediction with this request id."""


def database_url() -> str:
    config.var_dir()  # the default SQLite file lives there
    return config.DATABASE_URL


def make_engine(url: str | None = None, upgrade: bool = True) -> Engine:
    """An engine on the results database, its schema brought to the latest Alembic
    revision first (services/results_service/migrations) unless `upgrade` is false."""
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
    if upgrade:
        from services.results_service.migrations import upgrade_to_head

        upgrade_to_head(engine)
    return engine


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # SQLite returns naive datetimes
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    return value


def _as_dict(row: sa.Row) -> dict[str, Any]:
    record = dict(row._mapping)
    record.pop("id", None)
    for name in ("created_at", "at"):
        if name in record:
            record[name] = _iso(record[name])
    return record


def _hashes(user_hash: str | list[str] | tuple[str, ...]) -> list[str]:
    return [user_hash] if isinstance(user_hash, str) else list(user_hash)


class ResultsStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def add(self, record: dict[str, Any]) -> None:
        record = {**record, "created_at": record.get("created_at") or datetime.now(timezone.utc),
                  "key_id": record.get("key_id") or pseudonym.key_id()}
        unknown = record.keys() - _PREDICTION_COLUMNS
        if unknown:  # the executed statement would drop them silently
            raise ValueError(f"no column for {sorted(unknown)}")
        try:
            with self.engine.begin() as connection:
                # One statement for every insert: SQLAlchemy compiles it once (values(**record) would
                # build and cache-key a new statement per request).
                connection.execute(_INSERT_PREDICTION, record)
        except IntegrityError:
            raise DuplicateRequest(record["request_id"]) from None

    def find(self, request_id: str, client_id: str | None = None, limit: int = 2) -> list[dict[str, Any]]:
        """The predictions stored under this request id: the one of `client_id` if given,
        else those of every client (at most `limit`)."""
        query = sa.select(predictions).where(predictions.c.request_id == request_id)
        if client_id is not None:
            query = query.where(predictions.c.client_id == client_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(predictions.c.id).limit(limit)).all()
        return [_as_dict(row) for row in rows]

    def get(self, request_id: str, client_id: str | None = None) -> dict[str, Any] | None:
        found = self.find(request_id, client_id, limit=1)
        return found[0] if found else None

    def for_user(self, user_hash: str | list[str], client_id: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(predictions).where(predictions.c.user_hash.in_(_hashes(user_hash)))
        if client_id is not None:
            query = query.where(predictions.c.client_id == client_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(predictions.c.created_at, predictions.c.id)).all()
        return [_as_dict(row) for row in rows]

    def erase_user(self, user_hash: str) -> int:
        return self.erase_user_data(user_hash)["predictions"]

    def erase_user_data(self, user_hash: str | list[str], journal: dict[str, Any] | None = None) -> dict[str, Any]:
        """Right to erasure: every row about the user (predictions, feedback) deleted, and the
        erasure journaled (`journal`: actor_role, actor_id; the first hash is recorded), in ONE
        transaction; then the tables' files are compacted so no copy of the rows stays on disk."""
        hashes, xid = _hashes(user_hash), None
        with self.engine.begin() as connection:
            deleted = connection.execute(predictions.delete().where(predictions.c.user_hash.in_(hashes))).rowcount
            erased_feedback = connection.execute(feedback.delete().where(feedback.c.user_hash.in_(hashes))).rowcount
            if journal is not None:
                connection.execute(audit_events.insert().values(
                    at=datetime.now(timezone.utc), action="erasure", user_hash=hashes[0], request_id=None,
                    record_count=deleted + erased_feedback, **journal))
            if self.engine.dialect.name == "postgresql":
                xid = connection.execute(sa.text("SELECT CAST(txid_current() % 4294967296 AS text)")).scalar_one()
        # Both tables, even when nothing matched: repeating an erasure whose compaction was
        # refused (lock timeout) is how that compaction is completed.
        compacted = self.compact(SUBJECT_TABLES, after_xid=xid)
        return {"predictions": deleted, "feedback": erased_feedback, "compacted": compacted}

    # -- feedback, export and retention (governance)
    def add_feedback(self, record: dict[str, Any]) -> int:
        record = {"actor_id": "unknown", **record, "created_at": record.get("created_at") or datetime.now(timezone.utc),
                  "key_id": record.get("key_id") or pseudonym.key_id()}
        with self.engine.begin() as connection:
            return int(connection.execute(feedback.insert().values(**record)).inserted_primary_key[0])

    def feedback_for_user(self, user_hash: str | list[str], actor_id: str | None = None) -> list[dict[str, Any]]:
        """Feedback about the user; with `actor_id`, only the feedback that actor gave."""
        query = sa.select(feedback).where(feedback.c.user_hash.in_(_hashes(user_hash)))
        if actor_id is not None:
            query = query.where(feedback.c.actor_id == actor_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(feedback.c.created_at, feedback.c.id)).all()
        return [{**_as_dict(row), "feedback_id": row.id} for row in rows]

    def audit_for_user(self, user_hash: str | list[str], actor_id: str | None = None) -> list[dict[str, Any]]:
        """The journal entries about one data subject (who accessed their data, when, how)."""
        query = sa.select(audit_events).where(audit_events.c.user_hash.in_(_hashes(user_hash)))
        if actor_id is not None:
            query = query.where(audit_events.c.actor_id == actor_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(audit_events.c.at, audit_events.c.id)).all()
        return [_as_dict(row) for row in rows]

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
        self.compact([name for name, count in (("predictions", preds), ("feedback", fb)) if count])
        return {"predictions": preds, "feedback": fb, "audit_events": audit}

    def purge_older_than(self, days: int) -> int:
        cutoff = datetime.now(timezone.utc) - timedelta(days=days)
        with self.engine.begin() as connection:
            deleted = connection.execute(predictions.delete().where(predictions.c.created_at < cutoff)).rowcount
        self.compact(["predictions"] if deleted else [])
        return deleted

    def journal(self, action: str, actor_role: str, actor_id: str, user_hash: str | None = None,
                request_id: str | None = None, record_count: int = 0) -> None:
        with self.engine.begin() as connection:
            connection.execute(audit_events.insert().values(
                at=datetime.now(timezone.utc), action=action, actor_role=actor_role, actor_id=actor_id,
                user_hash=user_hash, request_id=request_id, record_count=record_count,
            ))

    def compact(self, tables: list[str] | tuple[str, ...] = SUBJECT_TABLES, after_xid: str | None = None) -> bool:
        """Leave no copy of deleted rows in the database's own files (governance/RGPD.md §6).

        SQLite: rows are overwritten on delete (secure_delete); the write-ahead log is folded
        into the main file and truncated. PostgreSQL: DELETE only marks tuples dead and even
        VACUUM leaves their bytes in the page's free space, so the touched tables are rewritten
        (VACUUM FULL: new files for the heap, its TOAST table and every index; the old files are
        truncated at commit). The rewrite keeps rows that a snapshot still open somewhere in the
        database might see, so it first waits until no session's snapshot predates `after_xid`
        (the deleting transaction). It takes an exclusive lock on each table for the rewrite.
        Each wait is bounded by config.COMPACT_LOCK_TIMEOUT_MS; False when either was not granted."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            return True
        if self.engine.dialect.name != "postgresql":
            return False
        done = True
        unknown = set(tables) - set(SUBJECT_TABLES)
        if unknown:
            raise ValueError(f"not subject tables: {sorted(unknown)}")
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            if after_xid is not None and not _wait_for_older_snapshots(connection, after_xid):
                done = False
            connection.exec_driver_sql(f"SET lock_timeout = {int(config.COMPACT_LOCK_TIMEOUT_MS)}")
            try:
                for name in tables:
                    try:
                        connection.exec_driver_sql(f"VACUUM (FULL) {name}")
                    except OperationalError:
                        done = False  # lock not granted in time; the caller reports compacted=false
            finally:
                connection.exec_driver_sql("RESET lock_timeout")
        return done


def _wait_for_older_snapshots(connection: Any, xid: str) -> bool:
    """Wait (bounded) until no other session of this database holds a snapshot taken before
    transaction `xid` committed: rows it deleted are then dead to everyone, and VACUUM FULL
    drops them instead of copying them. A plain VACUUM worker's snapshot does not hold rows
    back, so it is not waited for."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_xmin IS NOT NULL AND age(backend_xmin) >= age(CAST(:xid AS xid)) "
        "AND NOT (backend_type = 'autovacuum worker' AND query LIKE 'autovacuum: VACUUM %' AND query NOT LIKE '%ANALYZE%')")
    deadline = time.monotonic() + config.COMPACT_LOCK_TIMEOUT_MS / 1000
    while connection.execute(query, {"xid": xid}).scalar_one():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
