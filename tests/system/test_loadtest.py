"""A short headless Locust run against the test stack: every scenario, zero failures."""
from __future__ import annotations

import csv
import subprocess

from tests.conftest import KEYS, REPO_ROOT


def test_short_locust_run_has_no_failures(stack, tmp_path):
    env = dict(stack.env, LOCUST_CLIENT_KEY=KEYS["client"], LOCUST_DPO_KEY=KEYS["dpo"])
    run = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/locust"), "-f", str(REPO_ROOT / "loadtest/locustfile.py"), "--headless",
         "-u", "4", "-r", "4", "-t", "15s", "--host", stack.gateway, "--csv", str(tmp_path / "run"), "--only-summary"],
        env=env, capture_output=True, text=True, timeout=120)
    with open(tmp_path / "run_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 20, run.stderr[-2000:]
    assert int(total["Failure Count"]) == 0, (tmp_path / "run_failures.csv").read_text()
    assert int(rows["/api/detect"]["Request Count"]) > 0
    assert run.returncode == 0, run.stderr[-2000:]
