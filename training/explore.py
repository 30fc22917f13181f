"""Dataset exploration report.

    python -m training.explore DATA_DIR [--out var/reports/dataset] [--layout auto]

Prints and writes ``summary.md`` (images, classes, class distribution, images without
objects, box sizes, skipped rows) and ``box_sizes.png`` (histograms of box width, height
and area, in original pixels) under the output folder.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

from services.common import config
from training import REPO_ROOT
from training.data import load_dataset
from training.samples import DataError, Dataset

DEFAULT_OUT = REPO_ROOT / "var" / "reports" / "dataset"


def summarize(ds: Dataset) -> dict:
    counts = collections.Counter(int(c) for s in ds.samples for c in s.labels)
    boxes = np.concatenate([s.boxes for s in ds.samples if len(s.boxes)] or [np.zeros((0, 4), np.float32)])
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    sizes = collections.Counter(f"{s.width}x{s.height}" for s in ds.samples)

    def pct(v: np.ndarray) -> dict:
        if len(v) == 0:
            return {}
        q = np.percentile(v, [0, 5, 25, 50, 75, 95, 100])
        return dict(zip(["min", "p5", "p25", "median", "p75", "p95", "max"], [round(float(x), 1) for x in q]))

    return {
        "root": str(ds.root),
        "layout": ds.layout,
        "images": len(ds.samples),
        "images_without_objects": sum(1 for s in ds.samples if len(s.boxes) == 0),
        "boxes": int(len(boxes)),
        "classes": ds.class_names,
        "class_distribution": {ds.class_names[c]: n for c, n in sorted(counts.items())},
        "boxes_per_image_max": max((len(s.boxes) for s in ds.samples), default=0),
        "image_sizes": dict(sizes.most_common(5)),
        "box_width": pct(w),
        "box_height": pct(h),
        "box_area_slices": {
            "small (<32^2)": int(((w * h) < 32**2).sum()),
            "medium (32^2-96^2)": int((((w * h) >= 32**2) & ((w * h) < 96**2)).sum()),
            "large (>=96^2)": int(((w * h) >= 96**2).sum()),
        },
        "problems": len(ds.problems),
        "problem_examples": ds.problems[:10],
        "fingerprint": ds.fingerprint(),
    }


def plot_sizes(ds: Dataset, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no histogram written", file=sys.stderr)
        return False
    boxes = np.concatenate([s.boxes for s in ds.samples if len(s.boxes)] or [np.zeros((0, 4), np.float32)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, values, title in ((axes[0], w, "box width (px)"), (axes[1], h, "box height (px)"), (axes[2], np.sqrt(w * h), "sqrt(area) (px)")):
        ax.hist(values, bins=30, color="#3a7bd5")
        ax.set_title(title)
        ax.set_ylabel("boxes")
    axes[2].axvline(32, color="r", ls="--", lw=1, label="COCO small/medium")
    axes[2].axvline(96, color="r", ls=":", lw=1, label="medium/large")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"{ds.root.name}: {len(boxes)} boxes in {len(ds.samples)} images")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def to_markdown(s: dict, plot_name: str | None) -> str:
    lines = [
        f"# Dataset report: {Path(s['root']).name}",
        "",
        f"- Path: `{s['root']}` (layout: {s['layout']})",
        f"- Images: {s['images']} ({s['images_without_objects']} without objects)",
        f"- Boxes: {s['boxes']} (max {s['boxes_per_image_max']} per image)",
        f"- Classes: {', '.join(s['classes'])}",
        f"- Image sizes (most common): {', '.join(f'{k} ({v})' for k, v in s['image_sizes'].items())}",
        f"- Skipped rows/images: {s['problems']}",
        f"- Fingerprint: `{s['fingerprint'][:16]}`",
        "",
        "## Class distribution",
        "",
        "| class | boxes |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in s["class_distribution"].items()],
        "",
        "## Box sizes (original pixels)",
        "",
        "| | " + " | ".join(s["box_width"].keys()) + " |",
        "|---|" + "---|" * len(s["box_width"]),
        "| width | " + " | ".join(str(v) for v in s["box_width"].values()) + " |",
        "| height | " + " | ".join(str(v) for v in s["box_height"].values()) + " |",
        "",
        "Area slices: " + ", ".join(f"{k}: {v}" for k, v in s["box_area_slices"].items()),
    ]
    if plot_name:
        lines += ["", f"![box sizes]({plot_name})"]
    if s["problem_examples"]:
        lines += ["", "## Problems (first 10)", "", *[f"- {p}" for p in s["problem_examples"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.explore", description="Dataset statistics report")
    p.add_argument("data", nargs="?", default=config.DATA_DIR)
    p.add_argument("--layout", default="auto", choices=["auto", "kaggle", "yolo", "coco"])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="report folder (default var/reports/dataset)")
    args = p.parse_args(argv)
    try:
        ds = load_dataset(args.data, args.layout)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(ds)
    plot_ok = plot_sizes(ds, out / "box_sizes.png")
    md = to_markdown(summary, "box_sizes.png" if plot_ok else None)
    (out / "summary.md").write_text(md, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(md)
    print(f"written: {out / 'summary.md'}" + (f", {out / 'box_sizes.png'}" if plot_ok else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
