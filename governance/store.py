"""The governance tools' one way into the results database.

The audit and the retention purge read and write through this module only. Reads use
the tables as the live database has them (reflected, so the audit inspects what is
really stored, not what the code says should be); writes go through the results
service's public store API (`ResultsStore`). The residue scan reads the database's own
files: the SQLite file and its write-ahead log, or PostgreSQL's relation files (heap,
TOAST and indexes of each table, found with pg_relation_filepath under the server's
data directory, after a CHECKPOINT so the files hold what the buffers hold).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from services.results_service.store import ResultsStore, database_url, make_engine
from services.results_service.store import metadata as declared_tables

TABLES = ("predictions", "feedback", "audit_events")
# The columns each table may hold (the record of processing, governance/RGPD.md): the tables
# the results service declares, so a new column is declared in one place, not copied here.
DECLARED_COLUMNS: dict[str, frozenset[str]] = {t.name: frozenset(t.columns.keys()) for t in declared_tables.sorted_tables}
PERSONAL_TABLES = ("predictions", "feedback")  # the journal keeps hashes by design
_HEX_RUN = re.compile(rb"[0-9a-f]{64,}")


def aware(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


def _hashes_in(data: bytes, wanted: set[str]) -> set[str]:
    """Which of `wanted` (64-hex strings) occur in `data`, in one pass over the bytes."""
    found: set[str] = set()
    for run in _HEX_RUN.finditer(data):
        text = run.group().decode()
        for start in range(len(text) - 63):
            if text[start:start + 64] in wanted:
                found.add(text[start:start + 64])
    return found


class GovernanceStore:
    """Reads of the results database for the audit, and the purge's writes."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or database_url()
        self.engine = make_engine(self.url)
        self._tables: dict[str, sa.Table] = {}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def results_store(self) -> ResultsStore:
        return ResultsStore(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    def table(self, name: str) -> sa.Table:
        if name not in self._tables:
            self._tables[name] = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
        return self._tables[name]

    # -- reads
    def rows(self, name: str, since: datetime | None = None, time_column: str = "created_at") -> list[dict[str, Any]]:
        tab = self.table(name)
        query = sa.select(tab)
        if since is not None:
            query = query.where(tab.c[time_column] >= since)
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(query)]

    def count(self, name: str, **equals: Any) -> int:
        tab = self.table(name)
        query = sa.select(sa.func.count()).select_from(tab)
        for column, value in equals.items():
            query = query.where(tab.c[column] == value)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def first(self, name: str, **equals: Any) -> dict[str, Any] | None:
        tab = self.table(name)
        query = sa.select(tab)
        for column, value in equals.items():
            query = query.where(tab.c[column] == value)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return dict(row._mapping) if row else None

    def count_older(self, name: str, cutoff: datetime, time_column: str = "created_at") -> int:
        tab = self.table(name)
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(tab)
                                          .where(tab.c[time_column] < cutoff)).scalar_one())

    def oldest(self, name: str, time_column: str = "created_at") -> datetime | None:
        tab = self.table(name)
        with self.engine.connect() as connection:
            return aware(connection.execute(sa.select(sa.func.min(tab.c[time_column]))).scalar_one())

    def last_action(self, action: str) -> datetime | None:
        tab = self.table("audit_events")
        with self.engine.connect() as connection:
            return aware(connection.execute(sa.select(sa.func.max(tab.c.at)).where(tab.c.action == action)).scalar_one())

    def journal_for(self, user_hash: str) -> list[dict[str, Any]]:
        tab = self.table("audit_events")
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(
                sa.select(tab.c.action, tab.c.actor_role, tab.c.record_count, tab.c.at)
                .where(tab.c.user_hash == user_hash).order_by(tab.c.at, tab.c.id))]

    def columns(self, name: str) -> list[dict[str, Any]]:
        return [dict(c) for c in sa.inspect(self.engine).get_columns(name)]

    def postgres_ssl(self) -> bool | str:
        try:
            with self.engine.connect() as connection:
                return bool(connection.execute(
                    sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar())
        except Exception as exc:
            return f"unknown ({type(exc).__name__})"

    def erased_hashes(self) -> set[str]:
        """Hashes of every data subject whose erasure is journaled and who has no live row
        since (someone erased and then detected again has rows again, legitimately)."""
        journal = self.table("audit_events")
        with self.engine.connect() as connection:
            erased = {r[0] for r in connection.execute(
                sa.select(journal.c.user_hash).where(journal.c.action == "erasure", journal.c.user_hash.isnot(None)))}
            live: set[str] = set()
            for name in PERSONAL_TABLES:
                tab = self.table(name)
                live |= {r[0] for r in connection.execute(sa.select(tab.c.user_hash).distinct())}
        return {h for h in erased - live if isinstance(h, str) and len(h) == 64}

    # -- the database's own files
    def storage_files(self) -> dict[str, Any]:
        """The files holding the personal tables: {"files": [Path...]} or {"error": why not}."""
        if self.dialect == "sqlite":
            db_file = Path(self.engine.url.database or "")
            files = [p for p in (db_file, db_file.with_name(db_file.name + "-wal"),
                                 db_file.with_name(db_file.name + "-journal")) if p.exists()]
            return {"files": files, "how": "SQLite database file and its write-ahead log (the hashes: in the "
                                           "pages of the personal tables, their indexes and free pages)"} \
                if db_file.exists() \
                else {"error": f"SQLite file {db_file} not found"}
        if self.dialect != "postgresql":
            return {"error": f"no file scan for {self.dialect}"}
        try:
            with self.engine.connect() as connection:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                # The files lag the shared buffers until a checkpoint writes them out.
                connection.execute(sa.text("CHECKPOINT"))
                data_dir = Path(connection.execute(sa.text("SHOW data_directory")).scalar_one())
                rels = connection.execute(sa.text(
                    "SELECT c.relname, pg_relation_filepath(c.oid), pg_relation_size(c.oid) FROM pg_class c "
                    "WHERE c.oid IN (SELECT t.oid FROM pg_class t WHERE t.relname = ANY(:tables) AND t.relkind = 'r' "
                    "AND t.relnamespace = 'public'::regnamespace "
                    "UNION SELECT t.reltoastrelid FROM pg_class t WHERE t.relname = ANY(:tables) AND t.relkind = 'r' "
                    "AND t.relnamespace = 'public'::regnamespace "
                    "UNION SELECT i.indexrelid FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
                    "WHERE t.relname = ANY(:tables) AND t.relnamespace = 'public'::regnamespace "
                    "UNION SELECT i.indexrelid FROM pg_index i JOIN pg_class t ON t.reltoastrelid = i.indrelid "
                    "WHERE t.relname = ANY(:tables) AND t.relnamespace = 'public'::regnamespace)"),
                    {"tables": list(PERSONAL_TABLES)}).all()
        except Exception as exc:
            return {"error": f"PostgreSQL files not located: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        files, mismatched = [], []
        for relname, relpath, size in rels:
            if not relpath:
                continue
            base = data_dir / relpath
            segments = [base] + sorted(base.parent.glob(base.name + ".[0-9]*"))
            present = [p for p in segments if p.exists()]
            on_disk = sum(p.stat().st_size for p in present)
            if not present or on_disk != size:
                mismatched.append(f"{relname}: {base} ({'absent' if not present else f'{on_disk} bytes, server says {size}'})")
            files += present
        if mismatched:
            return {"error": "the relation files are not readable here as the server sees them "
                             f"(another host, or no permission): {'; '.join(mismatched[:3])}"}
        return {"files": files, "how": f"PostgreSQL relation files (heap, TOAST, indexes) under {data_dir}, "
                                       "read after a CHECKPOINT"}

    def _sqlite_personal_pages(self, files: list[Path]) -> bytes:
        """The bytes of the pages that hold the personal tables and their indexes, and of free
        pages, in the SQLite file and its WAL: the journal shares the file and keeps hashes by design."""
        with self.engine.connect() as connection:
            page_size = int(connection.exec_driver_sql("PRAGMA page_size").scalar_one())
            names = [r[0] for r in connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE tbl_name IN ('predictions', 'feedback')")]
            pages = {int(r[0]) for r in connection.exec_driver_sql(
                f"SELECT pageno FROM dbstat WHERE name IN ({', '.join('?' * len(names))})", tuple(names))}
        main = files[0].read_bytes()
        trunk = int.from_bytes(main[32:36], "big")
        while 0 < trunk <= len(main) // page_size:  # the freelist: trunk pages listing leaf pages
            page = main[(trunk - 1) * page_size: trunk * page_size]
            pages.add(trunk)
            count = int.from_bytes(page[4:8], "big")
            pages |= {int.from_bytes(page[8 + 4 * i: 12 + 4 * i], "big") for i in range(min(count, page_size // 4 - 2))}
            trunk = int.from_bytes(page[0:4], "big")
        chunks = [main[(n - 1) * page_size: n * page_size] for n in sorted(pages)]
        for wal in (f for f in files[1:] if f.name.endswith("-wal")):
            data = wal.read_bytes()
            for offset in range(32, len(data) - 24, 24 + page_size):  # frame: 24-byte header, then the page
                if int.from_bytes(data[offset:offset + 4], "big") in pages:
                    chunks.append(data[offset + 24: offset + 24 + page_size])
        return b"".join(chunks)

    def residue(self, needles: dict[str, str], hashes: set[str]) -> dict[str, Any]:
        """Scan the database files for the given strings, and the personal tables' storage for
        erased subjects' hashes."""
        located = self.storage_files()
        if "error" in located:
            return {"measured": False, "error": located["error"]}
        found: dict[str, list[str]] = {}
        total = 0
        hashes_found: set[str] = set()
        for path in located["files"]:
            data = path.read_bytes()
            total += len(data)
            for label, needle in needles.items():
                if needle and needle.encode() in data:
                    found.setdefault(label, []).append(path.name)
            if self.dialect != "sqlite":
                hashes_found |= _hashes_in(data, hashes)
        if self.dialect == "sqlite" and hashes:
            hashes_found = _hashes_in(self._sqlite_personal_pages(located["files"]), hashes)
        return {"measured": True, "how": located["how"], "files": len(located["files"]), "bytes_scanned": total,
                "erased_subjects_checked": len(hashes), "erased_subjects_found": len(hashes_found),
                "found": found, "clean": not found and not hashes_found,
                "limits": "write-ahead log segments and backups are not scanned"}
