"""Triton configurations side by side: instance count, inference threads and OpenVINO streams.

    make triton-variants [VARIANTS="2x2 1x2 2x1"]    (python loadtest/triton_variants.py 2x2 1x2x1 ...)

Each variant NxT or NxTxS (N instances, T threads each: OpenVINO's, or TensorFlow's intra-op,
shared out between S OpenVINO streams: by default the shipped number, at most T), with a
trailing ``p`` for OpenVINO threads pinned to cores (from version 6; unpinned as shipped), gets its own
Triton process on its own ports, serving the same model version from a copy of config.pbtxt
that differs only in those numbers (per-batch logging off in all). Triton direct over gRPC is then
measured at concurrency 1, 4 and 16 (BENCH_CONCURRENCY), interleaved round by round
(BENCH_ROUNDS x BENCH_SECONDS, as loadtest/bench.py), and the resident memory of each
variant's stub processes is reported after the load, with the CPU time of its Triton processes
per image sent. Prints a Markdown table; writes
$VAR_DIR/bench/triton_variants.json. The stack need not be running; its ports are not used.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from loadtest import bench, bench_paths, bench_stack
from loadtest.bench_model import ServiceCpu
from services.common import config
from services.common.config import REPO_ROOT

MODEL_DIR = REPO_ROOT / "model_repository" / "car_detector"
BASE_PORT = config.VARIANTS_BASE_PORT


def streams_for(intra: int, streams: int | None) -> int:
    """`streams`, or by default the shipped config's number, at most `intra` (a stream needs a thread)."""
    if streams is not None:
        return streams
    found = re.search(r'key: "OPENVINO_STREAMS" value: \{ string_value: "(\d+)"', (MODEL_DIR / "config.pbtxt").read_text())
    return min(int(found[1]) if found else 1, intra)


def variant_repository(name: str, count: int, intra: int, root: Path, streams: int | None = None,
                       pinned: bool = False) -> Path:
    """A model repository whose config differs from the shipped one in count, threads, streams and
    pinning only (streams: the shipped number, at most `intra`, unless given)."""
    model = root / name / "car_detector"
    if model.parent.exists():
        shutil.rmtree(model.parent)
    model.mkdir(parents=True)
    config = (MODEL_DIR / "config.pbtxt").read_text()
    config = re.sub(r"count: \d+", f"count: {count}", config, count=1)
    for threads in ("TF_INTRA_OP_THREADS", "OPENVINO_THREADS"):  # whichever backend serves the version
        config = re.sub(rf'(key: "{threads}" value: \{{ string_value: )"\d+"', rf'\1"{intra}"', config)
    config = re.sub(r'(key: "OPENVINO_STREAMS" value: \{ string_value: )"\d+"', rf'\1"{streams_for(intra, streams)}"',
                    config)
    config = re.sub(r'(key: "LOG_BATCHES" value: \{ string_value: )"\w+"', r'\1"false"', config)
    config = re.sub(r'(key: "OPENVINO_CPU_PINNING" value: \{ string_value: )"\w+"', rf'\1"{str(pinned).lower()}"', config)
    (model / "config.pbtxt").write_text(config)
    for entry in MODEL_DIR.iterdir():
        if entry.name != "config.pbtxt":
            (model / entry.name).symlink_to(entry)
    return model.parent


def start(repository: Path, http_port: int) -> subprocess.Popen:
    env = {**os.environ, "MODEL_REPOSITORY": str(repository), "TRITON_HTTP_PORT": str(http_port),
           "TRITON_GRPC_PORT": str(http_port + 1), "TRITON_METRICS_PORT": str(http_port + 2)}
    log = open(repository / "triton.log", "w")
    return subprocess.Popen([str(REPO_ROOT / "services/triton/run.sh")], env=env, stdout=log, stderr=subprocess.STDOUT)


def stub_rss_mb(process: subprocess.Popen) -> float:
    total = 0
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if "triton_python_backend_stub" in " ".join(child.cmdline()):
                total += child.memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def parse_variants(specs: list[str]) -> list[tuple[str, int, int, int | None, bool]]:
    """`NxT` or `NxTxS` words, `p` at the end for pinned threads -> (name, instances, threads,
    streams or None, pinned); a malformed word stops the run, saying why."""
    variants = []
    for spec in specs or ["2x2", "1x2", "2x1"]:
        match = re.fullmatch(r"([1-9]\d*)x([1-9]\d*)(?:x([1-9]\d*))?(p?)", spec)
        if not match:
            sys.exit(f"variant {spec!r}: expected NxT or NxTxS, e.g. 2x2 or 1x2x2 (N instances, T threads each, "
                     f"S OpenVINO streams), p at the end for pinned threads (1x2p)")
        variants.append((spec, int(match[1]), int(match[2]), int(match[3]) if match[3] else None, bool(match[4])))
    return variants


def main(argv: list[str]) -> int:
    variants = parse_variants(argv)
    root = Path(bench_stack.ENV["VAR_DIR"]) / "triton-variants"
    images = bench.frames()
    processes: dict[str, subprocess.Popen] = {}
    results: dict[str, dict] = {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        factories = {}
        for index, (name, count, intra, streams, pinned) in enumerate(variants):
            port = BASE_PORT + 10 * index
            processes[name] = start(variant_repository(name, count, intra, root, streams, pinned), port)
        for index, (name, *_) in enumerate(variants):
            port = BASE_PORT + 10 * index
            bench_paths.wait_answering(processes[name], f"http://127.0.0.1:{port}/v2/models/car_detector/ready",
                                       f"Triton {name}", timeout_s=300)
            bench_stack.ENV["TRITON_GRPC_PORT"] = str(port + 1)
            factories[name] = bench_paths.triton_direct()  # the client binds its port now
        runs: dict[str, dict[int, list]] = {name: {c: [] for c in bench.CONCURRENCY} for name, *_ in variants}
        names = [name for name, *_ in variants]
        for concurrency in bench.CONCURRENCY:
            for round_ in range(bench.ROUNDS):
                for name in names if round_ % 2 == 0 else names[::-1]:
                    root = psutil.Process(processes[name].pid)  # the server and its stubs
                    meter = ServiceCpu([root, *root.children(recursive=True)])
                    meter.start()
                    run = bench.measure(factories[name], images, concurrency, bench.SECONDS)
                    run["triton_cpu_s"] = sum(meter.stop().values())  # bench.summarise divides it by the images
                    runs[name][concurrency].append(run)
                    bench_stack.log(f"  c={concurrency:<3} round {round_ + 1}  {name:5} "
                                    f"{len(run['latencies']) / run['wall_s']:7.2f} images/s  errors {len(run['errors'])}")
        for name, count, intra, streams, pinned in variants:
            rows = [bench.summarise(runs[name][c], c) for c in bench.CONCURRENCY]
            results[name] = {"instances": count, "intra_op_threads": intra,
                             "openvino_streams": streams_for(intra, streams), "cpu_pinning": pinned,
                             "stub_rss_mb": stub_rss_mb(processes[name]), "rows": rows}
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": bench_stack.cpu_description(),
              "cpu_count": os.cpu_count(), "tf_onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1"),
              "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
              "rounds": bench.ROUNDS, "seconds": bench.SECONDS, "variants": results}
    header = " | ".join(f"c={c} images/s (p95 ms, Triton CPU ms/image)" for c in bench.CONCURRENCY)
    print(f"| instances x threads (x streams) | {header} | stub RSS MB |")
    print("|---|" + "---:|" * (len(bench.CONCURRENCY) + 1))
    for name, result in results.items():
        cells = " | ".join(f"{row['images_per_s']} ({row['p95_ms']}, {row['triton_cpu_ms_per_image']})"
                           for row in result["rows"])
        print(f"| {name} | {cells} | {result['stub_rss_mb']} |")
    print(f"\n{report['date']}, {report['cpu_count']} cores ({report['cpu']}, TF_ENABLE_ONEDNN_OPTS={report['tf_onednn']}), "
          f"load {load_before} before, {report['load_after']} after, {bench.ROUNDS} interleaved rounds x {bench.SECONDS:g} s")
    out = Path(bench_stack.ENV["VAR_DIR"]) / "bench" / "triton_variants.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
