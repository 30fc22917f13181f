"""Car detector training pipeline.

Modules:
- ``data``: dataset loaders (Kaggle CSV, YOLO, COCO), validation of rows, contiguous split.
- ``model``: MobileNetV2 + light FPN + CenterNet/TTFNet-style head and in-graph decoding.
- ``augment`` / ``targets``: training-time augmentation and target encoding.
- ``metrics``: AP50, AP50-95, precision/recall/F1 per box-size slice.
- ``export``: SavedModel with an encoded-image serving signature, Triton version dirs.
- ``train`` / ``evaluate`` / ``explore``: command-line entry points (``python -m training.X``).

Heavy imports (TensorFlow) stay inside the modules that need them so that the data loaders
and metrics can be imported cheaply by unit tests and by other services.
"""

from services.common.config import REPO_ROOT

# The data is not part of the repository: it lives beside the checkout by default.
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "car-object-detection"
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "model_repository"
MODEL_NAME = "car_detector"
