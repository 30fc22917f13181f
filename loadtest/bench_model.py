"""The model's rows of `make bench`: OpenVINO in process, Triton's own CPU per image, the plot.

- ``in_process_openvino``: the served version run by OpenVINO in this process with the same
  decode as Triton's model.py (detector_runtime.py of the version: Pillow decode, uint8 batch,
  resize in the IR, numpy NMS), one infer request per client thread on one compiled model
  with as many streams as cores: what this machine can do with no server at all.
- ``ServiceCpu``: CPU seconds (user + system) per service of the stack (gateway, feature,
  results, adapter, Triton and its python-backend stubs, ...) read around a measurement:
  divided by the images sent, Triton's CPU per image and the CPU of one gateway detection
  (issue 13; loadtest/cpu_per_request.py).
- ``plot``: images/s and p95 latency per path and concurrency (PNG beside latest.json).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]


def latest_version_dir() -> Path:
    versions = sorted((p for p in (REPO_ROOT / "model_repository/car_detector").iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name))
    return versions[-1]


def in_process_openvino() -> Callable[[], Callable[[bytes], None]]:
    import sys

    version_dir = latest_version_dir()
    sys.path.insert(0, str(version_dir))
    from training.triton_model import load_runtime

    rt = load_runtime(str(version_dir))
    cores = os.cpu_count() or 1
    shared = rt.OpenVinoDetector(version_dir, "auto", threads=cores, streams=cores)
    lock = threading.Lock()

    def make() -> Callable[[bytes], None]:
        with lock:  # each client thread its own infer request on the one compiled model
            det = shared.with_new_request()

        def call(image: bytes) -> None:
            result = det.detect([image])[0]
            if isinstance(result, Exception):
                raise result
        return call
    return make


# Matched against each process's command line, first match wins (the stubs' command line
# names the model repository, so they are matched before tritonserver's own binary).
SERVICES = {"triton_python_backend_stub": "Triton python backend (the model)", "tritonserver": "tritonserver",
            "gateway.app": "gateway", "feature_service": "feature service", "results_service": "results service",
            "model_serving": "gRPC adapter", "supervisord": "supervisord (log relay)", "redis-server": "Redis"}
# Triton's own processes (the server and its python-backend stubs), and what issue 13 counts
# as "the Python services" of a detection.
TRITON_SERVICES = ("Triton python backend (the model)", "tritonserver")
PYTHON_SERVICES = ("gateway", "feature service", "results service", "gRPC adapter")


def service_of(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    return next((name for key, name in SERVICES.items() if key in command), command[:50])


class ServiceCpu:
    """CPU seconds per service of the stack between ``start()`` and ``stop()``; a process
    that started or exited meanwhile is left out."""

    def __init__(self, candidates: list[psutil.Process]) -> None:
        self.procs = candidates
        self.before: dict[int, tuple[str, float]] = {}

    def _read(self) -> dict[int, tuple[str, float]]:
        seen = {}
        for process in self.procs:
            try:
                times = process.cpu_times()
                seen[process.pid] = (service_of(process), times.user + times.system)
            except psutil.Error:
                pass
        return seen

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> dict[str, float]:
        per_service: dict[str, float] = {}
        for pid, (service, seconds) in self._read().items():
            if pid in self.before:
                per_service[service] = per_service.get(service, 0.0) + seconds - self.before[pid][1]
        return per_service


def plot(report: dict, labels: dict[str, str], path: Path, title: str | None = None) -> bool:
    """Throughput and p95 latency per concurrency, one line per path of `report["results"]`
    (make bench; make perf draws its two tools with it too). False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullLocator
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    levels: set[int] = set()
    for name, rows in report["results"].items():
        cs = [r["concurrency"] for r in rows]
        levels.update(cs)
        a.plot(cs, [r["images_per_s"] for r in rows], "o-", label=labels.get(name, name))
        b.plot(cs, [r["p95_ms"] for r in rows], "o-", label=labels.get(name, name))
    # p95 on a log scale: the naive baseline's seconds would otherwise flatten every other line.
    for ax, heading, unit, yscale in ((a, "throughput", "images/s", "linear"), (b, "p95 latency", "ms (log)", "log")):
        ax.set_xscale("log", base=2)
        ax.set_yscale(yscale)
        ax.set_xticks(sorted(levels), [str(level) for level in sorted(levels)])
        ax.xaxis.set_minor_locator(NullLocator())  # the measured levels only, as plain numbers
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(heading)
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    c = report.get("conditions", {})
    fig.suptitle(title or f"make bench, model v{c.get('model_version', '?')}, {c.get('cpu', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
