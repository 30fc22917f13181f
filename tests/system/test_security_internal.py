"""Internal services and listeners fail closed (issue 14, items 1, 2 and 7), against the
real stack: the service token on every internal service (HTTP and gRPC), no start
without it, every listener on loopback, Triton's model-control and shared-memory APIs
behind their key, the adapter's concurrency bound, /ready probes cached, and the
stack's Redis behind a password."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import grpc
import psutil
import pytest
import redis
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.proto import model_serving_pb2 as pb
from services.proto import model_serving_pb2_grpc as pb_grpc
from tests.conftest import (INTERNAL_HEADERS, INTERNAL_METADATA, REPO_ROOT, adapter_channel, free_port, frame,
                            gunicorn_command, headers, wait_until)

_spec = importlib.util.spec_from_file_location("stack_script", REPO_ROOT / "scripts" / "stack.py")
STACK = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(STACK)  # type: ignore[union-attr]

FORGED_ACTOR = {"X-Actor-Role": "admin", "X-Actor-Id": "forged-admin"}
BAD_TOKENS = ({}, {"X-Internal-Token": ""}, {"X-Internal-Token": "wrong-token-0123456789"},
              {"X-Internal-Token": INTERNAL_HEADERS["X-Internal-Token"] + "x"})


def detect(stack, user: str, request_id: str) -> requests.Response:
    return requests.post(f"{stack.gateway}/api/detect", headers=headers("client", **{"X-Request-ID": request_id}),
                         files={"image": ("f.jpg", frame(), "image/jpeg")}, data={"user_id": user}, timeout=60)


def dpo_export(stack, user: str) -> dict:
    answer = requests.get(f"{stack.gateway}/api/results/predictions/user/{quote(user, safe='')}",
                          headers=headers("dpo"), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


# --------------------------------------------------------------------------- item 1: the service token

def test_internal_http_services_refuse_callers_without_the_token(stack):
    """The attack of the issue: a process on the host reads an export, erases a subject and
    forges X-Actor-Role: admin on the results service. Without the token every one is a 401,
    the forged actor changes nothing, and the subject's data is still there."""
    user, request_id = f"victim-{uuid.uuid4().hex[:8]}", f"victim-{uuid.uuid4().hex}"
    assert detect(stack, user, request_id).status_code == 201
    results, features = stack.url("RESULTS_PORT"), stack.url("FEATURE_PORT")
    for bad in BAD_TOKENS:
        hdrs = {**bad, **FORGED_ACTOR}
        attempts = [
            requests.get(f"{results}/predictions/user/{user}", headers=hdrs, timeout=10),
            requests.delete(f"{results}/predictions/user/{user}", headers=hdrs, timeout=10),
            requests.get(f"{results}/predictions/{request_id}", headers=hdrs, timeout=10),
            requests.post(f"{results}/predictions", headers=hdrs, timeout=10, json={
                "request_id": f"forged-{uuid.uuid4().hex}", "user_id": user, "client_id": "forged",
                "model_version": "1", "inference_time_ms": 1.0, "detections": []}),
            requests.post(f"{features}/preprocess", headers={**hdrs, "Content-Type": "image/jpeg"}, data=frame(),
                          timeout=10),
        ]
        for answer in attempts:
            assert answer.status_code == 401, (bad, answer.request.method, answer.request.url, answer.text)
            assert "X-Internal-Token" in answer.json()["error"]
    exported = dpo_export(stack, user)
    assert exported["count"] == 1 and exported["predictions"][0]["request_id"] == request_id
    # probes and documentation stay open; with the token the same calls work
    for url in (f"{results}/health", f"{results}/ready", f"{features}/health", f"{results}/openapi.json"):
        assert requests.get(url, timeout=10).status_code == 200, url
    assert requests.get(f"{results}/predictions/{request_id}", headers=INTERNAL_HEADERS, timeout=10).status_code == 200


def test_the_adapter_refuses_calls_without_the_token(stack):
    with grpc.insecure_channel(stack.adapter) as channel:
        stub = pb_grpc.ModelServingStub(channel)
        for metadata in ((), (("x-internal-token", "wrong-token-0123456789"),), (("x-internal-token", ""),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(pb.PredictionRequest(request_id="no-token", image_data=frame(), user_id="u"),
                             metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
            with pytest.raises(grpc.RpcError) as refused:
                stub.HealthCheck(pb.HealthCheckRequest(), metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the standard health service stays open for probes (it tells SERVING or not, nothing else)
        standard = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert standard.status == health_pb2.HealthCheckResponse.SERVING
        answer = stub.Predict(pb.PredictionRequest(request_id="with-token", image_data=frame(), user_id="u"),
                              metadata=INTERNAL_METADATA, timeout=30)
        assert answer.detections


def _without_token(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("INTERNAL_TOKEN", "INTERNAL_TOKEN_FILE")}


@pytest.mark.parametrize("what", ["results", "feature", "gateway", "adapter", "short-token"])
def test_no_service_starts_without_the_token(stack, tmp_path, what):
    env = _without_token({**stack.env, "PYTHONPATH": str(REPO_ROOT), "VAR_DIR": str(tmp_path), "GUNICORN_WORKERS": "1"})
    env.pop("DATABASE_URL", None)
    if what == "short-token":
        env["INTERNAL_TOKEN"], what = "short", "feature"
    port = free_port()
    command = {
        "results": gunicorn_command("services.results_service.app:app", port),
        "feature": gunicorn_command("services.feature_service.app:app", port),
        "gateway": gunicorn_command("gateway.app:app", port),
        "adapter": [sys.executable, "-m", "services.model_serving.server"],
    }[what]
    env.update(MODEL_SERVING_PORT=str(port), MODEL_SERVING_METRICS_PORT=str(free_port()))
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "INTERNAL_TOKEN" in done.stdout + done.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_the_stack_generates_the_token_like_the_api_keys(tmp_path):
    """Without INTERNAL_TOKEN in the environment, `make run`/`make up` generate one under
    var/secrets (mode 0600, kept across restarts) and hand the services its file."""
    env = _without_token(dict(os.environ, VAR_DIR=str(tmp_path)))
    STACK._secret_file(env, "INTERNAL_TOKEN")
    path = Path(env["INTERNAL_TOKEN_FILE"])
    assert path == tmp_path / "secrets" / "internal_token"
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().strip()) >= 32
    again = _without_token(dict(os.environ, VAR_DIR=str(tmp_path)))
    STACK._secret_file(again, "INTERNAL_TOKEN")
    assert Path(again["INTERNAL_TOKEN_FILE"]).read_text() == path.read_text()
    given = dict(os.environ, VAR_DIR=str(tmp_path), INTERNAL_TOKEN="from-the-environment-0123456789")
    STACK._secret_file(given, "INTERNAL_TOKEN")
    assert "INTERNAL_TOKEN_FILE" not in given


# --------------------------------------------------------------------------- item 2: listeners and Triton

def test_every_listener_of_the_stack_is_on_loopback(stack):
    ports = {int(stack.env[name]) for name in ("GATEWAY_PORT", "FEATURE_PORT", "RESULTS_PORT", "MODEL_SERVING_PORT",
                                               "TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT",
                                               "MODEL_SERVING_METRICS_PORT")}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port in ports]
    assert {c.laddr.port for c in listening} == ports, "every stack port listens"
    exposed = sorted({(c.laddr.ip, c.laddr.port) for c in listening
                      if c.laddr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")})
    assert not exposed, f"listening beyond loopback: {exposed}"


def triton_admin_key(stack) -> str:
    """As the stack was given it (the test session's), or as it generated it."""
    return stack.env.get("TRITON_ADMIN_KEY") or (stack.var_dir / "secrets" / "triton_admin_key").read_text().strip()


def test_triton_model_control_and_shared_memory_need_the_admin_key(stack):
    """A model loaded through model control runs its python code; shared-memory registration
    was the entry of the 2025 python-backend exploit chain. Both answer only with the key;
    inference, health and metadata stay open (notebooks call Triton directly)."""
    base = stack.url("TRITON_HTTP_PORT")
    restricted = [("POST", "/v2/repository/index", {}), ("POST", "/v2/repository/models/car_detector/load", {}),
                  ("POST", "/v2/repository/models/car_detector/unload", {}),
                  ("POST", "/v2/systemsharedmemory/region/probe/register", {"key": "/probe", "offset": 0, "byte_size": 64}),
                  ("GET", "/v2/systemsharedmemory/status", None), ("POST", "/v2/logging", {"log_verbose_level": 1}),
                  ("POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]})]
    for method, path, body in restricted:
        for extra in ({}, {"triton-admin-key": "wrong"}):
            answer = requests.request(method, base + path, json=body, headers=extra, timeout=10)
            assert answer.status_code == 403, (method, path, extra, answer.status_code, answer.text[:200])
    index = requests.post(f"{base}/v2/repository/index", json={}, headers={"triton-admin-key": triton_admin_key(stack)},
                          timeout=10)
    assert index.status_code == 200 and any(m["name"] == "car_detector" for m in index.json())
    assert requests.get(f"{base}/v2/models/car_detector/ready", timeout=10).status_code == 200
    assert requests.get(f"{base}/v2/models/car_detector", timeout=10).status_code == 200

    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(stack.triton_grpc)
    for call in (lambda **kw: client.get_model_repository_index(**kw), lambda **kw: client.load_model("car_detector", **kw),
                 lambda **kw: client.register_system_shared_memory("probe", "/probe", 64, **kw)):
        with pytest.raises(Exception) as refused:
            call()
        assert "restricted" in str(refused.value).lower()
    key = {"triton-grpc-protocol-triton-admin-key": triton_admin_key(stack)}
    assert any(m.name == "car_detector" for m in client.get_model_repository_index(headers=key).models)
    image = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[frame()]], dtype=object))
    assert client.infer("car_detector", [image]).as_numpy("SCORES").size > 0  # inference: open


# --------------------------------------------------------------------------- item 7: bounded abuse

def test_the_adapter_bounds_rpcs_in_flight(stack, tmp_path):
    """A second adapter with GRPC_MAX_CONCURRENT_RPCS=2 in front of the stack's Triton: of 10
    concurrent calls some are refused at once with RESOURCE_EXHAUSTED instead of queueing,
    every other one succeeds."""
    port, log = free_port(), tmp_path / "adapter.log"
    env = {**stack.env, "PYTHONPATH": str(REPO_ROOT), "VAR_DIR": str(tmp_path), "MODEL_SERVING_PORT": str(port),
           "MODEL_SERVING_METRICS_PORT": str(free_port()), "GRPC_MAX_CONCURRENT_RPCS": "2", "GRPC_WORKERS": "2"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "services.model_serving.server"], cwd=REPO_ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        address = f"127.0.0.1:{port}"

        def serving() -> bool:
            with grpc.insecure_channel(address) as channel:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return answer.status == health_pb2.HealthCheckResponse.SERVING
        assert wait_until(serving, timeout=60), log.read_text()[-2000:]
        big = frame()
        with adapter_channel(address) as channel:
            stub = pb_grpc.ModelServingStub(channel)

            def call(i: int) -> str:
                try:
                    stub.Predict(pb.PredictionRequest(request_id=f"bound-{i}", image_data=big, user_id="u"), timeout=60)
                    return "OK"
                except grpc.RpcError as error:
                    return error.code().name
            with ThreadPoolExecutor(10) as pool:
                outcomes = list(pool.map(call, range(10)))
        assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
        assert outcomes.count("RESOURCE_EXHAUSTED") >= 1 and outcomes.count("OK") >= 2, outcomes
    finally:
        process.terminate()
        process.wait(20)


def _ready_probes_seen(stack) -> int:
    path = stack.var_dir / "log" / "results-service.jsonl"
    count = 0
    for line in path.read_text(errors="replace").splitlines():
        if '"GET /ready ' in line:
            try:
                count += json.loads(line).get("message", "").startswith("GET /ready ")
            except ValueError:
                pass
    return count


def test_ready_probes_its_dependencies_at_most_once_a_second_per_worker(stack):
    """/ready is unauthenticated: 60 calls in a burst must not turn into 60 probes of every
    dependency. The results service's own access log counts the gateway's probes of it."""
    before = _ready_probes_seen(stack)
    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: requests.get(f"{stack.gateway}/ready", timeout=30), range(60)))
    elapsed = time.monotonic() - started
    assert all(a.status_code == 200 for a in answers)
    # A barrier, not a sleep: each worker writes its access line to the shared stdout pipe
    # before answering, so once a request sent after the burst is in the file, all of the
    # burst's lines are too (supervisord copies the pipe in order).
    barrier = f"/flush-{uuid.uuid4().hex}"
    assert requests.get(stack.url("RESULTS_PORT", barrier), headers=INTERNAL_HEADERS, timeout=30).status_code == 404
    log = stack.var_dir / "log" / "results-service.jsonl"
    assert wait_until(lambda: barrier in log.read_text(errors="replace"), 60), f"{barrier} never logged"
    probes = _ready_probes_seen(stack) - before
    workers = int(stack.env.get("GUNICORN_WORKERS", "2"))
    assert probes <= workers * (int(elapsed) + 2), (probes, round(elapsed, 2))


def test_the_local_stacks_redis_needs_its_password(tmp_path):
    """`make run`/`make up` without RATELIMIT_STORAGE_URI run their own Redis: loopback,
    requirepass from var/secrets (0600), the password in a 0600 config file and never on a
    command line. Started here from the very program line the stack hands supervisord."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RATELIMIT_STORAGE_URI", "REDIS_PASSWORD", "REDIS_PASSWORD_FILE")}
    env.update(VAR_DIR=str(tmp_path), REDIS_PORT=str(port))
    (tmp_path / "log").mkdir()
    said = STACK.prepare_redis(env)
    include = (tmp_path / "run" / "supervisord.d" / "redis.conf").read_text()
    command = next(line.split("=", 1)[1] for line in include.splitlines() if line.startswith("command="))
    password = (tmp_path / "secrets" / "redis_password").read_text().strip()
    assert f"127.0.0.1:{port}" in said and password not in said and password not in include
    assert env["RATELIMIT_STORAGE_URI"] == f"redis://:{password}@127.0.0.1:{port}/0"
    config = tmp_path / "redis" / "redis.conf"
    assert config.stat().st_mode & 0o077 == 0 and (tmp_path / "secrets" / "redis_password").stat().st_mode & 0o077 == 0
    process = subprocess.Popen(command.split(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: redis.Redis(port=port, password=password, socket_timeout=1).ping(), 20)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, password="wrong", socket_timeout=5).ping()
        assert redis.Redis.from_url(env["RATELIMIT_STORAGE_URI"], socket_timeout=5).ping()
        listening = {c.laddr.ip for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"127.0.0.1"}, listening
        assert password not in " ".join(psutil.Process(process.pid).cmdline())
    finally:
        process.terminate()
        process.wait(10)
