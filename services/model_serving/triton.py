"""A thin client of the Triton model `car_detector` (see CONTRACT.md for its signature)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import InferenceServerException

from services.common import tls
from services.common.resilience import CircuitBreaker, CircuitOpen


@dataclass(frozen=True)
class Detection:
    class_name: str
    confidence: float
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in original pixels


@dataclass(frozen=True)
class Inference:
    detections: list[Detection]
    model_version: str
    inference_time_ms: float


# One channel, reconnecting within ~2 s once Triton is back (gRPC's default backoff grows
# to 120 s); the message limits and keepalive are tritonclient's defaults.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class ModelUnavailable(Exception):
    """Triton cannot be reached or cannot serve the model right now."""


class ModelRejected(Exception):
    """Triton refused this input."""


class TritonDetector:
    """One gRPC channel to Triton, reused by every request of the process."""

    OUTPUTS = ("BOXES", "SCORES", "LABELS")

    def __init__(self, url: str, model_name: str, timeout_s: float) -> None:
        self.url, self.model_name, self.timeout_s = url, model_name, timeout_s
        self.client = grpcclient.InferenceServerClient(url=url, channel_args=CHANNEL_ARGS, **tls.triton_client_kwargs())
        # Consecutive UNAVAILABLE/timeouts open it: requests then fail at once for a few seconds.
        self.breaker = CircuitBreaker("triton")

    def is_ready(self) -> bool:
        try:
            return bool(self.client.is_model_ready(self.model_name, client_timeout=2.0))
        except InferenceServerException:
            return False

    def served_version(self) -> str:
        """The newest version Triton serves, from the model's metadata."""
        metadata = self.client.get_model_metadata(self.model_name, client_timeout=2.0)
        return max(metadata.versions, key=int) if metadata.versions else ""

    def detect(self, image: bytes, request_id: str, min_confidence: float) -> Inference:
        try:
            self.breaker.before_call()
        except CircuitOpen as open_:
            raise ModelUnavailable(str(open_)) from None
        try:
            inference = self._detect(image, request_id, min_confidence)
        except ModelUnavailable:
            self.breaker.failure()
            raise
        except BaseException:
            self.breaker.success()  # Triton answered (refused the input) or a local error
            raise
        self.breaker.success()
        return inference

    def _detect(self, image: bytes, request_id: str, min_confidence: float) -> Inference:
        image_input = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        image_input.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput(name) for name in self.OUTPUTS]
        started = time.perf_counter()
        try:
            result = self.client.infer(
                self.model_name,
                [image_input],
                outputs=outputs,
                request_id=request_id,
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            status = exc.status() or ""
            if any(code in status for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")) or (
                "not ready" in (exc.message() or "") or "unavailable" in (exc.message() or "").lower()
            ):
                raise ModelUnavailable(exc.message() or status) from None
            if "INVALID_ARGUMENT" in status or "decode" in (exc.message() or ""):
                raise ModelRejected(exc.message() or status) from None
            raise ModelUnavailable(exc.message() or status) from None
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        boxes = result.as_numpy("BOXES")[0]
        scores = result.as_numpy("SCORES")[0]
        labels = result.as_numpy("LABELS")[0]
        detections = [
            Detection(
                class_name=label.decode() if isinstance(label, bytes) else str(label),
                confidence=float(score),
                box=tuple(float(v) for v in box),  # type: ignore[arg-type]
            )
            for box, score, label in zip(boxes, scores, labels)
            if score >= min_confidence
        ]
        return Inference(detections, result.get_response().model_version, elapsed_ms)
