"""`make perf`: Triton's own perf_analyzer against `car_detector`, with real JPEG frames.

For each concurrency of the sweep (PERF_CONCURRENCY, default 1..8) it runs perf_analyzer
over gRPC with the benchmark's frames as input data, then, right after and on the same
frames, `make bench`'s Triton-direct client (loadtest/bench.py) for PERF_BENCH_SECONDS, so
the two tools' figures come from the same minutes of the same machine. Prints one table
with both, and saves perf_analyzer's CSV (all its columns, one row per concurrency) plus the
side-by-side table and a plot of both (throughput and p95 latency per concurrency,
latest.png, drawn by make bench's plotting code) under $VAR_DIR/perf/.

Uses the stack on the configured ports if it is up, else starts it and stops it afterwards
(as `make bench` does). The perf_analyzer binary comes from PERF_ANALYZER (set by
scripts/perf.sh, which installs it) or the PATH.

Environment: PERF_CONCURRENCY ("1:8" or "1,2,4,8"), PERF_INTERVAL_MS (perf_analyzer's
measurement window, 4000), PERF_BENCH_SECONDS (5; 0 skips the bench client), the stack's
port variables (TRITON_GRPC_PORT, ...).
"""
from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from loadtest import bench, bench_paths, bench_stack  # the same frames, client and stack handling as make bench
from loadtest.bench_model import plot
from services.common import config
from services.common.config import REPO_ROOT

MODEL = "car_detector"
OUT_DIR = Path(bench_stack.ENV["VAR_DIR"]) / "perf"
INTERVAL_MS = config.PERF_INTERVAL_MS
BENCH_SECONDS = config.PERF_BENCH_SECONDS
STABILITY_PERCENT = (20, 50, 100)


def concurrency_levels(spec: str) -> list[int]:
    """'1:8' (a range, both ends included) or '1,2,4,8'."""
    if ":" in spec:
        low, high = (int(x) for x in spec.split(":", 1))
        return list(range(low, high + 1))
    return [int(x) for x in spec.split(",") if x.strip()]


def input_data(images: list[bytes]) -> dict:
    """perf_analyzer's --input-data JSON: one step per frame. A `b64` value is taken as the
    tensor's raw serialised content, and a BYTES element is serialised as its length
    (uint32, little-endian) followed by its bytes, so each frame gets that prefix."""
    return {"data": [{"IMAGE": {"b64": base64.b64encode(struct.pack("<I", len(image)) + image).decode()}}
                     for image in images]}


def perf_analyzer_binary() -> str:
    binary = config.PERF_ANALYZER or shutil.which("perf_analyzer")
    if not binary:
        sys.exit("perf_analyzer not found: run `make perf` (scripts/perf.sh installs it) or set PERF_ANALYZER")
    return binary


def run_perf_analyzer(binary: str, data_file: Path, concurrency: int, csv_file: Path) -> dict[str, str]:
    """One perf_analyzer measurement at `concurrency`: its CSV row, plus the stability bound it
    met. perf_analyzer measures until 3 consecutive windows agree within that bound; a shared
    2-core machine is noisy, so the bound is widened (20%, then 50%, then 100%) rather than
    giving up, and the one met is reported."""
    said = ""
    for stability in STABILITY_PERCENT:
        csv_file.unlink(missing_ok=True)
        command = [binary, "-m", MODEL, "-i", "grpc", "-u", f"127.0.0.1:{bench_stack.ENV['TRITON_GRPC_PORT']}",
                   "--input-data", str(data_file), "--concurrency-range", f"{concurrency}:{concurrency}",
                   "--measurement-interval", str(INTERVAL_MS), "--stability-percentage", str(stability),
                   "--max-trials", "6", "-f", str(csv_file)]
        done = subprocess.run(command, capture_output=True, text=True)
        said = f"{done.stdout[-3000:]}\n{done.stderr[-2000:]}"
        if done.returncode == 0 and csv_file.exists():
            with open(csv_file, newline="") as handle:
                return {**next(csv.DictReader(handle)), "Stability Percentage": str(stability)}
        if "stable measurement" not in said:
            break
        bench_stack.log(f"    not stable within {stability}% in 6 windows; widening the bound")
    sys.exit(f"perf_analyzer failed at concurrency {concurrency}:\n{said}")


def _ms(row: dict[str, str], column: str) -> float:
    return round(float(row[column]) / 1000, 1)


def side_by_side(pa: dict[str, str], direct: dict | None) -> dict:
    server_us = sum(float(pa[c]) for c in ("Server Queue", "Server Compute Input", "Server Compute Infer",
                                           "Server Compute Output"))
    row = {"concurrency": int(pa["Concurrency"]),
           "perf_analyzer_images_per_s": round(float(pa["Inferences/Second"]), 2),
           "perf_analyzer_p50_ms": _ms(pa, "p50 latency"), "perf_analyzer_p95_ms": _ms(pa, "p95 latency"),
           "perf_analyzer_p99_ms": _ms(pa, "p99 latency"),
           "server_queue_ms": _ms(pa, "Server Queue"), "server_infer_ms": _ms(pa, "Server Compute Infer"),
           "server_total_ms": round(server_us / 1000, 1), "stability_percent": int(pa["Stability Percentage"])}
    if direct:
        row.update({"bench_images_per_s": direct["images_per_s"], "bench_p50_ms": direct["p50_ms"],
                    "bench_p95_ms": direct["p95_ms"], "bench_p99_ms": direct["p99_ms"],
                    "bench_errors": direct["errors"]})
    return row


def markdown(rows: list[dict], conditions: dict) -> str:
    with_bench = "bench_images_per_s" in rows[0]
    header = ["concurrency", "perf_analyzer images/s", "p50 ms", "p95 ms", "p99 ms",
              "server queue ms", "server infer ms", "stable within"]
    if with_bench:
        header += ["bench Triton-direct images/s", "p50 ms", "p95 ms", "p99 ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for r in rows:
        cells = [r["concurrency"], r["perf_analyzer_images_per_s"], r["perf_analyzer_p50_ms"],
                 r["perf_analyzer_p95_ms"], r["perf_analyzer_p99_ms"], r["server_queue_ms"], r["server_infer_ms"],
                 f"{r['stability_percent']}%"]
        if with_bench:
            cells += [r["bench_images_per_s"], r["bench_p50_ms"], r["bench_p95_ms"], r["bench_p99_ms"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    c = conditions
    lines.append("")
    lines.append(f"Conditions: {c['date']}, {c['cpu_count']} CPU cores ({c['cpu']}), load average "
                 f"{c['load_before']} before and {c['load_after']} after, {c['images']} distinct frames, "
                 f"model version {c['model_version']}, perf_analyzer {INTERVAL_MS} ms windows (gRPC, "
                 f"synchronous, batch 1), bench client {BENCH_SECONDS:g} s per concurrency.")
    return "\n".join(lines)


def plot_rows(rows: list[dict], conditions: dict, path: Path) -> bool:
    """Both tools on one figure, in the shape make bench plots its paths (images/s and p95 ms
    per concurrency), so the two pictures read alike; False when matplotlib is missing."""
    series = {"perf_analyzer": [{"concurrency": r["concurrency"], "images_per_s": r["perf_analyzer_images_per_s"],
                                 "p95_ms": r["perf_analyzer_p95_ms"]} for r in rows]}
    if "bench_images_per_s" in rows[0]:
        series["bench"] = [{"concurrency": r["concurrency"], "images_per_s": r["bench_images_per_s"],
                            "p95_ms": r["bench_p95_ms"]} for r in rows]
    labels = {"perf_analyzer": "Triton perf_analyzer (gRPC)", "bench": "make bench's Triton-direct client (gRPC)"}
    return plot({"results": series, "conditions": conditions}, labels, path,
                title=f"make perf, model v{conditions['model_version']}, {conditions['cpu']}")


def main() -> int:
    began = time.perf_counter()
    levels = concurrency_levels(config.PERF_CONCURRENCY)
    binary = perf_analyzer_binary()
    images = bench.frames()
    load_before = [round(x, 2) for x in os.getloadavg()]
    started_stack = bench_stack.ensure_stack()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rows, raw = [], []
    try:
        direct = bench_paths.triton_direct() if BENCH_SECONDS > 0 else None
        with tempfile.TemporaryDirectory() as scratch:
            data_file = Path(scratch) / "input.json"
            data_file.write_text(json.dumps(input_data(images)))
            for step, concurrency in enumerate(levels, 1):
                bench_stack.log(f"[{step}/{len(levels)}] concurrency {concurrency}: perf_analyzer "
                                f"({INTERVAL_MS} ms windows until stable)...")
                pa = run_perf_analyzer(binary, data_file, concurrency, Path(scratch) / f"c{concurrency}.csv")
                raw.append(pa)
                mine = None
                if direct:
                    bench_stack.log(f"[{step}/{len(levels)}] concurrency {concurrency}: bench Triton-direct client "
                                    f"({BENCH_SECONDS:g} s)...")
                    mine = bench.summarise([bench.measure(direct, images, concurrency, BENCH_SECONDS)], concurrency)
                rows.append(side_by_side(pa, mine))
                r = rows[-1]
                bench_stack.log(f"[{step}/{len(levels)}] concurrency {concurrency}: perf_analyzer "
                                f"{r['perf_analyzer_images_per_s']} images/s p95 {r['perf_analyzer_p95_ms']} ms"
                                + (f"; bench {r['bench_images_per_s']} images/s p95 {r['bench_p95_ms']} ms" if mine else ""))
    finally:
        if started_stack:
            subprocess.run([sys.executable, str(REPO_ROOT / "scripts/stack.py"), "down"], env=bench_stack.ENV,
                           stdout=sys.stderr)
    conditions = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
                  "cpu": bench_stack.cpu_description(), "load_before": load_before,
                  "load_after": [round(x, 2) for x in os.getloadavg()], "images": len(images),
                  "model_version": bench_paths.latest_savedmodel().parent.name,
                  "elapsed_s": round(time.perf_counter() - began, 1)}
    with open(OUT_DIR / "perf_analyzer.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(raw[0]))
        writer.writeheader()
        writer.writerows(raw)
    with open(OUT_DIR / "side_by_side.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows, conditions)
    (OUT_DIR / "latest.json").write_text(json.dumps({"conditions": conditions, "rows": rows}, indent=2))
    (OUT_DIR / "latest.md").write_text(table + "\n")
    print(table)
    plotted = plot_rows(rows, conditions, OUT_DIR / "latest.png")
    bench_stack.log(f"\nsaved {OUT_DIR / 'perf_analyzer.csv'}, side_by_side.csv, latest.json, latest.md"
                    f"{' and latest.png' if plotted else ''}; "
                    f"{conditions['elapsed_s']:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
