"""Network outputs -> detections, in numpy: copied into the version directory as detections.py.

Shared by the runtime's OpenVINO and TensorFlow paths (serving_runtime.py), so both give the same
boxes and scores: top-k candidates, per-class NMS, the score calibration and the box scale, both
fitted out of fold (training.calibration).
"""
from __future__ import annotations

import numpy as np

NMS_IOU = 0.6
PRE_NMS_TOP_K = 300
MAX_DETECTIONS = 100


def calibrate(scores: np.ndarray, calibration: dict | None) -> np.ndarray:
    """The monotonic map fitted out of fold (training.calibration), identity without one."""
    params = (calibration or {}).get("params") or {}
    if not params:
        return scores
    t, b = float(params["temperature"]), float(params["shift"])
    p = np.clip(scores.astype(np.float64), 1e-6, 1 - 1e-6)
    z = np.log(p) - np.log1p(-p)
    return (1.0 / (1.0 + np.exp(-(z - b) / t))).astype(np.float32)


def raw_floor(calibration: dict | None, floor: float = 0.05) -> float:
    """Raw-score floor whose calibrated value is at most ``floor`` (the contract's promise)."""
    params = (calibration or {}).get("params") or {}
    if not params:
        return floor
    z = np.log(floor) - np.log1p(-floor)
    inv = 1.0 / (1.0 + np.exp(-(z * float(params["temperature"]) + float(params["shift"]))))
    return float(min(floor, inv))


def box_factor(meta: dict) -> float:
    """The version's box scale, fitted out of fold (training.calibration); 1.0 without one."""
    return float((meta.get("box_scale") or {}).get("factor", 1.0))


def scale_boxes(boxes: np.ndarray, factor: float, wh: tuple[float, float]) -> np.ndarray:
    """Clipped boxes [N, 4] widened about their centres by ``factor``, clipped again: the
    network's boxes come out a few per cent small, and the out-of-fold factor undoes that."""
    if factor == 1.0 or not len(boxes):
        return boxes
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    return np.clip(np.concatenate([centre - half, centre + half], axis=1), 0, np.tile(np.asarray(wh, np.float32), 2)).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS; indices kept, by descending score."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        order = rest[inter / np.maximum(area[i] + area[rest] - inter, 1e-9) <= iou]
    return np.array(keep, np.int64)


def postprocess(heat: np.ndarray, boxes: np.ndarray, scale_xy: np.ndarray, wh: np.ndarray, floor: float,
                calibration: dict | None = None, factor: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: peak scores [N, C] and boxes [N, 4] (input pixels) -> boxes, scores, class ids.

    Mirrors training.model.decode: top-300 cells by best class, per-class NMS at IoU 0.6,
    raw-score floor, at most 100 boxes, scaled to original pixels and clipped; then the box scale.
    """
    best = heat.max(axis=1)
    k = min(PRE_NMS_TOP_K, len(best))
    top = np.argpartition(-best, k - 1)[:k] if k < len(best) else np.arange(len(best))
    cand_b = boxes[top] * np.tile(scale_xy, 2)[None, :]
    cand_s = heat[top]
    out_b, out_s, out_c = [], [], []
    for cls in range(heat.shape[1]):
        sel = cand_s[:, cls] >= floor
        if not sel.any():
            continue
        b, s = cand_b[sel], cand_s[sel, cls]
        keep = nms(b, s, NMS_IOU)[:MAX_DETECTIONS]
        out_b.append(b[keep])
        out_s.append(s[keep])
        out_c.append(np.full(len(keep), cls, np.int32))
    if not out_b:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    b, s, c = np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_c)
    order = np.argsort(-s, kind="stable")[:MAX_DETECTIONS]
    b, s, c = b[order], s[order], c[order]
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, wh[0])
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, wh[1])
    return scale_boxes(b.astype(np.float32), factor, (wh[0], wh[1])), calibrate(s, calibration), c
