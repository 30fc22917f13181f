"""Erasure on PostgreSQL, checked at the byte level (governance/RGPD.md §6): a subject's
prediction and feedback, each carrying a unique marker, are in the relation files of the
personal tables (heap, TOAST, indexes) before the erasure, and in none of them once the
results service has answered 200 to the erasure. The WAL and backups are outside this
guarantee, as RGPD.md states; the scan reads the files the server itself names."""
from __future__ import annotations

import uuid
from pathlib import Path

import requests

from governance.store import GovernanceStore
from tests.conftest import INTERNAL_HEADERS
from tests.system.test_results_service import record


def _files_holding(store: GovernanceStore, needles: dict[str, bytes]) -> dict[str, list[str]]:
    located = store.storage_files()  # CHECKPOINT first: the files, not the shared buffers
    assert "error" not in located, located
    files: list[Path] = located["files"]
    assert len(files) >= 4, files  # predictions and feedback, their TOAST tables and indexes
    found: dict[str, list[str]] = {}
    for path in files:
        data = path.read_bytes()
        for label, needle in needles.items():
            if needle in data:
                found.setdefault(label, []).append(path.name)
    return found


def test_postgresql_erasure_leaves_no_byte_of_the_subjects_rows_in_the_relation_files(stack):
    results = stack.url("RESULTS_PORT")
    internal = requests.Session()  # the service token, as the gateway presents it
    internal.headers.update(INTERNAL_HEADERS)
    user = f"pg-erase-{uuid.uuid4().hex[:8]}"
    needles = {"prediction marker": f"pgmk{uuid.uuid4().hex[:24]}".encode(),
               "feedback comment": f"pgcomment-{uuid.uuid4().hex}".encode()}
    body = record(user_id=user, model_version=needles["prediction marker"].decode())
    assert internal.post(f"{results}/predictions", json=body, timeout=30).status_code == 201
    answer = internal.post(f"{results}/predictions/{body['request_id']}/feedback", timeout=30,
                           json={"correct": False, "reason": "wrong box", "comment": needles["feedback comment"].decode()})
    assert answer.status_code == 201, answer.text
    store = GovernanceStore(stack.env["DATABASE_URL"])
    try:
        # The check can fail: before the erasure both markers are on disk.
        assert set(_files_holding(store, needles)) == set(needles)

        erased = internal.delete(f"{results}/predictions/user/{user}", timeout=120)
        assert erased.status_code == 200, erased.text
        assert erased.json()["deleted"] == 1 and erased.json()["deleted_feedback"] == 1
        assert erased.json()["compacted"] is True, erased.json()

        assert _files_holding(store, needles) == {}
        # ...and the audit's own scan, the one `make audit` reports, agrees.
        residue = store.residue({k: v.decode() for k, v in needles.items()}, {erased.json()["user_hash"]})
        assert residue["measured"] and residue["clean"], residue
    finally:
        store.dispose()
