"""Shared fixtures: the real local stack (Triton included), started once per test
session on its own ports and runtime folder so it never collides with a stack a
developer has running, with PostgreSQL as the results database and its own Redis.

PostgreSQL is the one at TEST_PG_ADMIN_DSN when it answers (trust auth), else a
throwaway server started for the session; Redis is a throwaway server unless
TEST_REDIS_URL names one that answers (tests/servers.py).

With CI=true a skipped test is a failure (a missing tool must not hide a test),
except a skip whose reason starts with INTERNET_SKIP."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg2
import pytest
import requests

from services.common import config
from services.common.config import REPO_ROOT
from tests.servers import Postgres, Redis
from scripts.processes import free_port as free_port, gunicorn_command as gunicorn_command, wait_until as wait_until

DATA_DIR = Path(config.DATA_DIR)
TEST_VAR = REPO_ROOT / "var" / "test-stack"
PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_DB = "car_detection_test"
INTERNET_SKIP = "needs the internet"

KEYS = {"client": "client-a-key-0123456789", "client_b": "client-b-key-0123456789",
        "dpo": "dpo-key-0123456789", "admin": "admin-key-0123456789"}

# The service token of every internal service (feature, results, adapter). The test
# process is their operator: the stack and every service a test starts inherit it.
INTERNAL_TOKEN = os.environ.setdefault("INTERNAL_TOKEN", "test-internal-token-" + uuid.uuid4().hex)
INTERNAL_HEADERS = {"X-Internal-Token": INTERNAL_TOKEN}
INTERNAL_METADATA = (("x-internal-token", INTERNAL_TOKEN),)
# The key of Triton's restricted APIs (model control, shared memory): every Triton a test
# starts (services/triton/run.sh) and every tool that reloads a model read it from here.
TRITON_ADMIN_KEY = os.environ.setdefault("TRITON_ADMIN_KEY", "test-triton-admin-key-" + uuid.uuid4().hex)

# TEST_PORT_OFFSET shifts every port (and the machine-wide lock) so that a second session
# stack can run beside the first, e.g. TEST_PORT_OFFSET=10000 for 2xxxx ports.
PORT_OFFSET = int(os.environ.get("TEST_PORT_OFFSET", "0"))
PORTS = {name: str(int(port) + PORT_OFFSET) for name, port in {
    "GATEWAY_PORT": "18080", "FEATURE_PORT": "15001", "RESULTS_PORT": "15002",
    "MODEL_SERVING_PORT": "15051", "TRITON_HTTP_PORT": "18000", "TRITON_GRPC_PORT": "18001",
    "TRITON_METRICS_PORT": "18002", "MODEL_SERVING_METRICS_PORT": "19151", "PROMETHEUS_PORT": "19090",
}.items()}


def _refuse_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and os.environ.get("CI") == "true" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not reason.removeprefix("Skipped: ").startswith(INTERNET_SKIP):
            report.outcome = "failed"
            report.longrepr = f"CI=true: nothing may be skipped for a missing tool or file; skipped because: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    _refuse_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    # A module-level skip (pytest.importorskip("tensorflow") at import) is a collection
    # report, never a test report: without this it would pass CI=true silently.
    outcome = yield
    _refuse_skip_in_ci(outcome.get_result())


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres.at_or_start(PG_ADMIN_DSN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    server = Redis.at_or_start(os.environ.get("TEST_REDIS_URL"))
    try:
        yield server
    finally:
        server.close()


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    var_dir: Path
    redis: Redis | None = None
    postgres: Postgres | None = None

    def url(self, port_name: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.env[port_name]}{path}"

    @property
    def gateway(self) -> str:
        return self.url("GATEWAY_PORT")

    @property
    def triton_grpc(self) -> str:
        return f"127.0.0.1:{self.env['TRITON_GRPC_PORT']}"

    @property
    def adapter(self) -> str:
        return f"127.0.0.1:{self.env['MODEL_SERVING_PORT']}"


def recreate_database(name: str, admin_dsn: str = PG_ADMIN_DSN) -> str:
    connection = psycopg2.connect(admin_dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def stack_command(env: dict[str, str], command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "stack.py"), command],
                          env=env, capture_output=True, text=True)


@pytest.fixture(scope="session")
def stack(postgres: Postgres, redis_server: Redis) -> Iterator[Stack]:
    # One test stack per machine at a time: concurrent sessions would share its ports.
    lock = open(f"/tmp/car-detection-test-stack{'-' + str(PORT_OFFSET) if PORT_OFFSET else ''}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    shutil.rmtree(TEST_VAR, ignore_errors=True)
    env = dict(os.environ, **PORTS)
    env.update({
        "VAR_DIR": str(TEST_VAR),
        "DATABASE_URL": recreate_database(TEST_DB, postgres.admin_dsn),
        "API_KEYS": ",".join(f"{KEYS[name]}:{name.split('_')[0]}" for name in KEYS),
        "PSEUDONYM_KEY": "test-pseudonym-key-" + uuid.uuid4().hex,
        "RATE_LIMIT": "1000 per second",
        "RATELIMIT_STORAGE_URI": redis_server.db(15),
    })
    started = stack_command(env, "up")
    if started.returncode != 0:
        stack_command(env, "down")
        pytest.fail(f"the local stack did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield Stack(env=env, var_dir=TEST_VAR, redis=redis_server, postgres=postgres)
    finally:
        stack_command(env, "down")
        fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def http() -> requests.Session:
    """A client that holds the service token, as the gateway does: tests of an internal
    service's own behaviour get past its token check (tests of the check use requests)."""
    session = requests.Session()
    session.headers.update(INTERNAL_HEADERS)
    return session


class _TokenMetadata(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), *INTERNAL_METADATA]
        return continuation(details._replace(metadata=metadata), request)


def adapter_channel(address: str, **options: Any) -> grpc.Channel:
    """A channel to the gRPC adapter that presents the service token on every call."""
    return grpc.intercept_channel(grpc.insecure_channel(address, **options), _TokenMetadata())


@pytest.fixture(scope="module")
def sqlite_results(stack: Stack) -> Iterator[tuple[str, Path]]:
    """A second results service without DATABASE_URL, on the embedded SQLite default:
    (its URL, its database file)."""
    var, port = stack.var_dir / f"sqlite-results-{uuid.uuid4().hex[:8]}", free_port()
    var.mkdir(parents=True)
    env = {k: v for k, v in stack.env.items() if k != "DATABASE_URL"}
    env.update(VAR_DIR=str(var), PYTHONPATH=str(REPO_ROOT))
    with open(var / "results-service.log", "w") as log:
        process = subprocess.Popen(gunicorn_command("services.results_service.app:app", port),
                                   cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    if not wait_until(lambda: requests.get(f"{url}/ready", timeout=1).status_code == 200, timeout=60):
        process.kill()
        pytest.fail(f"the SQLite results service did not start:\n{(var / 'results-service.log').read_text()[-2000:]}")
    yield url, var / "results.db"
    process.terminate()
    try:
        process.wait(60)  # a loaded machine can take a while to stop gunicorn's workers
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def headers(role: str, **extra: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[role], **extra}


def frame(name: str = "vid_4_1000.jpg") -> bytes:
    """A real frame of the dataset (vid_4_1000 holds one car)."""
    return (DATA_DIR / "training_images" / name).read_bytes()


def ir_opening(xml: Path) -> list[str]:
    """The first three operations of an OpenVINO IR, constants aside."""
    import openvino as ov

    ops = ov.Core().read_model(str(xml)).get_ordered_ops()
    return [op.get_type_name() for op in ops if op.get_type_name() != "Constant"][:3]


def version_resizing_in_float() -> Path:
    """The newest stored version whose INT8 IR converts the frame to float before resizing it
    (as every export before the uint8 resize did): the real subject for that rewrite."""
    return _newest_version_opening_with(["Parameter", "Convert", "Interpolate"], "resizes in float")


def version_resizing_in_its_graph() -> Path:
    """The newest stored version whose INT8 IR resizes the uint8 frame in its graph (versions up
    to 8): the real subject for cutting that resize out (resize_outside)."""
    return _newest_version_opening_with(["Parameter", "Interpolate", "Convert"], "resizes the uint8 frame")


def _newest_version_opening_with(opening: list[str], what: str) -> Path:
    versions = sorted((p for p in (REPO_ROOT / "model_repository" / "car_detector").iterdir() if p.name.isdigit()),
                      key=lambda p: -int(p.name))
    for version in versions:
        xml = version / "openvino" / "model_int8.xml"
        if xml.is_file() and ir_opening(xml) == opening:
            return version
    raise LookupError(f"no stored version has an INT8 IR that {what}")
