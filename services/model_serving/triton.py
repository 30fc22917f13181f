"""The adapter's view of the Triton model: detections above a threshold, with timing.

The client itself (TLS, timeouts, breaker, channel per process) is services/common/triton_client.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from services.common.model_info import operating_threshold
from services.common.triton_client import TritonModel, TritonRejected, TritonUnavailable

# The adapter's names for the shared client's errors.
ModelUnavailable = TritonUnavailable
ModelRejected = TritonRejected


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
    image_stats: dict[str, float] | None = None  # from the model's IMAGE_STATS output, when it has one


class TritonDetector:
    """One gRPC channel to Triton, reused by every request of the process."""

    def __init__(self, url: str, model_name: str, timeout_s: float) -> None:
        self.model = TritonModel(url, model_name, timeout_s)
        self.url, self.model_name, self.timeout_s = url, model_name, timeout_s
        self.breaker = self.model.breaker

    def is_ready(self) -> bool:
        return self.model.is_ready()

    def served_version(self) -> str:
        """The newest version Triton serves, from the model's metadata."""
        return self.model.served_version()

    def detect(self, image: bytes, request_id: str, min_confidence: float | None = None) -> Inference:
        """Detections at or above min_confidence (default: the served version's operating threshold)."""
        started = time.perf_counter()
        result = self.model.infer([image], request_id)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        only = result.images[0]
        if min_confidence is None:
            min_confidence = operating_threshold(result.model_version, self.model_name)
        detections = [
            Detection(class_name=label, confidence=float(score), box=tuple(float(v) for v in box))  # type: ignore[arg-type]
            for box, score, label in zip(only.boxes, only.scores, only.labels)
            if score >= min_confidence
        ]
        return Inference(detections, result.model_version, elapsed_ms, only.image_stats)
