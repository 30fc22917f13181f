"""The gateway's own decisions in process (Flask's test client), before any backend is
called: who may call what (401 with WWW-Authenticate, 403 by role), what an upload must
look like (415, 400 naming the field), request ids, the feature pass-through's names, and
the routes that need no key. (tests/system/ exercises the same routes through the stack.)"""
from __future__ import annotations

import pytest

from gateway import app as gateway_app
from gateway.auth import KeyRing, parse_keys
from tests.conftest import frame

CLIENT, DPO = "unit-client-key-0123456789", "unit-dpo-key-0123456789"


@pytest.fixture()
def client(monkeypatch):
    monkeypatch.setattr(gateway_app, "keyring", KeyRing(parse_keys(f"{CLIENT}:client,{DPO}:dpo")))
    return gateway_app.app.test_client()


def test_no_key_or_an_unknown_key_is_401_and_says_which_header(client):
    for sent in ({}, {"X-API-Key": "not-a-key-of-this-gateway"}):
        answer = client.post("/api/detect", headers=sent)
        assert answer.status_code == 401 and "X-API-Key" in answer.get_json()["error"]
        assert answer.headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'


def test_a_role_the_route_does_not_allow_is_403(client):
    answer = client.post("/api/detect", headers={"X-API-Key": DPO}, data={"user_id": "u"},
                         content_type="multipart/form-data")
    assert answer.status_code == 403 and answer.get_json()["error"] == "role dpo may not POST /api/detect"


def test_an_upload_that_is_not_multipart_or_lacks_its_fields_is_refused_by_name(client):
    key = {"X-API-Key": CLIENT}
    raw = client.post("/api/detect", headers=key, data=frame(), content_type="image/jpeg")
    assert raw.status_code == 415 and "multipart/form-data" in raw.get_json()["error"]
    missing = client.post("/api/detect", headers=key, data={"user_id": "driver-1"}, content_type="multipart/form-data")
    assert missing.status_code == 400 and missing.get_json()["error"] == "missing file field 'image'"


def test_a_bad_request_id_is_refused_and_a_good_one_is_returned(client):
    bad = client.get("/health", headers={"X-Request-ID": "two words"})
    assert bad.status_code == 400 and bad.is_json
    good = client.get("/health", headers={"X-Request-ID": "unit-42"})
    assert good.status_code == 200 and good.headers["X-Request-ID"] == "unit-42"


def test_the_feature_pass_through_forwards_only_its_named_endpoints(client):
    answer = client.post("/api/features/../admin", headers={"X-API-Key": CLIENT})
    assert answer.status_code == 404
    named = client.post("/api/features/reload", headers={"X-API-Key": CLIENT})
    assert named.status_code == 404 and "available: preprocess" in named.get_json()["error"]


def test_health_openapi_and_the_console_need_no_key(client):
    assert client.get("/health").status_code == 200
    document = client.get("/openapi.json")
    assert document.status_code == 200 and "/api/detect" in document.get_json()["paths"]
    console = client.get("/")
    assert console.status_code == 200 and console.mimetype == "text/html"
