"""Smoke test of `make log-shipping-bench` (loadtest/log_shipping.py) on the project's own shipper;
the python-logstash rows run too when that package is importable."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from loadtest import log_shipping
from services.common.config import REPO_ROOT

# `make test` installs python-logstash there (Makefile: PYLOGSTASH); it is not a runtime dependency.
PYLOGSTASH = REPO_ROOT / "var" / "pylogstash"
if PYLOGSTASH.is_dir() and str(PYLOGSTASH) not in sys.path:
    sys.path.append(str(PYLOGSTASH))


@pytest.fixture(autouse=True)
def few_events(monkeypatch):
    monkeypatch.setattr(log_shipping, "EVENTS", 300)


def test_the_own_shipper_delivers_every_event_when_logstash_is_up():
    row = log_shipping.run("own", "up")
    assert row["received"] == 300 and row["stderr_lines"] == 0


def test_the_own_shipper_delivers_after_an_outage():
    # No clock bound here (the caller's worst time is the bench's figure, not a test): that
    # the caller never waits on Logstash is proven without a clock in tests/unit/test_logs.py.
    row = log_shipping.run("own", "outage")
    assert row["received"] >= 150 and row["stderr_lines"] == 0


@pytest.mark.skipif(importlib.util.find_spec("logstash") is None, reason=f"python-logstash: `make test` installs it into {PYLOGSTASH}")
def test_python_logstash_rows_run():
    assert log_shipping.run("python-logstash", "up")["received"] == 300
