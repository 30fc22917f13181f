"""Helpers for starting local processes and waiting on them, shared by the tests
(tests/conftest.py, tests/servers.py) and the load tools (loadtest/scale_out.py)."""
from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from services.common.config import REPO_ROOT


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.2) -> Any:
    """Poll `condition` until it returns something truthy (returned) or `timeout` seconds
    pass (False). A condition that raises, e.g. on a refused connection, counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except Exception:
            result = False
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def gunicorn_command(app: str, port: int) -> list[str]:
    """How the stack runs an HTTP service, for an extra instance started beside it."""
    return [str(REPO_ROOT / ".venv" / "bin" / "gunicorn"), "-c", "services/common/gunicorn_conf.py",
            "-b", f"127.0.0.1:{port}", app]
