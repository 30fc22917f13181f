"""The training loop shared by ``training.train`` (the shipped model) and ``training.crossval``.

Recipe (v3): MobileNetV2 + FPN + CenterNet/TTFNet head (training.model) trained on patches
cut from the augmented frame at the served scale (the network is fully convolutional, so
it serves whole frames), Adam with warm-up and a cosine decay planned to end with the
wall-clock budget, and an exponential moving average (EMA) of the weights, which is what
gets exported. There is no early stopping on a validation block: choosing the epoch on the
block that is then reported is selection on the test data, and cross-validation measures
the recipe as it is.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from training.augment import AugmentConfig
from training.samples import Sample

log = logging.getLogger("training.fit")

HEATMAP_LOSS_WEIGHT = 1.0
BOX_LOSS_WEIGHT = 5.0  # TTFNet's balance between focal and GIoU losses
CACHE_SCALE = 1.25  # cache above the input size so zoom-in crops still have real pixels


@dataclass
class Recipe:
    input_hw: tuple[int, int] = (288, 512)
    patch_hw: tuple[int, int] | None = (192, 320)
    batch_size: int = 8
    lr: float = 1.5e-3
    budget_minutes: float = 35.0
    max_epochs: int = 400
    steps_per_epoch: int = 0  # 0 = one pass over the training images
    positive_oversample: float = 2.0
    head_convs: int = 1
    ema_decay: float = 0.998
    seed: int = 1234
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        d["patch_hw"] = list(self.patch_hw) if self.patch_hw else None
        return d


@dataclass
class Cache:
    """Every image decoded once at ``CACHE_SCALE`` x the input size; boxes normalised [0, 1]."""

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    samples: list[Sample]


def load_cache(samples: list[Sample], cache_hw: tuple[int, int]) -> Cache:
    """Images that fail to decode (truncated files that passed the header check) are skipped."""
    from PIL import Image

    arr = np.zeros((len(samples), cache_hw[0], cache_hw[1], 3), np.uint8)
    boxes: list[np.ndarray] = []
    kept: list[Sample] = []
    for s in samples:
        try:
            with Image.open(s.path) as im:
                arr[len(kept)] = np.asarray(im.convert("RGB").resize((cache_hw[1], cache_hw[0]), Image.Resampling.BILINEAR))
        except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
            log.warning("skipping unreadable image %s: %s", s.path, e)
            continue
        boxes.append(s.boxes / np.array([s.width, s.height, s.width, s.height], np.float32))
        kept.append(s)
    return Cache(arr[: len(kept)], boxes, [s.labels for s in kept], kept)


def cache_for(samples: list[Sample], input_hw: tuple[int, int]) -> Cache:
    return load_cache(samples, (int(input_hw[0] * CACHE_SCALE), int(input_hw[1] * CACHE_SCALE)))


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


class Trainer:
    """Model, optimizer, EMA and the traced train step, built once and reset between folds.

    Tracing the train step costs minutes on a loaded 2-core CPU; cross-validation pays it once.
    """

    def __init__(self, class_names: list[str], recipe: Recipe, backbone_weights: str | None,
                 init_from: str | None = None) -> None:
        import tensorflow as tf

        from training.augment import apply_tf
        from training.export import Detector
        from training.model import build_model

        tf.keras.utils.set_random_seed(recipe.seed)
        self.tf, self.recipe, self.class_names = tf, recipe, class_names
        self.input_hw = recipe.input_hw
        self.out_hw = recipe.patch_hw or self.input_hw
        self.model = build_model(self.input_hw, len(class_names), backbone_weights,
                                 any_size=self.out_hw != self.input_hw, head_convs=recipe.head_convs)
        if init_from:
            copy_weights_from_savedmodel(self.model, init_from)
        self.detector = Detector(self.model, self.input_hw, class_names)
        self.initial = self.model.get_weights()
        focal, giou = make_losses()
        self.optimizer = tf.keras.optimizers.Adam(learning_rate=recipe.lr, clipnorm=10.0)
        train_vars = self.model.trainable_variables
        self.ema_vars = [tf.Variable(tf.convert_to_tensor(v), trainable=False) for v in train_vars]
        self.decay = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        model, optimizer, ema_vars, decay, out_hw = self.model, self.optimizer, self.ema_vars, self.decay, self.out_hw

        @tf.function(reduce_retracing=True)
        def train_step(img, crops, colour, hm_t, reg_t, regw_t):  # type: ignore[no-untyped-def]
            x = apply_tf(img, crops, colour, out_hw)
            with tf.GradientTape() as tape:
                hm, ltrb = model(x, training=True)
                l_hm = focal(hm, hm_t)
                l_box = giou(ltrb, reg_t, regw_t)
                loss = HEATMAP_LOSS_WEIGHT * l_hm + BOX_LOSS_WEIGHT * l_box
            grads = tape.gradient(loss, train_vars)
            optimizer.apply_gradients(zip(grads, train_vars))
            for e, v in zip(ema_vars, train_vars):
                e.assign(decay * e + (1.0 - decay) * tf.convert_to_tensor(v))
            return loss, l_hm, l_box

        self.train_step = train_step

    def export_detector(self):  # type: ignore[no-untyped-def]
        """A Detector on a copy of the network fixed to the input size (what is exported)."""
        from training.export import Detector
        from training.model import build_model

        if self.out_hw == self.input_hw:
            return self.detector
        fixed = build_model(self.input_hw, len(self.class_names), None, head_convs=self.recipe.head_convs)
        fixed.set_weights(self.model.get_weights())
        return Detector(fixed, self.input_hw, self.class_names)

    def reset(self) -> None:
        """Back to the initial weights with a fresh optimizer state (Adam's moments and step)."""
        self.model.set_weights(self.initial)
        for v in self.optimizer.variables:
            v.assign(self.tf.zeros_like(v))
        for e, v in zip(self.ema_vars, self.model.trainable_variables):
            e.assign(self.tf.convert_to_tensor(v))

    def fit(self, cache: Cache, indices: list[int] | np.ndarray, label: str = "") -> dict:  # noqa: PLR0915
        """Train on ``cache`` rows ``indices``; leaves the EMA weights in the model."""
        from training.augment import sample_colour, sample_geometry
        from training.targets import encode_targets

        tf, recipe = self.tf, self.recipe
        rng = np.random.default_rng(recipe.seed)
        indices = np.asarray(indices, np.int64)
        pos = [int(i) for i in indices if len(cache.boxes[i])]
        neg = [int(i) for i in indices if not len(cache.boxes[i])]
        bs = recipe.batch_size
        steps = recipe.steps_per_epoch or max(1, math.ceil(len(indices) / bs))

        def epoch_order() -> np.ndarray:
            # Oversample images with objects (recall matters more than empty frames).
            reps = int(recipe.positive_oversample)
            frac = recipe.positive_oversample - reps
            extra = list(rng.choice(pos, int(frac * len(pos)), replace=False)) if frac and pos else []
            pool = np.array(pos * reps + extra + neg, dtype=np.int64)
            order = rng.permutation(pool)
            while len(order) < steps * bs:
                order = np.concatenate([order, rng.permutation(pool)])
            return order[: steps * bs]

        budget_s = recipe.budget_minutes * 60.0
        max_steps = recipe.max_epochs * steps
        planned = max_steps
        warmup_steps = min(100, steps * 2)
        history: list[dict] = []
        step = epoch = 0
        start = time.time()
        trace_seconds = 0.0
        stop_reason = "max_epochs"
        while step < planned:
            epoch += 1
            e_start = time.time()
            bar = tf.keras.utils.Progbar(min(steps, planned - step), stateful_metrics=["lr"], unit_name="step")
            order = epoch_order()
            for s in range(steps):
                idx = np.sort(order[s * bs : (s + 1) * bs])
                crops, bxs, lbs = sample_geometry(rng, [cache.boxes[i] for i in idx], [cache.labels[i] for i in idx],
                                                  self.input_hw, recipe.augment, self.out_hw)
                colour = sample_colour(rng, len(idx), recipe.augment)
                hm_t, reg_t, regw_t = encode_targets(bxs, lbs, self.out_hw, len(self.class_names))
                progress = min(1.0, step / max(1, planned))
                lr = recipe.lr * min(1.0, (step + 1) / warmup_steps) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
                self.optimizer.learning_rate.assign(lr)
                # EMA with a warm-up (TF object detection's rule): early weights are forgotten fast.
                self.decay.assign(min(recipe.ema_decay, (1.0 + step) / (10.0 + step)))
                loss, l_hm, l_box = self.train_step(cache.images[idx], crops, colour, hm_t, reg_t, regw_t)
                step += 1
                if step == 1:
                    # The budget is for training: the first call's graph tracing is not counted.
                    trace_seconds = time.time() - start
                    start = time.time()
                bar.update(s + 1, [("loss", float(loss)), ("heatmap", float(l_hm)), ("box", float(l_box)), ("lr", lr)])
                if step >= planned or time.time() - start >= budget_s:
                    break
            elapsed = time.time() - start
            history.append({"epoch": epoch, "steps": step, "loss": float(loss), "seconds": round(time.time() - e_start, 1)})
            # Re-plan the schedule from the measured speed (the CPU is shared, so it drifts).
            per_step = elapsed / max(1, step - 1)
            planned = max(step, min(max_steps, step + int((budget_s - elapsed) / max(per_step, 1e-3))))
            print(f"{label}epoch {epoch}: {step}/{planned} steps, {elapsed / 60:.1f}/{recipe.budget_minutes:g} min, "
                  f"{per_step:.2f} s/step, loss {float(loss):.3f}", flush=True)
            if elapsed >= budget_s:
                stop_reason = "wall-clock budget"
                break
        else:
            stop_reason = "wall-clock budget" if planned < max_steps else "max_epochs"
        for v, e in zip(self.model.trainable_variables, self.ema_vars):
            v.assign(e.numpy())
        return {
            "epochs_run": epoch,
            "steps": step,
            "stop_reason": stop_reason,
            "train_seconds": round(time.time() - start, 1),
            "first_step_seconds": round(trace_seconds, 1),
            "weights": "exponential moving average of the training weights",
            "history": history,
        }


def copy_weights_from_savedmodel(model, version_dir: str) -> None:  # type: ignore[no-untyped-def]
    """Warm start: restore a previous version's network weights (same architecture and classes).

    A SavedModel's variables are a checkpoint whose root is the exported Detector; its
    ``model`` child is this network.
    """
    import tensorflow as tf

    before = [w.numpy() for w in model.weights[-2:]]
    status = tf.train.Checkpoint(model=model).restore(str(Path(version_dir) / "model.savedmodel" / "variables" / "variables"))
    status.expect_partial()
    if all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights[-2:])):
        raise ValueError(f"{version_dir}: no network weights restored (architecture or classes differ)")
    log.info("warm start from %s", version_dir)


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


def to_results(samples: list[Sample], preds: list[dict], class_names: list[str]) -> list:
    from training.metrics import ImageResult

    index = {c: i for i, c in enumerate(class_names)}
    return [
        ImageResult(
            gt_boxes=s.boxes,
            gt_labels=s.labels,
            boxes=np.asarray(p["boxes"], np.float32).reshape(-1, 4),
            scores=np.asarray(p["scores"], np.float32),
            labels=np.array([index.get(c, -1) for c in p["labels"]], np.int32),
            width=s.width,
            height=s.height,
        )
        for s, p in zip(samples, preds)
    ]


def evaluate_detector(detector, samples: list[Sample], class_names: list[str], threshold: float | None = None,  # type: ignore[no-untyped-def]
                      box_factor: float = 1.0) -> dict:
    """The exported detector's metrics on ``samples``, its boxes scaled by ``box_factor`` as served."""
    from training.calibration import scale_results
    from training.metrics import evaluate

    results = to_results(samples, predict_files(detector, [s.path for s in samples]), class_names)
    return evaluate(scale_results(results, box_factor), class_names, threshold)
