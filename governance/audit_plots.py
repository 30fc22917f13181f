"""The audit pack's plots: each with a title, labelled axes and a caption saying what to look for."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Plot:
    name: str
    path: Path
    title: str
    caption: str
    section: str


def _frame(name: Any) -> str:
    """A frame's number from its file name (vid_4_600.jpg -> 600): the long names overlap as tick labels."""
    found = re.search(r"(\d+)\.\w+$", str(name))
    return found.group(1) if found else str(name)


def make_plots(report: dict[str, Any], folder: Path) -> dict[str, Plot]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Plot] = {}
    usage, perf, model = report["usage"], report["performance"], report.get("model", {})

    def save(fig: Any, ax: Any, axes: tuple[str, str], name: str, title: str, caption: str, section: str,
             legend_size: int | None = None) -> None:
        """Label the axes (x, y) and, given a font size, draw the legend; then write and record the plot."""
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
        if legend_size is not None:
            ax.legend(fontsize=legend_size)
        fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        plots[name] = Plot(name, path, title, caption, section)

    days = list(usage["per_day"])
    if days:
        fig, ax = plt.subplots(figsize=(7, 3))
        x = np.arange(len(days))
        ax.bar(x - 0.2, [usage["per_day"][d]["predictions"] for d in days], 0.4, label="predictions stored")
        ax.bar(x + 0.2, [usage["per_day"][d]["server_errors"] + usage["per_day"][d]["client_errors"] for d in days], 0.4,
               label="gateway 4xx + 5xx", color="#cf222e")
        ax.set_xticks(x, days, rotation=45, fontsize=7)
        save(fig, ax, ("day (UTC)", "count"), "per_day", "Predictions and errors per day",
             "Look for days where errors rise against predictions (an outage or a misbehaving client) and for "
             "gaps (the service was down or unused).", "usage", legend_size=8)
    if usage["class_distribution"]:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(list(usage["class_distribution"]), list(usage["class_distribution"].values()), color="#3a7bd5")
        save(fig, ax, ("class", "detections"), "classes", "Detections per class",
             "The model knows one class (car): any other bar means a model other than the documented one answered.",
             "usage")
    hist = perf["confidence"]["histogram"]
    if any(hist.values()):
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(list(hist), list(hist.values()), color="#3a7bd5")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        save(fig, ax, ("confidence score", "stored detections"), "confidence", "Confidence of stored detections",
             "A mass that moves towards the threshold over time means the images look less like the training "
             "frames; read a score as a probability only if the calibration check passes.", "performance")
    lat = perf["model_inference_ms"]
    if lat["n"]:
        fig, ax = plt.subplots(figsize=(6, 3))
        labels = ["mean", "p50", "p95", "p99", "max"]
        ax.bar(labels, [lat[k] for k in labels], color="#8250df", label="model inference")
        e2e = perf["gateway_detect_end_to_end_ms"]
        if e2e["n"]:
            ax.plot(labels, [e2e[k] for k in labels], "o-", color="#cf222e", label="gateway end to end")
        save(fig, ax, ("statistic", "milliseconds"), "latency", "Latency of detections",
             "The gap between the two series is the cost of the services around the model; a p99 far above the p95 "
             "means occasional stalls.", "performance", legend_size=8)
    feats = perf["data_drift"].get("features", {})
    scored = {k: v["psi"] for k, v in feats.items() if v["psi"] is not None}
    if scored:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        palette = {"significant": "#cf222e", "moderate": "#9a6700", "stable": "#1a7f37"}
        ax.bar(list(scored), list(scored.values()), color=[palette.get(feats[k]["level"], "#57606a") for k in scored])
        ax.plot(list(scored), [feats[k].get("noise_floor", 0) for k in scored], "k_", markersize=14, label="sampling noise")
        ax.axhline(0.1, ls="--", color="#9a6700", lw=1, label="0.1 moderate")
        ax.axhline(0.25, ls="--", color="#cf222e", lw=1, label="0.25 significant")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        save(fig, ax, ("image feature", "PSI vs training baseline"), "drift", "Data drift: PSI per image feature",
             "Red bars (PSI above 0.25 after the sampling noise) are features whose production distribution left "
             "the training one: the model's validated figures may not hold there.", "model", legend_size=7)
    cal = model.get("calibration")
    if isinstance(cal, dict) and isinstance(cal.get("reliability"), dict):
        rel = cal["reliability"]
        edges = np.asarray(rel.get("bin_edges") or [], dtype=float)
        if len(edges) >= 2:
            centres = (edges[:-1] + edges[1:]) / 2
            fig, ax = plt.subplots(figsize=(4.5, 4))
            ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
            for key, colour, label in (("accuracy_before", "#cf222e", f"before (ECE {float(cal.get('ece_before') or 0):.3f})"),
                                       ("accuracy_after", "#1a7f37", f"after (ECE {float(cal.get('ece_after') or 0):.3f})")):
                values = [np.nan if v is None else v for v in (rel.get(key) or [])]
                if len(values) == len(centres):
                    ax.plot(centres, values, "o-", color=colour, label=label)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7, loc="upper left")
            save(fig, ax, ("confidence score (bin centre)", "share of detections that are cars"), "reliability",
                 f"Reliability diagram ({cal.get('method')} calibration)",
                 "Points on the diagonal mean a score of 0.9 is right about 90 % of the time; points below it are "
                 "over-confident scores.", "model")
    cv = model.get("crossval")
    if isinstance(cv, dict) and cv.get("blocks"):
        blocks = cv["blocks"]
        fig, ax = plt.subplots(figsize=(6, 3))
        x = np.arange(len(blocks))
        ax.bar(x - 0.2, [b.get("ap50") or 0 for b in blocks], 0.4, label="AP50", color="#3a7bd5")
        ax.bar(x + 0.2, [b.get("ap50_95") or 0 for b in blocks], 0.4, label="AP50-95", color="#8250df")
        ax.set_xticks(x, [f"{b.get('block')}\n{_frame(b.get('first_frame'))}-{_frame(b.get('last_frame'))}" for b in blocks],
                      fontsize=7)
        ax.set_ylim(0, 1)
        save(fig, ax, ("held-out block (frames)", "average precision"), "crossval", "Cross-validated AP per held-out block",
             "Blocks far below the others are parts of the drive the model handles worse; the spread is the "
             "uncertainty of the pooled figure.", "model", legend_size=7)
    return plots
