"""Single-process Flask baselines for the benchmark (`make bench`); not part of the stack.

    python loadtest/naive_baseline.py PORT MODEL_VERSION_DIR [--mode seed|savedmodel]

Both are one Flask process, one request at a time (threaded=False), no batching, no
separate services: the "just put the model behind Flask" deployment.

--mode seed (default; the "naive baseline" of the targets): what the original spec's
  model-serving sketch describes (decode the image, preprocess it, predict): Pillow
  decodes and resizes the upload to the network's input size in Python, the Keras
  network runs through `model.predict` on that one image, and boxes are decoded and
  non-maximum-suppressed eagerly, per request. The network and its weights are the
  served version's (rebuilt from training/model.py, weights read from the SavedModel),
  so the detections are the same model's.
--mode savedmodel (a strong reference, not naive): the same Flask process calling the
  exported SavedModel signature (decode, resize, network and NMS compiled into one
  graph) - what our Triton model runs, minus batching and the services around it.
"""
from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from PIL import Image  # noqa: E402

app = Flask("naive-baseline")
predict_image = None  # set in main(): bytes -> (boxes, scores)


@app.post("/predict")
def predict():  # type: ignore[no-untyped-def]
    boxes, scores = predict_image(request.files["image"].read())
    return jsonify({"boxes": boxes, "scores": scores})


@app.get("/health")
def health():  # type: ignore[no-untyped-def]
    return jsonify({"status": "healthy"})


def savedmodel_predictor(version_dir: Path):  # type: ignore[no-untyped-def]
    signature = tf.saved_model.load(str(version_dir / "model.savedmodel")).signatures["serving_default"]

    def run(data: bytes) -> tuple[list, list]:
        outputs = signature(images=tf.constant([data]))
        count = int(outputs["num_detections"][0])
        return outputs["boxes"][0, :count].numpy().tolist(), outputs["scores"][0, :count].numpy().tolist()
    return run


def seed_predictor(version_dir: Path):  # type: ignore[no-untyped-def]
    from training.model import decode, network_of_version

    model, meta = network_of_version(version_dir)
    height, width = int(meta["input_size"]["height"]), int(meta["input_size"]["width"])

    def run(data: bytes) -> tuple[list, list]:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        original_w, original_h = image.size
        pixels = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)[None]
        heat, ltrb = model.predict(pixels, verbose=0)
        scale = tf.constant([[original_w / width, original_h / height]], tf.float32)
        out = decode(tf.constant(heat), tf.constant(ltrb), scale, tf.constant([[original_w, original_h]], tf.float32))
        count = int(out["num_detections"][0])
        return out["boxes"][0, :count].numpy().tolist(), out["scores"][0, :count].numpy().tolist()
    return run


def main() -> None:
    global predict_image
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("version_dir", type=Path, help="model_repository/car_detector/<N> (or its model.savedmodel)")
    parser.add_argument("--mode", choices=("seed", "savedmodel"), default="seed")
    args = parser.parse_args()
    version_dir = args.version_dir.parent if args.version_dir.name == "model.savedmodel" else args.version_dir
    predict_image = (seed_predictor if args.mode == "seed" else savedmodel_predictor)(version_dir)
    app.run(host="127.0.0.1", port=args.port, threaded=False)


if __name__ == "__main__":
    main()
