"""The image features monitored for data drift: the one list.

services/feature_service/features.py computes them; the gateway logs them as
`image.<name>` (services/common/logs.py) and observes the numeric ones as Prometheus
histograms (services/common/metrics.py); governance/drift.py compares them with the
training baseline; the Elasticsearch index template maps `image.<name>` with
`es_type` (tests/unit/test_image_features.py checks the template against this list).
"""
from __future__ import annotations

from dataclasses import dataclass


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

NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
NUMERIC: tuple[str, ...] = tuple(f.name for f in FEATURES if f.numeric)
BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}


def index_template_properties() -> dict[str, dict[str, str]]:
    """The `image` object's properties in observability/elasticsearch/index-template.json."""
    return {f.name: {"type": f.es_type} for f in FEATURES}
