"""Does a box scale that grows with the box's size beat the one factor served, out of fold?

    python docs/experiments/box_scale_by_size.py var/exp/cv10_512b [DATA_DIR]

The network's large boxes come out smaller than its small ones (relative to their labels), so a
scale ``factor * (side / 0.1) ** exponent`` (side: the square root of the box's share of the
frame's area) might fit better than ``factor`` alone (exponent 0, what versions 7 and later
serve). On a finished cross-validation's out-of-fold detections (``fold_<i>.json``), this fits
both on the grid of training.calibration (factors 1.00-1.15) times exponents 0-0.15, pooled and
leaving each block out, and prints the pooled AP50-95 of the best scale per exponent and the
leave-one-block-out figures of the best scale with and without the size term.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

EXPONENTS = tuple(round(0.025 * i, 3) for i in range(7))
REFERENCE_SIDE = 0.1


def scaled(results: list, factor: float, exponent: float) -> list:
    """Each detection widened about its centre by factor * (side / REFERENCE_SIDE) ** exponent, clipped."""
    out = []
    for r in results:
        boxes = np.asarray(r.boxes, np.float32).reshape(-1, 4)
        side = np.sqrt(np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0) / (r.width * r.height))
        centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
        half = half * (factor * (side / REFERENCE_SIDE) ** exponent)[:, None]
        bound = np.tile(np.array([r.width, r.height], np.float32), 2)
        out.append(dataclasses.replace(r, boxes=np.clip(np.concatenate([centre - half, centre + half], axis=1), 0, bound)))
    return out


def grid(results: list, num_classes: int) -> dict[tuple[float, float], float]:
    from training.calibration import BOX_FACTORS, _ap50_95

    return {(f, g): _ap50_95(scaled(results, f, g), num_classes) for g in EXPONENTS for f in BOX_FACTORS}


def main() -> int:
    from services.common import config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crossval_dir", type=Path)
    parser.add_argument("data", nargs="?", default=config.DATA_DIR)
    args = parser.parse_args()
    from training.data import load_dataset
    from training.fit import to_results
    from training.metrics import evaluate

    cv = json.loads((args.crossval_dir / "crossval.json").read_text())["crossval"]
    ds = load_dataset(args.data, "auto")
    if ds.fingerprint() != cv["dataset_fingerprint"]:
        parser.error(f"{args.data} is not the dataset this cross-validation ran on (fingerprints differ)")
    samples = sorted(ds.samples, key=lambda s: s.sort_key)
    n = len(ds.class_names)
    blocks = []
    for b in range(cv["k"]):
        fold = json.loads((args.crossval_dir / f"fold_{b}.json").read_text())
        blocks.append(to_results([samples[i] for i in fold["held_out"]], fold["detections"], ds.class_names))
    pooled = grid([r for block in blocks for r in block], n)
    print("| exponent | best factor | pooled AP50-95 |\n|---:|---:|---:|")
    for g in EXPONENTS:
        f = max((key for key in pooled if key[1] == g), key=lambda key: pooled[key])[0]
        print(f"| {g:.3f} | {f:.2f} | {pooled[(f, g)]:.4f} |")
    without = [grid([r for j, block in enumerate(blocks) if j != i for r in block], n) for i in range(len(blocks))]
    for label, exponents in (("factor alone", (0.0,)), ("factor and size exponent", EXPONENTS)):
        held = []
        for block, rest in zip(blocks, without):
            best = max((key for key in rest if key[1] in exponents), key=lambda key: (rest[key], -key[1], -key[0]))
            held.append((best, scaled(block, *best)))
        m = evaluate([r for _, block in held for r in block], ds.class_names, cv["threshold"])
        fits = ", ".join(f"{f:.2f}^{g:.3f}" for (f, g), _ in held)
        print(f"{label}, leave one block out ({fits}): pooled AP50 {m['ap50']:.3f}, AP50-95 {m['ap50_95']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
