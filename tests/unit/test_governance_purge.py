"""The retention purge (`make purge`, governance/purge.py) on SQLite, run as the command:
expired predictions and their feedback are deleted without residue in the database files,
and the purge is journaled. (tests/system/test_branches.py runs it on the stack's PostgreSQL.)"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

from services.common.config import REPO_ROOT


def run_purge(env: dict[str, str]) -> dict:
    run = subprocess.run([sys.executable, "-m", "governance.purge", "--json"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, env={**env, "PYTHONPATH": str(REPO_ROOT)})
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)

def test_purge_on_sqlite(tmp_path):
    from services.results_service.store import ResultsStore, make_engine

    db_file = tmp_path / "var" / "results.db"
    db_file.parent.mkdir()
    engine = make_engine(f"sqlite:///{db_file}")
    store = ResultsStore(engine)
    old, fresh = f"old-{uuid.uuid4().hex}", f"fresh-{uuid.uuid4().hex}"
    base = {"user_hash": "a" * 64, "client_id": "sqlite-purge", "detections": [], "detection_count": 0,
            "model_version": "1", "inference_time_ms": 1.0}
    store.add({**base, "request_id": old, "created_at": datetime.now(timezone.utc) - timedelta(days=45)})
    store.add({**base, "request_id": fresh})
    store.add_feedback({"request_id": old, "user_hash": "a" * 64, "client_id": "sqlite-purge", "actor_role": "client",
                        "correct": False, "reason": f"reason-{old}"})
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = run_purge({**env, "VAR_DIR": str(tmp_path / "var"), "RETENTION_DAYS": "30"})
    assert result["database"] == "sqlite"
    assert result["deleted"]["predictions"] == 1 and result["deleted"]["feedback"] == 1 and result["remaining_expired"] == 0
    with sqlite3.connect(db_file) as connection:
        assert [r[0] for r in connection.execute("SELECT request_id FROM predictions")] == [fresh]
        assert connection.execute("SELECT count(*) FROM feedback").fetchone()[0] == 0
        assert connection.execute("SELECT count(*) FROM audit_events WHERE action = 'retention_purge'").fetchone()[0] == 1
    on_disk = b"".join(p.read_bytes() for p in db_file.parent.glob("results.db*"))
    assert old.encode() not in on_disk and f"reason-{old}".encode() not in on_disk  # no residue of what was purged
