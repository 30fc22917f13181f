"""Car detector training pipeline.

Modules:
- ``data``: dataset loaders (Kaggle CSV, YOLO, COCO), validation of rows, contiguous split.
- ``model``: MobileNetV2 + light FPN + CenterNet/TTFNet-style head and in-graph decoding.
- ``augment`` / ``targets``: training-time augmentation and target encoding.
- ``metrics``: AP50, AP50-95, precision/recall/F1 per box-size slice.
- ``export``: SavedModel with an encoded-image serving signature, Triton version dirs.
- ``train`` / ``crossval`` / ``evaluate`` / ``explore``: command-line entry points (``python -m training.X``);
  ``cli`` holds what the commands share (the size argument, exit statuses).

Heavy imports (TensorFlow) stay inside the modules that need them so that the data loaders
and metrics can be imported cheaply by unit tests and by other services.
"""

from services.common.config import REPO_ROOT as REPO_ROOT  # re-exported to the training modules

# The data set's and the model repository's locations are settings (DATA_DIR,
# MODEL_REPOSITORY in services/common/config.py), read when a command parses its arguments.
MODEL_NAME = "car_detector"
