"""Augmentation: random scale/crop (zoom in and out), horizontal flip, aspect and colour jitter.

Geometry is sampled in numpy (so boxes can be transformed and targets encoded there) and
applied in one ``tf.image.crop_and_resize`` call per batch: a crop window larger than the
image zooms out (padding with grey), a smaller one zooms in and cuts cars at the frame edges,
and a window with x1 > x2 flips the image. That covers the distant, small and partly
visible cars the model must not miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD_VALUE = 114.0  # neutral grey for zoomed-out borders


@dataclass
class AugmentConfig:
    min_scale: float = 0.6  # zoom factor: <1 zooms out (smaller cars), >1 zooms in
    max_scale: float = 1.8
    aspect_jitter: float = 0.12
    flip_prob: float = 0.5
    identity_prob: float = 0.15  # some full, unflipped frames keep the served distribution in view
    min_visible: float = 0.3  # keep a cut box if this fraction of it stays in the crop
    brightness: float = 40.0
    contrast: tuple[float, float] = (0.65, 1.35)
    saturation: tuple[float, float] = (0.5, 1.5)
    grayscale_prob: float = 0.05
    patch_car_prob: float = 0.8  # with patch training: how often the patch is placed on a car


def sample_geometry(
    rng: np.random.Generator,
    boxes_norm: list[np.ndarray],
    labels: list[np.ndarray],
    input_hw: tuple[int, int],
    cfg: AugmentConfig,
    patch_hw: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Crop windows [B,4] (y1,x1,y2,x2 normalised) and the boxes in output pixels after them.

    ``boxes_norm`` are x1,y1,x2,y2 in [0,1] of the source image. With ``patch_hw`` the
    augmented frame (at ``input_hw``) is further cut to a ``patch_hw`` window, usually around
    a car: the network is fully convolutional, so it trains on patches at the served scale
    and serves whole frames, at a fraction of the CPU per step.
    """
    h_in, w_in = input_hw
    ph, pw = patch_hw or input_hw
    crops = np.zeros((len(boxes_norm), 4), np.float32)
    out_boxes, out_labels = [], []
    for i, (b, lab) in enumerate(zip(boxes_norm, labels)):
        if rng.random() < cfg.identity_prob:
            ww = wh = 1.0
            x0 = y0 = 0.0
            flip = False
        else:
            s = float(np.exp(rng.uniform(np.log(cfg.min_scale), np.log(cfg.max_scale))))
            a = float(np.exp(rng.uniform(-cfg.aspect_jitter, cfg.aspect_jitter)))
            ww, wh = a / s, 1.0 / (a * s)
            x0 = rng.uniform(min(0.0, 1.0 - ww), max(0.0, 1.0 - ww))
            y0 = rng.uniform(min(0.0, 1.0 - wh), max(0.0, 1.0 - wh))
            flip = rng.random() < cfg.flip_prob
        x1c, x2c = (x0 + ww, x0) if flip else (x0, x0 + ww)
        full = np.zeros((0, 4), np.float64)
        if len(b):
            nx1 = (b[:, 0] - x0) / ww
            nx2 = (b[:, 2] - x0) / ww
            if flip:
                nx1, nx2 = 1.0 - nx2, 1.0 - nx1
            ny1 = (b[:, 1] - y0) / wh
            ny2 = (b[:, 3] - y0) / wh
            full = np.stack([nx1 * w_in, ny1 * h_in, nx2 * w_in, ny2 * h_in], axis=1)
        px, py = _patch_origin(rng, full, (h_in, w_in), (ph, pw), cfg.patch_car_prob)
        # The patch is a sub-window of the augmented frame: map it back to source coordinates.
        crops[i] = (
            y0 + wh * py / h_in,
            x1c + (x2c - x1c) * px / w_in,
            y0 + wh * (py + ph) / h_in,
            x1c + (x2c - x1c) * (px + pw) / w_in,
        )
        if len(b) == 0:
            out_boxes.append(np.zeros((0, 4), np.float32))
            out_labels.append(np.zeros((0,), np.int32))
            continue
        full = full - np.array([px, py, px, py])
        clipped = full.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, pw)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, ph)
        area_full = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
        cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (cw >= 2) & (ch >= 2) & (cw * ch >= cfg.min_visible * np.maximum(area_full, 1e-6))
        out_boxes.append(clipped[keep].astype(np.float32))
        out_labels.append(lab[keep])
    return crops, out_boxes, out_labels


def _patch_origin(
    rng: np.random.Generator, boxes: np.ndarray, frame_hw: tuple[int, int], patch_hw: tuple[int, int], car_prob: float
) -> tuple[float, float]:
    """Top-left corner of the training patch in frame pixels; (0, 0) when the patch is the frame."""
    (h, w), (ph, pw) = frame_hw, patch_hw
    if ph >= h and pw >= w:
        return 0.0, 0.0
    if len(boxes) and rng.random() < car_prob:
        # Centre a random car somewhere inside the patch (not always in the middle).
        x1, y1, x2, y2 = boxes[rng.integers(len(boxes))]
        px = (x1 + x2) / 2 - rng.uniform(0.15, 0.85) * pw
        py = (y1 + y2) / 2 - rng.uniform(0.15, 0.85) * ph
    else:
        px, py = rng.uniform(0, max(w - pw, 0)), rng.uniform(0, max(h - ph, 0))
    return float(np.clip(px, 0, max(w - pw, 0))), float(np.clip(py, 0, max(h - ph, 0)))


def sample_colour(rng: np.random.Generator, n: int, cfg: AugmentConfig) -> np.ndarray:
    """Per-image colour parameters [B,4]: brightness delta, contrast, saturation, grayscale flag."""
    return np.stack(
        [
            rng.uniform(-cfg.brightness, cfg.brightness, n),
            rng.uniform(*cfg.contrast, n),
            rng.uniform(*cfg.saturation, n),
            (rng.random(n) < cfg.grayscale_prob).astype(np.float64),
        ],
        axis=1,
    ).astype(np.float32)


def apply_tf(images, crops, colour, input_hw):  # type: ignore[no-untyped-def]
    """TF part: crop/resize/flip the uint8 batch and jitter colour. Returns float 0..255."""
    import tensorflow as tf

    x = tf.image.crop_and_resize(
        tf.cast(images, tf.float32),
        crops,
        tf.range(tf.shape(images)[0]),
        input_hw,
        extrapolation_value=PAD_VALUE,
    )
    gray = tf.reduce_mean(x, axis=-1, keepdims=True)
    sat = colour[:, 2][:, None, None, None]
    x = gray + (x - gray) * sat
    is_gray = colour[:, 3][:, None, None, None]
    x = x * (1.0 - is_gray) + tf.reduce_mean(x, axis=-1, keepdims=True) * is_gray
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * colour[:, 1][:, None, None, None] + mean + colour[:, 0][:, None, None, None]
    return tf.clip_by_value(x, 0.0, 255.0)
