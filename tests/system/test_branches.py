"""Branches that matter and had no test: the results service answering 5xx, the
feature relay (success and 5xx), explain's refusals (threshold, Triton down, a
tampered model), the adapter's min_confidence, and the retention purge of journal
rows (on SQLite: tests/unit/test_governance_purge.py). Real services throughout; where a real backend cannot be made
to answer a 5xx on demand (the feature service), a stand-in that only answers 500
sits behind a real gateway."""
from __future__ import annotations

import copy
import json
import math
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import requests
import sqlalchemy as sa

from services.proto import model_serving_pb2 as pb
from services.proto import model_serving_pb2_grpc as pb_grpc
from tests.conftest import (
    INTERNAL_HEADERS,
    INTERNAL_METADATA,
    REPO_ROOT,
    frame,
    free_port,
    gunicorn_command,
    headers,
    wait_until,
)
from tests.system.faults import assert_clean_503
from tests.system.test_results_service import record
from tests.system.security_helpers import assert_clean_error, base_env, spawn, stop
from tests.unit.test_governance_purge import run_purge


class _Always500(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _fail(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"error": "internal error"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _fail


@pytest.fixture(scope="module")
def broken_gateway(stack, sqlite_results, tmp_path_factory) -> Iterator[str]:
    """A real gateway whose feature service answers only 500, whose results service is
    the SQLite one (broken by the tests that need it), and whose Triton (for explain)
    is a port where nothing listens."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Always500)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folder, port = tmp_path_factory.mktemp("broken-gateway"), free_port()
    env = base_env(folder / "var", **{
        "API_KEYS": stack.env["API_KEYS"], "PSEUDONYM_KEY": stack.env["PSEUDONYM_KEY"], "RATE_LIMIT": "1000 per second",
        "RATELIMIT_STORAGE_URI": stack.redis.db(12), "FEATURE_SERVICE_URL": f"http://127.0.0.1:{server.server_address[1]}",
        "RESULTS_SERVICE_URL": sqlite_results[0], "MODEL_SERVING_ADDR": stack.adapter,
        "TRITON_GRPC_URL": f"127.0.0.1:{free_port()}", "GATEWAY_PORT": str(port)})
    process = spawn(gunicorn_command("gateway.app:app", port), env, folder / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: requests.get(f"{url}/health", timeout=1).status_code == 200, 90), \
            (folder / "gateway.log").read_text()[-2000:]
        yield url
    finally:
        stop(process)
        server.shutdown()


def _detect(url: str, request_id: str, user: str = "branch-user") -> requests.Response:
    return requests.post(f"{url}/api/detect", headers=headers("client", **{"X-Request-ID": request_id}),
                         files={"image": ("f.jpg", frame(), "image/jpeg")}, data={"user_id": user}, timeout=60)


# --------------------------------------------------------------------------- results service 5xx

def test_results_service_5xx_means_503_and_nothing_stored(broken_gateway, sqlite_results):
    url, db_file = sqlite_results
    with sqlite3.connect(db_file) as connection:
        connection.execute("ALTER TABLE predictions RENAME TO predictions_away")
    try:
        probed = requests.post(f"{url}/predictions", json=record(), headers=INTERNAL_HEADERS, timeout=30)
        assert probed.status_code >= 500, (probed.status_code, probed.text)  # a real 5xx from the real service
        request_ids = [f"r5xx-{uuid.uuid4().hex[:12]}" for _ in range(3)]
        for request_id in request_ids:
            answer = _detect(broken_gateway, request_id)
            assert_clean_503(answer)
            assert "storage" in answer.json()["error"] or "results service" in answer.json()["error"], answer.text
    finally:
        with sqlite3.connect(db_file) as connection:
            connection.execute("ALTER TABLE predictions_away RENAME TO predictions")
    for request_id in request_ids:
        assert requests.get(f"{url}/predictions/{request_id}", headers=INTERNAL_HEADERS, timeout=30).status_code == 404


# --------------------------------------------------------------------------- the feature relay

def test_feature_relay_passes_the_feature_services_answer_through(stack, http):
    direct = http.post(stack.url("FEATURE_PORT", "/preprocess?include_image=false"), data=frame(),
                       headers={"Content-Type": "image/jpeg"})
    relayed = http.post(f"{stack.gateway}/api/features/preprocess?include_image=false", data=frame(),
                        headers={**headers("client"), "Content-Type": "image/jpeg"})
    assert direct.status_code == relayed.status_code == 200, relayed.text
    assert relayed.headers["Content-Type"].startswith("application/json")
    strip = lambda body: {k: v for k, v in body.items() if k not in ("request_id", "processing_time_ms")}  # noqa: E731
    assert strip(relayed.json()) == strip(direct.json())
    assert relayed.json()["features"]["width"] == 676
    refused = http.post(f"{stack.gateway}/api/features/preprocess", data=b"not an image",
                        headers={**headers("client"), "Content-Type": "image/jpeg"})
    assert 400 <= refused.status_code < 500 and "image" in assert_clean_error(refused)["error"].lower()


def test_feature_relay_turns_a_5xx_into_a_clean_503(broken_gateway):
    answer = requests.post(f"{broken_gateway}/api/features/preprocess", data=frame(),
                           headers={**headers("client"), "Content-Type": "image/jpeg"}, timeout=30)
    assert_clean_503(answer)
    assert "internal error" not in answer.text


def test_detect_takes_the_pixel_statistics_from_the_model_not_the_feature_service(broken_gateway, sqlite_results, stack):
    """From version 5 the model returns the image's statistics, computed from the pixels it
    decoded: a detection does not need the feature service (here it answers only 500), and
    what is stored is the header features plus exactly the model's statistics."""
    from services.common import image_features
    from services.common.triton_client import TritonModel

    request_id = f"modelfeat-{uuid.uuid4().hex[:12]}"
    answer = _detect(broken_gateway, request_id)
    assert answer.status_code == 201 and answer.json()["detections"], answer.text
    features = answer.json()["features"]
    model_stats = TritonModel(stack.triton_grpc).infer([frame()]).images[0].image_stats
    assert model_stats and set(model_stats) == set(image_features.PIXEL)
    assert {name: features[name] for name in image_features.PIXEL} == model_stats
    assert (features["width"], features["height"], features["format"], features["byte_size"]) == (676, 380, "JPEG", len(frame()))
    stored = requests.get(f"{sqlite_results[0]}/predictions/{request_id}", headers=INTERNAL_HEADERS, timeout=30).json()
    assert stored["features"] == features and stored["detections"] == answer.json()["detections"]


def test_a_version_without_statistics_gets_its_features_from_the_feature_service(stack, http, tmp_path):
    """Versions before 5, and Triton on the TensorFlow graph (GPU), return no statistics: the
    gateway then asks the feature service, and stores its answer."""
    from tests.system.tenant_stack import recorded_gateway

    request_id = f"oldmodel-{uuid.uuid4().hex[:12]}"
    with recorded_gateway(stack, tmp_path / "old-model", without_image_stats=True) as (gateway, _):
        answer = _detect(gateway, request_id)
    assert answer.status_code == 201 and answer.json()["detections"], answer.text
    direct = http.post(f"{stack.url('FEATURE_PORT')}/preprocess?include_image=false", data=frame(),
                       headers={"Content-Type": "image/jpeg"}, timeout=30).json()["features"]
    assert answer.json()["features"] == direct
    stored = requests.get(f"{stack.gateway}/api/results/predictions/{request_id}", headers=headers("client"), timeout=30)
    assert stored.status_code == 200 and stored.json()["features"] == direct, stored.text


# --------------------------------------------------------------------------- explain

@pytest.mark.parametrize("threshold", ["abc", "0.01", "0", "1.5", "-1", "nan", "inf", ""])
def test_explain_refuses_a_bad_threshold(stack, http, threshold):
    answer = http.post(f"{stack.gateway}/api/explain?threshold={threshold}", headers=headers("dpo"),
                       files={"image": ("f.jpg", frame(), "image/jpeg")})
    assert "threshold" in assert_clean_error(answer, 400)["error"]


def test_explain_with_triton_down_is_a_clean_503(broken_gateway):
    answer = requests.post(f"{broken_gateway}/api/explain", headers=headers("dpo"),
                           files={"image": ("f.jpg", frame(), "image/jpeg")}, timeout=90)
    assert_clean_503(answer)
    assert "model" in answer.json()["error"]


def test_explain_refuses_a_model_that_is_not_the_registered_one(stack, tmp_path, monkeypatch):
    """The served version's registered hash no longer matches its files (here: the
    record altered, as if model.py had been swapped): explain answers 503, naming why."""
    from services.common import explain
    from services.common.integrity import ServingGuard
    from services.common.triton_client import TritonModel

    registry = json.loads((REPO_ROOT / "governance" / "model_registry.json").read_text())
    served = requests.get(stack.url("TRITON_HTTP_PORT", "/v2/models/car_detector"), timeout=10).json()["versions"]
    tampered = copy.deepcopy(registry)
    entry = next(m for m in tampered["models"] if m["name"] == "car_detector" and m["version"] == served[-1])
    entry["files"]["model.py"] = entry["sha256"] = "0" * 64  # the file's record and the version's
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(tampered))
    triton = explain.TritonInfer(TritonModel(url=stack.triton_grpc, timeout_s=60))
    honest = explain.explain_image(frame(), threshold=0.3, grid=(4, 3), infer=triton)
    assert honest.body["model_version"] == served[-1] and honest.body["detections"]
    monkeypatch.setattr(explain, "_guard", ServingGuard(registry=path, repository=REPO_ROOT / "model_repository"))
    with pytest.raises(explain.ExplainError) as refused:
        explain.explain_image(frame(), threshold=0.3, grid=(4, 3), infer=triton)
    assert refused.value.status == 503 and "not the registered one" in refused.value.message


# --------------------------------------------------------------------------- the adapter's min_confidence

def test_adapter_min_confidence_filters_the_models_scores(stack):
    with grpc.insecure_channel(stack.adapter) as channel:
        stub = pb_grpc.ModelServingStub(channel)

        def scores(min_confidence: float, image: str = "vid_4_10000.jpg") -> list[float]:
            answer = stub.Predict(pb.PredictionRequest(request_id=f"minconf-{uuid.uuid4().hex[:8]}", user_id="u",
                                                       image_data=frame(image), min_confidence=min_confidence), timeout=60,
                                 metadata=INTERNAL_METADATA)
            return [d.confidence for d in answer.detections]

        floor, default = scores(0.05), scores(0.0)  # 0 = unset: the served version's operating threshold
        assert floor and all(s >= 0.05 - 1e-6 for s in floor)
        assert default and len(default) <= len(floor)
        assert default == [s for s in floor if s >= min(default)]  # the same boxes above one threshold
        assert all(s < min(default) for s in floor if s not in default)
        top = max(floor)
        above = scores(min(1.0, top + 1e-3))
        assert top not in above and all(s >= top for s in above)
        just_below = scores(max(0.05, math.floor(top * 1000) / 1000 - 1e-3))
        assert top in just_below


# --------------------------------------------------------------------------- retention purge


def test_purge_deletes_journal_rows_after_audit_retention_days(stack):
    engine = sa.create_engine(stack.env["DATABASE_URL"])
    marker = f"journal-{uuid.uuid4().hex[:12]}"
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        for days, suffix in ((400, "old"), (100, "kept"), (0, "new")):
            connection.execute(sa.text(
                "INSERT INTO audit_events (at, action, actor_role, actor_id, request_id, record_count) "
                "VALUES (:at, 'read', 'client', 'journal-test', :rid, 1)"), {"at": now - timedelta(days=days),
                                                                            "rid": f"{marker}-{suffix}"})
    result = run_purge({**stack.env, "RETENTION_DAYS": "30", "AUDIT_RETENTION_DAYS": "365"})
    assert result["deleted"]["audit_events"] >= 1 and result["audit_retention_days"] == 365
    with engine.connect() as connection:
        left = {row[0] for row in connection.execute(
            sa.text("SELECT request_id FROM audit_events WHERE request_id LIKE :m"), {"m": marker + "%"})}
    engine.dispose()
    assert left == {f"{marker}-kept", f"{marker}-new"}


