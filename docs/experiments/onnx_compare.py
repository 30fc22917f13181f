"""ONNX Runtime vs TensorFlow for the car_detector network, on this machine.

    python docs/experiments/onnx_compare.py [--rounds 6] [--seconds 3]

The SavedModel stays the artifact of record; this only measures whether running the
*network* (MobileNetV2 + FPN + head: float image batch in, heat map and box distances
out) in ONNX Runtime would be faster than in TensorFlow. Decoding, resizing and NMS stay
in TensorFlow either way, so they are timed separately (the full `serving_default`
signature) to show what share of a request the network is.

How: the Keras network is rebuilt from training/model.py and its weights are read from
the SavedModel's checkpoint; the rebuilt network is checked against the SavedModel (the
full signature run through training/export.py's Detector must give the same boxes and
scores). It is converted with tf2onnx (opset 17). TF and ORT then run the SAME float
batches, with the same thread budget as Triton's config (intra-op 2, inter-op 1),
interleaved round by round (TF, ORT, TF, ORT, ...) so background load on a shared
machine biases both alike. Reports per-image latency at batch 1 and 4 and throughput.

tf2onnx and onnxruntime are not in requirements.txt (not needed to serve); install them
anywhere on PYTHONPATH, e.g.
    pip install --target /tmp/onnx-deps --no-deps tf2onnx==1.17.0 onnxruntime==1.32.0 onnx flatbuffers
    PYTHONPATH=$PWD:/tmp/onnx-deps .venv/bin/python docs/experiments/onnx_compare.py
Writes $VAR_DIR/bench/onnx_compare.json. A one-off: its result and the decision are in
docs/experiments/README.md; it has no make target and no test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from services.common import config
from services.common.config import REPO_ROOT

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

INTRA, INTER = 2, 1
tf.config.threading.set_intra_op_parallelism_threads(INTRA)
tf.config.threading.set_inter_op_parallelism_threads(INTER)

DATA_DIR = Path(config.DATA_DIR)
OUT = Path(config.VAR_DIR) / "bench" / "onnx_compare.json"


def latest_version() -> Path:
    versions = [p for p in (REPO_ROOT / "model_repository/car_detector").iterdir() if p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


def rebuild_network(version_dir: Path) -> tuple[tf.keras.Model, tuple[int, int], list[str]]:
    from training.model import network_of_version

    network, meta = network_of_version(version_dir)
    return network, (int(meta["input_size"]["height"]), int(meta["input_size"]["width"])), list(meta["class_names"])


def check_same_as_savedmodel(network: tf.keras.Model, hw: tuple[int, int], classes: list[str],
                             version_dir: Path, files: list[bytes]) -> float:
    """Largest score difference between the SavedModel and the rebuilt network + export's pre/post."""
    from training.export import Detector

    saved = tf.saved_model.load(str(version_dir / "model.savedmodel")).signatures["serving_default"]
    rebuilt = Detector(network, hw, classes)
    batch = tf.constant(files[:4])
    a, b = saved(images=batch), rebuilt.serve(batch)
    if not np.array_equal(a["num_detections"].numpy(), b["num_detections"].numpy()):
        raise SystemExit("rebuilt network does not reproduce the SavedModel (detection counts differ)")
    return float(np.max(np.abs(a["scores"].numpy() - b["scores"].numpy())))


def preprocess(files: list[bytes], hw: tuple[int, int]) -> np.ndarray:
    """What the SavedModel does before the network: decode, RGB, bilinear resize, float32 0..255."""
    out = []
    for data in files:
        img = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        out.append(tf.image.resize(tf.cast(img, tf.float32), hw, method="bilinear", antialias=False).numpy())
    return np.stack(out)


def to_onnx(network: tf.keras.Model, hw: tuple[int, int], path: Path) -> None:
    import tf2onnx

    spec = [tf.TensorSpec([None, hw[0], hw[1], 3], tf.float32, name="image")]
    function = tf.function(lambda image: network(image, training=False), input_signature=spec)
    tf2onnx.convert.from_function(function, input_signature=spec, opset=17, output_path=str(path))


def timed(call, batch: np.ndarray, seconds: float) -> list[float]:
    """Per-call latencies (ms) of repeated calls for about `seconds`."""
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(out) < 3:
        started = time.perf_counter()
        call(batch)
        out.append((time.perf_counter() - started) * 1000)
    return out


def summary(latencies_ms: list[float], batch: int) -> dict:
    return {"calls": len(latencies_ms), "batch": batch,
            "ms_per_call_p50": round(statistics.median(latencies_ms), 2),
            "ms_per_image_p50": round(statistics.median(latencies_ms) / batch, 2),
            "ms_per_call_p95": round(float(np.percentile(latencies_ms, 95)), 2),
            "images_per_s": round(1000 * batch * len(latencies_ms) / sum(latencies_ms), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved TF/ORT rounds per batch size")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per engine per round")
    args = parser.parse_args()
    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit("onnxruntime not importable: see this file's docstring for how to install it")

    version_dir = latest_version()
    files = [p.read_bytes() for p in sorted((DATA_DIR / "testing_images").glob("*.jpg"))[::7][:8]]
    network, hw, classes = rebuild_network(version_dir)
    score_diff = check_same_as_savedmodel(network, hw, classes, version_dir, files)
    onnx_path = OUT.parent / f"car_detector_v{version_dir.name}_network.onnx"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    to_onnx(network, hw, onnx_path)
    convert_s = time.perf_counter() - t0

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = INTRA, INTER
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    tf_network = tf.function(lambda x: network(x, training=False), jit_compile=False,
                             input_signature=[tf.TensorSpec([None, hw[0], hw[1], 3], tf.float32)])
    engines = {
        "tensorflow": lambda x: [t.numpy() for t in tf_network(tf.constant(x))],
        "onnxruntime": lambda x: session.run(None, {input_name: x}),
    }
    pixels = preprocess(files, hw)
    # Same outputs? (max abs difference of heat-map logits and box distances)
    tf_out, ort_out = engines["tensorflow"](pixels[:4]), engines["onnxruntime"](pixels[:4])
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(tf_out, ort_out)]

    saved = tf.saved_model.load(str(version_dir / "model.savedmodel")).signatures["serving_default"]
    engines["tensorflow_full_signature"] = lambda _: saved(images=tf.constant(files[: len(_)]))

    results: dict[str, dict[int, list[float]]] = {name: {1: [], 4: []} for name in engines}
    for batch_size in (1, 4):
        batch = np.ascontiguousarray(pixels[:batch_size])
        for call in engines.values():  # warm-up, not measured
            for _ in range(3):
                call(batch)
        for round_ in range(args.rounds):
            order = list(engines) if round_ % 2 == 0 else list(reversed(engines))
            for name in order:
                results[name][batch_size] += timed(engines[name], batch, args.seconds)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_end": os.getloadavg(), "cpu_count": os.cpu_count(),
        "model_version": version_dir.name, "threads": {"intra_op": INTRA, "inter_op": INTER},
        "tensorflow": tf.__version__, "onnxruntime": ort.__version__,
        "onnx_file": str(onnx_path), "onnx_mb": round(onnx_path.stat().st_size / 2**20, 1),
        "conversion_s": round(convert_s, 1),
        "rebuilt_vs_savedmodel_max_score_diff": score_diff,
        "tf_vs_ort_max_abs_diff": {"heat_logits": diffs[0], "ltrb_px": diffs[1]},
        "results": {name: {str(b): summary(lat, b) for b, lat in by_batch.items()} for name, by_batch in results.items()},
    }
    OUT.write_text(json.dumps(report, indent=2))
    print(f"\nmodel v{version_dir.name}, TF {tf.__version__} vs ORT {ort.__version__}, threads intra={INTRA} inter={INTER}, "
          f"{args.rounds} interleaved rounds x {args.seconds:.0f} s, load average now {os.getloadavg()[0]:.2f}")
    print(f"outputs: max |TF - ORT| heat logits {diffs[0]:.2e}, ltrb {diffs[1]:.2e} px; "
          f"rebuilt network vs SavedModel scores {score_diff:.2e}\n")
    print("| engine (what runs) | batch | ms/call p50 | ms/image p50 | ms/call p95 | images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    labels = {"tensorflow": "TensorFlow: network only", "onnxruntime": "ONNX Runtime: network only",
              "tensorflow_full_signature": "TensorFlow: full signature (decode+resize+network+NMS)"}
    for name, by_batch in report["results"].items():
        for b, row in by_batch.items():
            print(f"| {labels[name]} | {b} | {row['ms_per_call_p50']} | {row['ms_per_image_p50']} | "
                  f"{row['ms_per_call_p95']} | {row['images_per_s']} |")
    for b in ("1", "4"):
        speedup = report["results"]["onnxruntime"][b]["images_per_s"] / report["results"]["tensorflow"][b]["images_per_s"]
        print(f"ORT/TF throughput, network only, batch {b}: {speedup:.2f}x")
    print(f"\nsaved {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
