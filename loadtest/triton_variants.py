"""Triton configurations side by side: instance count, inference threads and OpenVINO streams.

    make triton-variants [VARIANTS="2x2 1x2 2x1"]    (python loadtest/triton_variants.py 2x2 1x2x1 ...)

Each variant NxT or NxTxS (N instances, T threads each: OpenVINO's, or TensorFlow's intra-op,
shared out between S OpenVINO streams: by default the shipped number, at most T), with a
trailing ``p`` for OpenVINO threads pinned to cores (from version 6; unpinned as shipped), and
optionally the batching: ``/maxB`` for the largest batch OpenVINO compiles (OPENVINO_MAX_BATCH,
from version 6) and ``/prefP+Q`` for dynamic batching's preferred sizes (``2x1/max8/pref4+8``),
and last ``/vN`` to serve model version N instead of the pinned one (``2x1/v7 2x1``: two versions
in the shipped configuration), gets its own Triton process on its own ports, serving the model
from a copy of config.pbtxt that differs only in those numbers (per-batch logging off in all). Triton direct over gRPC is then
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
from typing import NamedTuple

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
                       pinned: bool = False, max_batch: int | None = None, preferred: tuple[int, ...] | None = None,
                       version: int | None = None) -> Path:
    """A model repository whose config differs from the shipped one in count, threads, streams,
    pinning, batching and served version only (streams: the shipped number, at most `intra`,
    unless given; the largest compiled batch, the preferred batch sizes and the version: the
    shipped ones unless given)."""
    if version is not None and not (MODEL_DIR / str(version)).is_dir():
        sys.exit(f"variant {name!r}: no model version {version} under {MODEL_DIR}")
    model = root / name.replace("/", "-") / "car_detector"  # 2x1/max8 -> 2x1-max8
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
    if max_batch is not None:
        config = re.sub(r'(key: "OPENVINO_MAX_BATCH" value: \{ string_value: )"\d+"', rf'\1"{max_batch}"', config)
    if preferred is not None:
        config = re.sub(r"preferred_batch_size: \[[^\]]*\]", f"preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
                        config, count=1)
    if version is not None:
        config = re.sub(r"version_policy: \{.*\}", f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}", config)
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


class Variant(NamedTuple):
    name: str
    instances: int
    threads: int
    streams: int | None = None  # None: the shipped number, at most `threads`
    pinned: bool = False
    max_batch: int | None = None  # None: the shipped OPENVINO_MAX_BATCH
    preferred: tuple[int, ...] | None = None  # None: the shipped preferred_batch_size
    version: int | None = None  # None: the version config.pbtxt pins


_VARIANT = re.compile(r"([1-9]\d*)x([1-9]\d*)(?:x([1-9]\d*))?(p?)(?:/max([1-9]\d*))?(?:/pref([1-9]\d*(?:\+[1-9]\d*)*))?(?:/v([1-9]\d*))?")


def parse_variants(specs: list[str]) -> list[Variant]:
    """`NxT` or `NxTxS` words, `p` for pinned threads, then optionally `/maxB`, `/prefP+Q` and `/vN`;
    a malformed word stops the run, saying why."""
    variants = []
    for spec in specs or ["2x2", "1x2", "2x1"]:
        match = _VARIANT.fullmatch(spec)
        if not match:
            sys.exit(f"variant {spec!r}: expected NxT or NxTxS, e.g. 2x2 or 1x2x2 (N instances, T threads each, "
                     f"S OpenVINO streams), p at the end for pinned threads (1x2p), then optionally /maxB for the "
                     f"largest compiled batch, /prefP+Q for the preferred batch sizes and /vN for a model "
                     f"version (2x1/max8/pref4+8/v7)")
        variants.append(Variant(spec, int(match[1]), int(match[2]), int(match[3]) if match[3] else None, bool(match[4]),
                                int(match[5]) if match[5] else None,
                                tuple(int(size) for size in match[6].split("+")) if match[6] else None,
                                int(match[7]) if match[7] else None))
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
        for index, variant in enumerate(variants):
            port = BASE_PORT + 10 * index
            processes[variant.name] = start(variant_repository(variant.name, variant.instances, variant.threads, root,
                                                               variant.streams, variant.pinned, variant.max_batch,
                                                               variant.preferred, variant.version), port)
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
        for variant in variants:
            rows = [bench.summarise(runs[variant.name][c], c) for c in bench.CONCURRENCY]
            results[variant.name] = {"instances": variant.instances, "intra_op_threads": variant.threads,
                                     "openvino_streams": streams_for(variant.threads, variant.streams),
                                     "cpu_pinning": variant.pinned, "openvino_max_batch": variant.max_batch,
                                     "preferred_batch_sizes": variant.preferred,
                                     "stub_rss_mb": stub_rss_mb(processes[variant.name]), "rows": rows}
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
