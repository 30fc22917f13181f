"""Detection metrics: COCO-style AP (101-point), AP50-95, P/R/F1 at a threshold, size slices.

Pure numpy so it can be unit-tested on hand-made boxes and used both in process and
against the served model. Boxes are x1, y1, x2, y2 in original image pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
# COCO area slices (in original pixels) plus the cars cut by the left/right frame edge,
# which are the ones a detector trained on whole cars tends to miss.
SIZE_SLICES: dict[str, tuple[float, float]] = {
    "all": (0.0, float("inf")),
    "small (<32^2)": (0.0, 32.0**2),
    "medium (32^2-96^2)": (32.0**2, 96.0**2),
    "large (>96^2)": (96.0**2, float("inf")),
}
EDGE_MARGIN = 2.0


@dataclass
class ImageResult:
    """Ground truth and detections of one image (class indices)."""

    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    width: float = 0.0  # needed only for the "edge" slice
    height: float = 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [n,4] against every box in b [m,4]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _area(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _in_slice(boxes: np.ndarray, slice_name: str, width: float) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if slice_name == "edge":
        return (boxes[:, 0] <= EDGE_MARGIN) | (boxes[:, 2] >= width - EDGE_MARGIN)
    lo, hi = SIZE_SLICES[slice_name]
    a = _area(boxes)
    return (a >= lo) & (a < hi)


def match_detections(
    results: list[ImageResult], class_id: int, iou_thr: float, slice_name: str = "all"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy COCO matching, highest score first.

    Returns (scores, is_true_positive) of the detections that count for this slice, and the
    number of ground-truth boxes in the slice. Detections matched to a ground truth outside
    the slice, and unmatched detections whose own size is outside it, are ignored (COCO).
    """
    return match_detections_at(results, class_id, (iou_thr,), slice_name)[0]


def match_detections_at(
    results: list[ImageResult], class_id: int, iou_thresholds: Sequence[float] | np.ndarray, slice_name: str = "all"
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """``match_detections`` at each IoU threshold, every image's IoUs computed once."""
    scores: list[list[np.ndarray]] = [[] for _ in iou_thresholds]
    tps: list[list[np.ndarray]] = [[] for _ in iou_thresholds]
    n_gt = 0
    for r in results:
        gsel = np.asarray(r.gt_labels) == class_id
        gt = np.asarray(r.gt_boxes, np.float64).reshape(-1, 4)[gsel]
        gt_in = _in_slice(gt, slice_name, r.width)
        n_gt += int(gt_in.sum())
        dsel = np.asarray(r.labels) == class_id
        det = np.asarray(r.boxes, np.float64).reshape(-1, 4)[dsel]
        sc = np.asarray(r.scores, np.float64)[dsel]
        order = np.argsort(-sc, kind="stable")
        det, sc = det[order], sc[order]
        ious = iou_matrix(det, gt) if len(gt) else np.zeros((len(det), 0))
        best_iou = ious.max(axis=1) if len(gt) else np.zeros(len(det))
        det_in = _in_slice(det, slice_name, r.width)
        for k, thr in enumerate(iou_thresholds):
            taken = np.zeros(len(gt), bool)
            counted = det_in.copy()  # unmatched: a false positive if its own size is in the slice
            tp = np.zeros(len(det), bool)
            # Only a detection that overlaps some ground truth enough can match: loop over those alone.
            for d in np.flatnonzero(best_iou >= thr):
                # The best untaken ground truth over the threshold; an out-of-slice one makes it ignored.
                for g in np.argsort(-ious[d]):
                    if ious[d, g] < thr:
                        break
                    if not taken[g]:
                        taken[g] = True
                        tp[d], counted[d] = gt_in[g], gt_in[g]
                        break
            scores[k].append(sc[counted])
            tps[k].append(tp[counted])
    return [(np.concatenate(s) if s else np.zeros(0, np.float64), np.concatenate(t) if t else np.zeros(0, bool), n_gt)
            for s, t in zip(scores, tps)]


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """COCO 101-point interpolated AP. NaN when there is no ground truth."""
    if n_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = tp[order].astype(np.float64)
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1.0 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    # Monotone precision envelope, then sample at 101 recall points.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def pr_curve(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall) as the score threshold decreases."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], tp[order].astype(np.float64)
    ctp, cfp = np.cumsum(t), np.cumsum(1 - t)
    return s, ctp / np.maximum(ctp + cfp, 1e-12), ctp / max(n_gt, 1)


def prf_at(scores: np.ndarray, tp: np.ndarray, n_gt: int, threshold: float) -> dict[str, float]:
    keep = scores >= threshold
    ntp = int(tp[keep].sum())
    nfp = int(keep.sum() - ntp)
    p = ntp / max(ntp + nfp, 1) if (ntp + nfp) else (1.0 if n_gt == 0 else 0.0)
    r = ntp / n_gt if n_gt else float("nan")
    f1 = 2 * p * r / (p + r) if n_gt and (p + r) > 0 else 0.0
    return {"precision": p, "recall": r, "f1": f1, "tp": ntp, "fp": nfp, "fn": n_gt - ntp, "n_gt": n_gt}


def choose_threshold(results: list[ImageResult], num_classes: int, grid_step: float = 0.05) -> float:
    """Operating threshold: best F1 at IoU 0.5 over a coarse grid, lowest among near-ties.

    A coarse grid and "lowest within 0.01 F1 of the best" keep the threshold from being fitted
    to a handful of boxes and lean towards recall, which this project prefers.
    """
    grid = np.round(np.arange(0.1, 0.91, grid_step), 3)
    matched = [match_detections(results, c, 0.5) for c in range(num_classes)]
    mean_f1 = []
    for thr in grid:
        vals = [prf_at(s, tp, n, float(thr))["f1"] for s, tp, n in matched if n]
        mean_f1.append(np.mean(vals) if vals else 0.0)
    f1s = np.array(mean_f1)
    best = f1s.max()
    return float(grid[np.argmax(f1s >= best - 0.01)])


def evaluate(
    results: list[ImageResult], class_names: list[str], threshold: float | None = None
) -> dict:
    """AP50, AP50-95 and P/R/F1 at the operating threshold, overall, per class and per slice."""
    if threshold is None:
        threshold = choose_threshold(results, len(class_names))
    out: dict = {"threshold": threshold, "num_images": len(results), "slices": {}, "per_class": {}}
    for slice_name in list(SIZE_SLICES) + ["edge"]:
        ap50s, ap_all, prfs = [], [], []
        n_gt_total = 0
        for c in range(len(class_names)):
            matched = match_detections_at(results, c, IOU_THRESHOLDS, slice_name)
            aps = [average_precision(s, tp, n) for s, tp, n in matched]
            s, tp, n = matched[0]  # IoU 0.5
            prfs.append(prf_at(s, tp, n, threshold))
            n_gt_total += n
            if not np.isnan(aps[0]):
                ap50s.append(aps[0])
                ap_all.append(float(np.nanmean(aps)))
            if slice_name == "all":
                out["per_class"][class_names[c]] = {
                    "ap50": aps[0],
                    "ap50_95": float(np.nanmean(aps)) if not np.isnan(aps[0]) else float("nan"),
                    **prfs[-1],
                }
        tp_sum = sum(p["tp"] for p in prfs)
        fp_sum = sum(p["fp"] for p in prfs)
        # No ground truth and no detection in a slice: precision is undefined, not 0.
        prec = tp_sum / (tp_sum + fp_sum) if (tp_sum + fp_sum) else (float("nan") if n_gt_total == 0 else 0.0)
        rec = tp_sum / n_gt_total if n_gt_total else float("nan")
        out["slices"][slice_name] = {
            "n_gt": n_gt_total,
            "ap50": float(np.mean(ap50s)) if ap50s else float("nan"),
            "ap50_95": float(np.mean(ap_all)) if ap_all else float("nan"),
            "precision": prec,
            "recall": rec,
            "f1": 2 * prec * rec / (prec + rec) if n_gt_total and (prec + rec) > 0 else (float("nan") if n_gt_total == 0 else 0.0),
            "tp": tp_sum,
            "fp": fp_sum,
        }
    allm = out["slices"]["all"]
    out.update({k: allm[k] for k in ("ap50", "ap50_95", "precision", "recall", "f1")})
    return out


def format_markdown(metrics: dict, title: str = "Validation metrics") -> str:
    lines = [
        f"## {title}",
        "",
        f"Images: {metrics['num_images']}, operating threshold: {metrics['threshold']:.2f}",
        "",
        "| slice | GT boxes | AP50 | AP50-95 | precision | recall | F1 | TP | FP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics["slices"].items():
        lines.append(
            f"| {name} | {m['n_gt']} | {m['ap50']:.3f} | {m['ap50_95']:.3f} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} | {m['f1']:.3f} | {m['tp']} | {m['fp']} |"
        )
    if len(metrics.get("per_class", {})) > 1:
        lines += ["", "| class | AP50 | AP50-95 | precision | recall |", "|---|---|---|---|---|"]
        for c, m in metrics["per_class"].items():
            lines.append(f"| {c} | {m['ap50']:.3f} | {m['ap50_95']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} |")
    return "\n".join(lines) + "\n"


def clean_nan(obj):  # type: ignore[no-untyped-def]
    """JSON has no NaN: metrics of empty slices become null."""
    if isinstance(obj, dict):
        return {k: clean_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_nan(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
