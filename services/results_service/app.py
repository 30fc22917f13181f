"""Results service: stores predictions and serves the data subjects' rights.

The seed's endpoints: `POST /predictions`, `GET /predictions/<request_id>`,
`GET /predictions/user/<user_id>` (access and portability, GDPR Art. 15 and 20)
and `DELETE /predictions/user/<user_id>` (erasure, Art. 17). User ids are hashed
on arrival; every read, export and erasure is journaled without personal data.
"""
from __future__ import annotations

from pathlib import Path

import math
import re
from typing import Any

from flask import Response, g, jsonify, request

from services.common.pseudonym import hash_user_id
from services.common.validation import check_request_id, check_user_id
from services.common.web import ApiError, create_app, json_body, utc_now_iso
from services.results_service.store import DuplicateRequest, ResultsStore, make_engine

SERVICE_NAME = "results-service"
ACTOR_ROLES = ("client", "dpo", "admin", "service")
ACTOR_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

store = ResultsStore(make_engine())
app = create_app(SERVICE_NAME, ready_checks={"database": store.ping},
                 openapi=Path(__file__).with_name("openapi.yaml"), internal=True)
log = app.logger


def _actor() -> tuple[str, str]:
    """Who is asking, as the gateway vouches for it (role, pseudonymous client id)."""
    role, actor = request.headers.get("X-Actor-Role", "service"), request.headers.get("X-Actor-Id", "internal")
    # Journaled as given: refuse anything that is not a known role or a plain identifier.
    if role not in ACTOR_ROLES:
        raise ApiError(400, f"X-Actor-Role must be one of {', '.join(ACTOR_ROLES)}")
    if not ACTOR_ID.fullmatch(actor):
        raise ApiError(400, "X-Actor-Id must be 1-64 characters from A-Z a-z 0-9 _ -")
    return role, actor


def _number(body: dict, field: str, minimum: float = 0.0, maximum: float = math.inf) -> float:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"{field} must be a finite number")
    if not minimum <= value <= maximum:
        raise ApiError(400, f"{field} must be between {minimum} and {maximum}")
    return float(value)


def _short_str(body: dict, field: str, max_length: int, default: str | None = None) -> str:
    value = body.get(field, default)
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise ApiError(400, f"{field} must be a non-empty string of at most {max_length} characters")
    return value


def _detections(body: dict) -> list[dict[str, Any]]:
    # The seed calls the list `predictions`; the public API calls it `detections`.
    raw = body.get("detections", body.get("predictions"))
    if not isinstance(raw, list):
        raise ApiError(400, "detections must be a list")
    cleaned = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("bbox"), dict):
            raise ApiError(400, f"detections[{index}] must be an object with class_name, confidence and bbox")
        bbox = item["bbox"]
        cleaned.append({
            "class_name": _short_str(item, "class_name", 64),
            "confidence": _number(item, "confidence", 0.0, 1.0),
            "bbox": {key: _number(bbox, key, -1e6, 1e6) for key in ("x_min", "y_min", "x_max", "y_max")},
        })
    return cleaned


@app.post("/predictions")
def store_prediction() -> tuple[Response, int]:
    body = json_body()
    features = body.get("features")
    if features is not None and not isinstance(features, dict):
        raise ApiError(400, "features must be an object")
    detections = _detections(body)
    user_hash = hash_user_id(check_user_id(body.get("user_id")))
    record = {
        "request_id": check_request_id(body.get("request_id")),
        "user_hash": user_hash,
        "client_id": _short_str(body, "client_id", 64, default="internal"),
        "detections": detections,
        "detection_count": len(detections),
        "features": features,
        "model_name": _short_str(body, "model_name", 64, default="car_detector"),
        "model_version": _short_str(body, "model_version", 32),
        "inference_time_ms": _number(body, "inference_time_ms", 0.0, 3.6e6),
    }
    try:
        store.add(record)
    except DuplicateRequest:
        raise ApiError(409, f"a prediction with request_id {record['request_id']} is already stored") from None
    log.info("prediction stored", extra={"event.action": "store", "user.hash": user_hash,
                                          "detection.count": len(detections), "model.version": record["model_version"]})
    return jsonify({"request_id": record["request_id"], "stored": True}), 201


@app.get("/predictions/<request_id>")
def get_prediction(request_id: str) -> Response:
    check_request_id(request_id)
    record = store.get(request_id)
    if record is None:
        raise ApiError(404, f"no prediction with request_id {request_id}")
    role, actor = _actor()
    store.journal("read", role, actor, user_hash=record["user_hash"], request_id=request_id, record_count=1)
    return jsonify(record)


@app.get("/predictions/user/<path:user_id>")
def get_user_predictions(user_id: str) -> Response:
    user_hash = hash_user_id(check_user_id(user_id))
    client_id = request.args.get("client_id")
    records = store.for_user(user_hash, client_id)
    user_feedback = store.feedback_for_user(user_hash, client_id)
    role, actor = _actor()
    store.journal("access_export", role, actor, user_hash=user_hash, record_count=len(records) + len(user_feedback))
    log.info("user data exported", extra={"event.action": "access_export", "user.hash": user_hash})
    # Format documented in governance/RGPD.md ("Export format"). A client sees only what it
    # created and the journal entries of its own accesses; dpo/admin see everything.
    response = jsonify({
        "format": "car-detection-export/1",
        "user_hash": user_hash,
        "exported_at": utc_now_iso(),
        "scope": "client" if client_id else "all",
        "count": len(records),
        "predictions": records,
        "feedback": user_feedback,
        "access_log": store.audit_for_user(user_hash, client_id),
        "not_held": ["images (never stored)", "user id in clear (only its keyed hash)"],
    })
    if request.args.get("download") in ("1", "true"):
        response.headers["Content-Disposition"] = f'attachment; filename="export-{user_hash[:16]}.json"'
    return response


@app.delete("/predictions/user/<path:user_id>")
def delete_user_predictions(user_id: str) -> Response:
    user_hash = hash_user_id(check_user_id(user_id))
    erased = store.erase_user_data(user_hash)
    deleted = erased["predictions"]
    role, actor = _actor()
    store.journal("erasure", role, actor, user_hash=user_hash, record_count=deleted + erased["feedback"])
    log.info("user data erased", extra={"event.action": "erasure", "user.hash": user_hash, "erased.count": deleted,
                                         "erased.feedback": erased["feedback"]})
    return jsonify({"user_hash": user_hash, "deleted": deleted, "deleted_feedback": erased["feedback"],
                    "erased_at": utc_now_iso(), "request_id": g.request_id})


@app.post("/predictions/<request_id>/feedback")
def contest_prediction(request_id: str) -> tuple[Response, int]:
    """Feedback and recourse: {reason, correct: bool, comment?}. With `?client_id=`
    (set by the gateway for the client role) only that client's predictions may be contested."""
    check_request_id(request_id)
    body = json_body()
    correct = body.get("correct")
    if not isinstance(correct, bool):
        raise ApiError(400, "correct is required and must be true or false")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
        raise ApiError(400, "reason is required: a non-empty string of at most 500 characters")
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 2000):
        raise ApiError(400, "comment must be a string of at most 2000 characters")
    record = store.get(request_id)
    if record is None:
        raise ApiError(404, f"no prediction with request_id {request_id}")
    owner = request.args.get("client_id")
    if owner is not None and record["client_id"] != owner:
        raise ApiError(403, "this prediction was created by another client")
    role, actor = _actor()
    feedback_id = store.add_feedback({
        "request_id": request_id, "user_hash": record["user_hash"], "client_id": record["client_id"],
        "actor_role": role, "correct": correct, "reason": reason.strip(), "comment": comment,
    })
    store.journal("feedback" if correct else "contest", role, actor, user_hash=record["user_hash"],
                  request_id=request_id, record_count=1)
    log.info("feedback recorded", extra={"event.action": "feedback", "user.hash": record["user_hash"],
                                          "feedback.correct": correct})
    return jsonify({"feedback_id": feedback_id, "request_id": request_id, "correct": correct,
                    "status": "recorded" if correct else "contested: queued for human review",
                    "recorded_at": utc_now_iso()}), 201
