"""Alembic migrations of the results database, on PostgreSQL (a throwaway database on the
local server) and on SQLite: from an empty database and from the schema as it was before
migrations existed (revision 0001's tables), the result equals the store's tables exactly
(Alembic's own comparison finds no difference), rows survive, and the results service
applies them at start."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest
import requests
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from services.results_service.migrations import alembic_config
from tests.conftest import PG_ADMIN_DSN, REPO_ROOT, free_port, gunicorn_command, recreate_database, wait_until

PSEUDONYM_KEY = "migration-test-key"

# The schema as it was before migrations existed: revision 0001's tables.
legacy = ScriptDirectory.from_config(alembic_config()).get_revision("0001").module.schema


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    from services.common import pseudonym

    monkeypatch.setenv("PSEUDONYM_KEY", PSEUDONYM_KEY)
    monkeypatch.delenv("PSEUDONYM_PREVIOUS_KEYS", raising=False)
    pseudonym.keyring.cache_clear()
    yield
    pseudonym.keyring.cache_clear()


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    name = f"car_detection_migrations_{uuid.uuid4().hex[:8]}"
    yield recreate_database(name)
    admin = sa.create_engine(PG_ADMIN_DSN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def differences(engine: sa.Engine, metadata: sa.MetaData) -> list:
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), metadata)


def make_legacy(url: str) -> sa.Engine:
    from services.results_service.store import make_engine

    engine = make_engine(url, upgrade=False)
    legacy.create_all(engine)
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        connection.execute(legacy.tables["predictions"].insert(), [
            {"request_id": "old-1", "user_hash": "a" * 64, "client_id": "c1", "detections": [{"class_name": "car"}],
             "detection_count": 1, "model_version": "1", "inference_time_ms": 3.0, "created_at": now}])
        connection.execute(legacy.tables["feedback"].insert(), [
            {"request_id": "old-1", "user_hash": "a" * 64, "client_id": "c1", "actor_role": role, "correct": False,
             "reason": f"by {role}", "created_at": now} for role in ("client", "dpo")])
        connection.execute(legacy.tables["audit_events"].insert().values(
            at=now, action="read", actor_role="client", actor_id="c1", user_hash="a" * 64, record_count=1))
    return engine


# Revision 0001 is applied history: its DDL may never change. The digest was taken from
# the schema as the results service created it before migrations existed.
REVISION_0001_DDL_SHA256 = "7e6dc85fe8b6370cef9c29160b46ccf9db222e0f5574172189bb363efe5d6080"


def test_revision_0001_is_frozen():
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex, CreateTable

    statements = []
    for table in legacy.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=postgresql.dialect())).strip())
        statements += sorted(str(CreateIndex(index).compile(dialect=postgresql.dialect())).strip() for index in table.indexes)
    digest = hashlib.sha256("\n".join(statements).encode()).hexdigest()
    assert digest == REVISION_0001_DDL_SHA256, "migration 0001 was edited: add a new revision instead"


def test_revision_0001_is_the_schema_before_migrations(url):
    from services.results_service.migrations import current_revision, upgrade_to_head
    from services.results_service.store import make_engine

    engine = make_engine(url, upgrade=False)
    upgrade_to_head(engine, "0001")
    assert current_revision(engine) == "0001" and differences(engine, legacy) == []


def test_from_an_empty_database(url):
    from services.results_service import store
    from services.results_service.migrations import current_revision

    engine = store.make_engine(url)
    assert current_revision(engine) == "0002" and differences(engine, store.metadata) == []
    results = store.ResultsStore(engine)
    base = {"user_hash": "b" * 64, "detections": [], "detection_count": 0, "model_version": "1", "inference_time_ms": 1.0}
    results.add({**base, "request_id": "same", "client_id": "tenant-a"})
    results.add({**base, "request_id": "same", "client_id": "tenant-b"})  # per tenant, not global
    with pytest.raises(store.DuplicateRequest):
        results.add({**base, "request_id": "same", "client_id": "tenant-a"})
    store.make_engine(url).dispose()  # a second start changes nothing
    assert differences(engine, store.metadata) == []


def test_from_the_schema_before_migrations_rows_survive(url):
    from services.common.pseudonym import key_id
    from services.results_service import store
    from services.results_service.migrations import current_revision, upgrade_to_head

    engine = make_legacy(url)
    assert current_revision(engine) is None
    upgrade_to_head(engine)
    assert current_revision(engine) == "0002" and differences(engine, store.metadata) == []
    results = store.ResultsStore(engine)
    [old] = results.for_user("a" * 64)
    assert (old["request_id"], old["client_id"], old["key_id"]) == ("old-1", "c1", key_id())
    assert old["detections"] == [{"class_name": "car"}]
    by_actor = {f["reason"]: f["actor_id"] for f in results.feedback_for_user("a" * 64)}
    assert by_actor == {"by client": "c1", "by dpo": "unknown"}
    assert [e["action"] for e in results.audit_for_user("a" * 64)] == ["read"]
    results.add({"request_id": "old-1", "client_id": "c2", "user_hash": "c" * 64, "detections": [],
                 "detection_count": 0, "model_version": "2", "inference_time_ms": 1.0})
    assert len(results.find("old-1")) == 2
    engine.dispose()


def test_downgrade_and_upgrade_again(url):
    from alembic import command

    from services.results_service import store
    from services.results_service.migrations import upgrade_to_head

    engine = make_legacy(url)
    upgrade_to_head(engine)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0001")
    assert differences(engine, legacy) == []
    upgrade_to_head(engine)
    assert differences(engine, store.metadata) == [] and len(store.ResultsStore(engine).for_user("a" * 64)) == 1


def test_the_migrate_command(url):
    make_legacy(url).dispose()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "DATABASE_URL": url, "PSEUDONYM_KEY": PSEUDONYM_KEY}
    run = subprocess.run([sys.executable, "-m", "services.results_service.migrations"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "revision none -> 0002" in run.stdout, run.stdout + run.stderr
    again = subprocess.run([sys.executable, "-m", "services.results_service.migrations"], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert "revision 0002 -> 0002" in again.stdout, again.stdout + again.stderr


def test_the_results_service_migrates_at_start(url, tmp_path):
    """Two workers start at once on a database with the old schema and old rows."""
    make_legacy(url).dispose()
    port, log = free_port(), tmp_path / "results.log"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "DATABASE_URL": url, "PSEUDONYM_KEY": PSEUDONYM_KEY,
           "VAR_DIR": str(tmp_path / "var"), "GUNICORN_WORKERS": "2", "METRICS_TOKEN": "migration-test",
           "INTERNAL_TOKEN": "migration-test-token"}
    token = {"X-Internal-Token": "migration-test-token"}
    with open(log, "wb") as out:
        process = subprocess.Popen(gunicorn_command("services.results_service.app:app", port), cwd=REPO_ROOT,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: requests.get(f"{base}/ready", timeout=2).status_code == 200, timeout=90), \
            log.read_text()[-3000:]
        assert requests.get(f"{base}/predictions/old-1", headers=token, timeout=10).json()["key_id"]
        record = {"request_id": "old-1", "client_id": "c2", "user_id": "new-user", "detections": [],
                  "model_version": "2", "inference_time_ms": 1.0}
        assert requests.post(f"{base}/predictions", json=record, headers=token, timeout=10).status_code == 201
        again = requests.get(f"{base}/predictions/old-1", params={"client_id": "c2"}, headers=token, timeout=10)
        assert again.json()["model_version"] == "2"
    finally:
        process.terminate()
        process.wait(20)
    from services.results_service import store

    engine = store.make_engine(url, upgrade=False)
    assert differences(engine, store.metadata) == []
    engine.dispose()
