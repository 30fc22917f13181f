"""Scale-out from one run: gateway workers 2 vs 4, Triton instances 1 vs 2, end to end.

    python loadtest/scale_out.py [--seconds 30] [--concurrency 4 16]     # make scale-out

For each Triton variant (1 instance x 2 OpenVINO threads; 2 instances x 1 thread each, as
shipped: the same two cores' worth of threads) the stack is started with MODEL_REPOSITORY pointing
at a copy of the model repository whose config.pbtxt differs only in those numbers
(loadtest/triton_variants.py). Beside its gateway (GUNICORN_WORKERS, 2) a second gateway with 4
workers runs on the same services. Each gateway is loaded through its detect endpoint at each
concurrency, the two interleaved, and the CPU of every service is read around each run.
Prints a Markdown table; writes $VAR_DIR/bench/scale_out.json. The stack must not be running
(its ports are used); it is stopped afterwards.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

from services.common.config import REPO_ROOT

from loadtest import bench, bench_paths, bench_stack  # noqa: E402
from loadtest.bench_model import PYTHON_SERVICES, ServiceCpu  # noqa: E402
from loadtest.triton_variants import variant_repository  # noqa: E402
from scripts.processes import free_port, gunicorn_command, wait_until  # noqa: E402

# instances, OpenVINO threads per instance, streams sharing them
TRITON_VARIANTS = {"1 instance x 2 threads": (1, 2, 1), "2 instances x 1 thread": (2, 1, 1)}
EXTRA_GATEWAY_WORKERS = 4


def _ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def stack(command: str, env: dict[str, str]) -> None:
    """scripts/stack.py's own up/down, in this process: `up` completes `env` with the secrets
    it generates (service token, Redis), which the extra gateway then shares."""
    from scripts import stack as stack_script

    if getattr(stack_script, command)(env) != 0:
        sys.exit(f"stack {command} failed; see the log tail above")


def measure_gateway(url: str, processes: list[psutil.Process], images: list[bytes], concurrency: int,
                    seconds: float) -> dict:
    call = bench_paths._http_poster(f"{url}/api/detect", {"X-API-Key": bench_paths._admin_key()},
                                    {"user_id": "scale-out"})
    meter = ServiceCpu(processes)
    meter.start()
    run = bench.measure(call, images, concurrency, seconds)
    cpu = meter.stop()
    summary = bench.summarise([run], concurrency)
    served = max(1, summary["requests"])
    return {"images_per_s": summary["images_per_s"], "p95_ms": summary["p95_ms"], "errors": summary["errors"],
            "python_cpu_ms": round(1000 * sum(cpu.get(s, 0.0) for s in PYTHON_SERVICES) / served, 2),
            "model_cpu_ms": round(1000 * cpu.get("Triton python backend (the model)", 0.0) / served, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    env = {**bench_stack.ENV, "RATE_LIMIT": "100000 per second"}
    if subprocess.run([sys.executable, str(REPO_ROOT / "scripts/stack.py"), "status"], env=env,
                      capture_output=True).returncode == 0:
        sys.exit("the stack is running: `make down` first (this experiment starts it once per Triton variant)")
    images = bench.frames(16)
    root = Path(env["VAR_DIR"]) / "scale-out"
    rows = []
    for label, (instances, threads, streams) in TRITON_VARIANTS.items():
        repository = variant_repository(f"{instances}x{threads}x{streams}", instances, threads, root, streams)
        variant_env = {**env, "MODEL_REPOSITORY": str(repository)}
        stack("up", variant_env)
        port = free_port()
        extra_env = {**variant_env, "GUNICORN_WORKERS": str(EXTRA_GATEWAY_WORKERS), "GATEWAY_PORT": str(port)}
        log_file = open(root / f"gateway-{instances}x{threads}.log", "wb")
        extra = subprocess.Popen(gunicorn_command("gateway.app:app", port), cwd=REPO_ROOT, env=extra_env,
                                 stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            gateways = {int(env.get("GUNICORN_WORKERS", "2")): f"http://127.0.0.1:{env['GATEWAY_PORT']}",
                        EXTRA_GATEWAY_WORKERS: f"http://127.0.0.1:{port}"}
            extra_ready = f"http://127.0.0.1:{port}/ready"
            if not wait_until(lambda: _ready(extra_ready), 90):  # noqa: B023 - called within this iteration
                sys.exit(f"the {EXTRA_GATEWAY_WORKERS}-worker gateway did not start; see {log_file.name}")
            processes = [*bench_stack.stack_processes(), psutil.Process(extra.pid),
                         *psutil.Process(extra.pid).children(recursive=True)]
            for url in gateways.values():  # warm every worker
                measure_gateway(url, processes, images, 4, 3)
            for concurrency in args.concurrency:
                for workers, url in gateways.items():
                    row = {"triton": label, "gateway_workers": workers, "concurrency": concurrency,
                           **measure_gateway(url, processes, images, concurrency, args.seconds)}
                    bench_stack.log(json.dumps(row))
                    rows.append(row)
        finally:
            extra.terminate()
            extra.wait(20)
            stack("down", variant_env)
    print("| Triton | gateway workers | concurrency | images/s | p95 ms | Python CPU ms/detection | model CPU ms/image | errors |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['triton']} | {r['gateway_workers']} | {r['concurrency']} | {r['images_per_s']} | {r['p95_ms']} | "
              f"{r['python_cpu_ms']} | {r['model_cpu_ms']} | {r['errors']} |")
    print(f"\n{bench_stack.cpu_description()}, {psutil.cpu_count()} cores; {args.seconds:g} s per row")
    out = Path(env["VAR_DIR"]) / "bench" / "scale_out.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": bench_stack.cpu_description(), "rows": rows}, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
