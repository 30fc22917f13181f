"""The benchmark's own arithmetic (loadtest/bench.py, bench_report.py): measuring window, summaries, verdicts."""
from __future__ import annotations

import threading
import time

import pytest

from loadtest import bench, bench_report


def test_measure_counts_only_the_window_and_warms_each_thread() -> None:
    """Counts, not clock bounds: each thread's first call (its warm-up) is never measured,
    every other call is, and the window lasts at least `seconds`. (How fast the machine
    is does not enter; speed targets are `make bench`'s.)"""
    calls: list[list[float]] = []
    lock = threading.Lock()

    def make_call():  # one call object per client thread, like a keep-alive session
        mine: list[float] = []
        with lock:
            calls.append(mine)
        return lambda image: (mine.append(time.perf_counter()), time.sleep(0.01))

    run = bench.measure(make_call, [b"a", b"b"], concurrency=3, seconds=0.3)
    assert len(calls) == 3 and all(len(c) >= 2 for c in calls)  # a warm-up and at least one measured call each
    assert run["errors"] == []
    assert len(run["latencies"]) == sum(len(c) for c in calls) - 3  # exactly the warm-ups left out
    assert all(x >= 9 for x in run["latencies"])  # each measured call slept 10 ms
    assert run["wall_s"] >= 0.3
    # no measured call started after the window: each thread's calls span at most the window
    assert all(c[-1] - c[1] <= run["wall_s"] for c in calls)


def test_measure_reports_errors_without_stopping() -> None:
    def make_call():
        def call(image: bytes) -> None:
            time.sleep(0.005)
            if image == b"bad":
                raise RuntimeError("503: down")
        return call

    run = bench.measure(make_call, [b"ok", b"bad"], concurrency=1, seconds=0.5)  # room for a loaded machine
    assert run["latencies"] and run["errors"]
    assert "503" in run["errors"][0]


def test_summarise_pools_rounds() -> None:
    runs = [{"latencies": [10.0] * 50, "wall_s": 1.0, "errors": []},
            {"latencies": [30.0] * 50, "wall_s": 1.0, "errors": ["x"]}]
    row = bench.summarise(runs, 4)
    assert row["requests"] == 100 and row["errors"] == 1
    assert row["images_per_s"] == 50.0
    assert row["images_per_s_per_round"] == [50.0, 50.0]
    assert row["p50_ms"] == pytest.approx(20.0)


def _row(c: int, ips: float, p95: float = 100.0) -> dict:
    return {"concurrency": c, "images_per_s": ips, "p50_ms": 1.0, "p95_ms": p95, "p99_ms": 1.0, "errors": 0}


def test_verdicts_pass_fail_and_missing() -> None:
    report = {"stack_rss_mb": 1200.0, "results": {
        "in_process": [_row(16, 40.0)], "triton_direct": [_row(16, 36.0), _row(4, 30.0)],
        "gateway": [_row(4, 13.5, p95=180.0)], "naive_baseline": [_row(4, 5.0)]}}
    verdicts = {v["target"]: v for v in bench_report.verdicts(report)}
    assert verdicts["Triton direct / in process, throughput @c16"]["verdict"] == "PASS"  # 0.9
    assert verdicts["gateway / Triton direct, throughput @c4"]["verdict"] == "FAIL"  # 0.45
    assert verdicts["gateway / naive baseline, throughput @c4"]["verdict"] == "PASS"  # 2.7
    assert verdicts["gateway p95 latency @c4 (ms)"]["verdict"] == "FAIL"
    assert verdicts["whole stack resident memory, peak (MB)"]["verdict"] == "PASS"
    info = next(v for name, v in verdicts.items() if name.startswith("(information)"))
    assert info["verdict"] == "-"  # the reference path was not measured: no verdict, no crash


def test_markdown_has_the_table_and_the_verdicts() -> None:
    report = {"stack_rss_mb": 2000.0, "stack_pss_mb": 1500.0, "images": 16,
              "results": {"gateway": [_row(4, 20.0)]},
              "conditions": {"date": "d", "cpu_count": 2, "load_before": [0.1, 0.2, 0.3], "load_after": [1, 1, 1],
                             "rounds": 2, "seconds": 5.0, "model_version": "1", "stack_processes": 13}}
    report["verdicts"] = bench_report.verdicts(report)
    text = bench_report.markdown(report)
    assert "| 4. Gateway end to end | 4 | 20.0 |" in text
    assert "| gateway p95 latency @c4 (ms) | 100.0 | <= 150 | PASS |" in text
    assert "load average [0.1, 0.2, 0.3] before" in text


def test_a_latency_bound_the_model_alone_misses_is_called_out_of_reach() -> None:
    rows = {"gateway": [_row(4, 10.0, p95=500.0)], "in_process": [_row(4, 16.0, p95=340.0)]}
    verdict = {v["target"]: v for v in bench_report.verdicts({"results": rows})}["gateway p95 latency @c4 (ms)"]
    assert verdict["verdict"].startswith("FAIL (out of this CPU's reach")
    rows["in_process"] = [_row(4, 40.0, p95=95.0)]  # the model alone fits: the serving path is to blame
    verdict = {v["target"]: v for v in bench_report.verdicts({"results": rows})}["gateway p95 latency @c4 (ms)"]
    assert verdict["verdict"] == "FAIL"
