"""Tenants and data subjects on the real stack (issue 14, items 4, 5, 8, 9, 10).

A client's request ids are its own; another client's prediction answers exactly like a
missing one and a refused attempt is journaled as the actor's, not against the subject;
a client-scoped export holds only what that client created and did; the subject's id in
clear never goes past the gateway; ids are compared as Unicode NFC, under every known
key after a rotation; and an erasure validates its actor, then deletes and journals in
one transaction."""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from services.proto import model_serving_pb2 as pb
from tests.conftest import INTERNAL_HEADERS, KEYS, frame, headers
from tests.system.tenant_stack import recorded_gateway, rotate_keys, rotated_stack


def client_id(role: str) -> str:
    return hashlib.sha256(KEYS[role].encode()).hexdigest()[:32]


def detect(http, gateway: str, user_id: str, role: str = "client", **extra: str):
    return http.post(f"{gateway}/api/detect", headers=headers(role, **extra), timeout=60,
                     files={"image": ("frame.jpg", frame(), "image/jpeg")}, data={"user_id": user_id})


def subject(http, gateway: str, route: str, user_id: str, role: str = "dpo"):
    return http.post(f"{gateway}/api/results/subjects/{route}", json={"user_id": user_id}, headers=headers(role), timeout=60)


@pytest.fixture(scope="module")
def db(stack):
    engine = sa.create_engine(stack.env["DATABASE_URL"])
    yield engine
    engine.dispose()


def journal(db, **where: str) -> list[dict]:
    clauses = " AND ".join(f"{name} = :{name}" for name in where)
    with db.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(
            sa.text(f"SELECT action, actor_role, actor_id, user_hash, request_id FROM audit_events WHERE {clauses} "
                    "ORDER BY id"), where)]


def test_a_request_id_belongs_to_its_tenant(stack, http):
    request_id, user_a, user_b = f"shared-{uuid.uuid4().hex}", f"ta-{uuid.uuid4().hex[:8]}", f"tb-{uuid.uuid4().hex[:8]}"
    mine = detect(http, stack.gateway, user_a, "client", **{"X-Request-ID": request_id})
    assert mine.status_code == 201, mine.text
    # another client's use of the same id neither blocks (no 409) ...
    theirs = detect(http, stack.gateway, user_b, "client_b", **{"X-Request-ID": request_id})
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["request_id"] == theirs.headers["X-Request-ID"] == request_id  # still its trace id
    # ... nor mixes the records: each reads its own
    url = f"{stack.gateway}/api/results/predictions/{request_id}"
    read_a, read_b = http.get(url, headers=headers("client")).json(), http.get(url, headers=headers("client_b")).json()
    assert (read_a["client_id"], read_b["client_id"]) == (client_id("client"), client_id("client_b"))
    assert read_a["user_hash"] != read_b["user_hash"]
    # reusing one's own id is still refused, and changes nothing
    again = detect(http, stack.gateway, "someone-else", "client", **{"X-Request-ID": request_id})
    assert again.status_code == 409 and "already" in again.json()["error"]
    assert http.get(url, headers=headers("client")).json()["user_hash"] == read_a["user_hash"]
    # dpo/admin see both, and are asked to choose
    assert http.get(url, headers=headers("dpo")).status_code == 409
    assert http.get(url, params={"client_id": client_id("client_b")}, headers=headers("dpo")).json() == read_b


def test_another_clients_prediction_answers_exactly_like_a_missing_one(stack, http, db):
    user = f"oracle-{uuid.uuid4().hex[:8]}"
    created = detect(http, stack.gateway, user).json()["request_id"]
    missing = f"missing-{uuid.uuid4().hex}"
    base = f"{stack.gateway}/api/results/predictions"
    for method, suffix, body in (("GET", "", None), ("POST", "/feedback", {"correct": False, "reason": "not mine"})):
        other = http.request(method, f"{base}/{created}{suffix}", json=body, headers=headers("client_b"))
        absent = http.request(method, f"{base}/{missing}{suffix}", json=body, headers=headers("client_b"))
        assert other.status_code == absent.status_code == 404, (method, other.text, absent.text)
        assert sorted(other.json()) == sorted(absent.json()) == ["error", "request_id"]
        assert other.json()["error"].replace(created, "ID") == absent.json()["error"].replace(missing, "ID")
        assert other.headers["Content-Type"] == absent.headers["Content-Type"]
    # journaled as client_b's refused attempts, never against the data subject
    refused = journal(db, actor_id=client_id("client_b"), request_id=created)
    assert [(e["action"], e["user_hash"]) for e in refused] == [("read_refused", None), ("contest_refused", None)]
    assert [e["action"] for e in journal(db, actor_id=client_id("client_b"), request_id=missing)] == \
        ["read_missing", "contest_missing"]
    exported = subject(http, stack.gateway, "access", user).json()
    assert client_id("client_b") not in {e["actor_id"] for e in exported["access_log"]}
    assert exported["feedback"] == []


def test_a_client_scoped_export_holds_only_what_that_client_created_and_did(stack, http):
    user = f"scope-{uuid.uuid4().hex[:8]}"
    mine = detect(http, stack.gateway, user, "client").json()["request_id"]
    detect(http, stack.gateway, user, "client_b")
    base = f"{stack.gateway}/api/results"
    assert http.post(f"{base}/predictions/{mine}/feedback", json={"correct": False, "reason": "mine"},
                     headers=headers("client")).status_code == 201
    assert http.post(f"{base}/predictions/{mine}/feedback", json={"correct": True, "reason": "dpo review"},
                     headers=headers("dpo")).status_code == 201
    http.get(f"{base}/predictions/{mine}", headers=headers("dpo"))
    subject(http, stack.gateway, "access", user, "client_b")
    scoped = subject(http, stack.gateway, "access", user, "client").json()
    me = client_id("client")
    assert scoped["scope"] == "client" and [p["request_id"] for p in scoped["predictions"]] == [mine]
    assert {p["client_id"] for p in scoped["predictions"]} == {me}
    assert [(f["actor_id"], f["reason"]) for f in scoped["feedback"]] == [(me, "mine")]
    assert scoped["access_log"] and {e["actor_id"] for e in scoped["access_log"]} == {me}  # identity, not role
    everything = subject(http, stack.gateway, "access", user, "dpo").json()
    assert everything["count"] == 2 and len(everything["feedback"]) == 2
    assert {e["actor_id"] for e in everything["access_log"]} >= {me, client_id("client_b"), client_id("dpo")}


def test_only_the_keyed_hash_goes_past_the_gateway(stack, http, tmp_path):
    user = f"raw-Zoé-{uuid.uuid4().hex[:8]}"
    with recorded_gateway(stack, tmp_path / "relayed") as (gateway, recorder):
        created = detect(http, gateway, user)
        assert created.status_code == 201, created.text
        assert subject(http, gateway, "access", user, "client").json()["count"] == 1
        seed = http.get(f"{gateway}/api/results/predictions/user/{quote(user, safe='')}", headers=headers("dpo"))
        assert seed.status_code == 200 and seed.json()["count"] == 1  # the seed's route still works
        erased = http.delete(f"{gateway}/api/results/predictions/user/{quote(user, safe='')}", headers=headers("dpo"))
        assert erased.status_code == 200 and erased.json()["deleted"] == 1
        sent = recorder.everything()
        requests_sent = [pb.PredictionRequest.FromString(message) for message in recorder.grpc]
    assert recorder.http and requests_sent
    for spelling in {user, quote(user, safe=""), quote(user), json.dumps(user)[1:-1], user.split("-")[1]}:
        assert spelling.encode() not in sent, spelling
    user_hash = erased.json()["user_hash"]
    assert [(r.user_id, r.user_hash) for r in requests_sent] == [("", user_hash)]
    assert user_hash.encode() in sent


def test_user_ids_are_compared_in_nfc_and_refused_with_surrounding_whitespace(stack, http):
    tag = uuid.uuid4().hex[:8]
    nfc, nfd = unicodedata.normalize("NFC", f"Zoé-{tag}"), unicodedata.normalize("NFD", f"Zoé-{tag}")
    assert nfc != nfd
    assert detect(http, stack.gateway, nfc).status_code == 201
    assert subject(http, stack.gateway, "access", nfd).json()["count"] == 1
    erased = subject(http, stack.gateway, "erasure", nfd)
    assert erased.status_code == 200 and erased.json()["deleted"] == 1
    assert subject(http, stack.gateway, "access", nfc).json()["count"] == 0
    for spaced in (f" zoe-{tag}", f"zoe-{tag} ", f"zoe-{tag}\u00a0", f"\tzoe-{tag}"):
        refused = detect(http, stack.gateway, spaced)
        assert refused.status_code == 400 and "whitespace" in refused.json()["error"], (spaced, refused.text)
        assert subject(http, stack.gateway, "access", spaced).status_code == 400
        seed = http.get(f"{stack.gateway}/api/results/predictions/user/{quote(spaced, safe='')}", headers=headers("dpo"))
        assert seed.status_code == 400 and "whitespace" in seed.json()["error"]


def test_subject_routes_with_the_id_in_the_body_check_roles_and_input(stack, http):
    assert subject(http, stack.gateway, "erasure", "someone", "client").status_code == 403
    assert http.post(f"{stack.gateway}/api/results/subjects/access", json={"user_id": "x"}).status_code == 401
    for body in ({}, {"user_id": ""}, {"user_id": 5}, {"user_id": "x" * 257}, {"user_id": "a\nb"}):
        answer = http.post(f"{stack.gateway}/api/results/subjects/access", json=body, headers=headers("dpo"))
        assert answer.status_code == 400 and "user_id" in answer.json()["error"], (body, answer.text)
    not_json = http.post(f"{stack.gateway}/api/results/subjects/erasure", data="user_id=x", headers=headers("dpo"))
    assert not_json.status_code == 415
    download = http.post(f"{stack.gateway}/api/results/subjects/access", json={"user_id": "dl", "download": True},
                         headers=headers("dpo"))
    assert download.status_code == 200 and "attachment" in download.headers["Content-Disposition"]


def test_erasure_validates_the_actor_before_deleting_anything(stack, http):
    results, user = stack.url("RESULTS_PORT"), f"actor-{uuid.uuid4().hex[:8]}"
    record = {"request_id": f"a-{uuid.uuid4().hex}", "user_id": user, "model_version": "1", "inference_time_ms": 1.0,
              "detections": [{"class_name": "car", "confidence": 0.9, "bbox": {"x_min": 1, "y_min": 2, "x_max": 3, "y_max": 4}}]}
    assert http.post(f"{results}/predictions", json=record, headers=INTERNAL_HEADERS).status_code == 201
    for bad in ({"X-Actor-Role": "root"}, {"X-Actor-Role": "dpo", "X-Actor-Id": "has space"}):
        answer = http.delete(f"{results}/predictions/user/{user}", headers={**INTERNAL_HEADERS, **bad})
        assert answer.status_code == 400, answer.text
        assert http.get(f"{results}/predictions/user/{user}", headers=INTERNAL_HEADERS).json()["count"] == 1


def test_erasure_deletes_and_journals_in_one_transaction(stack, http, db):
    """The journal insert is made to fail inside PostgreSQL (a trigger for one actor): the
    deletion must roll back with it, so no erasure is ever unjournaled."""
    results, user, actor = stack.url("RESULTS_PORT"), f"atomic-{uuid.uuid4().hex[:8]}", f"jfail{uuid.uuid4().hex[:8]}"
    record = {"request_id": f"t-{uuid.uuid4().hex}", "user_id": user, "model_version": "1", "inference_time_ms": 1.0,
              "detections": []}
    assert http.post(f"{results}/predictions", json=record, headers=INTERNAL_HEADERS).status_code == 201
    with db.begin() as connection:
        connection.execute(sa.text(
            "CREATE OR REPLACE FUNCTION refuse_journal() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'journal refused'; END $$ LANGUAGE plpgsql"))
        connection.execute(sa.text(
            f"CREATE TRIGGER refuse_{actor} BEFORE INSERT ON audit_events FOR EACH ROW "
            f"WHEN (NEW.actor_id = '{actor}') EXECUTE FUNCTION refuse_journal()"))
    try:
        failed = http.delete(f"{results}/predictions/user/{user}",
                             headers={**INTERNAL_HEADERS, "X-Actor-Role": "dpo", "X-Actor-Id": actor})
        assert failed.status_code >= 500 and failed.json()["error"]
        assert http.get(f"{results}/predictions/user/{user}", headers=INTERNAL_HEADERS).json()["count"] == 1
    finally:
        with db.begin() as connection:
            connection.execute(sa.text(f"DROP TRIGGER refuse_{actor} ON audit_events"))
    done = http.delete(f"{results}/predictions/user/{user}",
                       headers={**INTERNAL_HEADERS, "X-Actor-Role": "dpo", "X-Actor-Id": actor})
    assert done.status_code == 200 and done.json()["deleted"] == 1
    assert [e["action"] for e in journal(db, actor_id=actor)] == ["erasure"]


def test_after_a_key_rotation_erasure_still_finds_everything(stack, http, db, tmp_path):
    user = f"rotated-{uuid.uuid4().hex[:8]}"
    assert detect(http, stack.gateway, user).status_code == 201  # hashed under the stack's key
    with rotated_stack(stack, tmp_path / "rotated") as (gateway, rotation, env):
        assert "new key id" in rotation.stdout
        assert detect(http, gateway, user).status_code == 201  # hashed under the new key
        exported = subject(http, gateway, "access", user).json()
        assert exported["count"] == 2 and len({p["key_id"] for p in exported["predictions"]}) == 2
        assert len({p["user_hash"] for p in exported["predictions"]}) == 2
        status = rotate_keys(env, "status")
        old_key_id = status.stdout.split("\n")[1].split()[0]
        assert status.returncode == 0 and "previous" in status.stdout.split("\n")[1], status.stdout
        assert rotate_keys(env, "retire", old_key_id).returncode == 1  # rows still carry it
        erased = subject(http, gateway, "erasure", user).json()
        assert erased["deleted"] == 2
    # the stack (old key only) finds nothing left either
    assert subject(http, stack.gateway, "access", user).json()["count"] == 0


def relation_files(db, table: str) -> list[Path]:
    """Every file of a table on disk: its heap, its TOAST table and all their indexes (each
    with its segments and forks), from pg_relation_filepath; PostgreSQL runs on this host."""
    with db.connect() as connection:
        data_dir = Path(connection.execute(sa.text("SHOW data_directory")).scalar_one())
        relative = connection.execute(sa.text(
            "WITH t AS (SELECT oid, reltoastrelid FROM pg_class WHERE oid = CAST(:t AS regclass)) "
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c, t WHERE c.oid IN (t.oid, t.reltoastrelid) "
            "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN (t.oid, t.reltoastrelid))"),
            {"t": table}).scalars().all()
    files = []
    for path in (data_dir / p for p in relative if p):
        pattern = re.compile(rf"{re.escape(path.name)}(\.\d+|_fsm|_vm|_init)?")
        files += [f for f in path.parent.iterdir() if pattern.fullmatch(f.name)]
    assert files, table
    return files


def on_disk(db, tables: tuple[str, ...]) -> bytes:
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("CHECKPOINT"))  # what is in shared buffers goes to the files
    return b"".join(path.read_bytes() for table in tables for path in relation_files(db, table))


def test_erased_rows_leave_no_bytes_in_postgresqls_files(stack, http, db):
    tables, marker = ("predictions", "feedback"), f"comment-{uuid.uuid4().hex}"
    user, control = f"bytes-{uuid.uuid4().hex[:8]}", f"control-{uuid.uuid4().hex[:8]}"
    mine = detect(http, stack.gateway, user).json()["request_id"]
    assert http.post(f"{stack.gateway}/api/results/predictions/{mine}/feedback", headers=headers("client"),
                     json={"correct": False, "reason": "wrong", "comment": marker}).status_code == 201
    user_hash = subject(http, stack.gateway, "access", user).json()["user_hash"]
    detect(http, stack.gateway, control)
    control_hash = subject(http, stack.gateway, "access", control).json()["user_hash"]
    with db.begin() as connection:  # a plain DELETE, as the store did before compaction
        connection.execute(sa.text("DELETE FROM predictions WHERE user_hash = :h"), {"h": control_hash})
    before, old_files = on_disk(db, tables), relation_files(db, "predictions")
    assert user_hash.encode() in before and marker.encode() in before  # the check sees stored rows ...
    assert control_hash.encode() in before  # ... and a deleted row's bytes, which a DELETE leaves behind

    erased = subject(http, stack.gateway, "erasure", user)
    assert erased.status_code == 200 and erased.json()["deleted"] == 1 and erased.json()["compacted"] is True
    after = on_disk(db, tables)
    for residue in (user_hash, marker, control_hash):
        assert residue.encode() not in after, residue
    assert all(not path.exists() or user_hash.encode() not in path.read_bytes() for path in old_files)
