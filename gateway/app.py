"""The gateway: the single public entry of the system (port 8080).

Authenticates every call but liveness with an API key, enforces roles and rate
limits, and runs `POST /api/detect`: image checked once, features and detections
fetched concurrently, the result stored, and only then acknowledged.
"""
from __future__ import annotations

import math
from pathlib import Path

from concurrent.futures import ThreadPoolExecutor
from functools import wraps
from typing import Any, Callable
from urllib.parse import quote

from flask import Response, g, jsonify, request
from flask_limiter import Limiter
from google.protobuf.json_format import MessageToDict

from gateway import console
from gateway.auth import KeyRing, Principal, load_keys
from gateway.clients import HttpService, ModelServingClient, ResultsService, unavailable
from services.common import config, metrics
from services.common.explain import ExplainError, as_json, explain_image, explanation_slot, parse_grid
from services.common.images import check_image
from services.common.logs import detection_fields, feature_fields, request_id_var
from services.common.pseudonym import hash_user_id
from services.common.validation import check_request_id, check_user_id
from services.common.web import ApiError, create_app

SERVICE_NAME = "gateway"

features = HttpService("feature service", config.FEATURE_SERVICE_URL)
results = ResultsService("results service", config.RESULTS_SERVICE_URL)
model = ModelServingClient(config.MODEL_SERVING_ADDR)
keyring = KeyRing(load_keys())
FEATURE_ROUTES = frozenset({"preprocess"})
fan_out = ThreadPoolExecutor(max_workers=config.GATEWAY_FANOUT_THREADS)


def _check_http(service: HttpService, path: str) -> Callable[[], None]:
    def check() -> None:
        if service.call("GET", path, "readiness").status_code != 200:
            raise RuntimeError("not ready")
    return check


def _check_model() -> None:
    if model.health() != "SERVING":
        raise RuntimeError("model not serving")


app = create_app(SERVICE_NAME, ready_checks={
    "feature-service": _check_http(features, "/health"),
    "results-service": _check_http(results, "/ready"),
    "model-serving": _check_model,
}, openapi=Path(__file__).with_name("openapi.yaml"))
log = app.logger


def _caller() -> Principal | None:
    """The key's principal, identified once per request (the limiter and the role check both ask)."""
    if "caller" not in g:
        g.caller = keyring.identify(request.headers.get("X-API-Key"))
    return g.caller


def _rate_key() -> str:
    principal = _caller()
    return principal.client_id if principal else f"ip:{request.remote_addr}"


limiter = Limiter(
    _rate_key,
    app=app,
    default_limits=[config.RATE_LIMIT],
    storage_uri=config.RATELIMIT_STORAGE_URI,
    # If Redis goes away, limits keep holding per worker instead of failing requests.
    in_memory_fallback_enabled=True,
    headers_enabled=True,
    strategy="moving-window",
)
limiter.exempt(app.view_functions["health"])
limiter.exempt(app.view_functions["ready"])


def require(*roles: str) -> Callable:
    """Authenticate with X-API-Key (401) and authorise by role (403)."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            principal = _caller()
            if principal is None:
                raise ApiError(401, "missing or unknown API key (header X-API-Key)",
                               {"WWW-Authenticate": 'ApiKey header="X-API-Key"'})
            if principal.role not in roles:
                raise ApiError(403, f"role {principal.role} may not {request.method} {request.path}")
            g.principal = principal
            return view(*args, **kwargs)

        return wrapped

    return decorator


console.register(app, require)  # the web console at / and the latest audit report (gateway/console.py)


def _actor_headers(principal: Principal) -> dict[str, str]:
    return {"X-Actor-Role": principal.role, "X-Actor-Id": principal.client_id}


def _relay(upstream: Any) -> Response:
    """Pass a service's answer through, keeping its status and JSON body."""
    if upstream.status_code >= 500:
        raise unavailable("a backend service")
    response = Response(upstream.content, status=upstream.status_code,
                        content_type=upstream.headers.get("Content-Type", "application/json"))
    if "Content-Disposition" in upstream.headers:
        response.headers["Content-Disposition"] = upstream.headers["Content-Disposition"]
    return response


def _single_field(name: str, source: Any) -> Any:
    values = source.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"field '{name}' was given {len(values)} times; send it once")
    return values[0]


class ImageRefused(ApiError):
    """The feature service's verdict on an image that passed the gateway's header check."""


def _error_of(answer: Any) -> str:
    try:
        return str(answer.json()["error"])
    except (ValueError, KeyError, TypeError):
        return "the image could not be decoded"


def _features_of(image: bytes, request_id: str) -> dict | None:
    answer = features.call("POST", "/preprocess?include_image=false", request_id, data=image,
                           headers={"Content-Type": "application/octet-stream"})
    if answer.status_code in (400, 413, 415):  # the one full decode in Python refused the image
        raise ImageRefused(answer.status_code, _error_of(answer))
    if answer.status_code != 200:
        raise unavailable("the feature service")
    return answer.json()["features"]


def _features_or_none(pending: Any) -> dict | None:
    """Features are for monitoring: if the feature service is down the detection is still
    served and stored, and the gap is logged. Its refusal of the image is final."""
    try:
        return pending.result()
    except ImageRefused:
        raise
    except ApiError:
        log.warning("features unavailable; serving detections without them", extra={"event.action": "detect"})
        return None


@app.post("/api/detect")
@require("client", "admin")
def detect() -> tuple[Response, int]:
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "send a multipart/form-data body with file field 'image' and field 'user_id'")
    upload = _single_field("image", request.files)
    if upload is None:
        raise ApiError(400, "missing file field 'image'")
    user_id = check_user_id(_single_field("user_id", request.form))
    data = upload.read()
    # Headers only (size, format, pixel bomb): the pixels are decoded by the feature service
    # and by the model, each refusing a corrupt file, so decoding here too would be a third time.
    image = check_image(data, decode=False)
    request_id = g.request_id
    context = request_id_var.get()

    results.ensure_available()  # storage known down: 503 now, not after an inference
    feature_future = fan_out.submit(_in_context, context, _features_of, data, request_id)
    try:
        prediction = model.predict(image.model_bytes, user_id, request_id)
    except ApiError as refused:
        if refused.status < 500:
            _features_or_none(feature_future)  # the feature service's words for a bad image, when it has them
        raise
    image_features = _features_or_none(feature_future)
    detections = [MessageToDict(d, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                  for d in prediction.detections]
    stored = results.call("POST", "/predictions", request_id, json={
        "request_id": request_id,
        "user_id": user_id,
        "client_id": g.principal.client_id,
        "detections": detections,
        "features": image_features,
        "model_name": prediction.model_name,
        "model_version": prediction.model_version,
        "inference_time_ms": prediction.inference_time_ms,
    }, headers=_actor_headers(g.principal))
    if stored.status_code == 409:
        raise ApiError(409, f"request id {request_id} was already used: a prediction with it is stored "
                            f"(GET /api/results/predictions/{request_id}); send a new X-Request-ID for a new detection")
    if stored.status_code != 201:
        # Never acknowledge what was not stored.
        raise unavailable("result storage")
    log.info("detected %d objects", len(detections), extra={
        "event.action": "detect", "event.outcome": "success", "user.hash": hash_user_id(user_id),
        "model.version": prediction.model_version, **detection_fields(detections), **feature_fields(image_features)})
    metrics.observe_features(image_features)
    return jsonify({
        "request_id": request_id,
        "detections": detections,
        "model_name": prediction.model_name,
        "model_version": prediction.model_version,
        "inference_time_ms": round(prediction.inference_time_ms, 3),
        "image": {"width": prediction.image_width, "height": prediction.image_height},
        "features": image_features,
    }), 201


def _in_context(request_id: str | None, function: Callable, *args: Any) -> Any:
    request_id_var.set(request_id)
    return function(*args)


@app.post("/api/features/<path:path>")
@require("client", "dpo", "admin")
def feature_route(path: str) -> Response:
    if path not in FEATURE_ROUTES:  # no path traversal into the internal service
        raise ApiError(404, f"no feature endpoint {path[:64]!r}; available: {', '.join(sorted(FEATURE_ROUTES))}")
    answer = features.call("POST", f"/{path}", g.request_id, data=request.get_data(),
                           params=request.args, headers={"Content-Type": request.content_type or ""})
    return _relay(answer)


@app.get("/api/results/predictions/<request_id>")
@require("client", "dpo", "admin")
def read_prediction(request_id: str) -> Response:
    check_request_id(request_id)
    answer = results.call("GET", f"/predictions/{request_id}", g.request_id, headers=_actor_headers(g.principal))
    if answer.status_code == 200 and g.principal.role == "client" and answer.json().get("client_id") != g.principal.client_id:
        raise ApiError(403, "this prediction was created by another client")
    return _relay(answer)


@app.get("/api/results/predictions/user/<path:user_id>")
@require("client", "dpo", "admin")
def access_user_data(user_id: str) -> Response:
    check_user_id(user_id)
    params = dict(request.args)
    if g.principal.role == "client":
        params["client_id"] = g.principal.client_id  # a client sees only what it created
    answer = results.call("GET", f"/predictions/user/{quote(user_id, safe='')}", g.request_id,
                          params=params, headers=_actor_headers(g.principal))
    return _relay(answer)


@app.delete("/api/results/predictions/user/<path:user_id>")
@require("dpo", "admin")
def erase_user_data(user_id: str) -> Response:
    check_user_id(user_id)
    answer = results.call("DELETE", f"/predictions/user/{quote(user_id, safe='')}", g.request_id, headers=_actor_headers(g.principal))
    return _relay(answer)


# --- governance: feedback/recourse and explanations (engine: services/common/explain.py) ---

@app.post("/api/results/predictions/<request_id>/feedback")
@require("client", "dpo", "admin")
def contest_prediction(request_id: str) -> tuple[Response, int] | Response:
    """Feedback on / contestation of a prediction: JSON {reason, correct: bool, comment?}.
    A client may contest only the predictions it created; dpo and admin any."""
    check_request_id(request_id)
    params = {"client_id": g.principal.client_id} if g.principal.role == "client" else {}
    answer = results.call("POST", f"/predictions/{request_id}/feedback", g.request_id, params=params,
                          data=request.get_data(), headers={**_actor_headers(g.principal),
                                                           "Content-Type": request.content_type or ""})
    return _relay(answer)


@app.post("/api/explain")
@require("dpo", "admin")
def explain() -> Response:
    """Occlusion-sensitivity explanation of each detection of an uploaded image
    (multipart field `image`; `?format=png` for the heat map alone, `?grid=12x8`,
    `?threshold=0.4`). See governance/EXPLAINABILITY.md. About 100 inferences each:
    for dpo/admin only, one at a time per worker, under a total deadline."""
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "send a multipart/form-data body with file field 'image'")
    upload = _single_field("image", request.files)
    if upload is None:
        raise ApiError(400, "missing file field 'image'")
    threshold = None  # the served version's operating threshold
    if "threshold" in request.args:
        try:
            threshold = float(request.args["threshold"])
        except ValueError:
            raise ApiError(400, "threshold must be a number between 0.05 and 1") from None
        if not 0.05 <= threshold <= 1.0:
            raise ApiError(400, "threshold must be a number between 0.05 and 1")
    try:
        grid = parse_grid(request.args.get("grid"))
        with explanation_slot():
            result = explain_image(upload.read(), threshold=threshold, grid=grid)
    except ExplainError as exc:
        retry_after = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s or config.RETRY_AFTER_S)))}
        if exc.status >= 500:  # the detail may name internal hosts: log it, do not show it
            log.warning("explanation failed: %s", exc.message, extra={"event.action": "explain", "event.outcome": "failure"})
            raise ApiError(503, exc.message if exc.public else "the model server is unavailable; retry later",
                           retry_after) from None
        raise ApiError(exc.status, exc.message, retry_after if exc.status == 429 else None) from None
    log.info("explained %d detections", len(result.body["detections"]), extra={
        "event.action": "explain", "event.outcome": "success", "model.version": result.body["model_version"],
        "detection.count": len(result.body["detections"])})
    if request.args.get("format") == "png":
        return Response(result.png, mimetype="image/png")
    body = as_json(result, include_png=request.args.get("png", "1") not in ("0", "false"))
    body["request_id"] = g.request_id
    return jsonify(body)
