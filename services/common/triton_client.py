"""The one client of the Triton model `car_detector` (signature in docs/api.md and CONTRACT.md).

Everything that talks to Triton goes through here: the gRPC adapter, the explanation
engine, services/triton/check.py, training/evaluate.py and loadtest/bench.py. It gives

- TLS when `TRITON_TLS=1` (verified against `TLS_CA_FILE`, see services/common/tls.py);
- gRPC channel arguments that reconnect within ~2 s once Triton is back;
- a timeout on every call (`INTERNAL_TIMEOUT_S` unless the caller gives its own);
- one circuit breaker per client (services/common/resilience.py): consecutive
  UNAVAILABLE/timeouts make calls fail at once for a few seconds;
- one channel per process, made again after a fork (gRPC channels do not survive one).

Model control (`reload_model`, `ready_versions`: Triton's restricted HTTP APIs, with the admin
key) serves the model registry and the audit.

`connect()` is the plain `tritonclient.grpc.InferenceServerClient` with the same TLS and
channel settings, for tools that drive Triton themselves (benchmarks, evaluation).
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from services.common import config, tls
from services.common.integrity import version_key
from services.common.resilience import CircuitBreaker, CircuitOpen
from services.common.service_token import triton_admin_headers

if TYPE_CHECKING:  # tritonclient is imported lazily: tools import this module cheaply
    import tritonclient.grpc as grpcclient

INPUT = "IMAGE"
OUTPUTS = ("BOXES", "SCORES", "LABELS")
# From version 5 (docs/api.md): the image's monitoring statistics, one JSON object per image.
STATS_OUTPUT = "IMAGE_STATS"
# gRPC's default reconnect backoff grows to 120 s; Triton restarts should cost ~2 s.
_RECONNECT_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class TritonUnavailable(Exception):
    """Triton cannot be reached or cannot serve the model right now (or the breaker is open)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TritonRejected(Exception):
    """Triton refused this input (e.g. an image it cannot decode)."""


@dataclass(frozen=True)
class ImageResult:
    """One image's outputs, after Triton's non-maximum suppression, by descending score."""

    boxes: np.ndarray  # float32 [n, 4]: x_min, y_min, x_max, y_max in original pixels
    scores: np.ndarray  # float32 [n]
    labels: list[str]
    image_stats: dict[str, float] | None = None  # None: the version computes none (before 5, or TensorFlow)


@dataclass(frozen=True)
class BatchResult:
    images: list[ImageResult]
    model_version: str


def channel_args() -> list[tuple[str, int]]:
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE

    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        *_RECONNECT_ARGS,
    ]


def connect(url: str | None = None) -> grpcclient.InferenceServerClient:
    """A plain tritonclient gRPC client to `url` (default TRITON_GRPC_URL), TLS when TRITON_TLS=1."""
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url=url or config.TRITON_GRPC_URL, channel_args=channel_args(),
                                            **tls.triton_client_kwargs())  # type: ignore[arg-type]


def _classify(exc: Exception) -> Exception:
    """Map a tritonclient error to TritonUnavailable (counts against the breaker) or TritonRejected."""
    status = getattr(exc, "status", lambda: "")() or ""
    message = getattr(exc, "message", lambda: str(exc))() or status
    if any(code in status for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")) or (
        "not ready" in message or "unavailable" in message.lower()
    ):
        return TritonUnavailable(message)
    if "INVALID_ARGUMENT" in status or "decode" in message:
        return TritonRejected(message)
    return TritonUnavailable(message)


def _stats_of(encoded: bytes) -> dict[str, float] | None:
    """One image's IMAGE_STATS element: a JSON object of numbers, or b"" for none."""
    if not encoded:
        return None
    decoded = json.loads(encoded)
    return {str(name): float(value) for name, value in decoded.items()}


class TritonModel:
    """One model on one Triton, shared by every thread of the process."""

    def __init__(self, url: str | None = None, model_name: str | None = None, timeout_s: float | None = None,
                 breaker: CircuitBreaker | None = None) -> None:
        self.url = url or config.TRITON_GRPC_URL
        self.model_name = model_name or config.TRITON_MODEL_NAME
        self.timeout_s = config.INTERNAL_TIMEOUT_S if timeout_s is None else timeout_s
        self.breaker = breaker or CircuitBreaker("triton")
        self._lock = threading.Lock()
        self._client: grpcclient.InferenceServerClient | None = None
        self._pid: int | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client, self._pid = connect(self.url), os.getpid()
            return self._client

    def is_ready(self, timeout_s: float = 2.0) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self.client.is_model_ready(self.model_name, client_timeout=timeout_s))
        except InferenceServerException:
            return False

    def served_version(self, timeout_s: float = 2.0) -> str:
        """The newest version Triton serves, from the model's metadata."""
        metadata = self.client.get_model_metadata(self.model_name, client_timeout=timeout_s)
        return max(metadata.versions, key=int) if metadata.versions else ""

    def infer(self, images: Sequence[bytes], request_id: str = "", timeout_s: float | None = None) -> BatchResult:
        """Detections for each encoded image (one request; Triton batches across requests).

        Raises TritonUnavailable (breaker open, unreachable, timeout) or TritonRejected."""
        try:
            self.breaker.before_call()
        except CircuitOpen as open_:
            raise TritonUnavailable(str(open_), open_.retry_after_s) from None
        try:
            result = self._infer(images, request_id, self.timeout_s if timeout_s is None else timeout_s)
        except TritonUnavailable:
            self.breaker.failure()
            raise
        except BaseException:
            self.breaker.success()  # Triton answered (refused the input), or a local error
            raise
        self.breaker.success()
        return result

    def _infer(self, images: Sequence[bytes], request_id: str, timeout_s: float) -> BatchResult:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        image_input = grpcclient.InferInput(INPUT, [len(images), 1], "BYTES")
        image_input.set_data_from_numpy(np.array([[data] for data in images], dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput(name) for name in (*OUTPUTS, STATS_OUTPUT)]
        try:
            result = self.client.infer(self.model_name, [image_input], outputs=outputs, request_id=request_id,
                                       client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise _classify(exc) from None
        boxes, scores, labels = (result.as_numpy(name) for name in OUTPUTS)
        stats = result.as_numpy(STATS_OUTPUT)  # None from a version that does not produce it
        per_image = [
            ImageResult(np.asarray(boxes[i], dtype=np.float32), np.asarray(scores[i], dtype=np.float32),
                        [label.decode() if isinstance(label, bytes) else str(label) for label in labels[i]],
                        _stats_of(stats[i][0]) if stats is not None else None)
            for i in range(len(images))
        ]
        return BatchResult(per_image, result.get_response().model_version)


# --------------------------------------------------------------------------- model control (HTTP)

def http_url() -> str:
    url = config.TRITON_HTTP_URL
    return url if url.startswith("http") else f"http://{url}"


def _control(method: str, path: str, timeout: float, body: bytes | None = None) -> tuple[int, bytes] | None:
    """One call to a restricted Triton HTTP API with the admin key; None when Triton is unreachable."""
    import urllib3

    try:
        answer = urllib3.request(method, f"{http_url()}{path}", body=body, headers=triton_admin_headers(),
                                 timeout=timeout, retries=False, redirect=False)
    except urllib3.exceptions.HTTPError:
        return None
    return answer.status, answer.data


def reload_model(name: str | None = None, timeout: float = 60.0) -> str:
    """Ask Triton to reload the model (explicit model control). Returns what happened, in words."""
    answer = _control("POST", f"/v2/repository/models/{name or config.TRITON_MODEL_NAME}/load", timeout)
    if answer is None:
        return f"Triton not reachable at {http_url()}: the new policy applies when it next loads the model"
    status, body = answer
    if status == 200:
        return "reloaded by Triton (explicit model control)"
    message = body.decode(errors="replace")[:300]
    if "poll" in message.lower():
        return ("Triton runs with --model-control-mode=poll: it rereads config.pbtxt by itself within "
                "--repository-poll-secs; explicit loads are refused in that mode")
    if "explicit model load / unload is not allowed" in message.lower():
        return "Triton runs with --model-control-mode=none: restart it to apply the new version_policy"
    return f"Triton refused the reload ({status}): {message}"


def ready_versions(name: str | None = None, timeout: float = 3.0) -> list[str] | None:
    """Versions Triton reports READY (its repository index), or None if Triton is unreachable."""
    answer = _control("POST", "/v2/repository/index", timeout, b"{}")
    if answer is None or answer[0] != 200:
        return None
    name = name or config.TRITON_MODEL_NAME
    return sorted((str(m.get("version")) for m in json.loads(answer[1])
                   if m.get("name") == name and m.get("state") == "READY"),
                  key=version_key)
