"""`python tests/test_system.py`, the seed's own command, run as a user runs it: a plain script
(no pytest) against a running stack, here the session's test stack. Under pytest the same
cases run as functions (tests/test_system.py); this checks the script path itself: its
imports, its port and key discovery from the environment, and its exit status."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import DATA_DIR, REPO_ROOT

SEED_CASES = ("test_feature_service_health", "test_results_service_health", "test_end_to_end_prediction",
              "test_rgpd_user_data_access", "test_rgpd_user_data_deletion")


def run_seed_script(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tests/test_system.py"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_seed_script_passes_against_a_running_stack(stack):
    # Only what a user following the seed has: the stack's ports, keys and data directory.
    env = dict(stack.env, PYTHONPATH="", DATA_DIR=str(DATA_DIR))
    run = run_seed_script(env)
    assert run.returncode == 0, run.stdout + run.stderr
    for case in SEED_CASES:
        assert f"  ok    {case}" in run.stdout, run.stdout
    assert run.stdout.rstrip().endswith(f"{len(SEED_CASES)} passed, 0 failed")


def test_the_seed_script_fails_when_the_stack_is_not_there(stack):
    # Ports where nothing listens: every case reports its failure and the exit status is 1.
    env = dict(stack.env, PYTHONPATH="", DATA_DIR=str(DATA_DIR), GATEWAY_PORT="1", FEATURE_PORT="1",
               RESULTS_PORT="1", MODEL_SERVING_PORT="1")
    run = run_seed_script(env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith(f"0 passed, {len(SEED_CASES)} failed"), run.stdout
