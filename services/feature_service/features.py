"""Image features for monitoring data drift (not for the model itself).

Header features come from the upload's header; pixel statistics are computed on the image
scaled down by the largest power of two that keeps its longer side >= ANALYSIS_SIDE (676x380
frames: 338x190). A JPEG is decoded at up to 1/8 of its size directly (check_image's
analysis_side); the rest is box-filtered down.

The features, their meanings and the statistics' code are defined once, in
services/common/image_features.py (the Triton model computes the same statistics for every
detection); `extract_features` returns exactly those (tests/unit/test_image_features.py).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from services.common.image_features import ANALYSIS_SIDE, analysis_factor, header_features, pixel_statistics
from services.common.images import CheckedImage

__all__ = ["ANALYSIS_SIDE", "analysis_image", "extract_features"]


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
    return {**header_features(image.width, image.height, image.format, image.mode, image.byte_size),
            **pixel_statistics(np.asarray(analysis_image(image.rgb)))}
