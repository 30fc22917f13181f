"""One logging setup for every service: ECS JSON lines on stdout.

Each line carries `service.name` and, inside a request, `trace.id` (the request
id that the gateway hands to every hop). User ids never appear: callers log
`user.hash` from services.common.pseudonym. When LOGSTASH_HOST is set, events are
also shipped to Logstash over TCP from a bounded in-memory queue, so a slow or
absent Logstash never slows an answer down.
"""
from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar

import ecs_logging

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_configured: str | None = None


class _ContextFilter(logging.Filter):
    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.setdefault("service.name", self.service_name)
        request_id = request_id_var.get()
        if request_id and "trace.id" not in record.__dict__:
            record.__dict__["trace.id"] = request_id
        return True


def setup_logging(service_name: str) -> logging.Logger:
    """Configure the root logger once per process; return the service's logger."""
    global _configured
    if _configured is None:
        root = logging.getLogger()
        root.handlers.clear()
        root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        context = _ContextFilter(service_name)
        stdout = logging.StreamHandler(sys.stdout)
        stdout.setFormatter(ecs_logging.StdlibFormatter(exclude_fields=["log.original"]))
        stdout.addFilter(context)
        root.addHandler(stdout)
        shipper = _logstash_handler()
        if shipper is not None:
            shipper.addFilter(context)
            root.addHandler(shipper)
        # Libraries' chatter at INFO would drown the service's own events.
        for noisy in ("urllib3", "werkzeug", "tensorflow", "absl"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        _configured = service_name
    return logging.getLogger(service_name)


def _logstash_handler() -> logging.Handler | None:
    host = os.environ.get("LOGSTASH_HOST", "").strip()
    if not host:
        return None
    from logstash_async.handler import AsynchronousLogstashHandler

    port = int(os.environ.get("LOGSTASH_PORT", "5000"))
    # database_path=None keeps the queue in memory: the handler's worker thread
    # sends in the background and drops what it cannot send instead of blocking.
    handler = AsynchronousLogstashHandler(host, port, database_path=None)
    handler.setFormatter(ecs_logging.StdlibFormatter(exclude_fields=["log.original"]))
    return handler
