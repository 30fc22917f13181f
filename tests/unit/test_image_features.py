"""The image-feature list is defined once: the extractor, logs, metrics, drift and the index template agree."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from governance import drift
from services.common import image_features, logs, metrics
from services.common.config import REPO_ROOT
from services.common.images import check_image
from services.common.image_features import extract_features

TEMPLATE = REPO_ROOT / "observability" / "elasticsearch" / "index-template.json"


def _jpeg() -> bytes:
    pixels = (np.random.default_rng(1).random((120, 200, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_the_extractor_returns_exactly_the_declared_features_with_their_types():
    features = extract_features(check_image(_jpeg()))
    assert set(features) == set(image_features.NAMES) and len(features) == len(image_features.NAMES)
    for feature in image_features.FEATURES:
        value = features[feature.name]
        assert isinstance(value, str) if feature.es_type == "keyword" else isinstance(value, (int, float)), feature.name
    assert features["width"] == 200 and features["height"] == 120 and features["format"] == "JPEG"


def test_logs_metrics_and_drift_use_the_one_list():
    assert logs.FEATURE_FIELDS == image_features.NAMES
    assert set(metrics.FEATURE_BUCKETS) == set(image_features.NUMERIC)
    assert all(list(buckets) == sorted(buckets) and buckets for buckets in metrics.FEATURE_BUCKETS.values())
    assert set(drift.NUMERIC_FEATURES) == set(image_features.NUMERIC)
    logged = logs.feature_fields(dict.fromkeys(image_features.NAMES, 1) | {"unrelated": 2})
    assert set(logged) == {f"image.{name}" for name in image_features.NAMES}


def test_the_elasticsearch_index_template_maps_every_feature_as_declared():
    template = json.loads(TEMPLATE.read_text())
    image = template["template"]["mappings"]["properties"]["image"]["properties"]
    assert image == image_features.index_template_properties()
