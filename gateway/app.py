"""The gateway: the single public entry of the system (port 8080).

Authenticates every call but liveness with an API key, enforces roles and rate
limits, and runs `POST /api/detect`: the image's header checked, detections and the
image's monitoring statistics from the model (which decodes the image, once), the result
stored, and only then acknowledged.
"""
from __future__ import annotations

import math
from pathlib import Path

from functools import wraps
from typing import Any, Callable

from flask import Response, g, jsonify, request
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from gateway import console
from gateway.auth import KeyRing, Principal, load_keys
from gateway.clients import HttpService, ModelServingClient, ResultsService, unavailable
from gateway.ratelimit import RateLimiter
from services.common import config, metrics
from services.common.explain import ExplainError, as_json, explain_image, explanation_slot, parse_grid
from services.common import image_features
from services.common.image_features import header_features
from services.common.images import CheckedImage, check_image
from services.common.logs import detection_fields, feature_fields
from services.common import pseudonym
from services.common.pseudonym import hash_user_id, lookup_hashes
from services.common.schemas import DetectResult, Detection, ImageSize, SubjectRequest, first_error
from services.common.validation import check_request_id, check_user_id
from services.common.web import ApiError, create_app, json_body

SERVICE_NAME = "gateway"

features = HttpService("feature service", config.FEATURE_SERVICE_URL)
results = ResultsService("results service", config.RESULTS_SERVICE_URL)
model = ModelServingClient(config.MODEL_SERVING_ADDR)
keyring = KeyRing(load_keys())
FEATURE_ROUTES = frozenset({"preprocess"})


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


limiter = RateLimiter(config.RATE_LIMIT, config.RATELIMIT_STORAGE_URI)
UNLIMITED_ENDPOINTS = frozenset({"health", "ready"})  # probes are never limited


@app.before_request
def _rate_limit() -> None:
    """After the request id (create_app's hook runs first), before any view or backend call."""
    if request.endpoint in UNLIMITED_ENDPOINTS:
        return
    verdict = limiter.hit(f"{_rate_key()}:{request.endpoint or 'unmatched'}")  # per key and route
    g.rate_limit_headers = verdict.headers()
    if not verdict.passed:
        wait_s = verdict.retry_after_s()  # once: the message and the header name the same wait
        raise ApiError(429, f"rate limit exceeded: {verdict.limit} for this key on this route; retry after "
                            f"{wait_s} s", {"Retry-After": str(wait_s)})


@app.after_request
def _rate_limit_headers(response: Response) -> Response:
    response.headers.update(g.get("rate_limit_headers", {}))
    return response


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
    if answer.status_code in (400, 413, 415):  # its full decode refused the image
        raise ImageRefused(answer.status_code, _error_of(answer))
    if answer.status_code != 200:
        raise unavailable("the feature service")
    return answer.json()["features"]


def _features_or_none(data: bytes, request_id: str) -> dict | None:
    """The feature service's features of the upload; None when it is down. Its refusal of
    the image is final (ImageRefused)."""
    try:
        return _features_of(data, request_id)
    except ImageRefused:
        raise
    except ApiError:
        return None


def _monitoring_features(image: CheckedImage, prediction: Any, data: bytes, request_id: str) -> dict | None:
    """The image's monitoring features: the header ones from the gateway's own header check,
    the pixel statistics from the model, which computed them from the pixels it decoded (so
    a detection decodes its image once). A version that computes none (before 5, or on
    TensorFlow) leaves them to the feature service. Features are for monitoring: if that
    service is down the detection is still served and stored, and the gap is logged."""
    if prediction.image_stats:
        measured = {**header_features(image.width, image.height, image.format, image.mode, image.byte_size),
                    **prediction.image_stats}
        return {name: measured[name] for name in image_features.NAMES if name in measured}
    found = _features_or_none(data, request_id)
    if found is None:
        log.warning("features unavailable; serving detections without them", extra={"event.action": "detect"})
    return found


@app.post("/api/detect")
@require("client", "admin")
def detect() -> tuple[Response, int]:
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "send a multipart/form-data body with file field 'image' and field 'user_id'")
    upload = _single_field("image", request.files)
    if upload is None:
        raise ApiError(400, "missing file field 'image'")
    # Only the keyed hash of the subject goes past the gateway (adapter, results, logs).
    user_hash = hash_user_id(check_user_id(_single_field("user_id", request.form)))
    data = upload.read()
    # Headers only (size, format, pixel bomb): the model decodes the pixels and refuses a
    # corrupt file; decoding here too would be a second time.
    image = check_image(data, decode=False)
    request_id = g.request_id

    results.ensure_available()  # storage known down: 503 now, not after an inference
    try:
        prediction = model.predict(image.model_bytes, user_hash, request_id)
    except ApiError as refused:
        if refused.status < 500:
            _features_or_none(data, request_id)  # the feature service's words for a bad image, when it has them
        raise
    monitoring = _monitoring_features(image, prediction, data, request_id)
    # One answer, built once: what is stored is the same object, less the image size and
    # with the keyed hash of the subject instead of its id.
    answer = DetectResult(
        request_id=request_id,
        detections=[Detection.model_validate(MessageToDict(d, preserving_proto_field_name=True,
                                                           always_print_fields_with_no_presence=True))
                    for d in prediction.detections],
        model_name=prediction.model_name,
        model_version=prediction.model_version,
        inference_time_ms=round(prediction.inference_time_ms, 3),
        image=ImageSize(width=prediction.image_width, height=prediction.image_height),
        features=monitoring,
    ).model_dump(mode="json")
    stored = results.call("POST", "/predictions", request_id, json={
        **{name: answer[name] for name in ("request_id", "detections", "features", "model_name", "model_version")},
        "inference_time_ms": prediction.inference_time_ms,
        "user_hash": user_hash,
        "key_id": pseudonym.key_id(),
        "client_id": g.principal.client_id,
    }, headers=_actor_headers(g.principal))
    if stored.status_code == 409:
        raise ApiError(409, f"request id {request_id} was already used: a prediction with it is stored "
                            f"(GET /api/results/predictions/{request_id}); send a new X-Request-ID for a new detection")
    if stored.status_code != 201:
        # Never acknowledge what was not stored.
        raise unavailable("result storage")
    log.info("detected %d objects", len(answer["detections"]), extra={
        "event.action": "detect", "event.outcome": "success", "user.hash": user_hash,
        "model.version": prediction.model_version, **detection_fields(answer["detections"]),
        **feature_fields(monitoring)})
    metrics.observe_features(monitoring)
    return jsonify(answer), 201


@app.post("/api/features/<path:path>")
@require("client", "dpo", "admin")
def feature_route(path: str) -> Response:
    if path not in FEATURE_ROUTES:  # no path traversal into the internal service
        raise ApiError(404, f"no feature endpoint {path[:64]!r}; available: {', '.join(sorted(FEATURE_ROUTES))}")
    answer = features.call("POST", f"/{path}", g.request_id, data=request.get_data(),
                           params=request.args, headers={"Content-Type": request.content_type or ""})
    return _relay(answer)


def _scope(principal: Principal) -> dict[str, str]:
    """A client sees only what it created (the results service enforces it too); dpo and
    admin may narrow to one client with `?client_id=` (e.g. a request id two clients used)."""
    asked = request.args.get("client_id")
    if asked is not None and not (1 <= len(asked) <= 64 and "\x00" not in asked):
        raise ApiError(400, "client_id must be 1-64 characters")
    if principal.role == "client":
        return {"client_id": principal.client_id}
    return {"client_id": asked} if asked else {}


@app.get("/api/results/predictions/<request_id>")
@require("client", "dpo", "admin")
def read_prediction(request_id: str) -> Response:
    """Another client's prediction answers exactly like a missing one (404)."""
    check_request_id(request_id)
    answer = results.call("GET", f"/predictions/{request_id}", g.request_id, params=_scope(g.principal),
                          headers=_actor_headers(g.principal))
    return _relay(answer)


def _subject(user_id: str, route: str, download: bool = False) -> Response:
    """Access or erasure of one data subject, sent on as the hashes of the id under every
    known key (lookup_hashes), so that no id in clear reaches the results service."""
    lookup = {"user_hashes": lookup_hashes(check_user_id(user_id)), "download": download,
              **(_scope(g.principal) if route == "access" else {})}  # an erasure is of everything
    answer = results.call("POST", f"/subjects/{route}", g.request_id, idempotent=True, json=lookup,
                          headers=_actor_headers(g.principal))
    return _relay(answer)


def _subject_body() -> SubjectRequest:
    try:
        return SubjectRequest.model_validate(json_body())
    except ValidationError as error:
        raise ApiError(400, first_error(error)) from None


@app.get("/api/results/predictions/user/<path:user_id>")
@require("client", "dpo", "admin")
def access_user_data(user_id: str) -> Response:
    """The seed's route; the id is in the URL (and so in proxies' access logs): prefer
    POST /api/results/subjects/access."""
    return _subject(user_id, "access", request.args.get("download") in ("1", "true"))


@app.delete("/api/results/predictions/user/<path:user_id>")
@require("dpo", "admin")
def erase_user_data(user_id: str) -> Response:
    """The seed's route; prefer POST /api/results/subjects/erasure (no id in the URL)."""
    return _subject(user_id, "erasure")


@app.post("/api/results/subjects/access")
@require("client", "dpo", "admin")
def access_subject() -> Response:
    """Access and portability with the id in the body: JSON {user_id, download?}."""
    body = _subject_body()
    return _subject(body.user_id, "access", body.download or request.args.get("download") in ("1", "true"))


@app.post("/api/results/subjects/erasure")
@require("dpo", "admin")
def erase_subject() -> Response:
    """Erasure with the id in the body: JSON {user_id}."""
    return _subject(_subject_body().user_id, "erasure")


# --- governance: feedback/recourse and explanations (engine: services/common/explain.py) ---

@app.post("/api/results/predictions/<request_id>/feedback")
@require("client", "dpo", "admin")
def contest_prediction(request_id: str) -> tuple[Response, int] | Response:
    """Feedback on / contestation of a prediction: JSON {reason, correct: bool, comment?}.
    A client may contest only the predictions it created; dpo and admin any."""
    check_request_id(request_id)
    answer = results.call("POST", f"/predictions/{request_id}/feedback", g.request_id, params=_scope(g.principal),
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
