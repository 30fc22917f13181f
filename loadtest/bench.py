"""The side-by-side benchmark (`make bench`): one run, the same frames, five ways
of getting detections, at several concurrencies.

1. the SavedModel called in process (the model's own speed on this machine);
2. Triton direct over gRPC (dynamic batching on);
3. the gRPC adapter;
4. the gateway end to end (features, detection and storage);
5. the naive baseline: one Flask process calling the model per request.

Uses the stack on the configured ports if it is up, else starts it (and stops it
afterwards). Prints a table and writes var/bench/latest.json.
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from scripts.stack import stack_env  # noqa: E402

ENV = stack_env()
DATA_DIR = Path(os.environ.get("DATA_DIR", REPO_ROOT.parent / "shared/data/car-object-detection"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,4,16").split(",")]
REQUESTS_PER_WORKER = int(os.environ.get("BENCH_REQUESTS_PER_WORKER", "16"))
MIN_REQUESTS = int(os.environ.get("BENCH_MIN_REQUESTS", "48"))
NAIVE_PORT = int(os.environ.get("BENCH_NAIVE_PORT", "18999"))
OUT_DIR = Path(ENV["VAR_DIR"]) / "bench"


def frames(count: int = 16) -> list[bytes]:
    paths = sorted((DATA_DIR / "testing_images").glob("*.jpg"))[::7][:count]
    if not paths:
        sys.exit(f"no frames under {DATA_DIR / 'testing_images'}")
    return [p.read_bytes() for p in paths]


def measure(call: Callable[[bytes], None], images: list[bytes], concurrency: int) -> dict:
    total = max(MIN_REQUESTS, REQUESTS_PER_WORKER * concurrency)
    for image in images[: max(2, concurrency)]:  # warm connections and caches
        call(image)
    work = itertools.cycle(images)
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0

    def worker(_: int) -> None:
        nonlocal errors
        while True:
            with lock:
                if len(latencies) + errors >= total:
                    return
                image = next(work)
            started = time.perf_counter()
            try:
                call(image)
            except Exception:
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - started
    q = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "images_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1),
            "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None}


def latest_savedmodel() -> Path:
    versions = sorted((p for p in (REPO_ROOT / "model_repository/car_detector").iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name))
    return versions[-1] / "model.savedmodel"


def in_process() -> Callable[[bytes], None]:
    import tensorflow as tf

    signature = tf.saved_model.load(str(latest_savedmodel())).signatures["serving_default"]
    return lambda image: signature(images=tf.constant([image]))


def triton_direct() -> Callable[[bytes], None]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ENV['TRITON_GRPC_PORT']}")

    def call(image: bytes) -> None:
        image_input = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        image_input.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        client.infer("car_detector", [image_input])
    return call


def adapter() -> Callable[[bytes], None]:
    import grpc

    from services.proto import model_serving_pb2 as pb
    from services.proto import model_serving_pb2_grpc as pb_grpc

    stub = pb_grpc.ModelServingStub(grpc.insecure_channel(f"127.0.0.1:{ENV['MODEL_SERVING_PORT']}"))
    return lambda image: stub.Predict(pb.PredictionRequest(image_data=image, user_id="bench-user"), timeout=30)


def _http_poster(url: str, headers: dict[str, str], data: dict[str, str]) -> Callable[[bytes], None]:
    local = threading.local()  # one keep-alive session per caller thread

    def call(image: bytes) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        session = local.session
        answer = session.post(url, headers=headers, files={"image": ("frame.jpg", image, "image/jpeg")}, data=data,
                              timeout=60)
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"{answer.status_code}: {answer.text[:200]}")
    return call


def gateway() -> Callable[[bytes], None]:
    key = _admin_key()
    return _http_poster(f"http://127.0.0.1:{ENV['GATEWAY_PORT']}/api/detect", {"X-API-Key": key},
                        {"user_id": "bench-user"})


def _admin_key() -> str:
    spec = ENV.get("API_KEYS") or (Path(ENV["VAR_DIR"]) / "secrets/api_keys").read_text()
    for entry in spec.replace("\n", ",").split(","):
        key, _, role = entry.strip().rpartition(":")
        if role == "admin":
            return key
    sys.exit("no admin key configured for the benchmark")


def naive_baseline() -> tuple[Callable[[bytes], None], subprocess.Popen]:
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "loadtest/naive_baseline.py"), str(NAIVE_PORT),
                                str(latest_savedmodel())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{NAIVE_PORT}/health", timeout=1)
            break
        except Exception:
            time.sleep(0.5)
    return _http_poster(f"http://127.0.0.1:{NAIVE_PORT}/predict", {}, {}), process


def stack_memory_mb() -> float:
    pid_file = Path(ENV["VAR_DIR"]) / "run/supervisord.pid"
    root = psutil.Process(int(pid_file.read_text()))
    processes = [root, *root.children(recursive=True)]
    return round(sum(p.memory_info().rss for p in processes) / 2**20, 1)


def ensure_stack() -> bool:
    """True when this run started the stack (and so must stop it)."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{ENV['GATEWAY_PORT']}/ready", timeout=2)
        return False
    except Exception:
        pass
    if subprocess.run([sys.executable, str(REPO_ROOT / "scripts/stack.py"), "up"], env=ENV).returncode != 0:
        sys.exit("the stack did not start; see the log tail above")
    return True


def main() -> int:
    started_stack = ensure_stack()
    images = frames()
    rows: dict[str, list[dict]] = {}
    try:
        memory_mb = stack_memory_mb()
        for name, factory in [("triton_direct", triton_direct), ("adapter", adapter), ("gateway", gateway)]:
            call = factory()
            rows[name] = [measure(call, images, c) for c in CONCURRENCY]
            print(f"measured {name}", file=sys.stderr)
    finally:
        if started_stack:
            subprocess.run([sys.executable, str(REPO_ROOT / "scripts/stack.py"), "down"], env=ENV)
    # The model-only references run with the stack stopped or idle, never competing with it.
    rows["in_process"] = [measure(in_process(), images, c) for c in CONCURRENCY]
    print("measured in_process", file=sys.stderr)
    call, process = naive_baseline()
    try:
        rows["naive_baseline"] = [measure(call, images, c) for c in CONCURRENCY]
    finally:
        process.terminate()
    report = {"date": datetime.now(timezone.utc).isoformat(), "cpu_count": os.cpu_count(),
              "images": len(images), "stack_rss_mb": memory_mb, "results": rows, "ratios": ratios(rows)}
    print_table(report)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "latest.json").write_text(json.dumps(report, indent=2))
    print(f"\nsaved {OUT_DIR / 'latest.json'}")
    return 0


def _throughput(rows: dict, name: str, concurrency: int) -> float:
    return next((r["images_per_s"] for r in rows.get(name, []) if r["concurrency"] == concurrency), float("nan"))


def ratios(rows: dict) -> dict[str, float]:
    top = max(CONCURRENCY)
    mid = 4 if 4 in CONCURRENCY else top
    return {
        f"triton_direct/in_process@c{top}": round(_throughput(rows, "triton_direct", top) / _throughput(rows, "in_process", top), 3),
        f"gateway/triton_direct@c{mid}": round(_throughput(rows, "gateway", mid) / _throughput(rows, "triton_direct", mid), 3),
        f"gateway/naive_baseline@c{mid}": round(_throughput(rows, "gateway", mid) / _throughput(rows, "naive_baseline", mid), 3),
    }


def print_table(report: dict) -> None:
    labels = {"in_process": "1. SavedModel in process", "triton_direct": "2. Triton direct (gRPC)",
              "adapter": "3. gRPC adapter", "gateway": "4. Gateway end to end", "naive_baseline": "5. Naive Flask baseline"}
    print(f"\n| path | concurrency | images/s | p50 ms | p95 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|---:|")
    for name in labels:
        for row in report["results"].get(name, []):
            print(f"| {labels[name]} | {row['concurrency']} | {row['images_per_s']} | {row['p50_ms']} | "
                  f"{row['p95_ms']} | {row['p99_ms']} | {row['errors']} |")
    print("\n" + "\n".join(f"{k}: {v}" for k, v in report["ratios"].items()))
    print(f"whole local stack resident memory: {report['stack_rss_mb']} MB")


if __name__ == "__main__":
    sys.exit(main())
