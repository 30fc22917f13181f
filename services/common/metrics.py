"""Prometheus metrics of every service (`/metrics`), without personal data.

HTTP services (gateway, feature, results) run under gunicorn with several worker
processes, so each metric lives in prometheus_client's multiprocess mode: every
worker writes its values to mmap files under `$METRICS_DIR/<service>` (default
`$VAR_DIR/metrics/<service>`, wiped at stack start by scripts/stack.py) and
`/metrics` sums all workers, whichever worker answers the scrape. Per-worker
registries would instead show one random worker per scrape (counters jumping
back and forth); per-worker labels would multiply series and leave dead
workers' series behind.

The gRPC adapter is one process: it uses the default registry, served on its
own port MODEL_SERVING_METRICS_PORT (default 9151).

Every `/metrics` needs `Authorization: Bearer <METRICS_TOKEN>` (the system rule:
authentication on everything but liveness). The token comes from `$METRICS_TOKEN`,
`$METRICS_TOKEN_FILE` or `var/secrets/metrics_token` (generated on first use).
Label values are bounded and impersonal: route templates (never raw paths, which
may hold a user id), methods, status codes, class names, model versions.
"""
from __future__ import annotations

import hmac
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from services.common import config, image_features

# prometheus_client chooses between in-process and multiprocess values once, when it is first
# imported, from PROMETHEUS_MULTIPROC_DIR: so it is imported only in `setup`, after that
# variable is set, never at this module's import.

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
CONFIDENCE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
# Drift: one histogram per numeric image feature, buckets spanning its natural range.
FEATURE_BUCKETS: dict[str, tuple[float, ...]] = {f.name: f.buckets for f in image_features.FEATURES if f.numeric}
FEATURE_UNITS = {f.name: f.unit for f in image_features.FEATURES if f.unit}

_lock = threading.Lock()
_service: str | None = None
_multiprocess_dir: Path | None = None
_metrics: dict[str, Any] = {}


def metrics_dir(service: str) -> Path:
    base = config.METRICS_DIR
    return (Path(base) if base else config.var_dir() / "metrics") / service


def setup(service: str, multiprocess_mode: bool) -> None:
    """Choose this process's storage once (first call wins: one process = one service).
    Metrics themselves are created on first use, so a service exposes only its own."""
    global _service, _multiprocess_dir
    with _lock:
        if _service is not None:
            return
        _service = service
        if multiprocess_mode:
            path = metrics_dir(service)
            path.mkdir(parents=True, exist_ok=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # read by prometheus_client's first import
            _multiprocess_dir = path
        from prometheus_client import values

        if multiprocess_mode and values.ValueClass.__name__ != "MmapedValue":
            raise RuntimeError("prometheus_client was imported before services.common.metrics.setup(): its values "
                               "would stay per worker process instead of in PROMETHEUS_MULTIPROC_DIR")


def _factories() -> dict[str, Callable[[], Any]]:
    from prometheus_client import Counter, Histogram

    made: dict[str, Callable[[], Any]] = {
        "http_requests": lambda: Counter("http_requests_total", "HTTP requests answered",
                                         ["route", "method", "status"]),
        "http_latency": lambda: Histogram("http_request_duration_seconds", "HTTP request latency (server side)",
                                          ["route", "method"], buckets=LATENCY_BUCKETS),
        "predictions": lambda: Counter("model_predictions_total", "Predict calls of the adapter by gRPC status code",
                                       ["model_version", "code"]),
        "predict_latency": lambda: Histogram("model_predict_duration_seconds", "Adapter Predict latency (whole call)",
                                             ["code"], buckets=LATENCY_BUCKETS),
        "inference_latency": lambda: Histogram("model_inference_duration_seconds",
                                               "Triton inference latency seen by the adapter",
                                               ["model_version"], buckets=LATENCY_BUCKETS),
        "detections": lambda: Counter("model_detections_total", "Detections returned, by class",
                                      ["class_name", "model_version"]),
        "confidence": lambda: Histogram("model_detection_confidence", "Confidence of returned detections",
                                        ["class_name"], buckets=CONFIDENCE_BUCKETS),
        "per_image": lambda: Histogram("model_detections_per_image", "Detections returned per image",
                                       buckets=(0, 1, 2, 3, 4, 5, 7, 10, 15, 20, 50)),
        "features_missing": lambda: Counter("image_features_missing_total",
                                            "Detections served without image features (feature service down)"),
    }
    for name, buckets in FEATURE_BUCKETS.items():
        made[f"feature:{name}"] = partial(Histogram, f"image_{name}", f"Image feature {name} of served requests (drift)",
                                          buckets=buckets, unit=FEATURE_UNITS.get(name, ""))
    return made


_factories_made: dict[str, Callable[[], Any]] = {}


def _m(name: str) -> Any:
    """The metric `name`, created on first use (after `setup`, which chose its storage)."""
    metric = _metrics.get(name)
    if metric is None:
        with _lock:
            metric = _metrics.get(name)
            if metric is None:
                if not _factories_made:
                    _factories_made.update(_factories())
                metric = _metrics[name] = _factories_made[name]()
    return metric


# --- recording -----------------------------------------------------------------------------------

def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    if _service is None:
        return
    _m("http_requests").labels(route, method, str(status)).inc()
    _m("http_latency").labels(route, method).observe(seconds)


def observe_prediction(code: str, seconds: float, model_version: str = "",
                       detections: Iterable[Any] = (), inference_seconds: float | None = None) -> None:
    if _service is None:
        return
    version = model_version or "none"
    _m("predictions").labels(version, code).inc()
    _m("predict_latency").labels(code).observe(seconds)
    if code != "OK":
        return
    if inference_seconds is not None:
        _m("inference_latency").labels(version).observe(inference_seconds)
    count = 0
    for item in detections:
        name = str(_field(item, "class_name", ""))
        confidence = float(_field(item, "confidence", 0.0))
        _m("detections").labels(name, version).inc()
        _m("confidence").labels(name).observe(confidence)
        count += 1
    _m("per_image").observe(count)


def _field(detection: Any, name: str, default: Any) -> Any:
    """A detection: the adapter's protobuf message, or a mapping with the same fields."""
    return detection.get(name) if isinstance(detection, Mapping) else getattr(detection, name, default)


def observe_grpc_predict(context: Any, response: Any, seconds: float) -> None:
    """The adapter's Predict: `response` is None when the call was aborted."""
    if response is None:
        try:
            code = context.code()
        except Exception:
            code = None
        name = getattr(code, "name", None) or "UNKNOWN"
        observe_prediction(name, seconds)
        return
    observe_prediction("OK", seconds, response.model_version, response.detections,
                       response.inference_time_ms / 1000.0)


def observe_features(features: Mapping[str, Any] | None) -> None:
    if _service is None:
        return
    if not features:
        _m("features_missing").inc()
        return
    for name in FEATURE_BUCKETS:
        value = features.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _m(f"feature:{name}").observe(float(value))


# --- exposition ----------------------------------------------------------------------------------

def _token() -> str:
    return config.secret("METRICS_TOKEN")


def authorised(header: str | None) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), _token().encode())


def exposition() -> bytes:
    import prometheus_client
    from prometheus_client import CollectorRegistry, multiprocess
    from prometheus_client.exposition import generate_latest

    if _multiprocess_dir is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(_multiprocess_dir))
        return generate_latest(registry)
    return generate_latest(prometheus_client.REGISTRY)


def instrument(app: Any, service: str) -> None:
    """Flask: count and time every request by route template, and serve `/metrics`."""
    from flask import Response, g, jsonify, request

    # Several gunicorn workers share one /metrics through the multiprocess files; a
    # single process (Flask test client, `flask run`) keeps its metrics in memory.
    under_gunicorn = os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn")
    setup(service, multiprocess_mode=under_gunicorn or bool(config.METRICS_DIR))
    _token()  # generated now (if absent), so a scraper can be configured before the first scrape

    @app.after_request
    def _observe(response: Any) -> Any:
        if request.path != "/metrics":
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            elapsed = time.perf_counter() - g.get("start", time.perf_counter())
            observe_http(route, request.method, response.status_code, elapsed)
        return response

    def metrics_view() -> Any:
        if not authorised(request.headers.get("Authorization")):
            response = jsonify({"error": "metrics need header Authorization: Bearer <METRICS_TOKEN>",
                                "request_id": g.get("request_id")})
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        return Response(exposition(), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


def serve_standalone(service: str, port: int, host: str = "127.0.0.1") -> Any:
    """A small threaded HTTP server for `/metrics` of a non-HTTP process (the gRPC adapter)."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # a scrape in flight never holds up the process's exit

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            """Scrapes are not logged: every request would be a line."""

    setup(service, multiprocess_mode=False)
    _token()

    def app(environ: dict, start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "only /metrics here"}']
        if not authorised(environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                                ("WWW-Authenticate", 'Bearer realm="metrics"')])
            return [b'{"error": "metrics need header Authorization: Bearer <METRICS_TOKEN>"}']
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [exposition()]

    try:
        server = make_server(host, port, app, Server, handler_class=QuietHandler)
    except OSError as exc:  # a busy metrics port must not take the service down with it
        import logging

        logging.getLogger(service).warning("metrics not served: cannot listen on %s:%d (%s)", host, port, exc,
                                           extra={"event.action": "start", "event.outcome": "failure"})
        return None
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
