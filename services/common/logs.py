"""One logging setup for every service: ECS JSON lines on stdout.

Each line carries `service.name` and, inside a request, `trace.id` (the request
id that the gateway hands to every hop). User ids never appear: callers log
`user.hash` from services.common.pseudonym, and a raw `user_id`/`user.id` that
slips into a record's extra fields is replaced by its keyed hash here.

When LOGSTASH_HOST is set, events are also shipped to Logstash's
`tcp { codec => json_lines }` input (one ECS JSON document per line) by
`LogstashShipper`: a bounded in-memory queue drained by one background thread
per process. A request thread only formats the event and does a non-blocking
`put`; when Logstash is down, slow or stalled, the queue fills up to
LOGSTASH_QUEUE_SIZE events and further events are dropped (counted), so answers
never wait on Logstash. Each outage, each start of dropping and each recovery is
reported once, on stdout only (never shipped, so the notice cannot loop).

Why not python-logstash-async's AsynchronousLogstashHandler (v4.1, checked): its
queue (PriorityQueue) and in-memory cache (a dict) are both unbounded, so an
outage grows memory without limit (measured: 20 000 events logged with Logstash
refusing connections stay held in its cache); the worker reports send errors
through the root logger, i.e. back into the same handler, on every failed flush;
events wait 2-10 s before they are sent; and on a listener that accepts but never
reads, every batch blocks the worker for up to 30 s
(SOCKET_CLOSE_WAIT_TIMEOUT) because it opens a new connection per batch and waits
for the socket buffer to drain before closing it.
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import select
import socket
import sys
import threading
import time
from contextvars import ContextVar
from typing import Any, Iterable, Mapping

import ecs_logging

from services.common import config, image_features

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_configured: str | None = None
# A failure this soon after a recovery continues the same outage (a stalled listener
# accepts a new connection and a few kernel buffers' worth before stalling again), so
# one outage is said once.
FLAP_WINDOW_S = config.LOGSTASH_FLAP_WINDOW_S

_RAW_USER_FIELDS = ("user_id", "user.id", "userId")
# Image features logged for drift dashboards (the list: services/common/image_features.py).
FEATURE_FIELDS = image_features.NAMES


def ecs_formatter() -> logging.Formatter:
    return ecs_logging.StdlibFormatter(exclude_fields=["log.original"])


class _ContextFilter(logging.Filter):
    """Adds service.name and trace.id; replaces a raw user id by its keyed hash."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        fields.setdefault("service.name", self.service_name)
        request_id = request_id_var.get()
        if request_id and "trace.id" not in fields:
            fields["trace.id"] = request_id
        for name in _RAW_USER_FIELDS:
            if name in fields:
                raw = fields.pop(name)
                if raw is not None and "user.hash" not in fields:
                    from services.common.pseudonym import hash_user_id

                    fields["user.hash"] = hash_user_id(str(raw))
        return True


def setup_logging(service_name: str) -> logging.Logger:
    """Configure the root logger once per process; return the service's logger."""
    global _configured
    if _configured is None:
        root = logging.getLogger()
        root.handlers.clear()
        root.setLevel(config.LOG_LEVEL.upper())
        context = _ContextFilter(service_name)
        stdout = _stdout_handler(context)
        root.addHandler(stdout)
        shipper = logstash_handler(service_name, stdout)
        if shipper is not None:
            shipper.addFilter(context)
            root.addHandler(shipper)
        # Libraries' chatter at INFO would drown the service's own events.
        for noisy in ("urllib3", "werkzeug", "tensorflow", "absl"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        _configured = service_name
    return logging.getLogger(service_name)


def _stdout_handler(context: logging.Filter) -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ecs_formatter())
    handler.addFilter(context)
    return handler


def _notice_logger(service_name: str, stdout: logging.Handler | None = None) -> logging.Logger:
    """A logger that writes to stdout only (through the service's own stdout handler, so
    lines never interleave): the shipper's notices must not be shipped (they would queue
    behind the outage they report, or loop)."""
    logger = logging.getLogger(f"{service_name}.log-shipping")
    logger.handlers = [stdout or _stdout_handler(_ContextFilter(service_name))]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def logstash_handler(service_name: str, stdout: logging.Handler | None = None) -> logging.Handler | None:
    host = config.LOGSTASH_HOST
    if not host:
        return None
    handler = LogstashShipper(
        host,
        config.LOGSTASH_PORT,
        queue_size=config.LOGSTASH_QUEUE_SIZE,
        send_timeout_s=config.LOGSTASH_SEND_TIMEOUT_S,
        notice=_notice_logger(service_name, stdout),
    )
    handler.setFormatter(ecs_formatter())
    return handler


class LogstashShipper(logging.Handler):
    """Ships newline-delimited ECS JSON to Logstash without ever blocking a caller.

    emit(): format + `put_nowait` on a bounded queue; when full, the event is
    dropped and counted. A daemon thread (one per process, restarted after fork)
    keeps one TCP connection open, sends batches with a send timeout, and on any
    error closes the connection and retries the batch with backoff (1 s .. 30 s).
    """

    def __init__(self, host: str, port: int, queue_size: int = 10000, batch_size: int = 500,
                 connect_timeout_s: float = 2.0, send_timeout_s: float = 5.0,
                 notice: logging.Logger | None = None) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.queue_size, self.batch_size = queue_size, batch_size
        self.connect_timeout_s, self.send_timeout_s = connect_timeout_s, send_timeout_s
        self.notice = notice or _notice_logger("log-shipping")
        self.dropped = 0          # events dropped since the last report of recovery
        self.dropped_total = 0
        self.sent_total = 0
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._queue: queue.Queue[bytes] = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._connected_ok = True  # until proven otherwise: the first failure is reported
        self._recovered_at = -FLAP_WINDOW_S
        self._drop_reported = False

    # --- caller side: never blocks -------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).encode("utf-8", "replace").replace(b"\n", b"\\n") + b"\n"
        except Exception:
            self.handleError(record)
            return
        self._ensure_worker()
        try:
            self._idle.clear()
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1
            self.dropped_total += 1
            if not self._drop_reported:
                self._drop_reported = True
                self.notice.warning(
                    "log shipping queue full (%d events): dropping events for Logstash at %s:%d until it "
                    "drains; stdout logging continues", self.queue_size, self.host, self.port,
                    extra={"event.action": "log-shipping", "event.outcome": "failure",
                           "labels.logstash_queue_size": self.queue_size})

    def _ensure_worker(self) -> None:
        pid = os.getpid()
        if self._pid == pid and self._thread is not None:
            return
        with self._start_lock:
            if self._pid == pid and self._thread is not None:
                return
            if self._pid is not None:  # forked: the parent's thread, queue and socket are not ours
                self._queue = queue.Queue(self.queue_size)
                self._sock = None
                self._stop = threading.Event()
            self._pid = pid
            self._thread = threading.Thread(target=self._run, name="logstash-shipper", daemon=True)
            self._thread.start()

    def flush(self, timeout_s: float = 0.5) -> None:
        """Wait (bounded) until everything queued so far was sent."""
        if self._thread is None or self._pid != os.getpid():
            return
        self._idle.wait(timeout_s)

    def close(self) -> None:
        # Called at exit by logging.shutdown(): give queued events a short chance to leave.
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            self.flush(config.LOGSTASH_EXIT_FLUSH_S)
            self._stop.set()
            self._thread.join(1.0)
        super().close()

    # --- worker thread ---------------------------------------------------------------
    def _run(self) -> None:
        backoff = 1.0
        batch: list[bytes] = []
        while True:
            if not batch:
                batch = self._take_batch()
                if not batch:
                    if self._stop.is_set():
                        break
                    continue
            try:
                self._send(b"".join(batch))
            except OSError as exc:
                self._disconnect()
                if self._connected_ok and time.monotonic() - self._recovered_at >= FLAP_WINDOW_S:
                    self._connected_ok = False
                    self.notice.warning(
                        "Logstash at %s:%d is unavailable (%s): events wait in a bounded in-memory queue "
                        "of %d and are dropped beyond it; stdout logging continues",
                        self.host, self.port, exc.__class__.__name__ + (f": {exc}" if str(exc) else ""),
                        self.queue_size,
                        extra={"event.action": "log-shipping", "event.outcome": "failure"})
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, 30.0)
                continue
            self.sent_total += len(batch)
            batch = []
            backoff = 1.0
            if not self._connected_ok:
                self._connected_ok = True
                self._recovered_at = time.monotonic()
                self.notice.info(
                    "Logstash at %s:%d is reachable again; %d events were dropped meanwhile",
                    self.host, self.port, self.dropped,
                    extra={"event.action": "log-shipping", "event.outcome": "success",
                           "labels.dropped_events": self.dropped})
                self.dropped = 0
                self._drop_reported = False
        self._disconnect()

    def _take_batch(self) -> list[bytes]:
        try:
            first = self._queue.get(timeout=0.5)
        except queue.Empty:
            self._idle.set()
            return []
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is not None and _peer_closed(sock):
            self._disconnect()
            sock = None
        if sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
            sock.settimeout(self.send_timeout_s)
            self._sock = sock
        # A listener that accepts but never reads fills the socket buffers; sendall
        # then raises TimeoutError after send_timeout_s, in this thread only.
        sock.sendall(data)

    def _disconnect(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


def _peer_closed(sock: socket.socket) -> bool:
    """Logstash never writes on this connection: readable means EOF or error."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


# --- fields shared by the services' log events --------------------------------------------

def detection_fields(detections: Iterable[Any]) -> dict[str, Any]:
    """ECS-style custom fields of one prediction: count, classes and confidences
    (arrays, one entry per detection) for the per-class and confidence dashboards."""
    classes, confidences = [], []
    for item in detections:
        if isinstance(item, Mapping):
            classes.append(str(item.get("class_name", "")))
            confidences.append(round(float(item.get("confidence", 0.0)), 4))
        else:
            classes.append(str(getattr(item, "class_name", "")))
            confidences.append(round(float(getattr(item, "confidence", 0.0)), 4))
    return {"detection.count": len(classes), "detection.classes": classes,
            "detection.confidences": confidences}


def feature_fields(features: Mapping[str, Any] | None) -> dict[str, Any]:
    """The image features as `image.<name>` fields (drift dashboards); none if absent."""
    if not features:
        return {}
    return {f"image.{name}": features[name] for name in FEATURE_FIELDS if name in features}


# --- gunicorn's own log ---------------------------------------------------------------------

try:
    from gunicorn.glogging import Logger as _GunicornLogger
except ImportError:  # pragma: no cover - gunicorn is only needed by the HTTP services
    _GunicornLogger = object  # type: ignore[assignment,misc]


def _service_from_app_uri(app_uri: str) -> str:
    module = app_uri.split(":")[0].split(".")
    name = module[-2] if len(module) > 1 and module[-1] == "app" else module[0]
    return name.replace("_", "-")


class GunicornLogger(_GunicornLogger):  # type: ignore[misc,valid-type]
    """gunicorn's error log (master and workers: boot, worker timeouts, crashes) as ECS
    JSON on stdout, so it lands in the service's .jsonl with `service.name`.
    Enable with `logger_class = "services.common.logs.GunicornLogger"` in gunicorn_conf.py."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        name = config.SERVICE_NAME or _service_from_app_uri(
            getattr(cfg, "default_proc_name", "") or cfg.proc_name or "gunicorn")
        handler = _stdout_handler(_ContextFilter(name))
        for logger in (self.error_log,):
            logger.handlers = [handler]


def _close_shippers() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LogstashShipper):
            handler.close()


atexit.register(_close_shippers)
