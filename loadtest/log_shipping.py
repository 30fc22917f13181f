"""Log shipping to Logstash: the project's shipper against python-logstash, measured.

    make log-shipping-bench      # installs python-logstash into var/ (not a runtime dependency)

For each Logstash condition (up; refusing connections; stalled: accepts, never reads; an
outage: refusing for the first half of the events, then up again on the same port) and
each shipper, one thread logs N events and we record what the caller paid (total and worst
single call), how many events reached the listener within a grace period, and how many
lines the handler wrote to stderr. Shippers:

- `own`: services/common/logs.py's LogstashShipper (bounded queue, one sender thread);
- `python-logstash`: its TCPLogstashHandler (a logging.handlers.SocketHandler) called
  directly, as its README shows;
- `python-logstash+queue`: the same behind logging's QueueHandler/QueueListener with a
  bounded queue of the same size (the "behind the bounded queue" variant).

Prints a table and writes var/bench/log_shipping.json. Results: docs/observability.md.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import logging.handlers
import platform
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from services.common import config
from services.common.logs import LogstashShipper, ecs_formatter

EVENTS = config.LOG_BENCH_EVENTS
QUEUE_SIZE = 10000
GRACE_S = 3.0
OUTAGE_GRACE_S = 10.0


class Listener:
    """A local TCP listener: 'up' reads and counts lines, 'stalled' accepts and never reads."""

    def __init__(self, mode: str, port: int = 0) -> None:
        self.mode, self.lines, self._stop = mode, 0, threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mode == "stalled":  # small buffers, so a stall is felt after a few hundred KB, not megabytes
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        if mode in ("refused", "outage"):
            self.sock.close()  # nothing listens on this port (an outage: until recover())
            return
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        held = []
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            if self.mode == "stalled":
                held.append(conn)
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            while not self._stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                self.lines += data.count(b"\n")

    def recover(self) -> Listener:
        """The outage ends: a listener that reads, on the same port."""
        return Listener("up", self.port)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()


class _BytesFormatter(logging.Formatter):
    """python-logstash's makePickle expects bytes from its formatter; this gives it ECS JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.ecs = ecs_formatter()

    def format(self, record: logging.LogRecord) -> bytes:  # type: ignore[override]
        return self.ecs.format(record).encode()


def _own(port: int) -> tuple[logging.Handler, Callable[[], None]]:
    handler = LogstashShipper("127.0.0.1", port, queue_size=QUEUE_SIZE,
                              notice=logging.getLogger("bench.notice"))
    handler.setFormatter(ecs_formatter())
    return handler, handler.close


def _python_logstash(port: int) -> tuple[logging.Handler, Callable[[], None]]:
    from logstash import TCPLogstashHandler

    handler = TCPLogstashHandler("127.0.0.1", port, version=1)
    handler.setFormatter(_BytesFormatter())
    return handler, handler.close


def _python_logstash_queued(port: int) -> tuple[logging.Handler, Callable[[], None]]:
    inner, close_inner = _python_logstash(port)
    bounded: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE)
    listener = logging.handlers.QueueListener(bounded, inner)
    listener.start()

    def close() -> None:
        try:
            listener.stop()
        except queue.Full:  # stop() enqueues its sentinel with put_nowait: a full queue refuses it
            print("QueueListener.stop(): queue.Full (its thread keeps running)", file=sys.stderr)
        close_inner()

    return logging.handlers.QueueHandler(bounded), close


SHIPPERS = {"own": _own, "python-logstash": _python_logstash, "python-logstash+queue": _python_logstash_queued}


@contextlib.contextmanager
def _captured_stderr() -> Iterator[io.StringIO]:
    buffer, saved = io.StringIO(), sys.stderr
    sys.stderr = buffer
    try:
        yield buffer
    finally:
        sys.stderr = saved


def run(shipper: str, mode: str) -> dict[str, object]:
    listener = Listener(mode)
    handler, close = SHIPPERS[shipper](listener.port)
    logger = logging.getLogger(f"bench.{shipper}.{mode}")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    worst, caller_s, receiver = 0.0, 0.0, listener
    with _captured_stderr() as stderr:
        for i in range(EVENTS):
            if mode == "outage" and i == EVENTS // 2:  # Logstash is back for the second half
                receiver = listener.recover()
            t0 = time.perf_counter()
            logger.info("event %d of the log shipping benchmark", i, extra={"event.action": "bench", "labels.i": i})
            took = time.perf_counter() - t0
            caller_s, worst = caller_s + took, max(worst, took)
        # An outage's queued events leave on the sender's next retry (backoff up to a few s).
        deadline = time.monotonic() + (OUTAGE_GRACE_S if mode == "outage" else GRACE_S)
        while mode in ("up", "outage") and receiver.lines < EVENTS and time.monotonic() < deadline:
            time.sleep(0.05)
        closing = time.perf_counter()
        close()
        close_s = time.perf_counter() - closing
    listener.close()
    receiver.close()
    return {"shipper": shipper, "logstash": mode, "events": EVENTS, "caller_total_ms": round(caller_s * 1000, 1),
            "caller_worst_ms": round(worst * 1000, 2), "received": receiver.lines,
            "stderr_lines": stderr.getvalue().count("\n"), "close_s": round(close_s, 2)}


def main() -> int:
    try:
        import logstash  # noqa: F401
    except ImportError:
        print("python-logstash is not installed: run `make log-shipping-bench`", file=sys.stderr)
        return 2
    logging.getLogger("bench.notice").addHandler(logging.NullHandler())
    logging.getLogger("bench.notice").propagate = False
    rows = [run(shipper, mode) for mode in ("up", "refused", "stalled", "outage") for shipper in SHIPPERS]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{EVENTS} events from one thread; CPU: {cpu}")
    print(f"{'logstash':9} {'shipper':22} {'caller total ms':>15} {'worst call ms':>13} {'received':>8} "
          f"{'stderr lines':>12} {'close s':>7}")
    for row in rows:
        print(f"{row['logstash']:9} {row['shipper']:22} {row['caller_total_ms']:>15} {row['caller_worst_ms']:>13} "
              f"{row['received']:>8} {row['stderr_lines']:>12} {row['close_s']:>7}")
    out = Path(config.VAR_DIR) / "bench" / "log_shipping.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
