"""Fault injection on the session stack, shared by the reliability tests: supervisorctl
and signals for the processes, the stack's own health checks, a bounded detect load,
and reads of what PostgreSQL really stored. Figures go to var/reliability/figures.json."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import psycopg2
import pytest
import requests

from services.common import config
from tests.conftest import REPO_ROOT, frame, headers

_spec = importlib.util.spec_from_file_location("stack_script", REPO_ROOT / "scripts" / "stack.py")
STACK = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(STACK)  # type: ignore[union-attr]

FIGURES = REPO_ROOT / "var" / "reliability" / "figures.json"
INTERNAL_MARKERS = ("Traceback", 'File "', "127.0.0.1", "localhost", "postgresql", "psycopg2", "sqlalchemy",
                    "ipv4:", "Connection refused")
TIMEOUT_S = 10.0  # INTERNAL_TIMEOUT_S: the longest any answer may take when a dependency is down


def record_figures(name: str, figures: dict) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    existing[name] = {**figures, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    FIGURES.write_text(json.dumps(existing, indent=2, sort_keys=True))
    print(f"\n{name}: {json.dumps(figures)}")


def ctl_env(stack) -> dict[str, str]:
    env = dict(stack.env)
    for name, value in STACK.DEFAULTS.items():
        env.setdefault(name, value)
    env["REPO_ROOT"] = str(REPO_ROOT)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def ctl(stack, *args: str) -> str:
    done = STACK.supervisorctl(ctl_env(stack), *args)
    return done.stdout + done.stderr


def wait_stack_healthy(stack, timeout_s: float = 240.0) -> None:
    """Every health check passes, every breaker's open period is over, *and* detects
    succeed: the next test finds a working stack.

    Breakers are per gunicorn worker and a worker's last failure (a /ready probe, say) may
    come just before the dependency is back; canary detects can all land on another worker,
    so waiting for them alone is not enough. After BREAKER_RESET_S every breaker is at
    least half-open and its next call, a trial, finds the dependency up."""
    env = ctl_env(stack)
    deadline = time.monotonic() + timeout_s
    for name, probe in STACK.health_checks(env).items():
        while not probe():
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not become healthy again:\n{STACK.log_tail(env, name)}")
            time.sleep(0.5)
    time.sleep(float(env.get("BREAKER_RESET_S", config.BREAKER_RESET_S)))
    for _attempt in range(60):
        # several in a row: each gunicorn worker has its own breakers
        if all(detect(stack, "reliability-canary", f"canary-{uuid.uuid4().hex}", timeout=30).status_code == 201
               for _ in range(4)):
            return
        time.sleep(1)
    pytest.fail("the stack is healthy but detects keep failing")


@contextmanager
def stopped(stack, program: str) -> Iterator[None]:
    """`program` stopped for the duration of the block; always restarted and healthy after."""
    output = ctl(stack, "stop", program)
    assert "stopped" in output or "not running" in output, output
    try:
        yield
    finally:
        ctl(stack, "start", program)
        wait_stack_healthy(stack)


def detect(stack, user: str, request_id: str, timeout: float = 60.0, session: requests.Session | None = None):
    return (session or requests).post(
        f"{stack.gateway}/api/detect", headers=headers("client", **{"X-Request-ID": request_id}),
        files={"image": ("frame.jpg", frame(), "image/jpeg")}, data={"user_id": user}, timeout=timeout)


def stored_ids(stack, request_ids: list[str]) -> set[str]:
    if not request_ids:
        return set()
    with psycopg2.connect(stack.env["DATABASE_URL"]) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT request_id FROM predictions WHERE request_id = ANY(%s)", (list(request_ids),))
        return {row[0] for row in cursor.fetchall()}


def assert_clean_503(answer: requests.Response) -> None:
    assert answer.status_code == 503, (answer.status_code, answer.text[:300])
    assert int(answer.headers["Retry-After"]) >= 1
    body = answer.json()
    assert body["error"] and body["request_id"] == answer.headers["X-Request-ID"]
    for marker in INTERNAL_MARKERS:
        assert marker not in answer.text, (marker, answer.text)


@dataclass
class Outcome:
    request_id: str
    status: int | str  # HTTP status, or the connection error's name
    elapsed_s: float
    retry_after: str | None = None


@dataclass
class _Clients:
    """`users` client threads, each running `_run(its index)` from the start of the `with`
    block to its end."""
    stack: object
    users: int
    prefix: str  # starts every request id and the user id; each kind of load has its default

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.users)]

    @property
    def user_id(self) -> str:
        return f"{self.prefix}-subject"

    def _run(self, index: int) -> None:
        raise NotImplementedError

    def _request_ids(self, index: int) -> Iterator[str]:
        """Client `index`'s next request id, until the load is stopped."""
        n = 0
        while not self._stop.is_set():
            n += 1
            yield f"{self.prefix}-{index}-{n}"

    def _join_timeout_s(self) -> float:
        return 90.0

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._join_timeout_s())


@dataclass
class Load(_Clients):
    """N clients sending detects in a loop until stopped, each with its own request ids."""
    prefix: str = field(default_factory=lambda: f"load-{uuid.uuid4().hex[:8]}")
    outcomes: list[Outcome] = field(default_factory=list)

    def _run(self, index: int) -> None:
        session = requests.Session()
        for request_id in self._request_ids(index):
            started = time.perf_counter()
            try:
                answer = detect(self.stack, self.user_id, request_id, session=session)
                outcome = Outcome(request_id, answer.status_code, time.perf_counter() - started,
                                  answer.headers.get("Retry-After"))
                if answer.status_code >= 500:
                    assert_clean_503(answer)
                    time.sleep(0.2)  # a client backs off a little (not the whole Retry-After: keep probing)
            except requests.RequestException as error:
                outcome = Outcome(request_id, type(error).__name__, time.perf_counter() - started)
                session = requests.Session()
                time.sleep(0.2)  # a refused connection is instant: do not spin
            except AssertionError as error:
                outcome = Outcome(request_id, f"bad 5xx: {error}", time.perf_counter() - started)
            with self._lock:
                self.outcomes.append(outcome)

    def count(self, status: int | str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def acknowledged(self) -> list[str]:
        return [o.request_id for o in self.outcomes if o.status == 201]

    def summary(self) -> dict:
        statuses: dict[str, int] = {}
        for outcome in self.outcomes:
            statuses[str(outcome.status)] = statuses.get(str(outcome.status), 0) + 1
        return {"sent": len(self.outcomes), "statuses": statuses}


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5) -> float | None:
    """Seconds until predicate() held, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception:
            pass
        time.sleep(interval_s)
    return None




# --------------------------------------------------------------------------- hard faults: signals, PostgreSQL, Redis

def program_pid(stack, program: str) -> int:
    """The pid supervisord started for `program` (a gunicorn master, or the adapter)."""
    return int(ctl(stack, "pid", program).strip())


def child_pids(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def terminate_database_connections(stack) -> int:
    """pg_terminate_backend of every connection to the stack's database: what a
    PostgreSQL restart or failover does to the services' pools."""
    database = stack.env["DATABASE_URL"].rsplit("/", 1)[1]
    connection = psycopg2.connect(stack.postgres.admin_dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
        terminated = cursor.fetchone()[0]
    connection.close()
    return terminated


def stored_rows(stack, prefix: str) -> dict[str, dict]:
    """What PostgreSQL holds for request ids starting with `prefix`, read directly."""
    with psycopg2.connect(stack.env["DATABASE_URL"]) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT request_id, detections, model_version, client_id, user_hash FROM predictions "
                       "WHERE request_id LIKE %s", (prefix + "%",))
        return {row[0]: {"detections": row[1] if not isinstance(row[1], str) else json.loads(row[1]),
                         "model_version": row[2], "client_id": row[3], "user_hash": row[4]}
                for row in cursor.fetchall()}


AMBIGUOUS = "ambiguous"  # a connection error or a 5xx: the client cannot know whether it was stored


@dataclass
class Delivery:
    """One detection as a client sees it: every attempt with the same request id, and
    the 201 body if one came."""
    request_id: str
    attempts: list[Outcome] = field(default_factory=list)
    answer: dict | None = None

    @property
    def final(self) -> int | str:
        return self.attempts[-1].status if self.attempts else "never sent"


@dataclass
class RetryingLoad(_Clients):
    """N clients sending detects in a loop; after an ambiguous failure, or a 429 (after its
    Retry-After), each retries the *same* request id (as docs/reliability.md tells clients to)
    until it gets 201, or 409 (an earlier attempt stored it), or `give_up_s` passes. A delivery under way when the
    load is stopped is finished, so every request id ends known."""
    give_up_s: float = 120.0
    prefix: str = field(default_factory=lambda: f"hard-{uuid.uuid4().hex[:8]}")
    deliveries: list[Delivery] = field(default_factory=list)

    def _session(self) -> requests.Session:
        return requests.Session()

    def _send(self, request_id: str, session: requests.Session) -> requests.Response:
        """One attempt; the composed stack's load (tests/compose) sends it over TLS instead."""
        return detect(self.stack, self.user_id, request_id, session=session)

    def _run(self, index: int) -> None:
        session = self._session()
        for request_id in self._request_ids(index):
            delivery = Delivery(request_id)
            with self._lock:
                self.deliveries.append(delivery)
            deadline = time.monotonic() + self.give_up_s
            while time.monotonic() < deadline:
                started, pause = time.perf_counter(), 0.3
                try:
                    answer = self._send(delivery.request_id, session)
                    status: int | str = answer.status_code
                    if status >= 500:
                        assert_clean_503(answer)
                        status = AMBIGUOUS
                    elif status == 201:
                        delivery.answer = answer.json()
                    elif status == 429:  # refused before any work: the same id again, after the wait it names
                        pause = float(answer.headers.get("Retry-After", "1"))
                except requests.RequestException:
                    status, session = AMBIGUOUS, self._session()
                except AssertionError as error:
                    status = f"bad 5xx: {error}"
                delivery.attempts.append(Outcome(delivery.request_id, status, time.perf_counter() - started))
                if status not in (AMBIGUOUS, 429):
                    break
                time.sleep(pause)

    def _join_timeout_s(self) -> float:
        return self.give_up_s + 60  # a delivery under way is finished, retries included

    def acknowledged(self) -> int:
        with self._lock:
            return sum(1 for d in self.deliveries if d.final == 201)
