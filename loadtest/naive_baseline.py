"""The naive baseline the seed sketches: one Flask process that loads the model
and runs it for each request, no batching, no separate services.
Used only by the benchmark (`make bench`) as a point of comparison.

    python loadtest/naive_baseline.py PORT SAVEDMODEL_DIR
"""
from __future__ import annotations

import sys

import tensorflow as tf
from flask import Flask, jsonify, request

app = Flask("naive-baseline")
model = None


@app.post("/predict")
def predict():  # type: ignore[no-untyped-def]
    image = request.files["image"].read()
    outputs = model.signatures["serving_default"](images=tf.constant([image]))
    count = int(outputs["num_detections"][0])
    return jsonify({"boxes": outputs["boxes"][0, :count].numpy().tolist(),
                    "scores": outputs["scores"][0, :count].numpy().tolist()})


@app.get("/health")
def health():  # type: ignore[no-untyped-def]
    return jsonify({"status": "healthy"})


if __name__ == "__main__":
    model = tf.saved_model.load(sys.argv[2])
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=False)
