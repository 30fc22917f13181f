"""Failing dependencies cost a bounded wait, then nothing: a small circuit breaker.

Every internal call (gateway -> feature service, results service, gRPC adapter;
adapter -> Triton) already has a timeout. On top of that each dependency gets one
`CircuitBreaker` per process:

- closed: calls go through; each failure (connection error, timeout, 5xx,
  gRPC UNAVAILABLE/DEADLINE_EXCEEDED) counts, a success resets the count;
- open after `failures` consecutive failures: for `reset_after_s` seconds no call
  is attempted at all, the caller answers 503 with `Retry-After` = the time left;
- half-open when that time is up: exactly one trial call goes through; its
  success closes the breaker, its failure opens it again for another period.

A caller's error (4xx) is a success for the breaker: the dependency answered.
Breakers are per process (each gunicorn worker learns on its own within a few
calls); that keeps them free of shared state, which would itself be a dependency.

Retries are deliberately few (see docs/reliability.md): one retry, only when the
request certainly did no harm or is idempotent, never on a timeout.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from services.common import config

# The declared defaults (services/common/config.py), for callers that reason about them;
# a breaker reads the current BREAKER_FAILURES / BREAKER_RESET_S when it is made.
BREAKER_FAILURES = config.Settings.BREAKER_FAILURES.default
BREAKER_RESET_S = config.Settings.BREAKER_RESET_S.default



class CircuitOpen(Exception):
    """The dependency failed repeatedly; no call is attempted until `retry_after_s` passes."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit for {name} is open; retry in {retry_after_s:.1f}s")
        self.name, self.retry_after_s = name, retry_after_s

    @property
    def retry_after(self) -> str:
        """The `Retry-After` header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class CircuitBreaker:
    def __init__(self, name: str, failures: int | None = None, reset_after_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = config.BREAKER_FAILURES if failures is None else failures
        self.reset_after_s = config.BREAKER_RESET_S if reset_after_s is None else reset_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._clock() - self._opened_at >= self.reset_after_s else "open"

    def retry_after(self) -> int:
        """Whole seconds until a call may be tried again (0 when closed or half-open)."""
        with self._lock:
            if self._opened_at is None:
                return 0
            return max(0, math.ceil(self.reset_after_s - (self._clock() - self._opened_at)))

    def before_call(self) -> None:
        """Raise CircuitOpen instead of letting a call go to a dependency known to be down."""
        with self._lock:
            if self._opened_at is None:
                return
            left = self.reset_after_s - (self._clock() - self._opened_at)
            if left > 0:
                raise CircuitOpen(self.name, left)
            if self._trial_running:  # one trial at a time while half-open
                raise CircuitOpen(self.name, 1.0)
            self._trial_running = True

    def success(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._trial_running = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial_running or self._failures >= self.threshold:
                self._opened_at = self._clock()
            self._trial_running = False

    def release(self) -> None:
        """The call ended without telling anything about the dependency (e.g. a local error)."""
        with self._lock:
            self._trial_running = False
