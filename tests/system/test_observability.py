"""Observability, for real: one request followed through every service's log, ECS JSON
on every line, no raw user id anywhere, /metrics with histograms, and log shipping
to a real TCP listener that keeps the service fast when Logstash is down or stalled.

The shipping tests start their own feature-service gunicorn (one worker) on a spare
port with LOGSTASH_HOST/PORT set, so the shared test stack is never reconfigured.
The ELK and Prometheus files cannot run here; tests/deploy/test_observability_files.py
checks their structure.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from scripts.trace import get as field
from tests.conftest import INTERNAL_HEADERS, REPO_ROOT, free_port, frame, gunicorn_command, headers, wait_until
from tests.logstash_listener import Listener

SERVICES = ("gateway", "feature-service", "model-serving", "results-service")
# A detection's path: the model returns the image's statistics, so the feature service is not on it.
DETECTION_HOPS = ("gateway", "model-serving", "results-service")
OBS = REPO_ROOT / "observability"


# --- helpers ----------------------------------------------------------------------------------------

def log_dir(stack) -> Path:
    return stack.var_dir / "log"


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(errors="replace").splitlines() if line.strip()]




def metrics_token(stack) -> str:
    return stack.env.get("METRICS_TOKEN") or (stack.var_dir / "secrets" / "metrics_token").read_text().strip()




def detect(stack, http, user_id: str, request_id: str):
    return http.post(f"{stack.gateway}/api/detect", headers=headers("client", **{"X-Request-ID": request_id}),
                     files={"image": ("frame.jpg", frame(), "image/jpeg")}, data={"user_id": user_id}, timeout=30)


@pytest.fixture(scope="module")
def traced(stack, http):
    """One detection with a known request id and a distinctive user id, plus the data-subject
    calls that put the user id in URLs (access, export, erasure)."""
    request_id = f"obs-{uuid.uuid4().hex}"
    user_id = f"Obs.Subject-{uuid.uuid4().hex[:12]}"
    answer = detect(stack, http, user_id, request_id)
    assert answer.status_code == 201, answer.text
    base = f"{stack.gateway}/api/results/predictions/user/{user_id}"
    assert http.get(base, headers=headers("dpo"), timeout=10).status_code == 200
    assert http.get(base, params={"download": "1"}, headers=headers("client"), timeout=10).status_code == 200
    assert http.delete(base, headers=headers("dpo"), timeout=10).status_code == 200
    # Mistyped routes and wrong methods: unmatched paths must not log the id either.
    typo = f"{stack.gateway}/api/results/prediction/user/{user_id}"
    assert http.get(typo, headers=headers("dpo"), timeout=10).status_code == 404
    assert http.put(base, headers=headers("dpo"), timeout=10).status_code == 405
    assert http.get(f"{stack.url('RESULTS_PORT')}/predictions/usr/{user_id}", timeout=10).status_code == 404
    return {"request_id": request_id, "user_id": user_id, "answer": answer.json()}


# --- one request across every service ---------------------------------------------------------------

def test_request_id_appears_in_the_log_of_every_service_on_its_path(stack, traced):
    request_id = traced["request_id"]

    def hops() -> dict[str, list[dict]]:
        found = {}
        for service in DETECTION_HOPS:
            path = log_dir(stack) / f"{service}.jsonl"
            if path.exists():
                found[service] = [e for e in events(path) if field(e, "trace.id") == request_id]
        return found

    found = wait_until(lambda: (lambda f: f if all(f.get(s) for s in DETECTION_HOPS) else None)(hops())) or hops()
    assert all(found.get(s) for s in DETECTION_HOPS), {s: len(found.get(s, [])) for s in DETECTION_HOPS}
    for service in DETECTION_HOPS:
        assert all(field(e, "service.name") == service for e in found[service])

    gateway = [e for e in found["gateway"] if field(e, "event.action") == "detect"]
    assert gateway and field(gateway[0], "model.version") == traced["answer"]["model_version"]
    assert field(gateway[0], "detection.count") == len(traced["answer"]["detections"])
    assert isinstance(field(gateway[0], "image.brightness"), float)
    access = [e for e in found["gateway"] if field(e, "event.action") == "http.request"]
    assert access and field(access[0], "http.response.status_code") == 201
    assert field(access[0], "event.outcome") == "success" and field(access[0], "event.duration") > 0
    predict = [e for e in found["model-serving"] if field(e, "event.action") == "predict"]
    assert predict and field(predict[0], "detection.classes") and field(predict[0], "model.version")
    assert field(predict[0], "user.hash")

    # Triton's python backend logs the request ids of every batch it runs (LOG_BATCHES).
    triton_log = log_dir(stack) / "triton.log"
    assert wait_until(lambda: request_id in triton_log.read_text(errors="replace")), "request id not in triton.log"

    # make trace ID=...: the path across services, in time order, with durations.
    traced_out = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "trace.py"), request_id],
                                env={**os.environ, "VAR_DIR": str(stack.var_dir)}, capture_output=True, text=True)
    assert traced_out.returncode == 0, traced_out.stderr
    for service in (*DETECTION_HOPS, "triton"):
        assert service in traced_out.stdout, traced_out.stdout
    assert "per hop" in traced_out.stdout
    missing = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "trace.py"), "no-such-request-id"],
                             env={**os.environ, "VAR_DIR": str(stack.var_dir)}, capture_output=True, text=True)
    assert missing.returncode == 1


def test_every_jsonl_line_is_ecs_json(stack, traced):
    files = sorted(log_dir(stack).glob("*.jsonl"))
    assert {f.stem for f in files} >= set(SERVICES)
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                pytest.fail(f"{path.name}:{number} is not JSON: {line[:200]}")
            for name in ("@timestamp", "log.level", "ecs.version", "service.name", "message"):
                assert field(event, name) is not None, f"{path.name}:{number} lacks {name}: {line[:300]}"
            assert field(event, "service.name") == path.stem, f"{path.name}:{number}"


def test_no_raw_user_id_in_any_log_but_its_hash(stack, traced):
    user_id = traced["user_id"]
    checked = 0
    for path in sorted(log_dir(stack).rglob("*")):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert user_id not in text and user_id.lower() not in text.lower(), f"raw user id in {path}"
            checked += 1
    assert checked >= len(SERVICES)
    expected = hmac.new(stack.env["PSEUDONYM_KEY"].encode(), user_id.encode(), hashlib.sha256).hexdigest()
    gateway = events(log_dir(stack) / "gateway.jsonl")
    assert any(field(e, "user.hash") == expected for e in gateway), "the user's keyed hash is not logged"
    results = events(log_dir(stack) / "results-service.jsonl")
    assert any(field(e, "event.action") == "erasure" and field(e, "user.hash") == expected for e in results)
    # The seed's URL held the raw id: the gateway's access line carries the route template and
    # the hash instead, and past the gateway only the hash travels, in a body, never in a URL.
    access = [e for e in gateway if field(e, "event.action") == "http.request" and field(e, "user.hash") == expected]
    assert {field(e, "url.path") for e in access} >= {"/api/results/predictions/user/<path:user_id>"}, access
    assert not any(expected in str(field(e, "url.path")) for e in results if field(e, "event.action") == "http.request")


# --- metrics -----------------------------------------------------------------------------------------

def test_metrics_need_the_token_and_expose_histograms(stack, http, traced):
    token = {"Authorization": f"Bearer {metrics_token(stack)}"}
    for port in ("GATEWAY_PORT", "FEATURE_PORT", "RESULTS_PORT"):
        refused = http.get(stack.url(port, "/metrics"), timeout=5)
        assert refused.status_code == 401 and refused.json()["error"]
        assert http.get(stack.url(port, "/metrics"), headers={"Authorization": "Bearer wrong"},
                        timeout=5).status_code == 401
    gateway = http.get(stack.url("GATEWAY_PORT", "/metrics"), headers=token, timeout=5)
    assert gateway.status_code == 200 and gateway.headers["Content-Type"].startswith("text/plain")
    text = gateway.text
    assert re.search(r'http_request_duration_seconds_bucket\{[^}]*route="/api/detect"', text)
    assert re.search(r'http_requests_total\{[^}]*route="/api/detect"[^}]*status="201"', text)
    for feature in ("brightness", "contrast", "sharpness", "saturation", "width_pixels", "height_pixels"):
        assert re.search(rf"^image_{feature}_bucket\{{", text, re.M), feature
    # Route templates only: a user id in a URL never becomes a label.
    assert traced["user_id"] not in text and "/predictions/user/<path:user_id>" in text
    for port in ("FEATURE_PORT", "RESULTS_PORT"):
        body = http.get(stack.url(port, "/metrics"), headers=token, timeout=5).text
        assert "http_request_duration_seconds_bucket" in body

    adapter_port = stack.env.get("MODEL_SERVING_METRICS_PORT", "9151")
    assert http.get(f"http://127.0.0.1:{adapter_port}/metrics", timeout=5).status_code == 401
    adapter = http.get(f"http://127.0.0.1:{adapter_port}/metrics", headers=token, timeout=5)
    assert adapter.status_code == 200, adapter.text
    assert re.search(r'model_detections_total\{class_name="car"', adapter.text)
    assert "model_detection_confidence_bucket" in adapter.text
    assert re.search(r'model_predict_duration_seconds_bucket\{code="OK"', adapter.text)

    triton = http.get(stack.url("TRITON_METRICS_PORT", "/metrics"), timeout=5)
    assert triton.status_code == 200 and "nv_inference_queue_duration_us" in triton.text


# --- shipping to Logstash, from a separate service process ---------------------------------------------

class ShippingService:
    """A feature-service gunicorn of its own (1 worker), logging to `logstash_port`."""

    def __init__(self, tmp: Path, logstash_port: int, **env: str) -> None:
        self.port = free_port()
        self.stdout = tmp / "feature-service.jsonl"
        self.stderr = tmp / "feature-service.stderr.log"
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "VAR_DIR": str(tmp / "var"),
                       "PYTHONUNBUFFERED": "1", "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "4",
                       "LOGSTASH_HOST": "127.0.0.1", "LOGSTASH_PORT": str(logstash_port),
                       "PSEUDONYM_KEY": "shipping-test-key", **env}
        self.process = subprocess.Popen(
            gunicorn_command("services.feature_service.app:app", self.port),
            cwd=REPO_ROOT, env=environment, stdout=self.stdout.open("wb"), stderr=self.stderr.open("wb"))
        self.url = f"http://127.0.0.1:{self.port}"
        ok = wait_until(lambda: self._healthy(), timeout=60, interval=0.5)
        if not ok:
            self.stop()
            pytest.fail(f"shipping test service did not start:\n{self.stderr.read_text()[-2000:]}")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            return False
        try:
            return requests.get(f"{self.url}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def preprocess(self, request_id: str, path_padding: str = "") -> float:
        started = time.perf_counter()
        answer = requests.post(f"{self.url}/preprocess{path_padding}?include_image=false", data=frame(),
                               headers={"Content-Type": "image/jpeg", "X-Request-ID": request_id, **INTERNAL_HEADERS},
                               timeout=10)
        elapsed = time.perf_counter() - started
        assert answer.status_code in (200, 404), answer.text
        return elapsed

    def notices(self, text: str) -> list[dict]:
        return [e for e in events(self.stdout) if text in str(e.get("message", ""))]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def tmp_service_dir(tmp_path: Path) -> Path:
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_events_reach_a_tcp_listener_as_json_lines(tmp_service_dir):
    listener = Listener()
    service = ShippingService(tmp_service_dir, listener.port)
    try:
        ids = [f"ship-{uuid.uuid4().hex}" for _ in range(5)]
        for request_id in ids:
            service.preprocess(request_id)

        def shipped() -> list[dict]:
            raw = bytes(listener.data)
            return [json.loads(line) for line in raw.split(b"\n")[:-1] if line.strip()]

        assert wait_until(lambda: {field(e, "trace.id") for e in shipped()} >= set(ids), timeout=15)
        assert bytes(listener.data).endswith(b"\n")
        for event in shipped():
            assert field(event, "service.name") == "feature-service"
            assert event["@timestamp"] and field(event, "log.level") and field(event, "ecs.version")
        access = [e for e in shipped() if field(e, "trace.id") == ids[0]]
        assert field(access[0], "event.action") == "http.request" and field(access[0], "event.duration") > 0
        assert not service.notices("unavailable")
    finally:
        service.stop()
        listener.close()


def _latencies(service: ShippingService, count: int, padding: str = "") -> list[float]:
    return [service.preprocess(f"lat-{uuid.uuid4().hex}", padding) for _ in range(count)]


def test_service_stays_fast_when_logstash_refuses_connections(tmp_service_dir):
    service = ShippingService(tmp_service_dir, free_port(), LOGSTASH_QUEUE_SIZE="50",  # nobody listens there
                              LOGSTASH_SEND_TIMEOUT_S="5")
    try:
        latencies = _latencies(service, 120)
        # generous: a request that waited on the shipper would take the send timeout (5 s)
        assert max(latencies) < 2.5, max(latencies)
        assert wait_until(lambda: service.notices("unavailable"), timeout=10)
        _latencies(service, 10)
        assert len(service.notices("is unavailable")) == 1, service.notices("unavailable")
        assert len(service.notices("queue full")) == 1
    finally:
        service.stop()


def test_service_stays_fast_when_logstash_accepts_but_never_reads(tmp_service_dir):
    listener = Listener(read=False)
    service = ShippingService(tmp_service_dir, listener.port, LOGSTASH_QUEUE_SIZE="100",
                              LOGSTASH_SEND_TIMEOUT_S="5")
    try:
        padding = "/" + "x" * 7000  # a 404 whose path makes each access event ~7 kB
        latencies = _latencies(service, 40) + _latencies(service, 600, padding) + _latencies(service, 40)
        assert max(latencies) < 2.5, max(latencies)  # half the send timeout: no request waited on it
        assert wait_until(lambda: service.notices("unavailable"), timeout=15), "the stall was never noticed"
        assert len(service.notices("is unavailable")) == 1
    finally:
        service.stop()
        listener.close()
