"""Score calibration and box scale of the detector, both fitted out of fold.

Box scale: the network's boxes come out a few per cent small (their edges sit inside the
labelled ones, symmetrically), which costs AP at the stricter IoUs. One factor widens every box
about its centre; it is chosen on a grid to maximise AP50-95, and the figures reported with it
are leave-one-block-out (each block scaled by the factor fitted on the other blocks).

Score calibration: temperature scaling of the detector's confidence.

A detection counts as correct when it matches a ground-truth box at IoU 0.5 (the greedy COCO
matching of training.metrics). The map is ``sigmoid((logit(s) - shift) / temperature)``:
temperature scaling with a shift (Platt's two parameters in logit space). It is strictly
increasing, so the ranking of the detections, hence AP at every IoU, is unchanged; only
what a score means changes: among detections scored about 0.9, about 90% are cars.

Pure numpy, shared by training (fit, record) and the served model.py (apply, from the
parameters stored in model_metadata.json).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

N_BINS = 10
EPS = 1e-6
BOX_FACTORS = tuple(round(1.0 + 0.01 * i, 2) for i in range(16))  # 1.00 .. 1.15


def scale_results(results: list, factor: float) -> list:
    """ImageResults with every detection widened about its centre by ``factor``, clipped to the image."""
    from training.detections import scale_boxes

    if factor == 1.0:
        return results
    return [dataclasses.replace(r, boxes=scale_boxes(np.asarray(r.boxes, np.float32), factor, (r.width or np.inf, r.height or np.inf)))
            for r in results]  # an image of unknown size (0) is not clipped


def _ap50_95(results: list, num_classes: int) -> float:
    from training.metrics import IOU_THRESHOLDS, average_precision, match_detections_at

    aps = [average_precision(*m) for c in range(num_classes) for m in match_detections_at(results, c, IOU_THRESHOLDS)]
    return float(np.nanmean(aps))


def best_box_factor(results: list, num_classes: int) -> tuple[float, dict[float, float]]:
    """The factor of BOX_FACTORS with the highest AP50-95 on ``results`` (the smallest on ties)."""
    curve = {f: _ap50_95(scale_results(results, f), num_classes) for f in BOX_FACTORS}
    return max(curve, key=lambda f: (curve[f], -f)), curve


def fit_box_scale(blocks: list[list], num_classes: int) -> dict:
    """Out-of-fold detections per held-out block -> the factor to serve (fitted on all blocks)
    and, per block, the factor fitted without it (to report honest figures)."""
    pooled = [r for block in blocks for r in block]
    factor, curve = best_box_factor(pooled, num_classes)
    held_out = [best_box_factor([r for j, block in enumerate(blocks) if j != i for r in block], num_classes)[0]
                for i in range(len(blocks))] if len(blocks) > 1 else [factor]
    return {"factor": factor, "fitted_on": "out-of-fold crossval detections", "objective": "pooled AP50-95",
            "held_out_factors": held_out, "ap50_95_by_factor": {f"{f:.2f}": round(v, 4) for f, v in curve.items()}}


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(scores: np.ndarray, temperature: float, shift: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(logit(scores) - shift) / temperature))


def invert_temperature(p: float, temperature: float, shift: float) -> float:
    """The raw score whose calibrated value is ``p``."""
    return float(1.0 / (1.0 + np.exp(-(logit(np.array([p]))[0] * temperature + shift))))


def fit_temperature(scores: np.ndarray, correct: np.ndarray, iters: int = 500) -> tuple[float, float]:
    """Minimise the negative log-likelihood over (log temperature, shift) by Newton-damped GD."""
    z = logit(scores)
    y = np.asarray(correct, np.float64)
    if len(z) == 0 or y.min() == y.max():
        return 1.0, 0.0
    log_t, b = 0.0, 0.0
    lr = 0.5
    for _ in range(iters):
        t = np.exp(log_t)
        p = 1.0 / (1.0 + np.exp(-(z - b) / t))
        g = p - y  # dNLL/du with u = (z - b) / t
        du_dlogt = -(z - b) / t
        du_db = -1.0 / t
        grad = np.array([np.mean(g * du_dlogt), np.mean(g * du_db)])
        log_t -= lr * grad[0]
        b -= lr * grad[1]
        if np.abs(grad).max() < 1e-7:
            break
    return float(np.exp(log_t)), float(b)


def reliability(scores: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> dict:
    """Equal-width bins: counts, accuracy (fraction correct), mean confidence, and ECE."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(correct, np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(s, edges[1:-1], right=False), 0, n_bins - 1)
    counts, acc, conf = [], [], []
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        counts.append(n)
        acc.append(float(y[m].mean()) if n else None)
        conf.append(float(s[m].mean()) if n else None)
        if n:
            ece += n / max(len(s), 1) * abs(float(y[m].mean()) - float(s[m].mean()))
    return {"bin_edges": edges.round(3).tolist(), "counts": counts, "accuracy": acc, "confidence": conf, "ece": float(ece)}


def matched_scores(results: list, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(score, is a true positive at IoU 0.5) of every detection, all classes pooled."""
    from training.metrics import match_detections

    s_all, tp_all = [], []
    for c in range(num_classes):
        s, tp, _ = match_detections(results, c, 0.5)
        s_all.append(s)
        tp_all.append(tp)
    return np.concatenate(s_all) if s_all else np.zeros(0), np.concatenate(tp_all) if tp_all else np.zeros(0, bool)


def fit_calibration(results: list, num_classes: int) -> tuple[dict, Callable[[np.ndarray], np.ndarray]]:
    """Fit on out-of-fold detections; returns (metadata record, the calibrating function)."""
    scores, correct = matched_scores(results, num_classes)
    t, b = fit_temperature(scores, correct)
    after = apply_temperature(scores, t, b)
    rb, ra = reliability(scores, correct), reliability(after, correct)
    record = {
        "method": "temperature",
        "fitted_on": "out-of-fold crossval detections",
        "params": {"temperature": round(t, 5), "shift": round(b, 5),
                   "formula": "sigmoid((logit(score) - shift) / temperature)"},
        "detections": int(len(scores)),
        "matched_at_iou": 0.5,
        "ece_before": rb["ece"],
        "ece_after": ra["ece"],
        "reliability": {
            "bin_edges": rb["bin_edges"],
            "accuracy_before": rb["accuracy"],
            "accuracy_after": ra["accuracy"],
            "confidence_before": rb["confidence"],
            "confidence_after": ra["confidence"],
            "counts": rb["counts"],
            "counts_after": ra["counts"],
        },
    }
    return record, lambda s: apply_temperature(s, t, b)


def plot_reliability(record: dict, path) -> bool:  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    r = record["reliability"]
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    for key_c, key_a, name, style in (("confidence_before", "accuracy_before", "raw", "o-"),
                                      ("confidence_after", "accuracy_after", "calibrated", "s-")):
        pts = [(c, a) for c, a in zip(r[key_c], r[key_a]) if c is not None and a is not None]
        if pts:
            ece = record["ece_before" if name == "raw" else "ece_after"]
            ax.plot(*zip(*pts), style, label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("mean score in bin")
    ax.set_ylabel("fraction of detections that are cars (IoU >= 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Reliability of detection scores (out of fold)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
