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
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import requests

from services.common.config import REPO_ROOT
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every TensorFlow here (in process, both Flask baselines) runs with the same kernels as
# Triton's (services/triton/run.sh), so the rows differ by architecture, not by TF settings.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from loadtest.bench_model import TritonCpu, in_process_openvino, plot  # noqa: E402,F401 - a path by name
from scripts.stack import stack_env  # noqa: E402

ENV = stack_env()
DATA_DIR = Path(os.environ.get("DATA_DIR", REPO_ROOT.parent / "shared/data/car-object-detection"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,4,16").split(",")]
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
NAIVE_PORT = int(os.environ.get("BENCH_NAIVE_PORT", "29999"))
STRICT = os.environ.get("BENCH_STRICT", "0").lower() in ("1", "true", "yes")
OUT_DIR = Path(ENV["VAR_DIR"]) / "bench"
PATHS = ["in_process", "in_process_openvino", "triton_direct", "adapter", "gateway", "naive_baseline", "flask_savedmodel"]
BASELINES = {"naive_baseline": ("seed", NAIVE_PORT), "flask_savedmodel": ("savedmodel", NAIVE_PORT + 1)}
SELECTED = [p for p in os.environ.get("BENCH_PATHS", ",".join(PATHS)).split(",") if p in PATHS]
LABELS = {"in_process": "1. SavedModel in process (TensorFlow)",
          "in_process_openvino": "1b. OpenVINO in process (same decode as Triton)",
          "triton_direct": "2. Triton direct (gRPC)",
          "adapter": "3. gRPC adapter", "gateway": "4. Gateway end to end",
          "naive_baseline": "5. Naive baseline (Flask, PIL, Keras predict)",
          "flask_savedmodel": "6. Reference: Flask + SavedModel, one process"}
# name, numerator path, denominator path (or a metric), concurrency, comparison, bound
TARGETS = [
    ("Triton direct / in process, throughput @c16", "triton_direct", "in_process", 16, ">=", 0.85),
    ("gateway / Triton direct, throughput @c4", "gateway", "triton_direct", 4, ">=", 0.6),
    ("gateway / naive baseline, throughput @c4", "gateway", "naive_baseline", 4, ">=", 2.0),
    ("gateway p95 latency @c4 (ms)", "gateway", "p95_ms", 4, "<=", 150.0),
    ("(information) gateway / Flask + SavedModel reference, throughput @c4", "gateway", "flask_savedmodel", 4,
     "info", None),
    # The model's own tail at c4: no serving path can be faster, so it tells whether the p95
    # target is within this CPU's reach at all.
    ("(information) SavedModel in process p95 latency @c4 (ms)", "in_process", "p95_ms", 4, "info", None),
    # Issue 12 (model v3 served by OpenVINO inside Triton):
    ("Triton direct / SavedModel in process (TF, 4 threads), throughput @c4", "triton_direct", "in_process", 4,
     ">=", 2.0),
    ("Triton direct / OpenVINO in process, throughput @c4", "triton_direct", "in_process_openvino", 4, ">=", 0.75),
    ("Triton CPU ms per image @c4", "triton_direct", "triton_cpu_ms_per_image", 4, "<=", 10.0),
    ("whole stack resident memory, peak (MB)", None, "stack_rss_mb", None, "<=", 1536.0),
]


def cpu_description() -> str:
    """The CPU model and its widest vector units: the model's speed depends on them more than
    on anything configurable (TensorFlow's oneDNN kernels are fastest with AVX-512)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx2") if f in flags]
    return f"{name} ({', '.join(vector) or 'no AVX2'})"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    return {"concurrency": concurrency, "requests": len(flat), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "images_per_s": round(len(flat) / wall, 2) if wall else 0.0,
            "images_per_s_per_round": per_round,
            "p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1),
            "mean_ms": round(statistics.fmean(flat), 1) if flat else None,
            "triton_cpu_ms_per_image": round(1000 * sum(cpu) / len(flat), 2) if cpu and flat else None}


# ---------------------------------------------------------------------------- the five paths

def latest_savedmodel() -> Path:
    versions = sorted((p for p in (REPO_ROOT / "model_repository/car_detector").iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name))
    return versions[-1] / "model.savedmodel"


def in_process() -> Callable[[], Callable[[bytes], None]]:
    import tensorflow as tf

    signature = tf.saved_model.load(str(latest_savedmodel())).signatures["serving_default"]

    def call(image: bytes) -> None:
        signature(images=tf.constant([image]))["num_detections"].numpy()
    return lambda: call


def triton_direct() -> Callable[[], Callable[[bytes], None]]:
    import tritonclient.grpc as grpcclient

    from services.common import triton_client

    # One client (one channel) shared by every thread, as a notebook or service would.
    client = triton_client.connect(f"127.0.0.1:{ENV['TRITON_GRPC_PORT']}")
    outputs = [grpcclient.InferRequestedOutput(name) for name in ("BOXES", "SCORES", "LABELS")]

    def call(image: bytes) -> None:
        image_input = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        image_input.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        client.infer("car_detector", [image_input], outputs=outputs, client_timeout=30)
    return lambda: call


def adapter() -> Callable[[], Callable[[bytes], None]]:
    import grpc

    from services.proto import model_serving_pb2 as pb
    from services.proto import model_serving_pb2_grpc as pb_grpc

    stub = pb_grpc.ModelServingStub(grpc.insecure_channel(f"127.0.0.1:{ENV['MODEL_SERVING_PORT']}"))
    # The adapter's service token: as the stack was given it, or as it generated it.
    token = ENV.get("INTERNAL_TOKEN") or (Path(ENV["VAR_DIR"]) / "secrets" / "internal_token").read_text().strip()

    def call(image: bytes) -> None:
        stub.Predict(pb.PredictionRequest(image_data=image, user_id="bench-user"), timeout=30,
                     metadata=(("x-internal-token", token),))
    return lambda: call


def _http_poster(url: str, headers: dict[str, str], data: dict[str, str]) -> Callable[[], Callable[[bytes], None]]:
    def make() -> Callable[[bytes], None]:
        session = requests.Session()  # one keep-alive connection per client thread
        session.trust_env = False

        def call(image: bytes) -> None:
            answer = session.post(url, headers=headers, files={"image": ("frame.jpg", image, "image/jpeg")},
                                  data=data, timeout=60)
            if answer.status_code not in (200, 201):
                raise RuntimeError(f"{answer.status_code}: {answer.text[:200]}")
        call.close = session.close  # type: ignore[attr-defined]
        return call
    return make


def gateway() -> Callable[[], Callable[[bytes], None]]:
    return _http_poster(f"http://127.0.0.1:{ENV['GATEWAY_PORT']}/api/detect", {"X-API-Key": _admin_key()},
                        {"user_id": "bench-user"})


def _admin_key() -> str:
    spec = ENV.get("API_KEYS") or (Path(ENV["VAR_DIR"]) / "secrets/api_keys").read_text()
    for entry in spec.replace("\n", ",").split(","):
        key, _, role = entry.strip().rpartition(":")
        if role == "admin":
            return key
    sys.exit("no admin key configured for the benchmark")


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_baseline(name: str) -> subprocess.Popen | None:
    mode, port = BASELINES[name]
    if _port_in_use(port):  # a stale process would be measured instead of this one
        log(f"skipping {name}: port {port} is already in use (set BENCH_NAIVE_PORT)")
        return None
    env = {**ENV, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": os.environ["TF_ENABLE_ONEDNN_OPTS"]}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "loadtest/naive_baseline.py"), str(port),
                             str(latest_savedmodel().parent), "--mode", mode], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_answering(process: subprocess.Popen, url: str, what: str, timeout_s: float = 120.0) -> None:
    """Until `url` answers 2xx; RuntimeError if the process exits or time runs out first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {what} process exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.25)
    raise RuntimeError(f"the {what} process did not answer {url} within {timeout_s:.0f} s")


def baseline(name: str, process: subprocess.Popen) -> Callable[[], Callable[[bytes], None]]:
    port = BASELINES[name][1]
    wait_answering(process, f"http://127.0.0.1:{port}/health", name)
    return _http_poster(f"http://127.0.0.1:{port}/predict", {}, {})


# ---------------------------------------------------------------------------- the stack

def stack_processes() -> list[psutil.Process]:
    pid_file = Path(ENV["VAR_DIR"]) / "run/supervisord.pid"
    root = psutil.Process(int(pid_file.read_text()))
    return [root, *root.children(recursive=True)]


def stack_rss_mb() -> float:
    total = 0
    for process in stack_processes():
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def stack_pss_mb() -> float | None:
    """Proportional set size: shared pages (forked gunicorn workers) counted once."""
    try:
        return round(sum(p.memory_full_info().pss for p in stack_processes()) / 2**20, 1)
    except (psutil.Error, AttributeError):
        return None


class MemorySampler(threading.Thread):
    """Peak of the stack's summed RSS, sampled once a second (cheap: /proc/<pid>/statm)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, stack_rss_mb())
            except (OSError, ValueError, psutil.Error):
                pass
            self.stop.wait(1.0)


def ensure_stack() -> bool:
    """True when this run started the stack (and so must stop it)."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{ENV['GATEWAY_PORT']}/ready", timeout=2)
        log(f"using the stack already running on gateway port {ENV['GATEWAY_PORT']} (its own settings)")
        return False
    except Exception:
        pass
    # The benchmark measures throughput, not the rate limiter: the limiter still runs (Redis
    # round trip included) but with a limit the benchmark cannot reach.
    ENV.setdefault("RATE_LIMIT", "100000 per second")
    log(f"starting the stack (gateway port {ENV['GATEWAY_PORT']}, VAR_DIR {ENV['VAR_DIR']})")
    if subprocess.run([sys.executable, str(REPO_ROOT / "scripts/stack.py"), "up"], env=ENV,
                      stdout=sys.stderr).returncode != 0:
        sys.exit("the stack did not start; see the log tail above")
    return True


# ---------------------------------------------------------------------------- report

def _value(rows: dict, path: str, concurrency: int | None, field: str = "images_per_s") -> float:
    return next((r.get(field, float("nan")) for r in rows.get(path, []) if r["concurrency"] == concurrency), float("nan"))


def verdicts(report: dict) -> list[dict]:
    rows, out = report["results"], []
    for name, path, other, concurrency, op, bound in TARGETS:
        if path is None:
            value = report.get(other) or float("nan")
        elif other in PATHS:
            denominator = _value(rows, other, concurrency)
            value = _value(rows, path, concurrency) / denominator if denominator else float("nan")
        else:
            value = _value(rows, path, concurrency, other)
        if bound is None:
            out.append({"target": name, "value": round(value, 3), "bound": "-", "verdict": "-"})
            continue
        ok = (value >= bound) if op == ">=" else (value <= bound)
        verdict = "n/a" if value != value else ("PASS" if ok else "FAIL")  # NaN: not measured
        if verdict == "FAIL" and other == "p95_ms" and _value(rows, "in_process", concurrency, other) > bound:
            verdict = "FAIL (out of this CPU's reach: the model alone, in process, is slower)"
        out.append({"target": name, "value": round(value, 3), "bound": f"{op} {bound:g}", "verdict": verdict})
    return out


def markdown(report: dict) -> str:
    lines = ["| path | concurrency | images/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in PATHS:
        for row in report["results"].get(name, []):
            lines.append(f"| {LABELS[name]} | {row['concurrency']} | {row['images_per_s']} | {row['p50_ms']} | "
                         f"{row['p95_ms']} | {row['p99_ms']} | {row['errors']} |")
    lines += ["", "| target | measured | bound | verdict |", "|---|---:|---:|---|"]
    lines += [f"| {v['target']} | {v['value']} | {v['bound']} | {v['verdict']} |" for v in report["verdicts"]]
    failing = [f"{LABELS[name]} @c{row['concurrency']}: {row['errors']} errors, first: {row['first_error']}"
               for name in PATHS for row in report["results"].get(name, []) if row["errors"]]
    if failing:
        lines += ["", "Errors (these rows are not valid measurements):", *[f"- {line}" for line in failing]]
    c = report["conditions"]
    lines += ["", f"Conditions: {c['date']}, {c['cpu_count']} CPU cores ({c.get('cpu', 'CPU not recorded')}, "
                  f"TF_ENABLE_ONEDNN_OPTS={c.get('tf_onednn', '?')}), load average {c['load_before']} before and "
                  f"{c['load_after']} after (1/5/15 min), {c['rounds']} interleaved rounds x {c['seconds']:g} s per "
                  f"path and concurrency, {report['images']} distinct frames, model version {c['model_version']}. "
                  f"Stack memory: peak summed RSS {report['stack_rss_mb']} MB "
                  f"(PSS {report['stack_pss_mb']} MB, shared pages counted once) over {c['stack_processes']} processes."]
    return "\n".join(lines)


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
                    factories[name] = globals()[name]()
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
                    meter = TritonCpu(stack_processes()) if name == "triton_direct" else None
                    if meter:
                        meter.start()
                    run = measure(factories[name], images, concurrency, SECONDS)
                    if meter:
                        run["triton_cpu_s"] = meter.stop()
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
