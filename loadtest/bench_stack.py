"""The stack under `make bench` and the machine it runs on: the environment the stack is
started with (or found running with), its processes and their memory, the CPU model."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psutil

from services.common.config import REPO_ROOT

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every TensorFlow here (in process, both Flask baselines) runs with the same kernels as
# Triton's (services/triton/run.sh), so the rows differ by architecture, not by TF settings.
# Set before ENV copies the environment: the stack and the baselines are started with ENV.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from scripts.stack import stack_env  # noqa: E402

ENV = stack_env()


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
