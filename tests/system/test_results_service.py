"""The results service's own API, run against both of its databases: PostgreSQL
(the stack's instance) and the embedded SQLite file (a second instance)."""
from __future__ import annotations

import uuid

import pytest
import requests

from tests.conftest import INTERNAL_HEADERS

internal = requests.Session()  # holds the service token, as the gateway does
internal.headers.update(INTERNAL_HEADERS)


@pytest.fixture(params=["postgresql", "sqlite"])
def results(request, stack, sqlite_results):
    if request.param == "postgresql":
        return stack.url("RESULTS_PORT")
    return sqlite_results[0]


def record(**overrides):
    body = {
        "request_id": f"r-{uuid.uuid4().hex}",
        "user_id": "seed-user",
        "predictions": [{"class_name": "car", "confidence": 0.91,
                         "bbox": {"x_min": 10, "y_min": 20, "x_max": 110, "y_max": 90}}],
        "model_version": "1",
        "inference_time_ms": 12.5,
    }
    body.update(overrides)
    return body


def test_store_read_access_erase(results):
    user = f"user-{uuid.uuid4().hex[:8]}"
    first, second = record(user_id=user), record(user_id=user)
    for body in (first, second):
        assert internal.post(f"{results}/predictions", json=body).status_code == 201
    read = internal.get(f"{results}/predictions/{first['request_id']}").json()
    assert read["detections"][0]["bbox"]["x_max"] == 110 and read["model_version"] == "1"
    assert user not in str(read) and len(read["user_hash"]) == 64
    exported = internal.get(f"{results}/predictions/user/{user}").json()
    assert exported["count"] == 2
    assert {p["request_id"] for p in exported["predictions"]} == {first["request_id"], second["request_id"]}
    erased = internal.delete(f"{results}/predictions/user/{user}").json()
    assert erased["deleted"] == 2
    assert internal.get(f"{results}/predictions/user/{user}").json()["count"] == 0
    assert internal.get(f"{results}/predictions/{first['request_id']}").status_code == 404


def test_request_id_is_unique(results):
    body = record()
    assert internal.post(f"{results}/predictions", json=body).status_code == 201
    again = internal.post(f"{results}/predictions", json=body)
    assert again.status_code == 409 and "already stored" in again.json()["error"]


@pytest.mark.parametrize("change,field", [
    ({"request_id": "bad id with spaces"}, "request_id"),
    ({"request_id": 5}, "request_id"),
    ({"user_id": ""}, "user_id"),
    ({"model_version": None}, "model_version"),
    ({"inference_time_ms": "fast"}, "inference_time_ms"),
    ({"inference_time_ms": -1}, "inference_time_ms"),
    ({"predictions": "car"}, "detections"),
    ({"predictions": [{"class_name": "car", "confidence": 2, "bbox": {}}]}, "confidence"),
    ({"features": [1, 2]}, "features"),
])
def test_invalid_records_are_refused_and_not_stored(results, change, field):
    body = record(**change)
    answer = internal.post(f"{results}/predictions", json=body)
    assert answer.status_code == 400 and field in answer.json()["error"], answer.text
    if isinstance(body["request_id"], str) and " " not in body["request_id"]:
        assert internal.get(f"{results}/predictions/{body['request_id']}").status_code == 404


def test_non_json_bodies(results):
    assert internal.post(f"{results}/predictions", data="x", headers={"Content-Type": "text/plain"}).status_code == 415
    assert internal.post(f"{results}/predictions", data="{", headers={"Content-Type": "application/json"}).status_code == 400
    assert internal.post(f"{results}/predictions", json=[1]).status_code == 400


def test_hostile_user_ids_are_just_hashed(results):
    for user in ("'; DROP TABLE predictions; --", "$(rm -rf /)", "../../etc/passwd", "\u202eevil", "ü" * 200):
        body = record(user_id=user)
        assert internal.post(f"{results}/predictions", json=body).status_code == 201
        quoted = requests.utils.quote(user, safe="")
        exported = internal.get(f"{results}/predictions/user/{quoted}").json()
        assert exported["count"] == 1, user
        assert internal.delete(f"{results}/predictions/user/{quoted}").json()["deleted"] == 1


def test_sqlite_erasure_leaves_no_residue(sqlite_results):
    url, db_file = sqlite_results
    marker = f"residue-{uuid.uuid4().hex}"
    body = record(user_id="residue-user", model_version=marker[:32])
    assert internal.post(f"{url}/predictions", json=body).status_code == 201
    assert internal.delete(f"{url}/predictions/user/residue-user").json()["deleted"] >= 1
    for path in [db_file, db_file.with_name(db_file.name + "-wal")]:
        if path.exists():
            assert marker[:32].encode() not in path.read_bytes(), path
