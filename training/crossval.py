"""Blocked K-fold cross-validation of the training recipe over the whole labelled timeline.

    python -m training.crossval [DATA_DIR] [--k 5] [--gap-frames 2] [--budget-minutes-per-fold 5]
                                [--input-size 512x288] [--out var/reports/crossval] [--resume]

The frames, ordered by (video, frame number), are cut into K contiguous blocks. Each block is
held out in turn; the recipe (training.fit) trains on the other frames minus ``gap`` frames on
both sides of the block (neighbouring frames are near-duplicates) and the held-out block is
scored through the exported serving function with training.metrics, the code of
training.evaluate. The operating threshold is chosen once on the pooled out-of-fold
detections; the score calibration (training.calibration) is fitted on them too.

Writes ``crossval.json`` (the figures, the calibration and every out-of-fold detection),
``crossval.md``, ``ap_per_block.png`` and ``reliability.png``; each finished fold is kept
in ``fold_<i>.json`` so ``--resume`` continues an interrupted run, with its network's weights
in ``fold_<i>.weights.h5`` so decoding and test-time variants can be scored out of fold later
without training again (docs/experiments/decode_variants.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from services.common import config
from training import REPO_ROOT
from training.cli import add_recipe_arguments, recipe_from, run_command
from training.data import load_dataset, make_blocks
from training.samples import Sample

log = logging.getLogger("training.crossval")
DEFAULT_OUT = REPO_ROOT / "var" / "reports" / "crossval"


def _block_metrics(results: list, class_names: list[str], threshold: float) -> dict:
    from training.metrics import evaluate

    m = evaluate(results, class_names, threshold)
    return {k: m[k] for k in ("ap50", "ap50_95", "precision", "recall")} | {"metrics": m}


def summarise(samples: list[Sample], class_names: list[str], folds: list[dict], args_info: dict) -> dict:
    """Pooled and per-block figures at one threshold chosen on all out-of-fold detections."""
    from training.calibration import fit_box_scale, fit_calibration, scale_results
    from training.fit import to_results
    from training.metrics import choose_threshold, clean_nan, evaluate

    helds = [[samples[i] for i in f["held_out"]] for f in folds]
    raw = [to_results(held, f["detections"], class_names) for f, held in zip(folds, helds)]
    raw_pooled = evaluate([r for res in raw for r in res], class_names, 0.5)
    box_scale = fit_box_scale(raw, len(class_names))
    # Every figure below is of boxes scaled as served, each block by the factor fitted without it.
    per_block = [(f, held, scale_results(res, factor)) for f, held, res, factor in zip(folds, helds, raw, box_scale["held_out_factors"])]
    pooled_results = [r for _, _, res in per_block for r in res]
    box_scale["unscaled"] = {"ap50": raw_pooled["ap50"], "ap50_95": raw_pooled["ap50_95"],
                             "worst_block_ap50": min(_block_metrics(res, class_names, 0.5)["ap50"] for res in raw)}
    threshold = choose_threshold(pooled_results, len(class_names))
    pooled = evaluate(pooled_results, class_names, threshold)
    blocks = []
    for f, held, res in per_block:
        m = _block_metrics(res, class_names, threshold)
        blocks.append(
            {
                "block": f["block"],
                "first_frame": held[0].path.name,
                "last_frame": held[-1].path.name,
                "images": len(held),
                "boxes": int(sum(len(s.boxes) for s in held)),
                "ap50": m["ap50"],
                "ap50_95": m["ap50_95"],
                "precision": m["precision"],
                "recall": m["recall"],
                "train_images": f["train_images"],
                "training": f["training"],
                "slices": m["metrics"]["slices"],
            }
        )
    ap50 = np.array([b["ap50"] for b in blocks], float)
    ap5095 = np.array([b["ap50_95"] for b in blocks], float)
    worst = int(np.nanargmin(ap50))
    calibration, cal_fn = fit_calibration(pooled_results, len(class_names))
    thr_cal = float(cal_fn(np.array([threshold]))[0])
    crossval = {
        **args_info,
        "blocks": blocks,
        "pooled": {k: pooled[k] for k in ("ap50", "ap50_95", "precision", "recall")} | {"slices": pooled["slices"]},
        "spread": {"ap50_std": float(np.nanstd(ap50)), "ap50_95_std": float(np.nanstd(ap5095)),
                   "ap50_min": float(np.nanmin(ap50)), "ap50_95_min": float(np.nanmin(ap5095))},
        "worst_block": {"block": blocks[worst]["block"], "ap50": float(ap50[worst])},
        "threshold": threshold,
        "threshold_calibrated": round(thr_cal, 4),
    }
    return clean_nan({
        "crossval": crossval,
        "calibration": calibration,
        "box_scale": box_scale,
        # Served scores are calibrated, so the operating threshold is stated in calibrated units;
        # calibration is monotonic, so it keeps exactly the same detections as the raw threshold.
        "operating_threshold": round(thr_cal, 4),
        "operating_precision": pooled["precision"],
        "operating_recall": pooled["recall"],
    })


def plot_blocks(summary: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cv = summary["crossval"]
    b = cv["blocks"]
    x = np.arange(len(b))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(x - 0.2, [v["ap50"] for v in b], 0.4, label="AP50")
    ax.bar(x + 0.2, [v["ap50_95"] for v in b], 0.4, label="AP50-95")
    ax.axhline(cv["pooled"]["ap50"], color="C0", ls="--", lw=1, label=f"pooled AP50 {cv['pooled']['ap50']:.3f}")
    ax.axhline(cv["pooled"]["ap50_95"], color="C1", ls="--", lw=1, label=f"pooled AP50-95 {cv['pooled']['ap50_95']:.3f}")
    ax.set_xticks(x, [f"block {v['block']}\n{v['first_frame']}" for v in b], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("average precision (held-out block)")
    ax.set_title(f"{cv['k']}-fold blocked cross-validation, {cv['input_size'][0]}x{cv['input_size'][1]}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def format_markdown(summary: dict) -> str:
    cv, cal = summary["crossval"], summary["calibration"]
    lines = [
        f"# Cross-validation ({cv['k']} contiguous blocks, {cv['gap_frames']} guard frames each side)",
        "",
        f"Input {cv['input_size'][0]}x{cv['input_size'][1]}, {cv['budget_minutes_per_fold']:.1f} min training per fold, "
        f"threshold {cv['threshold']:.2f} (raw score; {summary['operating_threshold']:.3f} calibrated) chosen on the "
        "pooled out-of-fold detections. CPU: " + cv.get("cpu", "?"),
        "",
        "| block | frames | images | boxes | AP50 | AP50-95 | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in cv["blocks"]:
        lines.append(f"| {b['block']} | {b['first_frame']} .. {b['last_frame']} | {b['images']} | {b['boxes']} | "
                     f"{b['ap50']:.3f} | {b['ap50_95']:.3f} | {b['precision']:.3f} | {b['recall']:.3f} |")
    p, s = cv["pooled"], cv["spread"]
    lines += [
        f"| **pooled** | all | {sum(b['images'] for b in cv['blocks'])} | {sum(b['boxes'] for b in cv['blocks'])} | "
        f"**{p['ap50']:.3f}** | **{p['ap50_95']:.3f}** | {p['precision']:.3f} | {p['recall']:.3f} |",
        "",
        f"Spread over blocks (std): AP50 {s['ap50_std']:.3f}, AP50-95 {s['ap50_95_std']:.3f}. "
        f"Worst block: {cv['worst_block']['block']} (AP50 {cv['worst_block']['ap50']:.3f}).",
        "",
        f"Calibration ({cal['method']}, fitted on {cal['fitted_on']}): expected calibration error "
        f"{cal['ece_before']:.3f} before, {cal['ece_after']:.3f} after. AP is unchanged (the map is monotonic). "
        f"At the operating threshold the pooled precision is {summary['operating_precision']:.3f} "
        f"and the recall {summary['operating_recall']:.3f}.",
        "",
    ]
    box = summary.get("box_scale")
    if box:
        raw = box["unscaled"]
        lines += [
            f"Box scale (fitted on {box['fitted_on']}, objective {box['objective']}): every box widened about its "
            f"centre by **{box['factor']:.2f}** as served. The table scores each block with the factor fitted on the "
            f"other blocks ({', '.join(f'{f:.2f}' for f in box['held_out_factors'])}). Unscaled boxes: pooled AP50 "
            f"{raw['ap50']:.3f}, AP50-95 {raw['ap50_95']:.3f}, worst block AP50 {raw['worst_block_ap50']:.3f}.",
            "",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    from training.fit import Trainer, cache_for, predict_files
    from training.model import resolve_backbone_weights

    ds = load_dataset(args.data, args.layout)
    samples = sorted(ds.samples, key=lambda s: s.sort_key)
    folds_idx = make_blocks(samples, args.k, args.gap_frames)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = recipe_from(args, args.budget_minutes_per_fold)
    weights = resolve_backbone_weights(args.backbone_weights)
    cache = trainer = None
    folds = []
    t0 = time.time()
    for b, (train_idx, held_idx) in enumerate(folds_idx):
        fold_file = out / f"fold_{b}.json"
        if args.resume and fold_file.is_file():
            folds.append(json.loads(fold_file.read_text()))
            print(f"fold {b + 1}/{args.k}: kept from {fold_file}", flush=True)
            continue
        if cache is None:
            cache = cache_for(samples, recipe.input_hw)
        rows = {id(s): i for i, s in enumerate(cache.samples)}  # unreadable images have no row
        train_rows = [rows[id(samples[i])] for i in train_idx if id(samples[i]) in rows]
        print(f"fold {b + 1}/{args.k}: hold out {samples[held_idx[0]].path.name}..{samples[held_idx[-1]].path.name} "
              f"({len(held_idx)} images), train on {len(train_rows)}", flush=True)
        if trainer is None:
            trainer = Trainer(ds.class_names, recipe, weights)
        else:
            trainer.reset()
        info = trainer.fit(cache, train_rows, label=f"[fold {b + 1}/{args.k}] ")
        trainer.model.save_weights(str(out / f"fold_{b}.weights.h5"))
        preds = predict_files(trainer.detector, [samples[i].path for i in held_idx])
        fold = {
            "block": b,
            "held_out": held_idx,
            "train_images": len(train_rows),
            "training": {k: v for k, v in info.items() if k != "history"},
            "detections": [{"boxes": np.asarray(p["boxes"]).round(2).tolist(), "scores": np.asarray(p["scores"]).round(5).tolist(),
                            "labels": p["labels"]} for p in preds],
        }
        fold_file.write_text(json.dumps(fold))
        folds.append(fold)
        print(f"fold {b + 1}/{args.k} done after {(time.time() - t0) / 60:.1f} min", flush=True)
    cpu = _cpu_name()
    info = {"k": args.k, "gap_frames": args.gap_frames, "input_size": [args.input_size[1], args.input_size[0]],
            "budget_minutes_per_fold": float(args.budget_minutes_per_fold), "recipe": recipe.as_dict(), "cpu": cpu,
            "dataset_fingerprint": ds.fingerprint(), "images": len(samples)}
    summary = summarise(samples, ds.class_names, folds, info)
    from training.calibration import plot_reliability

    rel = lambda p: os.path.relpath(p, REPO_ROOT) if str(Path(p).resolve()).startswith(str(REPO_ROOT)) else str(p)  # noqa: E731
    if plot_blocks(summary, out / "ap_per_block.png"):
        summary["crossval"]["plot"] = rel(out / "ap_per_block.png")
    if plot_reliability(summary["calibration"], out / "reliability.png"):
        summary["calibration"]["plot"] = rel(out / "reliability.png")
    summary["crossval"]["report"] = rel(out / "crossval.md")
    (out / "crossval.md").write_text(format_markdown(summary))
    summary["out_of_fold"] = [{"block": f["block"], "held_out": [samples[i].path.name for i in f["held_out"]],
                               "detections": f["detections"]} for f in folds]
    (out / "crossval.json").write_text(json.dumps(summary, indent=1))
    print(format_markdown(summary), flush=True)
    print(f"wrote {out / 'crossval.json'}", flush=True)
    return summary


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.crossval", description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="?", default=config.DATA_DIR)
    p.add_argument("--layout", default="auto", choices=["auto", "kaggle", "yolo", "coco"])
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--gap-frames", type=int, default=2)
    p.add_argument("--budget-minutes-per-fold", type=float, default=5.0)
    add_recipe_arguments(p)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--resume", action="store_true", help="keep the folds already in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args))

if __name__ == "__main__":
    sys.exit(main())
