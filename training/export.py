"""Export: SavedModel with an encoded-image serving signature, and Triton version dirs.

The ``serving_default`` signature takes ``images``: tf.string [None] (encoded JPEG, PNG, GIF,
BMP, WebP files as a client has them, any size, grayscale/RGBA/16-bit), decodes, resizes, runs the
network, decodes boxes and applies NMS, all in the graph. Outputs: ``boxes`` [None,K,4]
(x1,y1,x2,y2 in original pixels, clipped), ``scores`` [None,K] (descending), ``labels``
tf.string [None,K] and ``num_detections`` int32 [None].
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable

import tensorflow as tf

from training.model import decode
from training.version_dir import write_version_dir

log = logging.getLogger(__name__)

SCORE_FLOOR = 0.05
MAX_DETECTIONS = 100


class Detector(tf.Module):
    """Wraps the Keras network with the in-graph pre/post-processing used for serving."""

    def __init__(self, model: tf.keras.Model, input_hw: tuple[int, int], class_names: list[str]):
        super().__init__()
        self.model = model
        self.input_hw = tuple(int(v) for v in input_hw)
        self.class_names = tf.constant(class_names, dtype=tf.string)
        # Score calibration (training.calibration), identity until the exporter sets it:
        # variables, so a serve function traced during training picks the values up.
        self.temperature = tf.Variable(1.0, trainable=False, name="calibration_temperature")
        self.shift = tf.Variable(0.0, trainable=False, name="calibration_shift")
        self.score_floor = tf.Variable(SCORE_FLOOR, trainable=False, name="raw_score_floor")

    def set_calibration(self, calibration: dict | None) -> None:
        from training.detections import raw_floor

        params = (calibration or {}).get("params") or {"temperature": 1.0, "shift": 0.0}
        self.temperature.assign(float(params["temperature"]))
        self.shift.assign(float(params["shift"]))
        self.score_floor.assign(raw_floor(calibration, SCORE_FLOOR))

    def _decode_one(self, data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # uint8 output scales 16-bit PNGs down and is the only dtype WebP supports;
        # channels=3 turns grayscale/palette into RGB and drops alpha; expand_animations=False
        # keeps GIFs 3-D (first frame).
        img = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        img.set_shape([None, None, 3])
        hw = tf.shape(img)[:2]
        resized = tf.image.resize(tf.cast(img, tf.float32), self.input_hw, method="bilinear", antialias=False)
        return resized, tf.cast(hw, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        resized, hw = tf.map_fn(
            self._decode_one,
            images,
            fn_output_signature=(
                tf.TensorSpec([self.input_hw[0], self.input_hw[1], 3], tf.float32),
                tf.TensorSpec([2], tf.float32),
            ),
        )
        heat, ltrb = self.model(resized, training=False)
        wh = tf.stack([hw[:, 1], hw[:, 0]], axis=1)
        scale = wh / tf.constant([self.input_hw[1], self.input_hw[0]], tf.float32)
        out = decode(heat, ltrb, scale, wh, max_detections=MAX_DETECTIONS, score_floor=self.score_floor)
        # Monotonic, so the order and the detections kept are those of the raw scores.
        p = tf.clip_by_value(out["scores"], 1e-6, 1 - 1e-6)
        z = tf.math.log(p) - tf.math.log1p(-p)
        calibrated = tf.sigmoid((z - self.shift) / self.temperature)
        labels = tf.gather(self.class_names, out["classes"])
        # Padding rows (beyond num_detections) get an empty label.
        valid = tf.range(MAX_DETECTIONS)[None, :] < out["num_detections"][:, None]
        labels = tf.where(valid, labels, tf.constant(b""))
        return {
            "boxes": out["boxes"],
            "scores": tf.where(valid, calibrated, 0.0),
            "labels": labels,
            "num_detections": out["num_detections"],
        }


def save_savedmodel(detector: Detector, path: Path) -> None:
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    tf.saved_model.save(detector, str(path), signatures={"serving_default": detector.serve})


def write_version(
    detector: Detector,
    repository: Path,
    metadata: dict,
    version: int | None = None,
    add_files: Callable[[Path, dict], None] | None = None,
) -> Path:
    """Write ``<repository>/car_detector/<N>/``: the runtime files (training/version_dir.py),
    model.savedmodel, whatever ``add_files(tmp_dir, metadata)`` adds (the OpenVINO IR),
    model_metadata.json and, last, manifest.json with the SHA-256 of every other file."""

    def fill(tmp: Path, meta: dict) -> None:
        save_savedmodel(detector, tmp / "model.savedmodel")
        if add_files is not None:
            add_files(tmp, meta)

    return write_version_dir(Path(repository), metadata, fill, version=version, default=_json_default)


def _json_default(o):  # type: ignore[no-untyped-def]
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
