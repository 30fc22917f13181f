"""Smoke tests of the measurement targets that have no stack of their own to test against:
`make triton-variants` (loadtest/triton_variants.py) writes per-variant model repositories,
and `make model-cpu` (loadtest/model_cpu.py) measures one runtime variant in a child process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtest import triton_variants
from services.common.config import REPO_ROOT

SHIPPED = triton_variants.MODEL_DIR


def test_variant_words_are_instances_x_threads_x_streams_then_batching():
    Variant = triton_variants.Variant
    assert triton_variants.parse_variants(["2x1", "1x2", "1x2x1", "1x2p", "2x1/max8", "2x1p/max8/pref4+8", "2x1/pref1",
                                           "2x1/v7", "1x2/max8/pref4/v12"]) == [
        Variant("2x1", 2, 1), Variant("1x2", 1, 2), Variant("1x2x1", 1, 2, 1), Variant("1x2p", 1, 2, pinned=True),
        Variant("2x1/max8", 2, 1, max_batch=8), Variant("2x1p/max8/pref4+8", 2, 1, pinned=True, max_batch=8, preferred=(4, 8)),
        Variant("2x1/pref1", 2, 1, preferred=(1,)), Variant("2x1/v7", 2, 1, version=7),
        Variant("1x2/max8/pref4/v12", 1, 2, max_batch=8, preferred=(4,), version=12)]
    assert [variant.name for variant in triton_variants.parse_variants([])] == ["2x2", "1x2", "2x1"]
    for bad in ("2x", "0x1", "two", "1x2x0", "1x2q", "2x1/max0", "2x1/pref", "2x1/pref4+", "2x1/pref4/max8",
                "2x1/v", "2x1/v0", "2x1/v7/max8"):
        with pytest.raises(SystemExit, match="expected NxT"):
            triton_variants.parse_variants([bad])


def test_a_variant_repository_differs_from_the_shipped_one_in_instances_threads_and_streams_only(tmp_path):
    repository = triton_variants.variant_repository("3x1", 3, 1, tmp_path)
    model = repository / "car_detector"
    shipped, variant = (SHIPPED / "config.pbtxt").read_text().splitlines(), (model / "config.pbtxt").read_text().splitlines()
    changed = {(a.strip(), b.strip()) for a, b in zip(shipped, variant) if a != b}
    assert len(shipped) == len(variant) and ("count: 2", "count: 3") in changed
    # streams: the shipped number, at most the threads
    assert {b for _, b in changed} <= {"count: 3", 'parameters: { key: "OPENVINO_THREADS" value: { string_value: "1" } }',
                                       'parameters: { key: "OPENVINO_STREAMS" value: { string_value: "1" } }',
                                       'parameters: { key: "TF_INTRA_OP_THREADS" value: { string_value: "1" } }',
                                       'parameters: { key: "LOG_BATCHES" value: { string_value: "false" } }'}
    pinned = triton_variants.variant_repository("1x2p", 1, 2, tmp_path, pinned=True) / "car_detector" / "config.pbtxt"
    assert 'key: "OPENVINO_CPU_PINNING" value: { string_value: "true" }' in pinned.read_text()
    assert 'key: "OPENVINO_CPU_PINNING" value: { string_value: "false" }' in (model / "config.pbtxt").read_text()
    # Batching: the largest compiled batch and the preferred sizes, in a directory of its own.
    batching = triton_variants.variant_repository("2x1/max8/pref4+8", 2, 1, tmp_path, max_batch=8, preferred=(4, 8))
    assert batching.parent == tmp_path and batching.name == "2x1-max8-pref4+8"
    text = (batching / "car_detector" / "config.pbtxt").read_text()
    assert 'key: "OPENVINO_MAX_BATCH" value: { string_value: "8" }' in text and "preferred_batch_size: [ 4, 8 ]" in text
    assert 'OPENVINO_MAX_BATCH" value: { string_value: "4" }' in (model / "config.pbtxt").read_text()
    assert "preferred_batch_size: [ 1 ]" in (model / "config.pbtxt").read_text()
    # Another version, and nothing else, with /vN; an absent one stops the run.
    older = min(int(p.name) for p in SHIPPED.iterdir() if p.name.isdigit())
    pinned_version = triton_variants.variant_repository(f"2x1/v{older}", 2, 1, tmp_path, version=older)
    changed = [(a, b) for a, b in zip(shipped, (pinned_version / "car_detector" / "config.pbtxt").read_text().splitlines()) if a != b]
    assert [b for _, b in changed if "version_policy" in b] == [f"version_policy: {{ specific: {{ versions: [ {older} ] }} }}"]
    assert all("version_policy" in b or "LOG_BATCHES" in b or "THREADS" in b or "STREAMS" in b for _, b in changed)
    with pytest.raises(SystemExit, match="no model version 999"):
        triton_variants.variant_repository("2x1/v999", 2, 1, tmp_path, version=999)
    # Every version is the shipped one itself (a link), not a copy that could drift.
    versions = sorted(p.name for p in SHIPPED.iterdir() if p.name.isdigit())
    assert versions and all((model / v).is_symlink() and (model / v).resolve() == (SHIPPED / v).resolve() for v in versions)


def test_model_cpu_measures_one_openvino_variant_in_a_child_process():
    # The smallest real run: INT8 IR of the newest version, 1 thread, one timed call per batch size.
    run = subprocess.run([sys.executable, str(REPO_ROOT / "loadtest" / "model_cpu.py"), "--calls", "1", "--child", "1",
                          "--precision", "int8"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert [row["batch"] for row in rows] == [1, 4]
    assert all(row["wall_ms_per_image"] > 0 and row["cpu_ms_per_image"] > 0 for row in rows)


def test_service_cpu_attributes_a_process_cpu_to_its_service():
    """`make cpu-per-request` / `make scale-out` / bench's gateway rows: CPU seconds per service,
    read around a run (here: this process, burning CPU between start and stop)."""
    import time

    import psutil

    from loadtest.bench_model import ServiceCpu, service_of

    me = psutil.Process()
    meter = ServiceCpu([me])
    meter.start()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    measured = meter.stop()
    assert list(measured) == [service_of(me)] and 0.25 <= measured[service_of(me)] < 5
