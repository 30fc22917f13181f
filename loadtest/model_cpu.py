"""What one image costs the model on this CPU: wall time and CPU time per image of the
exported SavedModel (the graph Triton runs), for TensorFlow's oneDNN kernels off and on
and 1 or 2 intra-op threads, at batch 1 and 4.

    make model-cpu [ARGS="--calls 12 --openvino"]    (python loadtest/model_cpu.py [--calls 12] [--openvino])

``--openvino`` compares TensorFlow with the version's OpenVINO IR (FP32, INT8), decode included.

Each variant runs in its own process (TensorFlow fixes both settings at start-up), one
after the other; run it on a quiet machine. Tells whether TF_ENABLE_ONEDNN_OPTS=1 (set by
services/triton/run.sh) pays here: TensorFlow turns oneDNN on by itself only on CPUs with
AVX-512 VNNI/BF16 or AMX, so on AVX2-only hosts the default is the slower Eigen path.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial


def per_image_ms(run: Callable[[], object], batch: int, calls: int) -> dict:
    """Wall and CPU ms per image over `calls` runs of one batch of `batch` images."""
    for _ in range(3):  # tracing and memory set-up are not the model's steady cost
        run()
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(calls):
        run()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"batch": batch, "wall_ms_per_image": round(1000 * wall / calls / batch, 1),
            "cpu_ms_per_image": round(1000 * cpu / calls / batch, 1)}


def _batch(files: list[bytes], size: int) -> list[bytes]:
    return [files[i % len(files)] for i in range(size)]


def measure(intra: int, calls: int) -> list[dict]:
    """In this process (settings already in the environment): per-image wall and CPU ms."""
    import tensorflow as tf

    from loadtest.bench import frames  # the benchmark's frames and model
    from loadtest.bench_paths import latest_savedmodel

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    serve = tf.saved_model.load(str(latest_savedmodel())).signatures["serving_default"]
    files = frames(8)
    return [per_image_ms(partial(serve, images=tf.constant(_batch(files, size))), size, calls) for size in (1, 4)]


def measure_openvino(precision: str, threads: int, calls: int) -> list[dict]:
    """The version's OpenVINO IR through detector_runtime.py (Pillow decode, IR, numpy NMS)."""
    from loadtest.bench import frames
    from loadtest.bench_model import latest_version_dir
    from training.triton_model import load_runtime

    vdir = latest_version_dir()
    det = load_runtime(str(vdir)).OpenVinoDetector(vdir, precision, threads=threads, streams=1)
    files = frames(8)
    return [per_image_ms(partial(det.detect, _batch(files, size)), size, calls) for size in (1, 4)]


def openvino_table(calls: int) -> None:
    """`--openvino`: TensorFlow (oneDNN on) against OpenVINO FP32 and INT8, 1 and 2 threads."""
    print("| runtime | threads | batch | wall ms / image | CPU ms / image |")
    print("|---|---:|---:|---:|---:|")
    for runtime in ("tensorflow", "fp32", "int8"):
        for threads in (1, 2):
            env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
            cmd = [sys.executable, __file__, "--calls", str(calls), "--child", str(threads)]
            if runtime != "tensorflow":
                cmd += ["--precision", runtime]
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            for row in json.loads(run.stdout.strip().splitlines()[-1]):
                name = "TensorFlow SavedModel" if runtime == "tensorflow" else f"OpenVINO {runtime.upper()}"
                print(f"| {name} | {threads} | {row['batch']} | {row['wall_ms_per_image']} | {row['cpu_ms_per_image']} |",
                      flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=12, help="timed calls per batch size")
    parser.add_argument("--child", nargs=1, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--openvino", action="store_true", help="compare with the version's OpenVINO IR")
    args = parser.parse_args()
    if args.child:
        rows = measure_openvino(args.precision, args.child[0], args.calls) if args.precision else \
            measure(args.child[0], args.calls)
        print(json.dumps(rows))
        return 0
    if args.openvino:
        openvino_table(args.calls)
        return 0
    print("| oneDNN | intra-op threads | batch | wall ms / image | CPU ms / image |")
    print("|---|---:|---:|---:|---:|")
    for onednn in ("0", "1"):
        for intra in (1, 2):
            env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"}
            run = subprocess.run([sys.executable, __file__, "--calls", str(args.calls), "--child", str(intra)],
                                 env=env, capture_output=True, text=True, check=True)
            for row in json.loads(run.stdout.strip().splitlines()[-1]):
                print(f"| {'on' if onednn == '1' else 'off'} | {intra} | {row['batch']} | "
                      f"{row['wall_ms_per_image']} | {row['cpu_ms_per_image']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
