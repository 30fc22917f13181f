"""The circuit breaker and the gateway's client policy, without a stack: a breaker opens
after consecutive failures and half-opens once; an open breaker refuses before any
connection is tried; a lost reply to a stored prediction is retried and recognised.
(tests/system/test_reliability.py injects the same faults into the running stack.)"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.common.resilience import CircuitBreaker, CircuitOpen


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_half_opens_once():
    clock = FakeClock()
    breaker = CircuitBreaker("dep", failures=3, reset_after_s=5.0, clock=clock)
    for _ in range(2):
        breaker.before_call()
        breaker.failure()
    breaker.before_call()
    breaker.success()  # a success resets the count
    for _ in range(3):
        breaker.before_call()
        breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen) as refused:
        breaker.before_call()
    assert refused.value.retry_after == "5"
    clock.now += 3.2
    with pytest.raises(CircuitOpen) as refused:
        breaker.before_call()
    assert refused.value.retry_after == "2"  # what is left, rounded up
    clock.now += 2.0
    assert breaker.state == "half-open"
    breaker.before_call()  # the one trial call
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # no second call while the trial runs
    breaker.failure()  # the trial failed: open again for a full period
    assert breaker.state == "open"
    clock.now += 5.0
    breaker.before_call()
    breaker.success()
    assert breaker.state == "closed"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_client_fails_fast_once_the_breaker_is_open():
    """Once open, the breaker refuses before any connection is tried: a server now
    listening on the dead port sees no connection attempt at all."""
    from gateway.clients import HttpService
    from services.common.web import ApiError

    port = _closed_port()
    service = HttpService("dead service", f"http://127.0.0.1:{port}")
    for _ in range(service.breaker.threshold):
        with pytest.raises(ApiError) as failed:
            service.call("GET", "/x", "rid")
        assert failed.value.status == 503 and failed.value.headers["Retry-After"]
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(8)
        listener.setblocking(False)
        with pytest.raises(ApiError) as fast:
            service.call("POST", "/x", "rid", json={})
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing was attempted
    assert fast.value.status == 503 and 1 <= int(fast.value.headers["Retry-After"]) <= 5


class _FlakyResults(BaseHTTPRequestHandler):
    """Stores the first POST, then drops the connection without answering (as a crash
    between commit and reply would); answers later POSTs with 409 like the real service."""
    stored: dict[str, dict] = {}
    posts = 0

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).posts += 1
        if body["request_id"] in self.stored:
            self._reply(409, {"error": "already stored"})
            return
        self.stored[body["request_id"]] = body
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        record = self.stored.get(self.path.split("?", 1)[0].rsplit("/", 1)[-1])
        self._reply(200, record) if record else self._reply(404, {"error": "no"})


def test_a_lost_reply_to_a_stored_prediction_is_retried_and_recognised():
    """POST /predictions is idempotent by request id: when the reply is lost the gateway
    retries once; the 409 it then gets is checked against the stored record, so the
    client is told 201 exactly when its prediction is stored, never twice stored."""
    from gateway.clients import ResultsService

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyResults)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        service = ResultsService("results service", f"http://127.0.0.1:{server.server_address[1]}")
        record = {"request_id": "lost-reply-1", "client_id": "c1", "model_version": "1", "detections": []}
        assert service.call("POST", "/predictions", "lost-reply-1", json=record).status_code == 201
        assert _FlakyResults.posts == 2 and list(_FlakyResults.stored) == ["lost-reply-1"]
        # a genuinely reused request id (another prediction) stays a 409
        other = {**record, "request_id": "lost-reply-2"}
        _FlakyResults.stored["lost-reply-2"] = {**other, "client_id": "someone else"}
        assert service.call("POST", "/predictions", "lost-reply-2", json=other).status_code == 409
    finally:
        server.shutdown()
