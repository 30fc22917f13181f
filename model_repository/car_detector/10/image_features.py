"""The image features monitored for data drift: the one list, and the one computation.

Two kinds: header features (size, format, mode), which the gateway reads from the upload's
header, and pixel statistics (`pixel_statistics`), computed from decoded pixels. On the
detection path the model computes the statistics from the pixels it decodes anyway: the
exporter copies this file into every model version directory (training/version_dir.py), and the
Triton model returns them as its IMAGE_STATS output, so a detection decodes its image once.
The feature service computes the same statistics for its direct callers.

This module must stay importable inside Triton's python backend: standard library, numpy
and Pillow only.

`extract_features` assembles them for a checked, decoded upload (the feature service, the
drift baseline); the gateway logs them as
`image.<name>` (services/common/logs.py) and observes the numeric ones as Prometheus
histograms (services/common/metrics.py); governance/drift.py compares them with the
training baseline; the Elasticsearch index template maps `image.<name>` with
`es_type` (tests/unit/test_image_features.py checks the template against this list).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Statistics are computed on the image scaled down by the largest power of two that keeps its
# longer side >= ANALYSIS_SIDE (676x380 frames: 338x190): they barely move with scale, and the
# cost stays flat whatever the upload's size.
ANALYSIS_SIDE = 320


@dataclass(frozen=True)
class Feature:
    name: str
    meaning: str
    es_type: str                         # Elasticsearch field type of image.<name>
    buckets: tuple[float, ...] = ()      # Prometheus histogram buckets (numeric features only)
    unit: str = ""

    @property
    def numeric(self) -> bool:
        return self.es_type != "keyword"


FEATURES: tuple[Feature, ...] = (
    Feature("width", "pixels of the upright (EXIF-applied) image", "integer",
            (64, 128, 256, 320, 480, 640, 720, 1024, 1280, 1920, 2560, 3840, 7680), "pixels"),
    Feature("height", "pixels of the upright image", "integer",
            (64, 128, 256, 320, 380, 480, 640, 720, 1080, 1440, 2160, 4320), "pixels"),
    Feature("aspect_ratio", "width / height", "float", (0.5, 0.75, 1.0, 1.25, 1.5, 1.78, 2.0, 2.5, 3.0)),
    Feature("byte_size", "size of the upload in bytes", "long", (1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7), "bytes"),
    Feature("brightness", "mean luma, 0 (black) to 255 (white)", "float", tuple(float(v) for v in range(16, 256, 16))),
    Feature("contrast", "standard deviation of luma (RMS contrast)", "float", (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128)),
    Feature("sharpness", "variance of the Laplacian of luma; low means blurred", "float",
            (10, 30, 100, 300, 1000, 3000, 10000, 30000)),
    Feature("saturation", "mean HSV saturation, 0 to 1", "float", tuple(round(0.05 * i, 2) for i in range(1, 21))),
    Feature("colourfulness", "Hasler & Suesstrunk (2003) colourfulness metric", "float",
            (5, 10, 20, 30, 40, 50, 60, 80, 100, 150)),
    Feature("format", "file format of the upload (JPEG, PNG, ...)", "keyword"),
    Feature("mode", "colour mode of the upload (RGB, L, CMYK, ...)", "keyword"),
)

# Read from the upload's header; the rest are pixel statistics.
HEADER: tuple[str, ...] = ("width", "height", "format", "mode", "byte_size", "aspect_ratio")
NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
PIXEL: tuple[str, ...] = tuple(name for name in NAMES if name not in HEADER)
NUMERIC: tuple[str, ...] = tuple(f.name for f in FEATURES if f.numeric)
BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}


def index_template_properties() -> dict[str, dict[str, str]]:
    """The `image` object's properties in observability/elasticsearch/index-template.json."""
    return {f.name: {"type": f.es_type} for f in FEATURES}


def header_features(width: int, height: int, format: str, mode: str, byte_size: int) -> dict[str, float | int | str]:
    """The header features of an upload (width and height of the upright image)."""
    return {"width": width, "height": height, "format": format, "mode": mode, "byte_size": byte_size,
            "aspect_ratio": round(width / height, 4)}


def analysis_factor(size: tuple[int, int], side: int = ANALYSIS_SIDE) -> int:
    """The largest power of two that keeps the longer side >= side (1: keep the size)."""
    factor = 1
    while max(size) // (factor * 2) >= side:
        factor *= 2
    return factor


def pixel_statistics(rgb: np.ndarray) -> dict[str, float]:
    """The pixel statistics of a uint8 RGB array [H, W, 3] already at analysis scale."""
    rgb = np.asarray(rgb, dtype=np.float32)
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
        "brightness": round(float(luma.mean()), 3),
        "contrast": round(float(luma.std()), 3),
        "sharpness": round(float(laplacian.var()) if laplacian.size else 0.0, 3),
        "saturation": round(float(saturation.mean()), 4),
        "colourfulness": round(float(colourfulness), 3),
    }


def pixel_statistics_of_full(rgb: np.ndarray) -> dict[str, float]:
    """The pixel statistics of a decoded uint8 RGB array at full size (box-filtered down first)."""
    from PIL import Image

    return pixel_statistics(np.asarray(analysis_image(Image.fromarray(np.ascontiguousarray(rgb)))))


def analysis_image(rgb: Any) -> Any:
    """A Pillow image divided by the largest power of two that keeps its longer side >=
    ANALYSIS_SIDE (so between ANALYSIS_SIDE and twice that, unless it was smaller to begin with)."""
    factor = analysis_factor(rgb.size, ANALYSIS_SIDE)
    return rgb.reduce(factor) if factor > 1 else rgb


def extract_features(image: Any) -> dict[str, float | int | str]:
    """Monitoring features of a checked, decoded upload (services/common/images.py's
    CheckedImage; check_image with analysis_side=ANALYSIS_SIDE lets libjpeg decode a JPEG at
    the right scale already, and a full-size decode gives the same scale)."""
    if image.rgb is None:
        raise ValueError("extract_features needs a decoded image (check_image with decode=True)")
    return {**header_features(image.width, image.height, image.format, image.mode, image.byte_size),
            **pixel_statistics(np.asarray(analysis_image(image.rgb)))}
