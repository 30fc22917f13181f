"""Score decoding and test-time variants out of fold, on a cross-validation's saved fold networks.

    python docs/experiments/decode_variants.py var/reports/crossval [DATA_DIR] [--variants served,flip,...]

`python -m training.crossval` keeps each fold's network (``fold_<i>.weights.h5``) beside its
out-of-fold detections. This reruns every fold's network on its held-out block with each
variant below and scores the pooled out-of-fold detections with the crossval's own summary
(one threshold chosen on the pooled detections, training.metrics), so variants compare on
exactly the figures the issue judges, without training again:

- ``served``: what the exported model does (3x3 peaks, top 300, per-class NMS at IoU 0.6);
  it must reproduce the crossval's own figures, which checks this script.
- ``nms0.5`` / ``nms0.7`` / ``peaks``: NMS at another IoU, or none after the peak picking
  (``flip+nms0.5``: both).
- ``flip``: horizontal-flip test-time augmentation (heat map probabilities and edge distances
  averaged with those of the mirrored frame, left and right distances swapped): 2x the CPU.
- ``scale1.25``: the frame resized to 640x352 instead of 512x288 (the network is fully
  convolutional): 1.56x the CPU.
- ``vote3`` / ``vote3sq``: each cell's box replaced by the average of the boxes of its 3x3
  neighbourhood weighted by their heat (or its square) before the peaks are picked, so a peak's
  box is voted by the cells around it (box voting; two pooling ops on the small grid).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

VARIANTS = ("served", "nms0.5", "nms0.7", "peaks", "flip", "flip+nms0.5", "scale1.25", "vote3", "vote3sq")


def voted_ltrb(heat_logits, ltrb, power: float):  # type: ignore[no-untyped-def]
    """ltrb distances whose boxes are the heat-weighted 3x3 average of the neighbours' boxes."""
    import tensorflow as tf

    from training.model import cell_centres

    shape = tf.shape(ltrb)
    centres = cell_centres(shape[1], shape[2])[None]
    boxes = tf.concat([centres - ltrb[..., :2], centres + ltrb[..., 2:]], axis=-1)
    w = tf.reduce_max(tf.sigmoid(heat_logits), axis=-1, keepdims=True) ** power
    summed = tf.nn.avg_pool2d(boxes * w, 3, 1, "SAME")
    voted = summed / tf.maximum(tf.nn.avg_pool2d(w, 3, 1, "SAME"), 1e-9)
    return tf.concat([centres - voted[..., :2], voted[..., 2:] - centres], axis=-1)


def network_outputs(model, data: list[bytes], input_hw: tuple[int, int], flip: bool):  # type: ignore[no-untyped-def]
    """Heat-map logits and ltrb distances for encoded frames, decoded and resized by the
    exported signature's own code (training.export.Detector)."""
    import tensorflow as tf

    from training.export import Detector

    decoded = [Detector(model, input_hw, [])._decode_one(tf.constant(d)) for d in data]
    x = tf.stack([frame for frame, _ in decoded])
    sizes = [[float(hw[1]), float(hw[0])] for _, hw in decoded]
    heat, ltrb = model(x, training=False)
    if flip:
        heat_f, ltrb_f = model(x[:, :, ::-1, :], training=False)
        p = (tf.sigmoid(heat) + tf.sigmoid(heat_f[:, :, ::-1, :])) / 2
        heat = tf.math.log(p) - tf.math.log1p(-p)
        ltrb = (ltrb + tf.gather(ltrb_f[:, :, ::-1, :], [2, 1, 0, 3], axis=-1)) / 2
    return heat, ltrb, np.array(sizes, np.float32)


def detections(model, paths: list[Path], variants: list[str], input_hw: tuple[int, int],  # type: ignore[no-untyped-def]
               class_names: list[str]) -> dict[str, list[dict]]:
    """Per variant, the detections of every frame; one network pass per input size and flip."""
    import tensorflow as tf

    from training.export import SCORE_FLOOR
    from training.model import decode

    out: dict[str, list[dict]] = {v: [] for v in variants}
    for i in range(0, len(paths), 16):
        data = [p.read_bytes() for p in paths[i:i + 16]]
        passes: dict[tuple, tuple] = {}
        for v in variants:
            hw = (352, 640) if v == "scale1.25" else input_hw
            key = (hw, v.startswith("flip"))
            if key not in passes:
                passes[key] = network_outputs(model, data, hw, flip=key[1])
            heat, ltrb, wh = passes[key]
            if v.startswith("vote3"):
                ltrb = voted_ltrb(heat, ltrb, 2.0 if v.endswith("sq") else 1.0)
            iou = {"nms0.5": 0.5, "flip+nms0.5": 0.5, "nms0.7": 0.7, "peaks": 1.0}.get(v, 0.6)
            scale = wh / np.array([hw[1], hw[0]], np.float32)
            res = decode(heat, ltrb, tf.constant(scale), tf.constant(wh), score_floor=SCORE_FLOOR, iou_threshold=iou)
            n = res["num_detections"].numpy()
            for j in range(len(n)):
                k = int(n[j])
                out[v].append({"boxes": res["boxes"].numpy()[j, :k].round(2).tolist(),
                               "scores": res["scores"].numpy()[j, :k].round(5).tolist(),
                               "labels": [class_names[c] for c in res["classes"].numpy()[j, :k]]})
    return out


def main() -> int:
    from services.common import config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crossval_dir", type=Path)
    parser.add_argument("data", nargs="?", default=config.DATA_DIR)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    from training.crossval import summarise
    from training.data import load_dataset
    from training.model import build_model

    summary = json.loads((args.crossval_dir / "crossval.json").read_text())
    cv = summary["crossval"]
    ds = load_dataset(args.data, "auto")
    if ds.fingerprint() != cv["dataset_fingerprint"]:
        parser.error(f"{args.data} is not the dataset this cross-validation ran on (fingerprints differ)")
    samples = sorted(ds.samples, key=lambda s: s.sort_key)
    input_hw = (cv["input_size"][1], cv["input_size"][0])
    model = build_model(input_hw, len(ds.class_names), None, any_size=True,
                        head_convs=cv.get("recipe", {}).get("head_convs", 1))
    variants = args.variants.split(",")
    folds: dict[str, list[dict]] = {v: [] for v in variants}
    for b in range(cv["k"]):
        fold = json.loads((args.crossval_dir / f"fold_{b}.json").read_text())
        model.load_weights(str(args.crossval_dir / f"fold_{b}.weights.h5"))
        paths = [samples[i].path for i in fold["held_out"]]
        for v, found in detections(model, paths, variants, input_hw, ds.class_names).items():
            folds[v].append({**fold, "detections": found})
        print(f"block {b} scored", flush=True)
    print("| variant | pooled AP50 | pooled AP50-95 | worst block AP50 | precision | recall | AP50 per block |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for v in variants:
        s = summarise(samples, ds.class_names, folds[v], {"k": cv["k"]})["crossval"]
        p = s["pooled"]
        per_block = " / ".join(f"{b['ap50']:.3f}" for b in s["blocks"])
        print(f"| {v} | {p['ap50']:.3f} | {p['ap50_95']:.3f} | {s['worst_block']['ap50']:.3f} | "
              f"{p['precision']:.3f} | {p['recall']:.3f} | {per_block} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
