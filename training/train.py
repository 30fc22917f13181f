"""Train the car detector and export a new Triton model version.

    python -m training.train --data DIR [--backbone-weights imagenet|none|PATH]
                             [--budget-minutes 30] [--output model_repository] [--version N]

Pipeline: load + validate the data, contiguous train/validation split, in-memory image cache,
augmented training with a wall-clock budget (cosine LR planned from the measured epoch time),
validation AP50 after every epoch with early stopping on it, then export of the best weights
as ``<output>/car_detector/<N>/`` (model.py, model.savedmodel, model_metadata.json).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from training import DEFAULT_DATA_DIR, DEFAULT_MODEL_REPOSITORY
from training.augment import AugmentConfig
from training.data import DataError, Dataset, Sample, load_dataset, split_contiguous

log = logging.getLogger("training.train")

HEATMAP_LOSS_WEIGHT = 1.0
BOX_LOSS_WEIGHT = 5.0  # TTFNet's balance between focal and GIoU losses


def parse_size(text: str) -> tuple[int, int]:
    """'352x192' (width x height) -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got '{text}'") from None
    if w % 32 or h % 32 or w < 64 or h < 64:
        raise argparse.ArgumentTypeError("width and height must be multiples of 32, at least 64")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=env("DATA_DIR", str(DEFAULT_DATA_DIR)), help="dataset folder (env DATA_DIR)")
    p.add_argument("--layout", default="auto", choices=["auto", "kaggle", "yolo", "coco"])
    p.add_argument(
        "--backbone-weights",
        default=env("BACKBONE_WEIGHTS", "imagenet"),
        help="imagenet (offline file under ../shared/weights or $KERAS_HOME/models, else download), none, or a .h5 path",
    )
    p.add_argument("--budget-minutes", type=float, default=float(env("TRAIN_BUDGET_MINUTES", "30")),
                   help="wall-clock budget of the training loop (validation included)")
    p.add_argument("--output", default=env("MODEL_REPOSITORY", str(DEFAULT_MODEL_REPOSITORY)),
                   help="Triton model repository root")
    p.add_argument("--version", type=int, default=None, help="version number to (re)write; default max+1")
    p.add_argument("--input-size", type=parse_size, default=parse_size(env("INPUT_SIZE", "352x192")),
                   help="network input WIDTHxHEIGHT (multiples of 32); keep the frames' aspect")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-epochs", type=int, default=80)
    p.add_argument("--min-epochs", type=int, default=6, help="no early stop before this many epochs")
    p.add_argument("--patience", type=int, default=10, help="epochs without a better validation AP50")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--val-position", type=float, default=1.0,
                   help="where the validation block starts (0 = first frames, 1 = last frames)")
    p.add_argument("--positive-oversample", type=float, default=2.0,
                   help="how often images with objects are drawn relative to empty ones")
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0 = one pass over the training images")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-export", action="store_true", help="train and evaluate only")
    p.add_argument("--triton", default=env("TRITON_RELOAD_GRPC"), metavar="HOST:PORT",
                   help="after export, ask this running Triton (gRPC) to load the new version")
    p.add_argument("--registry", default=None, metavar="PATH",
                   help="model registry JSON that records the new version "
                        "(default $MODEL_REGISTRY_PATH or governance/model_registry.json)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


# --------------------------------------------------------------------------- data cache


def load_cache(samples: list[Sample], cache_hw: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray], list[Sample]]:
    """Decode every image once, resized to ``cache_hw``; boxes become normalised [0, 1].

    Images that fail to decode here (truncated files that passed the header check) are
    skipped with a message naming the file.
    """
    from PIL import Image

    arr = np.zeros((len(samples), cache_hw[0], cache_hw[1], 3), np.uint8)
    boxes, kept = [], []
    for s in samples:
        try:
            with Image.open(s.path) as im:
                im = im.convert("RGB").resize((cache_hw[1], cache_hw[0]), Image.BILINEAR)
                arr[len(kept)] = np.asarray(im)
        except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
            log.warning("skipping unreadable image %s: %s", s.path, e)
            continue
        boxes.append(s.boxes / np.array([s.width, s.height, s.width, s.height], np.float32))
        kept.append(s)
    return arr[: len(kept)], boxes, kept


# --------------------------------------------------------------------------- losses


def make_losses():  # type: ignore[no-untyped-def]
    import tensorflow as tf

    from training.model import cell_centres

    def focal(logits, target):  # CenterNet's penalty-reduced focal loss
        p = tf.clip_by_value(tf.sigmoid(logits), 1e-4, 1 - 1e-4)
        pos = tf.cast(tf.equal(target, 1.0), tf.float32)
        pos_loss = tf.math.log(p) * tf.square(1 - p) * pos
        neg_loss = tf.math.log(1 - p) * tf.square(p) * tf.pow(1 - target, 4) * (1 - pos)
        n = tf.maximum(tf.reduce_sum(pos), 1.0)
        return -(tf.reduce_sum(pos_loss) + tf.reduce_sum(neg_loss)) / n

    def giou(ltrb, target_boxes, weights):
        shape = tf.shape(ltrb)
        c = cell_centres(shape[1], shape[2])[None]
        pred = tf.concat([c - ltrb[..., :2], c + ltrb[..., 2:]], axis=-1)
        px1, py1, px2, py2 = tf.unstack(pred, axis=-1)
        tx1, ty1, tx2, ty2 = tf.unstack(target_boxes, axis=-1)
        pa = (px2 - px1) * (py2 - py1)
        ta = (tx2 - tx1) * (ty2 - ty1)
        iw = tf.nn.relu(tf.minimum(px2, tx2) - tf.maximum(px1, tx1))
        ih = tf.nn.relu(tf.minimum(py2, ty2) - tf.maximum(py1, ty1))
        inter = iw * ih
        union = pa + ta - inter + 1e-6
        enclose = (tf.maximum(px2, tx2) - tf.minimum(px1, tx1)) * (tf.maximum(py2, ty2) - tf.minimum(py1, ty1)) + 1e-6
        g = inter / union - (enclose - union) / enclose
        return tf.reduce_sum((1 - g) * weights) / (tf.reduce_sum(weights) + 1e-4)

    return focal, giou


# --------------------------------------------------------------------------- evaluation


def predict_files(detector, paths: list[Path], batch_size: int = 16) -> list[dict]:  # type: ignore[no-untyped-def]
    """Run the serving signature on the encoded files (exactly what Triton will run)."""
    import tensorflow as tf

    outs = []
    for i in range(0, len(paths), batch_size):
        data = [p.read_bytes() for p in paths[i : i + batch_size]]
        res = detector.serve(tf.constant(data))
        n = res["num_detections"].numpy()
        for j in range(len(data)):
            k = int(n[j])
            outs.append(
                {
                    "boxes": res["boxes"].numpy()[j, :k],
                    "scores": res["scores"].numpy()[j, :k],
                    "labels": [v.decode() for v in res["labels"].numpy()[j, :k]],
                }
            )
    return outs


def evaluate_detector(detector, samples: list[Sample], class_names: list[str], threshold: float | None = None) -> dict:  # type: ignore[no-untyped-def]
    from training.metrics import ImageResult, evaluate

    preds = predict_files(detector, [s.path for s in samples])
    index = {c: i for i, c in enumerate(class_names)}
    results = [
        ImageResult(
            gt_boxes=s.boxes,
            gt_labels=s.labels,
            boxes=p["boxes"],
            scores=p["scores"],
            labels=np.array([index.get(c, -1) for c in p["labels"]], np.int32),
            width=s.width,
            height=s.height,
        )
        for s, p in zip(samples, preds)
    ]
    return evaluate(results, class_names, threshold)


# --------------------------------------------------------------------------- training


def _describe_split(samples: list[Sample]) -> dict:
    if not samples:
        return {"images": 0}
    first, last = samples[0].sort_key, samples[-1].sort_key
    return {
        "images": len(samples),
        "with_objects": sum(1 for s in samples if len(s.boxes)),
        "boxes": int(sum(len(s.boxes) for s in samples)),
        "first": samples[0].path.name,
        "last": samples[-1].path.name,
        "frame_range": [first[1], last[1]] if first[0] == last[0] else None,
    }


def train(args: argparse.Namespace) -> Path | None:  # noqa: PLR0915 - one readable linear pipeline
    t_start = time.time()
    ds: Dataset = load_dataset(args.data, args.layout)
    log.info(
        "dataset %s (%s): %d images, %d boxes, classes %s, %d problem(s)",
        ds.root, ds.layout, len(ds.samples), ds.num_boxes, ds.class_names, len(ds.problems),
    )
    if ds.num_boxes == 0:
        raise DataError(f"{ds.root}: no usable boxes, nothing to learn")
    train_s, val_s = split_contiguous(ds.samples, args.val_fraction, position=args.val_position)
    log.info("split: train %s | validation %s", _describe_split(train_s), _describe_split(val_s))

    import tensorflow as tf

    from training.augment import apply_tf, sample_colour, sample_geometry
    from training.export import Detector, write_version
    from training.model import build_model, resolve_backbone_weights
    from training.targets import encode_targets

    tf.keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    input_hw = args.input_size
    # Cache at ~1.5x the input so zoom-in crops still have real pixels to sample.
    cache_hw = (int(input_hw[0] * 1.5), int(input_hw[1] * 1.5))
    images, boxes_norm, train_s = load_cache(train_s, cache_hw)
    labels = [s.labels for s in train_s]
    log.info("cached %d training images at %dx%d (%.0f MB)", len(train_s), cache_hw[1], cache_hw[0], images.nbytes / 1e6)

    weights = resolve_backbone_weights(args.backbone_weights)
    model = build_model(input_hw, len(ds.class_names), weights)
    detector = Detector(model, input_hw, ds.class_names)
    focal, giou = make_losses()
    optimizer = tf.keras.optimizers.Adam(learning_rate=args.lr, clipnorm=10.0)
    aug_cfg = AugmentConfig()

    @tf.function(reduce_retracing=True)
    def train_step(img, crops, colour, hm_t, reg_t, regw_t):  # type: ignore[no-untyped-def]
        x = apply_tf(img, crops, colour, input_hw)
        with tf.GradientTape() as tape:
            hm, ltrb = model(x, training=True)
            l_hm = focal(hm, hm_t)
            l_box = giou(ltrb, reg_t, regw_t)
            loss = HEATMAP_LOSS_WEIGHT * l_hm + BOX_LOSS_WEIGHT * l_box
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, l_hm, l_box

    pos = [i for i, b in enumerate(boxes_norm) if len(b)]
    neg = [i for i, b in enumerate(boxes_norm) if not len(b)]
    steps = args.steps_per_epoch or max(1, math.ceil(len(train_s) / args.batch_size))

    def epoch_order() -> np.ndarray:
        # Oversample images with objects (recall matters more than empty frames).
        reps = int(args.positive_oversample)
        frac = args.positive_oversample - reps
        pool = pos * reps + list(rng.choice(pos, int(frac * len(pos)), replace=False) if frac and pos else []) + neg
        order = rng.permutation(np.array(pool, dtype=np.int64))
        need = steps * args.batch_size
        while len(order) < need:
            order = np.concatenate([order, rng.permutation(np.array(pool, dtype=np.int64))])
        return order[:need]

    budget_s = args.budget_minutes * 60.0
    planned_epochs = args.max_epochs
    warmup_steps = min(100, steps * 2)
    best = {"key": (-1.0, -1.0), "epoch": 0, "weights": None, "metrics": None}
    history = []
    global_step = 0
    loop_start = time.time()
    epoch = 0
    stop_reason = "max_epochs"
    while epoch < planned_epochs:
        epoch += 1
        e_start = time.time()
        bar = tf.keras.utils.Progbar(steps, stateful_metrics=["lr"], unit_name="step")
        order = epoch_order()
        for s in range(steps):
            idx = order[s * args.batch_size : (s + 1) * args.batch_size]
            crops, bxs, lbs = sample_geometry(rng, [boxes_norm[i] for i in idx], [labels[i] for i in idx], input_hw, aug_cfg)
            colour = sample_colour(rng, len(idx), aug_cfg)
            hm_t, reg_t, regw_t = encode_targets(bxs, lbs, input_hw, len(ds.class_names))
            # Linear warm-up, then cosine decay over the epochs the budget allows.
            progress = min(1.0, global_step / max(1, planned_epochs * steps))
            lr = args.lr * min(1.0, (global_step + 1) / warmup_steps) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
            optimizer.learning_rate.assign(lr)
            loss, l_hm, l_box = train_step(images[idx], crops, colour, hm_t, reg_t, regw_t)
            global_step += 1
            bar.update(s + 1, [("loss", float(loss)), ("heatmap", float(l_hm)), ("box", float(l_box)), ("lr", lr)])
        train_time = time.time() - e_start
        m = evaluate_detector(detector, val_s, ds.class_names, threshold=0.3)
        epoch_time = time.time() - e_start
        history.append({"epoch": epoch, "loss": float(loss), "val_ap50": m["ap50"], "val_ap50_95": m["ap50_95"],
                        "val_recall@0.3": m["recall"], "seconds": round(epoch_time, 1)})
        # AP50 saturates near 1.0 on a small block: differences below 0.01 are one box, so
        # compare AP50 at two decimals and break ties with AP50-95 (box quality).
        key = (round(m["ap50"], 2), round(m["ap50_95"], 4))
        improved = key >= best["key"]  # ties go to the later (longer-trained) epoch
        if improved:
            best.update(key=key, epoch=epoch, weights=model.get_weights(), metrics=m)
        print(
            f"epoch {epoch}/{planned_epochs}: train {train_time:.0f}s, val AP50 {m['ap50']:.4f} "
            f"AP50-95 {m['ap50_95']:.4f} recall@0.3 {m['recall']:.3f}{' *' if improved else ''}",
            flush=True,
        )
        elapsed = time.time() - loop_start
        if epoch in (1, 2):
            # Plan the LR schedule to end when the budget does; epoch 1 includes graph tracing,
            # so the plan is redone with the steadier epoch 2 time.
            fit = epoch + int((budget_s - elapsed) // max(epoch_time, 1e-3))
            planned_epochs = max(epoch, min(args.max_epochs, fit))
            log.info("epoch takes %.0fs: planning %d epochs within %.0f min", epoch_time, planned_epochs, args.budget_minutes)
        if epoch - best["epoch"] >= args.patience and epoch >= args.min_epochs:
            stop_reason = f"early stop: no better validation AP50 for {args.patience} epochs"
            break
        if elapsed + epoch_time > budget_s:
            stop_reason = "wall-clock budget"
            break
    train_seconds = time.time() - loop_start
    log.info("stopped after %d epochs (%s), best epoch %d", epoch, stop_reason, best["epoch"])
    model.set_weights(best["weights"])
    final = evaluate_detector(detector, val_s, ds.class_names)  # chooses the operating threshold
    from training.metrics import clean_nan, format_markdown

    print(format_markdown(final, f"Validation metrics (best epoch {best['epoch']})"), flush=True)
    if args.no_export:
        return None
    metadata = {
        "class_names": ds.class_names,
        "input_size": {"width": input_hw[1], "height": input_hw[0]},
        "architecture": "MobileNetV2(alpha=1.0) + FPN(s8/16/32) + CenterNet/TTFNet head at stride 8",
        "dataset": {
            "path": str(Path(args.data).resolve()),
            "layout": ds.layout,
            "fingerprint": ds.fingerprint(),
            "images": len(ds.samples),
            "boxes": ds.num_boxes,
            "skipped_problems": len(ds.problems),
            "train": _describe_split(train_s),
            "validation": _describe_split(val_s),
        },
        "hyperparameters": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(args).items()
            if k not in ("verbose", "no_export", "triton", "registry")
        }
        | {"augment": vars(aug_cfg), "box_loss_weight": BOX_LOSS_WEIGHT},
        "backbone_weights": weights or "none",
        "training": {
            "epochs_run": epoch,
            "best_epoch": best["epoch"],
            "stop_reason": stop_reason,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.time() - t_start, 1),
            "history": history,
        },
        "validation_metrics": clean_nan(final),
        "operating_threshold": final["threshold"],
        "score_floor": 0.05,
    }
    vdir = write_version(detector, Path(args.output), clean_nan(metadata), version=args.version)
    print(f"exported {vdir}", flush=True)
    # Registered before Triton may serve it: the adapter refuses any version whose files
    # do not match the registry's hash. Retraining a version in place supersedes its entry.
    from governance.model_registry import ModelRegistry

    registry = ModelRegistry(args.registry)
    model_id = registry.register_model(vdir, force=args.version is not None)
    print(f"registered {model_id} in the model registry {registry.registry_path}", flush=True)
    if args.triton:
        reload_triton(args.triton)
    return vdir


def reload_triton(address: str) -> None:
    """Best effort: a Triton in explicit mode serves the new version after load_model()."""
    from training import MODEL_NAME

    try:
        import tritonclient.grpc as grpcclient

        from services.common.service_token import triton_admin_headers

        # Model control is a restricted Triton API (services/triton/run.sh).
        grpcclient.InferenceServerClient(address).load_model(MODEL_NAME, headers=triton_admin_headers(grpc=True))
        print(f"Triton at {address} reloaded {MODEL_NAME}", flush=True)
    except Exception as e:  # noqa: BLE001 - the export itself succeeded; just say so
        print(f"warning: could not reload {MODEL_NAME} on Triton at {address}: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        train(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
