"""The composed stack for the tests in this folder: `scripts/compose/compose.py up`
with a project and host ports of its own (car-detection-test, 3xxxx on 127.0.0.1),
so neither a user's `make compose-up` nor the local test stack is disturbed.

Where no Docker engine can be started (no root, no docker.io, no dockerd), every
test here is skipped and the reason is printed at the end of the run. Anything
else that goes wrong (a build, an unhealthy container) fails the tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

from services.common.config import REPO_ROOT

COMPOSE_PY = REPO_ROOT / "scripts" / "compose" / "compose.py"
WORK = REPO_ROOT / "var" / "compose-test"
PROJECT = "car-detection-test"
PORTS = {
    "GATEWAY_PORT": 38080, "FEATURE_PORT": 35001, "RESULTS_PORT": 35002, "MODEL_SERVING_PORT": 35051,
    "TRITON_HTTP_PORT": 38000, "TRITON_GRPC_PORT": 38001, "TRITON_METRICS_PORT": 38002,
    "POSTGRES_PORT": 35432, "PROMETHEUS_PORT": 39090,
}
_skip_reason: list[str] = []


@dataclass
class Composed:
    env_file: Path
    env: dict[str, str]
    ca: str

    def url(self, port: str, path: str = "", scheme: str = "https") -> str:
        return f"{scheme}://127.0.0.1:{PORTS[port]}{path}"

    def key(self, role: str) -> str:
        return next(k for k, r in (e.rsplit(":", 1) for e in self.env["API_KEYS"].split(",")) if r == role)

    def container(self, service: str) -> str:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}",
                              "--filter", f"label=com.docker.compose.service={service}"],
                             capture_output=True, text=True, check=True).stdout.split()
        assert ids, f"no container for {service}"
        return ids[0]

    def logs(self, service: str, since: str | None = None) -> list[str]:
        out = subprocess.run(["docker", "logs", *(["--since", since] if since else []), self.container(service)],
                             capture_output=True, text=True)
        return [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]

    def health(self, service: str) -> str:
        out = subprocess.run(["docker", "inspect", self.container(service)], capture_output=True, text=True, check=True)
        state = json.loads(out.stdout)[0]["State"]
        return (state.get("Health") or {}).get("Status", state["Status"])

    def psql(self, sql: str) -> str:
        out = subprocess.run(["docker", "exec", self.container("postgres"), "psql", "-U", "results", "-d", "results",
                              "-At", "-c", sql], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def compose_up(self, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(COMPOSE_PY), "up", "--env-file", str(self.env_file),
                               "--service", "prometheus", *extra], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=3600)


def _engine() -> str | None:
    """None when an engine answers (started if need be); else why not."""
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts/compose/engine.sh")], capture_output=True, text=True,
                            timeout=600)
    if result.returncode == 0:
        return None
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "engine.sh failed"


def _write_env(path: Path) -> None:
    """Ports and project of the test stack; compose.py adds fresh secrets to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    wanted = {"COMPOSE_PROJECT_NAME": PROJECT, "TLS_DIR": "./var/compose-test/tls",
              **{k: str(v) for k, v in PORTS.items()},
              # A minute, so the test sees the job run again; the default is a day.
              "RETENTION_INTERVAL_S": "60"}
    lines = [line for line in existing.splitlines() if line.split("=", 1)[0] not in wanted]
    path.write_text("\n".join([*(f"{k}={v}" for k, v in wanted.items()), *lines]) + "\n")


@pytest.fixture(scope="package")
def engine() -> None:
    """A Docker engine answers (started if need be), or the test is skipped saying why."""
    why = _engine() if shutil.which("bash") else "bash is missing"
    if why:
        pytest.skip(f"no Docker engine can be started here: {why}")


# Package scope: the containers go away once this folder's tests are done, before
# the rest of `make test` (the local stack) needs the CPU.
@pytest.fixture(scope="package")
def composed() -> Iterator[Composed]:
    if os.environ.get("COMPOSE_TESTS", "1") == "0":
        _skip_reason.append("compose system tests skipped: COMPOSE_TESTS=0 (make test-compose runs them)")
        pytest.skip(_skip_reason[-1])
    why = _engine() if shutil.which("bash") else "bash is missing"
    if why:
        _skip_reason.append(f"compose system tests skipped: no Docker engine can be started here: {why}")
        pytest.skip(_skip_reason[-1])
    env_file = WORK / ".env"
    _write_env(env_file)
    stack = Composed(env_file, {}, str(WORK / "tls" / "ca.pem"))
    started = time.monotonic()
    # COMPOSE_TEST_REUSE=1: test a stack that is already up (COMPOSE_TEST_KEEP=1 left it), no build.
    reuse = os.environ.get("COMPOSE_TEST_REUSE") == "1"
    result = subprocess.CompletedProcess([], 0, "", "") if reuse else stack.compose_up()
    if result.returncode != 0:
        pytest.fail(f"compose.py up failed after {time.monotonic() - started:.0f}s:\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    stack.env = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                     if "=" in line and not line.startswith("#"))
    try:
        yield stack
    finally:
        if os.environ.get("COMPOSE_TEST_KEEP") != "1":
            subprocess.run([sys.executable, str(COMPOSE_PY), "down", "--env-file", str(env_file), "--volumes"],
                           cwd=REPO_ROOT, capture_output=True, timeout=300)


@pytest.fixture(scope="package")
def https(composed: Composed) -> requests.Session:
    session = requests.Session()
    # Not the environment's CA bundle (REQUESTS_CA_BUNDLE would override session.verify)
    # nor its proxies: the stack's own CA, straight to 127.0.0.1.
    session.trust_env = False
    session.verify = composed.ca
    return session


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 (pytest's hook signature)
    for reason in _skip_reason:
        terminalreporter.write_line(reason, yellow=True, bold=True)
