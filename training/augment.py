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


def sample_geometry(
    rng: np.random.Generator,
    boxes_norm: list[np.ndarray],
    labels: list[np.ndarray],
    input_hw: tuple[int, int],
    cfg: AugmentConfig,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Crop windows [B,4] (y1,x1,y2,x2 normalised) and the boxes in input pixels after them.

    ``boxes_norm`` are x1,y1,x2,y2 in [0,1] of the source image.
    """
    h_in, w_in = input_hw
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
        crops[i] = (y0, x1c, y0 + wh, x2c)
        if len(b) == 0:
            out_boxes.append(np.zeros((0, 4), np.float32))
            out_labels.append(np.zeros((0,), np.int32))
            continue
        nx1 = (b[:, 0] - x0) / ww
        nx2 = (b[:, 2] - x0) / ww
        if flip:
            nx1, nx2 = 1.0 - nx2, 1.0 - nx1
        ny1 = (b[:, 1] - y0) / wh
        ny2 = (b[:, 3] - y0) / wh
        full = np.stack([nx1 * w_in, ny1 * h_in, nx2 * w_in, ny2 * h_in], axis=1)
        clipped = full.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, w_in)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, h_in)
        area_full = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
        cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (cw >= 2) & (ch >= 2) & (cw * ch >= cfg.min_visible * np.maximum(area_full, 1e-6))
        out_boxes.append(clipped[keep].astype(np.float32))
        out_labels.append(lab[keep])
    return crops, out_boxes, out_labels


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
