"""The side-by-side benchmark (`make bench`): the same frames, five ways of getting
detections, at several concurrencies, interleaved.

1. the SavedModel called in process (the model's own speed on this machine); 1b. the same
   version run by OpenVINO in process with Triton's decode (loadtest/bench_model.py);
2. Triton direct over gRPC (dynamic batching on);
3. the gRPC adapter (seed proto) in front of Triton;
4. the gateway end to end (auth, rate limit, image check, features, detection, storage);
5. the naive baseline: the original spec's sketch - one single-threaded Flask process that
   decodes and resizes with Pillow and calls Keras `model.predict` per request;
6. a strong single-process reference: the same Flask process calling the exported
   SavedModel per request (the graph our Triton model runs, without batching or services).

Uses the stack on the configured ports if it is up, else starts it (with a rate limit
high enough not to throttle the benchmark) and stops it afterwards. All five paths are
loaded first, then measured in rounds: for each concurrency, every path runs for
BENCH_SECONDS, in alternating order round after round (A B C D E, E D C B A, ...), so
background load on a shared machine biases every path alike. Each client thread warms
its own connection before the clock starts.

Prints one Markdown table, the three throughput ratios and the latency/memory targets
with PASS/FAIL, and the conditions (load average, CPU count); writes
$VAR_DIR/bench/latest.json and latest.md. Exit status 0 when it measured (whatever the
verdicts; BENCH_STRICT=1 makes a FAIL exit 1), 1 when it could not measure.

Environment: BENCH_CONCURRENCY (1,4,16), BENCH_SECONDS (5 per path, concurrency and
round), BENCH_ROUNDS (2), BENCH_PATHS (all six by name), BENCH_NAIVE_PORT (29999; the
reference uses the next port), and
the stack's own port variables (GATEWAY_PORT, TRITON_GRPC_PORT, ...).

The paths themselves are in bench_paths.py (the model's rows in bench_model.py), the stack's
handling and memory in bench_stack.py, the targets and the Markdown in bench_report.py.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from loadtest import bench_paths
from loadtest.bench_model import PYTHON_SERVICES, TRITON_SERVICES, ServiceCpu, plot
from loadtest.bench_paths import BASELINES, baseline, latest_savedmodel, start_baseline
from loadtest.bench_report import LABELS, PATHS, markdown, verdicts
from loadtest.bench_stack import (
    ENV,
    MemorySampler,
    cpu_description,
    ensure_stack,
    log,
    stack_processes,
    stack_pss_mb,
    stack_rss_mb,
)
from services.common import config
from services.common.config import REPO_ROOT

DATA_DIR = Path(config.DATA_DIR)
CONCURRENCY = [int(c) for c in config.BENCH_CONCURRENCY.split(",")]
SECONDS = config.BENCH_SECONDS
ROUNDS = config.BENCH_ROUNDS
STRICT = config.BENCH_STRICT
OUT_DIR = Path(ENV["VAR_DIR"]) / "bench"
SELECTED = [p for p in (config.BENCH_PATHS or ",".join(PATHS)).split(",") if p in PATHS]


def frames(count: int = 16) -> list[bytes]:
    paths = sorted((DATA_DIR / "testing_images").glob("*.jpg"))[::7][:count]
    if not paths:
        sys.exit(f"no frames under {DATA_DIR / 'testing_images'}")
    return [p.read_bytes() for p in paths]


# ---------------------------------------------------------------------------- measuring

def measure(make_call: Callable[[], Callable[[bytes], None]], images: list[bytes], concurrency: int,
            seconds: float) -> dict:
    """`concurrency` closed-loop clients for `seconds`. Each thread gets its own call
    (e.g. its own keep-alive session) and warms it before the common start."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    window: dict[str, float] = {}

    def open_window() -> None:  # runs once, when every thread is warm, before any is released
        window["start"] = time.perf_counter()
        window["end"] = window["start"] + seconds

    ready = threading.Barrier(concurrency + 1, action=open_window)

    def worker(index: int) -> None:
        call = make_call()
        image_index = index
        try:
            call(images[index % len(images)])  # warm-up: connection, caches; not measured
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            errors.append(f"warm-up: {exc}")
        ready.wait()
        mine = latencies[index]
        while time.perf_counter() < window["end"]:
            image = images[image_index % len(images)]
            image_index += concurrency
            started = time.perf_counter()
            try:
                call(image)
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc)[:200])
                continue
            mine.append((time.perf_counter() - started) * 1000)
        closer = getattr(call, "close", None)
        if closer:
            closer()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - window["start"]
    flat = [x for per_thread in latencies for x in per_thread]
    return {"latencies": flat, "wall_s": wall, "errors": errors}


def summarise(runs: list[dict], concurrency: int) -> dict:
    flat = [x for run in runs for x in run["latencies"]]
    wall = sum(run["wall_s"] for run in runs)
    errors = [e for run in runs for e in run["errors"]]
    q = np.percentile(flat, [50, 95, 99]) if flat else [float("nan")] * 3
    per_round = [round(len(run["latencies"]) / run["wall_s"], 2) for run in runs]
    cpu = [run["triton_cpu_s"] for run in runs if "triton_cpu_s" in run]
    per_service: dict[str, float] = {}
    for run in runs:
        for service, seconds in run.get("service_cpu_s", {}).items():
            per_service[service] = per_service.get(service, 0.0) + seconds
    service_ms = {service: round(1000 * seconds / len(flat), 2) for service, seconds in per_service.items()} \
        if per_service and flat else None
    return {"concurrency": concurrency, "requests": len(flat), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "images_per_s": round(len(flat) / wall, 2) if wall else 0.0,
            "images_per_s_per_round": per_round,
            "p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1),
            "mean_ms": round(statistics.fmean(flat), 1) if flat else None,
            "triton_cpu_ms_per_image": round(1000 * sum(cpu) / len(flat), 2) if cpu and flat else None,
            # Gateway rows: CPU ms per detection of each stack service, and of the Python ones together.
            "cpu_ms_per_request": service_ms,
            "python_cpu_ms_per_request": round(sum(service_ms.get(name, 0.0) for name in PYTHON_SERVICES), 2)
            if service_ms else None}


def main() -> int:
    began = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    images = frames()
    baselines = {name: start_baseline(name) for name in BASELINES if name in SELECTED}  # load TF meanwhile
    started_stack = ensure_stack()
    sampler = MemorySampler()
    sampler.start()
    report: dict = {}
    try:
        factories: dict[str, Callable[[], Callable[[bytes], None]]] = {}
        for name in list(SELECTED):
            try:
                if name in BASELINES:
                    process = baselines.get(name)
                    if process is None:
                        raise RuntimeError("not started")
                    factories[name] = baseline(name, process)
                else:
                    factories[name] = getattr(bench_paths, name)()
            except Exception as exc:  # noqa: BLE001 - one broken path must not void the others
                log(f"skipping {name}: {exc}")
                SELECTED.remove(name)
        log(f"paths ready after {time.perf_counter() - began:.0f} s; measuring {', '.join(SELECTED)} at "
            f"concurrency {CONCURRENCY}, {ROUNDS} rounds x {SECONDS:g} s")
        runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in CONCURRENCY} for name in SELECTED}
        for concurrency in CONCURRENCY:
            for round_ in range(ROUNDS):
                order = SELECTED if round_ % 2 == 0 else SELECTED[::-1]
                for name in order:
                    meter = ServiceCpu(stack_processes()) if name in ("triton_direct", "gateway") else None
                    if meter:
                        meter.start()
                    run = measure(factories[name], images, concurrency, SECONDS)
                    if meter:
                        per_service = meter.stop()
                        if name == "triton_direct":
                            run["triton_cpu_s"] = sum(per_service.get(s, 0.0) for s in TRITON_SERVICES)
                        else:
                            run["service_cpu_s"] = per_service
                    runs[name][concurrency].append(run)
                    log(f"  c={concurrency:<3} round {round_ + 1}  {name:15} "
                        f"{len(run['latencies']) / run['wall_s']:7.2f} images/s  errors {len(run['errors'])}")
        sampler.stop.set()
        sampler.join()
        processes = len(stack_processes())
        report = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images": len(images),
            "stack_rss_mb": max(sampler.peak, stack_rss_mb()),
            "stack_pss_mb": stack_pss_mb(),
            "results": {name: [summarise(runs[name][c], c) for c in CONCURRENCY] for name in SELECTED},
        }
    finally:
        sampler.stop.set()
        for process in baselines.values():
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        if started_stack:
            subprocess.run([sys.executable, str(REPO_ROOT / "scripts/stack.py"), "down"], env=ENV, stdout=sys.stderr)
    report["conditions"] = {
        "date": report["date"], "cpu_count": os.cpu_count(), "cpu": cpu_description(),
        "tf_onednn": os.environ["TF_ENABLE_ONEDNN_OPTS"], "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()], "rounds": ROUNDS, "seconds": SECONDS,
        "model_version": latest_savedmodel().parent.name, "stack_processes": processes,
        "stack_started_by_bench": started_stack, "gateway_port": ENV["GATEWAY_PORT"],
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    report["verdicts"] = verdicts(report)
    report["ratios"] = {v["target"]: v["value"] for v in report["verdicts"]}
    table = markdown(report)
    print(table)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "latest.json").write_text(json.dumps(report, indent=2))
    (OUT_DIR / "latest.md").write_text(table + "\n")
    plot(report, LABELS, OUT_DIR / "latest.png")
    log(f"\nsaved {OUT_DIR / 'latest.json'} and latest.md; whole benchmark {report['conditions']['elapsed_s']:.0f} s")
    failed = any(v["verdict"].startswith("FAIL") for v in report["verdicts"])
    return 1 if STRICT and failed else 0


if __name__ == "__main__":
    sys.exit(main())
