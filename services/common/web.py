"""The Flask application every HTTP service starts from.

It gives all of them the same behaviour at the edges: a request id on every
request and answer, JSON errors (never an HTML page or a stack trace), security
headers, one ECS access-log line per request, and `/health` and `/ready`.
"""
from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from services.common import config
from services.common.images import ImageRejected
from services.common.logs import request_id_var, setup_logging
from services.common.pseudonym import hash_user_id

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
    response.headers.update(headers or {})
    return response


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 naming what is wrong with it."""
    if not request.is_json:
        raise ApiError(415, "request body must be JSON (Content-Type: application/json)")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _loggable_path() -> tuple[str, dict[str, str]]:
    """The request path as it may be logged: a user id in the URL is replaced by
    the route's placeholder and logged only as its keyed hash."""
    user_id = (request.view_args or {}).get("user_id")
    if not user_id or request.url_rule is None:
        return request.path, {}
    return request.url_rule.rule, {"user.hash": hash_user_id(str(user_id))}


def create_app(service_name: str, ready_checks: dict[str, Callable[[], None]] | None = None) -> Flask:
    """A Flask app with the shared edges. `ready_checks` name the dependencies that
    `/ready` probes; each raises when its dependency is unreachable."""
    log = setup_logging(service_name)
    app = Flask(service_name)
    # Multipart framing adds a little to the image itself.
    app.config["MAX_CONTENT_LENGTH"] = config.MAX_UPLOAD_BYTES + 64 * 1024
    app.json.sort_keys = False
    checks = ready_checks or {}

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
        return None

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
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
        return json_error(error.status, error.message)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        headers = {"Allow": ", ".join(error.valid_methods)} if getattr(error, "valid_methods", None) else {}
        return json_error(error.code or 500, error.description or error.name, headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", extra={"event.action": "http.error"})
        return json_error(500, "internal error; quote the request id when reporting it")

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "healthy", "service": service_name, "timestamp": utc_now_iso()})

    @app.get("/ready")
    def ready() -> Response:
        failures = {}
        for name, check in checks.items():
            try:
                check()
            except Exception as exc:
                failures[name] = str(exc) or type(exc).__name__
        body = {"status": "ready" if not failures else "not ready", "service": service_name,
                "dependencies": {name: failures.get(name, "ok") for name in checks}}
        response = jsonify(body)
        if failures:
            response.status_code = 503
            response.headers["Retry-After"] = "5"
        return response

    return app
