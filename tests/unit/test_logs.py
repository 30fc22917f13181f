"""Logging and metrics helpers, without the stack: ECS fields, pseudonymisation of a
stray user id, and the Logstash shipper against real sockets (up, refused, stalled,
back up) — the caller must never wait on Logstash."""
from __future__ import annotations

import json
import logging
import sys
import threading
import time

import pytest

from services.common import logs, metrics, pseudonym
from tests.conftest import free_port, wait_until
from tests.logstash_listener import Listener


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def notice_logger(name: str) -> tuple[logging.Logger, ListHandler]:
    logger = logging.getLogger(f"test-notice-{name}")
    logger.handlers.clear()
    captured = ListHandler()
    logger.addHandler(captured)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, captured




def shipper(port: int, name: str, **kwargs) -> tuple[logging.Logger, logs.LogstashShipper, ListHandler]:
    notice, captured = notice_logger(name)
    handler = logs.LogstashShipper("127.0.0.1", port, notice=notice, **kwargs)
    handler.setFormatter(logs.ecs_formatter())
    handler.addFilter(logs._ContextFilter(f"svc-{name}"))
    logger = logging.getLogger(f"test-ship-{name}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler, captured




def test_events_reach_logstash_as_json_lines_with_ecs_fields():
    listener = Listener()
    logger, handler, notices = shipper(listener.port, "ok")
    token = logs.request_id_var.set("req-ship-1")
    try:
        for index in range(20):
            logger.info("event %d", index, extra={"event.action": "unit", "user.hash": "abc"})
    finally:
        logs.request_id_var.reset(token)
    assert wait_until(lambda: len(listener.lines()) == 20)
    first = listener.lines()[0]
    assert first["service"]["name"] == "svc-ok" and first["trace"]["id"] == "req-ship-1"
    assert first["log.level"] == "info" and first["ecs.version"] and first["@timestamp"]
    assert first["event"]["action"] == "unit" and first["user"]["hash"] == "abc"
    assert bytes(listener.data).endswith(b"\n") and not notices.records
    handler.close()
    listener.close()


_CONNECTS: list[tuple[int, object]] = []  # (thread, address) of every socket connect this process makes


def _record_connects(event: str, args: tuple) -> None:
    if event == "socket.connect":
        _CONNECTS.append((threading.get_ident(), args[1]))


sys.addaudithook(_record_connects)  # the interpreter's own audit events: real sockets, no patching


def _connects_to(port: int, caller: bool) -> int:
    me = threading.get_ident()
    return sum(1 for thread, address in list(_CONNECTS)
               if isinstance(address, tuple) and address[1:2] == (port,) and (thread == me) == caller)


def test_refused_connection_costs_the_caller_nothing_and_is_reported_once():
    port = free_port()  # nothing listens here
    logger, handler, notices = shipper(port, "refused", queue_size=100)
    for index in range(2000):
        logger.info("event %d", index)
    assert wait_until(lambda: any("unavailable" in r.getMessage() for r in notices.records))
    # Not a clock bound: the caller's thread never connects to Logstash, the shipper's does
    # (and keeps retrying: wait for a few reconnection attempts).
    assert wait_until(lambda: _connects_to(port, caller=False) >= 3, timeout=30), _connects_to(port, caller=False)
    assert _connects_to(port, caller=True) == 0
    for index in range(200):
        logger.info("more %d", index)
    messages = [r.getMessage() for r in notices.records]
    assert sum("unavailable" in m for m in messages) == 1, messages
    assert sum("queue full" in m for m in messages) == 1, messages
    assert handler.dropped >= 2000 - 100 and handler._queue.qsize() <= 100

    # Logstash comes up on that port: the queued events go out, recovery is reported once.
    listener = Listener(port)
    assert wait_until(lambda: len(listener.lines()) >= 50, timeout=40)
    assert wait_until(lambda: any("reachable again" in r.getMessage() for r in notices.records))
    handler.close()
    listener.close()


def test_stalled_listener_never_blocks_the_caller():
    listener = Listener(read=False)  # accepts, never reads
    send_timeout_s = 5.0  # a caller that waited on the socket would wait this long
    logger, handler, notices = shipper(listener.port, "stalled", queue_size=200, send_timeout_s=send_timeout_s)
    payload = "x" * 20000
    worst = 0.0
    for index in range(1500):  # ~30 MB: far more than the socket buffers hold
        started = time.perf_counter()
        logger.info("big %d %s", index, payload)
        worst = max(worst, time.perf_counter() - started)
    assert worst < send_timeout_s / 2, f"one log call took {worst:.2f}s against a stalled Logstash"
    assert wait_until(lambda: any("unavailable" in r.getMessage() for r in notices.records), timeout=15)
    assert handler.dropped > 0
    messages = [r.getMessage() for r in notices.records]
    assert sum("unavailable" in m for m in messages) == 1, messages
    listener.close()
    handler.close()


def test_a_raw_user_id_in_extra_fields_is_replaced_by_its_hash(monkeypatch, capsys):
    monkeypatch.setenv("PSEUDONYM_KEY", "unit-key")
    pseudonym._key.cache_clear()
    try:
        handler = logging.StreamHandler()
        handler.setFormatter(logs.ecs_formatter())
        handler.addFilter(logs._ContextFilter("svc"))
        logger = logging.getLogger("test-user-id")
        logger.handlers = [handler]
        logger.propagate = False
        logger.warning("lookup", extra={"user_id": "alice-raw-id-42"})
        line = json.loads(capsys.readouterr().err.strip())
        assert "alice-raw-id-42" not in json.dumps(line)
        assert line["user"]["hash"] == pseudonym.hash_user_id("alice-raw-id-42")
    finally:
        pseudonym._key.cache_clear()


def test_detection_and_feature_fields():
    fields = logs.detection_fields([{"class_name": "car", "confidence": 0.91234567},
                                    {"class_name": "car", "confidence": 0.5}])
    assert fields == {"detection.count": 2, "detection.classes": ["car", "car"],
                      "detection.confidences": [0.9123, 0.5]}
    assert logs.feature_fields(None) == {}
    assert logs.feature_fields({"brightness": 10.5, "width": 4, "other": 1}) == {"image.brightness": 10.5,
                                                                                  "image.width": 4}


@pytest.mark.parametrize("uri,name", [("gateway.app:app", "gateway"),
                                      ("services.feature_service.app:app", "feature-service"),
                                      ("services.results_service.app:app", "results-service")])
def test_gunicorn_log_lines_carry_the_service_name(uri, name):
    assert logs._service_from_app_uri(uri) == name


def test_metrics_token_is_required(monkeypatch):
    monkeypatch.setenv("METRICS_TOKEN", "s3cret")
    assert metrics.authorised("Bearer s3cret")
    assert not metrics.authorised("Bearer nope") and not metrics.authorised(None)
    assert not metrics.authorised("s3cret") and not metrics.authorised("Basic s3cret")
