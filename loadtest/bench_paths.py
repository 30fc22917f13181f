"""The ways of getting detections that `make bench` compares (loadtest/bench.py): each is a
factory that, called once per client thread, returns that thread's call on one frame."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

from loadtest.bench_model import in_process_openvino, latest_version_dir  # noqa: F401 - in_process_openvino: a path by name
from loadtest.bench_stack import ENV, log
from services.common import config
from services.common.config import REPO_ROOT

NAIVE_PORT = config.BENCH_NAIVE_PORT
BASELINES = {"naive_baseline": ("seed", NAIVE_PORT), "flask_savedmodel": ("savedmodel", NAIVE_PORT + 1)}


def latest_savedmodel() -> Path:
    return latest_version_dir() / "model.savedmodel"


def in_process() -> Callable[[], Callable[[bytes], None]]:
    import tensorflow as tf

    signature = tf.saved_model.load(str(latest_savedmodel())).signatures["serving_default"]

    def call(image: bytes) -> None:
        signature(images=tf.constant([image]))["num_detections"].numpy()
    return lambda: call


def triton_direct() -> Callable[[], Callable[[bytes], None]]:
    import tritonclient.grpc as grpcclient

    from services.common import triton_client

    # One client (one channel) shared by every thread, as a notebook or service would.
    client = triton_client.connect(f"127.0.0.1:{ENV['TRITON_GRPC_PORT']}")
    outputs = [grpcclient.InferRequestedOutput(name) for name in ("BOXES", "SCORES", "LABELS")]

    def call(image: bytes) -> None:
        image_input = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        image_input.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        client.infer("car_detector", [image_input], outputs=outputs, client_timeout=30)
    return lambda: call


def adapter() -> Callable[[], Callable[[bytes], None]]:
    import grpc

    from services.proto import model_serving_pb2 as pb
    from services.proto import model_serving_pb2_grpc as pb_grpc

    stub = pb_grpc.ModelServingStub(grpc.insecure_channel(f"127.0.0.1:{ENV['MODEL_SERVING_PORT']}"))
    # The adapter's service token: as the stack was given it, or as it generated it.
    token = ENV.get("INTERNAL_TOKEN") or (Path(ENV["VAR_DIR"]) / "secrets" / "internal_token").read_text().strip()

    def call(image: bytes) -> None:
        stub.Predict(pb.PredictionRequest(image_data=image, user_id="bench-user"), timeout=30,
                     metadata=(("x-internal-token", token),))
    return lambda: call


def _http_poster(url: str, headers: dict[str, str], data: dict[str, str]) -> Callable[[], Callable[[bytes], None]]:
    def make() -> Callable[[bytes], None]:
        session = requests.Session()  # one keep-alive connection per client thread
        session.trust_env = False

        def call(image: bytes) -> None:
            answer = session.post(url, headers=headers, files={"image": ("frame.jpg", image, "image/jpeg")},
                                  data=data, timeout=60)
            if answer.status_code not in (200, 201):
                raise RuntimeError(f"{answer.status_code}: {answer.text[:200]}")
        call.close = session.close  # type: ignore[attr-defined]
        return call
    return make


def gateway() -> Callable[[], Callable[[bytes], None]]:
    return _http_poster(f"http://127.0.0.1:{ENV['GATEWAY_PORT']}/api/detect", {"X-API-Key": _admin_key()},
                        {"user_id": "bench-user"})


def _admin_key() -> str:
    spec = ENV.get("API_KEYS") or (Path(ENV["VAR_DIR"]) / "secrets/api_keys").read_text()
    for entry in spec.replace("\n", ",").split(","):
        key, _, role = entry.strip().rpartition(":")
        if role == "admin":
            return key
    sys.exit("no admin key configured for the benchmark")


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_baseline(name: str) -> subprocess.Popen | None:
    mode, port = BASELINES[name]
    if _port_in_use(port):  # a stale process would be measured instead of this one
        log(f"skipping {name}: port {port} is already in use (set BENCH_NAIVE_PORT)")
        return None
    env = {**ENV, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": os.environ["TF_ENABLE_ONEDNN_OPTS"]}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "loadtest/naive_baseline.py"), str(port),
                             str(latest_savedmodel().parent), "--mode", mode], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_answering(process: subprocess.Popen, url: str, what: str, timeout_s: float = 120.0) -> None:
    """Until `url` answers 2xx; RuntimeError if the process exits or time runs out first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {what} process exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.25)
    raise RuntimeError(f"the {what} process did not answer {url} within {timeout_s:.0f} s")


def baseline(name: str, process: subprocess.Popen) -> Callable[[], Callable[[bytes], None]]:
    port = BASELINES[name][1]
    wait_answering(process, f"http://127.0.0.1:{port}/health", name)
    return _http_poster(f"http://127.0.0.1:{port}/predict", {}, {})
