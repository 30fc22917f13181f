"""Explanations of detections by occlusion sensitivity (see governance/EXPLAINABILITY.md).

For one image: the model's detections are computed once on the original file; then
the image is cut into a grid (12 x 8 cells by default) and, for each cell, a copy
with that cell painted in the image's mean colour is sent to Triton (in batches of
8, with one un-occluded re-encoded reference). A detection's saliency in a cell is
how much its score drops when that cell is hidden (score of the best same-class box
with IoU >= 0.5 to the original box, else 0). Large drops mark the pixels the
detection depends on.

The result holds, per detection, its box, score and a saliency summary (peak cell,
largest drop, share of the evidence inside the box, the full grid), and a heat-map
PNG (the positive drops, normalised by each detection's reference score, the
maximum over detections, overlaid in red on the image, boxes drawn).

Cost is bounded: 1 + 1 + cols*rows inferences (98 by default), cols*rows <= 192, an
image of at most EXPLAIN_MAX_PIXELS, one total deadline (EXPLAIN_DEADLINE_S) for all
of its Triton calls, and EXPLAIN_CONCURRENCY explanations at a time per process
(`explanation_slot`; the next caller is told to come back, not queued). Triton is
called through services/common/triton_client.py (TLS, breaker) and the served version
is checked against the model registry, as the gRPC adapter does.
"""
from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from services.common import config
from services.common.images import check_image
from services.common.model_info import operating_threshold
from services.common.triton_client import TritonModel, TritonRejected, TritonUnavailable

DEFAULT_GRID = (12, 8)            # columns x rows
MAX_CELLS = 192                   # bound on the inferences one explanation may cost
MATCH_IOU = 0.5
JPEG_QUALITY = 95

# infer(list of encoded images) -> (per image: boxes [n,4], scores [n], labels [n]), model version
InferFn = Callable[[Sequence[bytes]], tuple[list[tuple[np.ndarray, np.ndarray, list[str]]], str]]


class ExplainError(Exception):
    """status: the HTTP answer. public: the message may be shown to the caller even for a 5xx
    (it names no internal host)."""

    def __init__(self, message: str, status: int = 400, retry_after_s: float | None = None, public: bool = False) -> None:
        super().__init__(message)
        self.message, self.status, self.retry_after_s, self.public = message, status, retry_after_s, public


@dataclass
class Explanation:
    body: dict[str, Any]
    png: bytes


# --------------------------------------------------------------------------- limits

# The end of the running explanation's time budget (time.monotonic()), for TritonInfer.
_deadline: ContextVar[float | None] = ContextVar("explain_deadline", default=None)
_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()


@contextmanager
def explanation_slot() -> Iterator[None]:
    """Hold one of the process's EXPLAIN_CONCURRENCY slots, or raise ExplainError(429) at once."""
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(max(1, config.EXPLAIN_CONCURRENCY))
    if not _slots.acquire(blocking=False):
        raise ExplainError("the explanation engine is busy with another image; retry shortly", 429,
                           retry_after_s=config.RETRY_AFTER_S)
    try:
        yield
    finally:
        _slots.release()


def _remaining_s() -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise ExplainError(f"the explanation did not finish within {config.EXPLAIN_DEADLINE_S:g} s; "
                           "retry later or with a coarser ?grid=", 503, retry_after_s=config.RETRY_AFTER_S, public=True)
    return left


# --------------------------------------------------------------------------- Triton


class TritonInfer:
    """Batches of images through the one Triton client (each call bounded by the deadline left)."""

    def __init__(self, model: TritonModel | None = None) -> None:
        self.model = model or TritonModel(timeout_s=config.EXPLAIN_DEADLINE_S)

    def __call__(self, images: Sequence[bytes]) -> tuple[list[tuple[np.ndarray, np.ndarray, list[str]]], str]:
        try:
            result = self.model.infer(images, timeout_s=_remaining_s())
        except TritonRejected as exc:
            raise ExplainError(f"the model could not read the image: {exc}", 400) from None
        except TritonUnavailable as exc:
            _remaining_s()  # a call cut by the explanation's own deadline says so
            raise ExplainError(f"the model server could not run the explanation: {exc}", 503,
                               retry_after_s=exc.retry_after_s) from None
        return [(r.boxes, r.scores, r.labels) for r in result.images], result.model_version


_default_infer: TritonInfer | None = None
_guard = None


def serving_guard():  # type: ignore[no-untyped-def]
    """The same registry check as the gRPC adapter (explanations call Triton directly)."""
    global _guard
    if _guard is None:
        from services.common.integrity import ServingGuard

        _guard = ServingGuard()
    return _guard


def default_infer() -> TritonInfer:
    global _default_infer
    if _default_infer is None:
        _default_infer = TritonInfer()
    return _default_infer


# --------------------------------------------------------------------------- geometry


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grid_cells(width: int, height: int, cols: int, rows: int) -> list[tuple[int, int, int, int, int, int]]:
    """(col, row, x0, y0, x1, y1) of each cell, row-major."""
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    return [(c, r, int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1])) for r in range(rows) for c in range(cols)]


def parse_grid(value: str | None) -> tuple[int, int]:
    if not value:
        return DEFAULT_GRID
    try:
        cols, rows = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise ExplainError("grid must look like 12x8 (columns x rows)") from None
    if not (2 <= cols <= 32 and 2 <= rows <= 32 and cols * rows <= MAX_CELLS):
        raise ExplainError(f"grid must have 2-32 columns and rows and at most {MAX_CELLS} cells")
    return cols, rows


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _matched_score(box: Sequence[float], label: str, boxes: np.ndarray, scores: np.ndarray, labels: list[str]) -> float:
    best = 0.0
    for other, score, other_label in zip(boxes, scores, labels):
        if score > best and other_label == label and iou(box, other) >= MATCH_IOU:
            best = float(score)
    return best


# --------------------------------------------------------------------------- explanation


def explain_image(data: bytes, threshold: float | None = None, grid: tuple[int, int] = DEFAULT_GRID,
                  infer: InferFn | None = None, batch_size: int | None = None,
                  max_detections: int | None = None, guard: bool = True,
                  deadline_s: float | None = None) -> Explanation:
    """Explain each detection of `data` at or above `threshold` (default: the served version's
    operating threshold; at most EXPLAIN_MAX_DETECTIONS detections).

    Raises ImageRejected (bad or too large an image) or ExplainError."""
    infer = infer or default_infer()
    batch_size = max(1, config.EXPLAIN_BATCH_SIZE if batch_size is None else batch_size)
    max_detections = config.EXPLAIN_MAX_DETECTIONS if max_detections is None else max_detections
    # Every occluded copy is re-encoded at full size: the pixel budget is the explanation's own.
    checked = check_image(data, max_pixels=min(config.MAX_IMAGE_PIXELS, config.EXPLAIN_MAX_PIXELS))
    token = _deadline.set(time.monotonic() + (config.EXPLAIN_DEADLINE_S if deadline_s is None else deadline_s))
    try:
        assert checked.rgb is not None  # check_image decodes by default
        return _explain(checked.rgb, checked.model_bytes, threshold, grid, infer, batch_size, max_detections, guard)
    finally:
        _deadline.reset(token)


def _explain(rgb: Image.Image, model_bytes: bytes, threshold: float | None, grid: tuple[int, int], infer: InferFn,
             batch_size: int, max_detections: int, guard: bool) -> Explanation:
    width, height = rgb.size
    # A cell must hold at least one pixel to occlude: a tiny image gets a coarser grid
    # (the response's "grid" says which).
    cols, rows = min(grid[0], width), min(grid[1], height)
    (original,), model_version = infer([model_bytes])
    refusal = serving_guard().refusal(model_version) if guard else None
    if refusal:
        raise ExplainError(f"the served model is not the registered one: {refusal}", 503)
    if threshold is None:
        threshold = operating_threshold(model_version)
    boxes, scores, labels = original
    keep = [i for i in range(len(scores)) if scores[i] >= threshold and labels[i]][:max_detections]
    detections: list[dict[str, Any]] = [{"class_name": labels[i], "confidence": round(float(scores[i]), 4),
                   "bbox": dict(zip(("x_min", "y_min", "x_max", "y_max"), (round(float(v), 1) for v in boxes[i])))}
                  for i in keep]
    cells = grid_cells(width, height, cols, rows)
    body: dict[str, Any] = {
        "method": "occlusion sensitivity",
        "model_version": model_version,
        "image": {"width": width, "height": height},
        "threshold": threshold,
        "grid": {"columns": cols, "rows": rows, "cell_width": round(width / cols, 1), "cell_height": round(height / rows, 1)},
        "occlusion_fill": None,
        "inferences": 1,
        "detections": [],
    }
    heat = np.zeros((rows, cols), dtype=np.float32)
    if detections:
        fill = tuple(int(v) for v in np.asarray(rgb, dtype=np.float32).reshape(-1, 3).mean(axis=0).round())
        body["occlusion_fill"] = {"rgb": list(fill), "what": "mean colour of the image"}

        def variant(index: int) -> bytes:  # 0: the re-encoded reference, then one per cell
            if index == 0:
                return _encode(rgb)
            _, _, x0, y0, x1, y1 = cells[index - 1]
            occluded = rgb.copy()
            ImageDraw.Draw(occluded).rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
            return _encode(occluded)

        # Encoded one batch at a time, so memory holds one batch of copies, not all of them.
        count = 1 + len(cells)
        results: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        for start in range(0, count, batch_size):
            _remaining_s()  # past the deadline: stop here, whatever the infer function
            chunk, _ = infer([variant(i) for i in range(start, min(count, start + batch_size))])
            results.extend(chunk)
        body["inferences"] = 1 + count
        body["batches"] = -(-count // batch_size)
        reference, occluded_results = results[0], results[1:]
        for detection in detections:
            box = [detection["bbox"][k] for k in ("x_min", "y_min", "x_max", "y_max")]
            label = detection["class_name"]
            ref_score = _matched_score(box, label, *reference) or detection["confidence"]
            drops = np.array([ref_score - _matched_score(box, label, *result) for result in occluded_results],
                             dtype=np.float32).reshape(rows, cols)
            positive = np.clip(drops, 0.0, None)
            heat = np.maximum(heat, positive / max(ref_score, 1e-6))
            overlap = np.array([_overlap_fraction(box, cell) for cell in cells], dtype=np.float32).reshape(rows, cols)
            total = float(positive.sum())
            peak = int(np.argmax(drops))
            peak_cell = cells[peak]
            # Share of the evidence in the cells the box touches (at cell resolution).
            inside = float(positive[overlap > 0].sum() / total) if total > 0 else None
            detection["saliency"] = {
                "reference_score": round(float(ref_score), 4),
                "max_drop": round(float(drops.max()), 4),
                "max_relative_drop": round(float(drops.max() / max(ref_score, 1e-6)), 4),
                "peak_cell": {"column": peak_cell[0], "row": peak_cell[1],
                              "box": {"x_min": peak_cell[2], "y_min": peak_cell[3], "x_max": peak_cell[4], "y_max": peak_cell[5]}},
                "inside_box_share": None if inside is None else round(inside, 3),
                "critical_cells": int((drops >= 0.5 * ref_score).sum()),
                "reading": _reading(inside, float(drops.max()), ref_score),
                "grid": [[round(float(v), 3) for v in row] for row in drops],
            }
            body["detections"].append(detection)
    else:
        body["note"] = f"no detection at or above the threshold {threshold}: nothing to explain (lower ?threshold=)"
    png = render_heatmap(rgb, heat, body["detections"])
    return Explanation(body=body, png=png)


def _overlap_fraction(box: Sequence[float], cell: tuple[int, int, int, int, int, int]) -> float:
    _, _, x0, y0, x1, y1 = cell
    width = max(0.0, min(box[2], x1) - max(box[0], x0))
    height = max(0.0, min(box[3], y1) - max(box[1], y0))
    area = (x1 - x0) * (y1 - y0)
    return width * height / area if area else 0.0


def _reading(inside: float | None, max_drop: float, ref_score: float) -> str:
    if inside is None or max_drop <= 0.05 * ref_score:
        return "no single cell changes this detection much: evidence is spread out or redundant"
    if inside >= 0.6:
        return "the detection relies mainly on pixels inside its own box"
    return "the detection relies substantially on context outside its box"


def render_heatmap(rgb: Image.Image, heat: np.ndarray, detections: list[dict[str, Any]]) -> bytes:
    """Heat (0..1 per cell) resized smoothly to the image, overlaid in red, boxes in cyan."""
    base = rgb.convert("RGBA")
    level = np.clip(heat, 0.0, 1.0)
    small = Image.fromarray((level * 255).astype(np.uint8), mode="L")
    alpha = small.resize(base.size, Image.Resampling.BILINEAR).point(lambda v: int(v * 0.65))
    overlay = Image.new("RGBA", base.size, (255, 0, 0, 0))
    overlay.putalpha(alpha)
    composed = Image.alpha_composite(base, overlay)
    draw = ImageDraw.Draw(composed)
    for index, detection in enumerate(detections, start=1):
        bbox = detection["bbox"]
        draw.rectangle([bbox["x_min"], bbox["y_min"], bbox["x_max"], bbox["y_max"]], outline=(0, 255, 255, 255), width=2)
        draw.text((bbox["x_min"] + 3, max(0, bbox["y_min"] - 12)), f"#{index} {detection['confidence']:.2f}",
                  fill=(255, 255, 0, 255))
    buffer = io.BytesIO()
    composed.convert("RGB").save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def as_json(explanation: Explanation, include_png: bool = True) -> dict[str, Any]:
    body = dict(explanation.body)
    if include_png:
        body["heatmap_png_base64"] = base64.b64encode(explanation.png).decode()
    return body
