"""Extra instances of the stack's services for the tenant and data-subject tests: a second
gateway whose calls to the results service and the adapter pass through recording relays
(the real services answer; the relays only keep a copy of what was sent, and may drop the
model's image statistics, as an older model version answers), and a gateway +
results service pair whose pseudonymisation key was rotated with the documented command."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import requests

from tests.conftest import REPO_ROOT, Stack, free_port, gunicorn_command, wait_until

FORWARDED_HEADERS = ("Content-Type", "Content-Disposition", "X-Request-ID", "Retry-After")


def service_env(stack: Stack, var: Path, **extra: str) -> dict[str, str]:
    """The stack's environment for one more service with its own runtime folder; the stack's
    generated secrets (tokens, keys) are copied so that it is trusted like the others."""
    var.mkdir(parents=True, exist_ok=True)
    if (stack.var_dir / "secrets").is_dir():
        shutil.copytree(stack.var_dir / "secrets", var / "secrets", dirs_exist_ok=True)
    env = {k: v for k, v in stack.env.items() if not k.startswith(("TLS_", "GRPC_TLS_", "MODEL_SERVING_TLS"))}
    env.update({"PYTHONPATH": str(REPO_ROOT), "VAR_DIR": str(var), "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "4",
                "FEATURE_SERVICE_URL": stack.url("FEATURE_PORT"), "RESULTS_SERVICE_URL": stack.url("RESULTS_PORT"),
                "MODEL_SERVING_ADDR": stack.adapter, **extra})
    return env


@contextmanager
def http_service(app: str, env: dict[str, str], var: Path) -> Iterator[str]:
    port, log_path = free_port(), var / (app.split(":")[0] + ".log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(gunicorn_command(app, port), cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: requests.get(f"{url}/health", timeout=1).status_code == 200, timeout=60):
            raise RuntimeError(f"{app} did not start: {log_path.read_text()[-2000:]}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.http: list[tuple[str, str, bytes]] = []  # method, path with query, body
        self.grpc: list[bytes] = []  # serialised PredictionRequest messages

    def everything(self) -> bytes:
        with self.lock:
            return b"\n".join([f"{m} {p}".encode() + b" " + body for m, p, body in self.http] + self.grpc)


def _http_relay(target: str, recorder: Recorder) -> ThreadingHTTPServer:
    class Relay(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with recorder.lock:
                recorder.http.append((self.command, self.path, body))
            sent = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
            answer = requests.request(self.command, target + self.path, headers=sent, data=body, timeout=60)
            self.send_response(answer.status_code)
            for name in FORWARDED_HEADERS:
                if name in answer.headers:
                    self.send_header(name, answer.headers[name])
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_DELETE = do_PUT = _relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _grpc_relay(target: str, recorder: Recorder, without_image_stats: bool = False) -> tuple[grpc.Server, int]:
    from services.proto import model_serving_pb2_grpc as pb_grpc

    upstream = pb_grpc.ModelServingStub(grpc.insecure_channel(target))

    def passed_on(context: grpc.ServicerContext) -> tuple:
        return tuple((k, v) for k, v in context.invocation_metadata() if not k.startswith((":", "grpc-"))
                     and k not in ("user-agent", "content-type", "te"))

    class Relay(pb_grpc.ModelServingServicer):
        def Predict(self, request, context):  # noqa: N802 (the proto's name)
            with recorder.lock:
                recorder.grpc.append(request.SerializeToString())
            try:
                answer = upstream.Predict(request, timeout=60, metadata=passed_on(context))
            except grpc.RpcError as error:
                context.abort(error.code(), error.details() or "")
            if without_image_stats:  # as a version before 5, or Triton on TensorFlow (GPU), answers
                answer.ClearField("image_stats")
            return answer

        def HealthCheck(self, request, context):  # noqa: N802
            return upstream.HealthCheck(request, timeout=5, metadata=passed_on(context))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    pb_grpc.add_ModelServingServicer_to_server(Relay(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@contextmanager
def recorded_gateway(stack: Stack, var: Path, without_image_stats: bool = False) -> Iterator[tuple[str, Recorder]]:
    """(URL of a second gateway, what it sent to the results service and the adapter).
    without_image_stats: the adapter's answers reach it without the model's image statistics."""
    recorder = Recorder()
    http_relay = _http_relay(stack.url("RESULTS_PORT"), recorder)
    grpc_relay, grpc_port = _grpc_relay(stack.adapter, recorder, without_image_stats)
    env = service_env(stack, var, RESULTS_SERVICE_URL=f"http://127.0.0.1:{http_relay.server_address[1]}",
                      MODEL_SERVING_ADDR=f"127.0.0.1:{grpc_port}")
    try:
        with http_service("gateway.app:app", env, var) as url:
            yield url, recorder
    finally:
        http_relay.shutdown()
        grpc_relay.stop(None)


def rotate_keys(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "rotate_pseudonym_key.py"), *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


@contextmanager
def rotated_stack(stack: Stack, var: Path) -> Iterator[tuple[str, subprocess.CompletedProcess, dict[str, str]]]:
    """A results service and a gateway on the stack's database and adapter, whose keys are
    files: the stack's key, rotated once by scripts/rotate_pseudonym_key.py.
    Yields (gateway URL, the rotation's output, their environment)."""
    env = service_env(stack, var)
    env.pop("PSEUDONYM_KEY", None)
    env.pop("PSEUDONYM_PREVIOUS_KEYS", None)
    (var / "secrets").mkdir(parents=True, exist_ok=True)
    (var / "secrets" / "pseudonym_key").write_text(stack.env["PSEUDONYM_KEY"] + "\n")
    os.chmod(var / "secrets" / "pseudonym_key", 0o600)
    (var / "secrets" / "pseudonym_previous_keys").unlink(missing_ok=True)
    rotated = rotate_keys(env, "rotate")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    with http_service("services.results_service.app:app", env, var) as results_url:
        with http_service("gateway.app:app", {**env, "RESULTS_SERVICE_URL": results_url}, var) as gateway_url:
            yield gateway_url, rotated, env
