"""The Flask application every HTTP service starts from.

It gives all of them the same behaviour at the edges: a request id on every
request and answer, JSON errors (never an HTML page or a stack trace), security
headers, one ECS access-log line per request, and `/health` and `/ready`.
"""
from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from services.common import config, metrics
from services.common.images import ImageRejected
from services.common.logs import request_id_var, setup_logging
from services.common.multipart import ServiceRequest
from services.common.pseudonym import hash_user_id
from services.common.service_token import INTERNAL_TOKEN_HEADER, internal_token, token_matches

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


class ApiError(Exception):
    """Raise anywhere in a request to answer with a JSON error."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": message, "request_id": g.get("request_id")})
    response.status_code = status
    headers = headers or {}
    response.headers.update(headers)
    if "Retry-After" in headers:
        g.retry_after = headers["Retry-After"]  # restored in _finish, whatever set it since
    return response


# Paths an internal service answers without the token: probes, documentation, and
# /metrics (which has its own bearer token). None of them reads X-Actor-* headers.
_OPEN_PATHS = ("/health", "/ready", "/openapi.json", "/metrics")


def _internal_caller_ok(expected: str) -> bool:
    """Every path but the open ones needs the token, so the results service's `X-Actor-*`
    headers are only ever read from a caller that holds it."""
    return request.path in _OPEN_PATHS or token_matches(request.headers.get(INTERNAL_TOKEN_HEADER), expected)


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 naming what is wrong with it."""
    if not request.is_json:
        raise ApiError(415, "request body must be JSON (Content-Type: application/json)")
    try:
        body = request.get_json(silent=True)
        invalid_text = _has_lone_surrogate(body)
    except RecursionError:  # hostile nesting depth; the parser's own limit, not a server fault
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    if invalid_text:
        raise ApiError(400, "request body holds invalid Unicode (a lone surrogate escape)")
    return body


def _has_lone_surrogate(value: Any) -> bool:
    """JSON may escape lone UTF-16 surrogates (\\ud800) that no database can store."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _loggable_path() -> tuple[str, dict[str, str]]:
    """The request path as it may be logged: a user id in the URL is replaced by
    the route's placeholder and logged only as its keyed hash."""
    if request.url_rule is None and request.path.count("/") > 2:
        # Unmatched (404/405): the path may hold anything, e.g. a user id in a mistyped
        # route; only its first two segments are logged.
        return "/".join(request.path.split("/")[:3]) + "/...", {}
    user_id = (request.view_args or {}).get("user_id")
    if not user_id or request.url_rule is None:
        return request.path, {}
    return request.url_rule.rule, {"user.hash": hash_user_id(str(user_id))}


def create_app(service_name: str, ready_checks: dict[str, Callable[[], None]] | None = None,
               openapi: Path | None = None, internal: bool = False) -> Flask:
    """A Flask app with the shared edges. `ready_checks` name the dependencies that
    `/ready` probes; each raises when its dependency is unreachable."""
    log = setup_logging(service_name)
    app = Flask(service_name)
    app.request_class = ServiceRequest
    # Multipart framing adds a little to the image itself.
    app.config["MAX_CONTENT_LENGTH"] = config.MAX_UPLOAD_BYTES + 64 * 1024
    assert isinstance(app.json, DefaultJSONProvider)  # Flask's own, never replaced here
    app.json.sort_keys = False
    checks = ready_checks or {}
    expected_token = internal_token() if internal else ""  # read once, not per request
    metrics.instrument(app, service_name)  # request metrics and an authenticated /metrics

    @app.before_request
    def _start() -> Response | None:
        g.start = time.perf_counter()
        incoming = request.headers.get(REQUEST_ID_HEADER)
        if incoming is not None and not _REQUEST_ID_PATTERN.fullmatch(incoming):
            g.request_id = uuid.uuid4().hex
            request_id_var.set(g.request_id)
            return json_error(400, f"{REQUEST_ID_HEADER} must be 1-128 characters from A-Z a-z 0-9 . _ : -")
        g.request_id = incoming or uuid.uuid4().hex
        request_id_var.set(g.request_id)
        if internal and not _internal_caller_ok(expected_token):
            return json_error(401, f"missing or wrong {INTERNAL_TOKEN_HEADER} (internal service)")
        return None

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        # A 429's or 503's own Retry-After (e.g. what is left of an open circuit) wins, and a
        # success carries none (not even one relayed from a backend).
        if g.get("retry_after"):
            response.headers["Retry-After"] = g.retry_after
        elif response.status_code not in (429, 503):
            response.headers.pop("Retry-After", None)
        elif response.headers.get("Retry-After") == "0":  # a window closing within the second
            response.headers["Retry-After"] = "1"
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        elapsed = time.perf_counter() - g.get("start", time.perf_counter())
        if request.path not in ("/health", "/metrics"):
            path, subject = _loggable_path()
            log.info(
                "%s %s %s",
                request.method,
                path,
                response.status_code,
                extra={
                    **subject,
                    "event.action": "http.request",
                    "event.duration": int(elapsed * 1e9),
                    "event.outcome": "success" if response.status_code < 400 else "failure",
                    "http.request.method": request.method,
                    "url.path": path,
                    "http.response.status_code": response.status_code,
                },
            )
        return response

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return json_error(error.status, error.message, error.headers)

    @app.errorhandler(ImageRejected)
    def _image_rejected(error: ImageRejected) -> Response:
        return json_error(error.status, error.message, {"Retry-After": "1"} if error.status == 503 else None)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        headers = {"Allow": ", ".join(error.valid_methods)} if isinstance(error, MethodNotAllowed) and error.valid_methods else {}
        return json_error(error.code or 500, error.description or error.name, headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", extra={"event.action": "http.error"})
        return json_error(500, "internal error; quote the request id when reporting it")

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "healthy", "service": service_name, "timestamp": utc_now_iso()})

    probe_dependencies = _cached_probe(checks, log)

    @app.get("/ready")
    def ready() -> Response:
        failures = probe_dependencies()
        body = {"status": "ready" if not failures else "not ready", "service": service_name,
                "dependencies": {name: failures.get(name, "ok") for name in checks}}
        response = jsonify(body)
        if failures:
            response.status_code = 503
            response.headers["Retry-After"] = "5"
        return response

    if openapi is not None:
        _serve_openapi(app, openapi)

    return app


@dataclass
class _LastProbe:
    at: float = -math.inf  # time.monotonic() of the last probe; -inf: none yet
    failures: dict[str, str] = field(default_factory=dict)


def _cached_probe(checks: dict[str, Callable[[], None]], log: Any) -> Callable[[], dict[str, str]]:
    """`/ready` is unauthenticated: its dependency probes run at most once per
    READY_CACHE_S per process, and while one probe is in flight (a hanging dependency
    takes its full timeout) other callers get the last answer instead of waiting, so a
    flood of /ready calls costs neither the dependencies nor the worker's threads."""
    lock, cached = threading.Lock(), _LastProbe()

    def probe() -> dict[str, str]:
        if not lock.acquire(blocking=cached.at == -math.inf):  # the very first probe: wait for it
            return cached.failures
        try:
            if time.monotonic() - cached.at < config.READY_CACHE_S:
                return cached.failures
            failures = {}
            for name, check in checks.items():
                try:
                    check()
                except Exception as exc:
                    # Our own messages are safe to show; a driver's may name hosts and ports.
                    own = isinstance(exc, (ApiError, RuntimeError))
                    failures[name] = (str(exc) if own else "") or type(exc).__name__
                    log.warning("not ready: %s: %s", name, exc, extra={"event.action": "ready"})
            cached.at, cached.failures = time.monotonic(), failures
            return failures
        finally:
            lock.release()
    return probe


def _serve_openapi(app: Flask, path: Path) -> None:
    """`GET /openapi.json`: the service's OpenAPI 3 document, from the YAML file next
    to it. Documentation, so no authentication (it holds no data and no secret)."""
    import yaml

    document = yaml.safe_load(path.read_text())

    @app.get("/openapi.json")
    def openapi_document() -> Response:
        return jsonify(document)
