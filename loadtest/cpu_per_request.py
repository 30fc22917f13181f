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

import psutil

from services.common.config import REPO_ROOT

from loadtest import bench, bench_paths, bench_stack  # noqa: E402
from loadtest.bench_model import PYTHON_SERVICES, ServiceCpu  # noqa: E402


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
        meter = ServiceCpu(bench_stack.stack_processes())
        meter.start()
        client_before = own_cpu_seconds()
        run = bench.measure(bench_paths.gateway(), images, args.concurrency, args.seconds)
        per_service = meter.stop()
        client_after = own_cpu_seconds()
        summary = bench.summarise([run], args.concurrency)
        served = summary["requests"]
        if not served or summary["errors"]:
            print(f"not a valid measurement: {served} requests, {summary['errors']} errors "
                  f"({summary['first_error']})", file=sys.stderr)
            return 1
        python = sum(per_service.get(name, 0.0) for name in PYTHON_SERVICES)
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
              f"The Python services ({', '.join(PYTHON_SERVICES)}): {1000 * python / served:.1f} ms per detection\n"
              f"CPU available per request: {1000 * available / served:.1f} ms ({psutil.cpu_count()} cores)")
        return 0
    finally:
        if started:
            subprocess.run([sys.executable, str(REPO_ROOT / "scripts/stack.py"), "down"], env=bench_stack.ENV,
                           stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
