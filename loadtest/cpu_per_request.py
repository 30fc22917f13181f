"""Where the CPU of a detection goes: CPU milliseconds per gateway request, per service.

    python loadtest/cpu_per_request.py [--concurrency 4] [--seconds 30]

Loads the gateway with bench.py's client and frames (closed loop, warmed first), reads
the CPU times of every process of the stack (supervisord's whole tree: Triton and its
python-backend stubs, each gunicorn worker, the adapter) before and after, and divides
by the requests served. The client's own CPU is shown too: on a 2-core machine it shares
the cores. Uses the stack on the configured ports if it is up, else starts it (with a
rate limit the load cannot reach) and stops it afterwards, as bench.py does.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from collections import defaultdict

import psutil

from services.common.config import REPO_ROOT

from loadtest import bench, bench_paths, bench_stack  # noqa: E402

# Matched against each process's command line, first match wins (the stubs' command line
# names the model repository, so they are matched before tritonserver's own binary).
SERVICES = {"triton_python_backend_stub": "Triton python backend (the model)", "tritonserver": "tritonserver",
            "gateway.app": "gateway", "feature_service": "feature service", "results_service": "results service",
            "model_serving": "gRPC adapter", "supervisord": "supervisord (log relay)"}


def service_of(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    return next((name for key, name in SERVICES.items() if key in command), command[:50])


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Per live stack process: (service, user + system CPU seconds so far)."""
    seen = {}
    for process in bench_stack.stack_processes():
        try:
            times = process.cpu_times()
            seen[process.pid] = (service_of(process), times.user + times.system)
        except psutil.Error:  # exited meanwhile
            pass
    return seen


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    started = bench_stack.ensure_stack()
    try:
        images = bench.frames(16)
        bench.measure(bench_paths.gateway(), images, args.concurrency, 3)  # warm every worker and cache
        before, client_before = cpu_seconds(), own_cpu_seconds()
        run = bench.measure(bench_paths.gateway(), images, args.concurrency, args.seconds)
        after, client_after = cpu_seconds(), own_cpu_seconds()
        summary = bench.summarise([run], args.concurrency)
        served = summary["requests"]
        if not served or summary["errors"]:
            print(f"not a valid measurement: {served} requests, {summary['errors']} errors "
                  f"({summary['first_error']})", file=sys.stderr)
            return 1
        per_service: dict[str, float] = defaultdict(float)
        for pid, (service, seconds) in after.items():
            if pid in before:  # a process restarted during the run is left out
                per_service[service] += seconds - before[pid][1]
        per_service["load client (this process)"] = client_after - client_before
        print(f"gateway at concurrency {args.concurrency} for {args.seconds:.0f} s: {served} requests, "
              f"{summary['images_per_s']} images/s, p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms; "
              f"{bench_stack.cpu_description()}, {psutil.cpu_count()} cores\n")
        print("| process | CPU ms per request |\n|---|---:|")
        for service, seconds in sorted(per_service.items(), key=lambda item: -item[1]):
            print(f"| {service} | {1000 * seconds / served:.1f} |")
        total = sum(per_service.values())
        available = psutil.cpu_count() * run["wall_s"]
        print(f"| **total** | **{1000 * total / served:.1f}** |\n\n"
              f"CPU available per request: {1000 * available / served:.1f} ms ({psutil.cpu_count()} cores)")
        return 0
    finally:
        if started:
            subprocess.run([sys.executable, str(REPO_ROOT / "scripts/stack.py"), "down"], env=bench_stack.ENV,
                           stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
