"""Image features for monitoring data drift (not for the model itself).

Computed on the image scaled down by the largest power of two that keeps its longer
side >= 320 px (676x380 frames: 338x190): the statistics barely move with scale and the
cost stays flat whatever the upload's size. A JPEG is decoded at up to 1/8 of its size
directly (check_image's analysis_side); the rest is box-filtered down.

The features, their meanings and types are listed once, in services/common/image_features.py;
`extract_features` returns exactly those (tests/unit/test_image_features.py).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from services.common.images import CheckedImage, analysis_factor

ANALYSIS_SIDE = 320


def analysis_image(rgb: Image.Image) -> Image.Image:
    """`rgb` divided by the largest power of two that keeps its longer side >= ANALYSIS_SIDE
    (so between ANALYSIS_SIDE and twice that, unless it was smaller to begin with)."""
    factor = analysis_factor(rgb.size, ANALYSIS_SIDE)
    return rgb.reduce(factor) if factor > 1 else rgb


def extract_features(image: CheckedImage) -> dict[str, float | int | str]:
    """Monitoring features of a decoded image (check_image with analysis_side=ANALYSIS_SIDE
    decodes a JPEG at the right scale already; a full-size decode gives the same scale)."""
    if image.rgb is None:
        raise ValueError("extract_features needs a decoded image (check_image with decode=True)")
    rgb = np.asarray(analysis_image(image.rgb), dtype=np.float32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    laplacian = (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * luma[1:-1, 1:-1]
    )
    # Pairwise over the three planes: same values as rgb.max(axis=2), ~5x less CPU (a
    # reduction over a last axis of length 3 was the feature service's largest cost).
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    rg, yb = red - green, 0.5 * (red + green) - blue
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    return {
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "mode": image.mode,
        "byte_size": image.byte_size,
        "aspect_ratio": round(image.width / image.height, 4),
        "brightness": round(float(luma.mean()), 3),
        "contrast": round(float(luma.std()), 3),
        "sharpness": round(float(laplacian.var()) if laplacian.size else 0.0, 3),
        "saturation": round(float(saturation.mean()), 4),
        "colourfulness": round(float(colourfulness), 3),
    }
