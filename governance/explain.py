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

Cost is bounded: 1 + 1 + cols*rows inferences (98 by default), cols*rows <= 192.
"""
from __future__ import annotations

import base64
import io
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from services.common import config
from services.common.images import check_image

DEFAULT_GRID = (12, 8)            # columns x rows
MAX_CELLS = 192                   # bound on the inferences one explanation may cost
# At most the model's max_batch_size (8 in config.pbtxt; the contract guarantees >= 8).
BATCH_SIZE = config.env_int("EXPLAIN_BATCH_SIZE", 8)
MAX_EXPLAINED = config.env_int("EXPLAIN_MAX_DETECTIONS", 5)
MATCH_IOU = 0.5
JPEG_QUALITY = 95

# infer(list of encoded images) -> (per image: boxes [n,4], scores [n], labels [n]), model version
InferFn = Callable[[Sequence[bytes]], tuple[list[tuple[np.ndarray, np.ndarray, list[str]]], str]]


class ExplainError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


@dataclass
class Explanation:
    body: dict[str, Any]
    png: bytes


# --------------------------------------------------------------------------- Triton


class TritonInfer:
    """One tritonclient.grpc client per process (gRPC channels do not survive fork)."""

    def __init__(self, url: str | None = None, model: str | None = None, timeout_s: float = 60.0) -> None:
        self.url = url or config.TRITON_GRPC_URL
        self.model = model or config.TRITON_MODEL_NAME
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._client = None
        self._pid: int | None = None

    def client(self):  # type: ignore[no-untyped-def]
        import tritonclient.grpc as grpcclient

        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client, self._pid = grpcclient.InferenceServerClient(url=self.url), os.getpid()
            return self._client

    def __call__(self, images: Sequence[bytes]) -> tuple[list[tuple[np.ndarray, np.ndarray, list[str]]], str]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        image_input = grpcclient.InferInput("IMAGE", [len(images), 1], "BYTES")
        image_input.set_data_from_numpy(np.array([[data] for data in images], dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput(name) for name in ("BOXES", "SCORES", "LABELS")]
        try:
            result = self.client().infer(self.model, [image_input], outputs=outputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            message = exc.message() or str(exc)
            status = 400 if "INVALID_ARGUMENT" in (exc.status() or "") else 503
            raise ExplainError(f"the model server could not run the explanation: {message}", status) from None
        boxes, scores, labels = result.as_numpy("BOXES"), result.as_numpy("SCORES"), result.as_numpy("LABELS")
        per_image = []
        for i in range(len(images)):
            names = [label.decode() if isinstance(label, bytes) else str(label) for label in labels[i]]
            per_image.append((np.asarray(boxes[i], dtype=np.float32), np.asarray(scores[i], dtype=np.float32), names))
        return per_image, result.get_response().model_version


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


def explain_image(data: bytes, threshold: float = 0.5, grid: tuple[int, int] = DEFAULT_GRID,
                  infer: InferFn | None = None, batch_size: int = BATCH_SIZE,
                  max_detections: int = MAX_EXPLAINED, guard: bool = True) -> Explanation:
    infer = infer or default_infer()
    checked = check_image(data)
    rgb = checked.rgb
    width, height = rgb.size
    # A cell must hold at least one pixel to occlude: a tiny image gets a coarser grid
    # (the response's "grid" says which).
    cols, rows = min(grid[0], width), min(grid[1], height)
    (original,), model_version = infer([checked.model_bytes])
    refusal = serving_guard().refusal(model_version) if guard else None
    if refusal:
        raise ExplainError(f"the served model is not the registered one: {refusal}", 503)
    boxes, scores, labels = original
    keep = [i for i in range(len(scores)) if scores[i] >= threshold and labels[i]][:max_detections]
    detections = [{"class_name": labels[i], "confidence": round(float(scores[i]), 4),
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
        variants = [_encode(rgb)]
        for _, _, x0, y0, x1, y1 in cells:
            occluded = rgb.copy()
            ImageDraw.Draw(occluded).rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
            variants.append(_encode(occluded))
        results: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        for start in range(0, len(variants), max(1, batch_size)):
            chunk, _ = infer(variants[start:start + batch_size])
            results.extend(chunk)
        body["inferences"] = 1 + len(variants)
        body["batches"] = -(-len(variants) // max(1, batch_size))
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
