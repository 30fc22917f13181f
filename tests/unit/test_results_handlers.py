"""The results service's handlers in process (Flask's test client) on a real SQLite store of
their own: what is stored is what the prediction schema says, bad bodies are a clear JSON
400, a client sees only its own predictions, and a subject's export and erasure work by id.
(tests/system/test_results_service.py runs the same service under gunicorn in the stack.)"""
from __future__ import annotations

import uuid

import pytest

from services.common.schemas import StoredPrediction
from services.common.service_token import caller_headers
from services.results_service import app as results_app
from services.results_service.store import ResultsStore, make_engine


@pytest.fixture()
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setattr(results_app, "store", ResultsStore(make_engine(f"sqlite:///{tmp_path / 'results.db'}")))
    yield results_app.app.test_client()
    results_app.store.engine.dispose()


def as_(role: str, actor: str = "internal") -> dict[str, str]:
    return {**caller_headers(), "X-Actor-Role": role, "X-Actor-Id": actor}


def prediction(**changes: object) -> dict:
    body = {"request_id": f"unit-{uuid.uuid4().hex[:12]}", "user_id": f"driver-{uuid.uuid4().hex[:8]}",
            "detections": [{"class_name": "car", "confidence": 0.91,
                            "bbox": {"x_min": 10.0, "y_min": 20.0, "x_max": 110.0, "y_max": 80.0}}],
            "model_version": "4", "inference_time_ms": 21.5, "features": {"width": 676, "height": 380}}
    return {**body, **changes}


def test_a_prediction_is_stored_once_and_read_back_as_the_schema_says(client):
    sent = prediction()
    stored = client.post("/predictions", json=sent, headers=as_("service"))
    assert stored.status_code == 201 and stored.get_json() == {"request_id": sent["request_id"], "stored": True}
    again = client.post("/predictions", json=sent, headers=as_("service"))
    assert again.status_code == 409 and "already stored" in again.get_json()["error"]
    read = client.get(f"/predictions/{sent['request_id']}", headers=as_("dpo", "dpo-1"))
    assert read.status_code == 200
    body = read.get_json()
    assert set(body) == set(StoredPrediction.model_fields)
    record = StoredPrediction.model_validate(body)
    assert record.detection_count == 1 and record.detections[0].confidence == 0.91 and record.model_version == "4"
    assert sent["user_id"] not in read.get_data(as_text=True) and len(record.user_hash) == 64


@pytest.mark.parametrize(("changes", "named"), [
    ({"model_version": None}, "model_version"),
    ({"detections": [{"class_name": "car", "confidence": 1.5, "bbox": {"x_min": 0, "y_min": 0, "x_max": 1, "y_max": 1}}]},
     "confidence"),
    ({"user_hash": "a" * 64, "key_id": "0123abcd"}, "user_id"),
    ({"request_id": "has a space"}, "request_id"),
])
def test_a_bad_body_is_a_clear_json_400_naming_the_field(client, changes, named):
    body = {k: v for k, v in prediction(**changes).items() if v is not None}
    answer = client.post("/predictions", json=body, headers=as_("service"))
    assert answer.status_code == 400 and answer.is_json, answer.get_data(as_text=True)
    assert named in answer.get_json()["error"]


def test_a_client_sees_only_its_own_prediction(client):
    sent = prediction()
    assert client.post("/predictions", json=sent, headers=as_("client", "client-a")).status_code == 201
    path = f"/predictions/{sent['request_id']}"
    assert client.get(path, headers=as_("client", "client-a")).get_json()["client_id"] == "client-a"
    assert client.get(path, headers=as_("client", "client-b")).status_code == 404  # like a missing one
    refused = client.get(path, headers=as_("root", "x"))
    assert refused.status_code == 400 and "X-Actor-Role" in refused.get_json()["error"]


def test_a_subjects_export_and_erasure_by_id(client):
    sent = prediction()
    assert client.post("/predictions", json=sent, headers=as_("service")).status_code == 201
    path = f"/predictions/user/{sent['user_id']}"
    exported = client.get(path, headers=as_("dpo", "dpo-1")).get_json()
    assert exported["count"] == 1 and exported["predictions"][0]["request_id"] == sent["request_id"]
    assert client.delete(path, headers=as_("client", "client-a")).status_code == 403
    erased = client.delete(path, headers=as_("dpo", "dpo-1"))
    assert erased.status_code == 200 and erased.get_json()["deleted"] == 1
    assert client.get(path, headers=as_("dpo", "dpo-1")).get_json()["count"] == 0
