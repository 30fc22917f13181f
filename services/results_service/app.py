"""Results service: stores predictions and serves the data subjects' rights.

The seed's endpoints: `POST /predictions`, `GET /predictions/<request_id>`,
`GET /predictions/user/<user_id>` (access and portability, GDPR Art. 15 and 20)
and `DELETE /predictions/user/<user_id>` (erasure, Art. 17); and the same rights with
the subject given as keyed hashes in a POST body (`/subjects/access`, `/subjects/erasure`),
which is what the gateway uses so that no id in clear travels past it.

Tenants: a request id belongs to the client that created it. A caller with
`X-Actor-Role: client` only ever sees its own predictions (the scope is its actor id,
whatever it asks for); another client's prediction answers exactly like a missing one.
Every read, export and erasure is journaled without personal data, after the actor
and the ownership are checked; a refused attempt is journaled as the actor's, without
the subject's hash.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

from flask import Response, g, jsonify, request
from pydantic import BaseModel, ValidationError

from services.common import pseudonym
from services.common.schemas import (EXPORT_FORMAT, FeedbackIn, PredictionIn, SubjectLookup, first_error)
from services.common.validation import check_request_id, check_user_id
from services.common.web import ApiError, create_app, json_body, utc_now_iso
from services.results_service.store import DuplicateRequest, ResultsStore, make_engine

SERVICE_NAME = "results-service"
ACTOR_ROLES = ("client", "dpo", "admin", "service")
ACTOR_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
Model = TypeVar("Model", bound=BaseModel)

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


def _scope(role: str, actor: str, asked: str | None = None) -> str | None:
    """The client whose data the caller may see: a client only ever its own; others
    whatever they ask for (`client_id`), or everything."""
    asked = asked if asked is not None else request.args.get("client_id")
    if asked is not None and not (1 <= len(asked) <= 64 and "\x00" not in asked):
        raise ApiError(400, "client_id must be 1-64 characters")
    return actor if role == "client" else asked


def _parse(model: type[Model], body: dict) -> Model:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise ApiError(400, first_error(error)) from None


def _known_key(key_id: str) -> None:
    if key_id not in {key.key_id for key in pseudonym.keyring()}:
        # Hashes under a key this service cannot compute could never be found again.
        raise ApiError(400, f"key_id {key_id} is not a pseudonymisation key of this deployment")


def _no_such_prediction(request_id: str) -> ApiError:
    return ApiError(404, f"no prediction with request_id {request_id}")


def _owned(request_id: str, action: str, role: str, actor: str) -> dict:
    """The caller's prediction, or the same 404 whether it is missing or another client's.
    A miss is journaled as the actor's refused attempt, never against the data subject."""
    scope = _scope(role, actor)
    found = store.find(request_id, scope)
    if not found:
        elsewhere = scope is not None and bool(store.find(request_id, None, limit=1))
        store.journal(f"{action}_refused" if elsewhere else f"{action}_missing", role, actor, request_id=request_id)
        raise _no_such_prediction(request_id)
    if len(found) > 1:  # only without a scope, i.e. dpo/admin/service
        raise ApiError(409, f"request id {request_id} is used by several clients; add ?client_id= to choose one")
    return found[0]


@app.post("/predictions")
def store_prediction() -> tuple[Response, int]:
    role, actor = _actor()
    sent = _parse(PredictionIn, json_body())
    if sent.user_hash is not None:
        _known_key(sent.key_id or "")
        user_hash, key_id = sent.user_hash, sent.key_id
    else:
        user_hash, key_id = pseudonym.hash_user_id(check_user_id(sent.user_id)), pseudonym.key_id()
    client_id = actor if role == "client" else sent.client_id
    record = {
        **sent.model_dump(exclude={"user_id", "user_hash", "key_id", "client_id"}),
        "user_hash": user_hash, "key_id": key_id, "client_id": client_id, "detection_count": len(sent.detections),
    }
    try:
        store.add(record)
    except DuplicateRequest:
        raise ApiError(409, f"a prediction with request_id {sent.request_id} is already stored") from None
    log.info("prediction stored", extra={"event.action": "store", "user.hash": user_hash,
                                          "detection.count": len(sent.detections), "model.version": sent.model_version})
    return jsonify({"request_id": sent.request_id, "stored": True}), 201


@app.get("/predictions/<request_id>")
def get_prediction(request_id: str) -> Response:
    check_request_id(request_id)
    role, actor = _actor()
    record = _owned(request_id, "read", role, actor)
    store.journal("read", role, actor, user_hash=record["user_hash"], request_id=request_id, record_count=1)
    return jsonify(record)


def _export(hashes: list[str], role: str, actor: str, scope: str | None, download: bool) -> Response:
    """Format documented in governance/RGPD.md ("Export format"). A client-scoped export holds
    only what that client created (predictions) and did (its feedback, its journal entries)."""
    records = store.for_user(hashes, scope)
    user_feedback = store.feedback_for_user(hashes, scope)
    store.journal("access_export", role, actor, user_hash=hashes[0], record_count=len(records) + len(user_feedback))
    access_log = store.audit_for_user(hashes, scope)  # this export included
    log.info("user data exported", extra={"event.action": "access_export", "user.hash": hashes[0]})
    response = jsonify({
        "format": EXPORT_FORMAT,
        "user_hash": hashes[0],
        "exported_at": utc_now_iso(),
        "scope": "client" if scope else "all",
        "count": len(records),
        "predictions": records,
        "feedback": user_feedback,
        "access_log": access_log,
        "not_held": ["images (never stored)", "user id in clear (only its keyed hash)"],
    })
    if download:
        response.headers["Content-Disposition"] = f'attachment; filename="export-{hashes[0][:16]}.json"'
    return response


def _erase(hashes: list[str], role: str, actor: str) -> Response:
    if role == "client":
        raise ApiError(403, "role client may not erase a data subject's data")
    erased = store.erase_user_data(hashes, journal={"actor_role": role, "actor_id": actor})
    log.info("user data erased", extra={"event.action": "erasure", "user.hash": hashes[0],
                                         "erased.count": erased["predictions"], "erased.feedback": erased["feedback"],
                                         "erased.compacted": erased["compacted"]})
    if not erased["compacted"]:
        log.error("erased rows not yet compacted out of the database files (lock not granted)",
                  extra={"event.action": "erasure", "event.outcome": "failure", "user.hash": hashes[0]})
    return jsonify({"user_hash": hashes[0], "deleted": erased["predictions"], "deleted_feedback": erased["feedback"],
                    "compacted": erased["compacted"], "erased_at": utc_now_iso(), "request_id": g.request_id})


def _download_asked() -> bool:
    return request.args.get("download") in ("1", "true")


@app.get("/predictions/user/<path:user_id>")
def get_user_predictions(user_id: str) -> Response:
    role, actor = _actor()
    hashes = pseudonym.lookup_hashes(check_user_id(user_id))
    return _export(hashes, role, actor, _scope(role, actor), _download_asked())


@app.delete("/predictions/user/<path:user_id>")
def delete_user_predictions(user_id: str) -> Response:
    role, actor = _actor()  # validated before anything is deleted
    return _erase(pseudonym.lookup_hashes(check_user_id(user_id)), role, actor)


@app.post("/subjects/access")
def access_subject() -> Response:
    role, actor = _actor()
    lookup = _parse(SubjectLookup, json_body())
    return _export(lookup.user_hashes, role, actor, _scope(role, actor, lookup.client_id),
                   lookup.download or _download_asked())


@app.post("/subjects/erasure")
def erase_subject() -> Response:
    role, actor = _actor()
    return _erase(_parse(SubjectLookup, json_body()).user_hashes, role, actor)


@app.post("/predictions/<request_id>/feedback")
def contest_prediction(request_id: str) -> tuple[Response, int]:
    """Feedback and recourse: {reason, correct: bool, comment?}. A client may contest
    only its own predictions (`?client_id=` restricts a dpo/admin the same way)."""
    check_request_id(request_id)
    role, actor = _actor()
    sent = _parse(FeedbackIn, json_body())
    action = "feedback" if sent.correct else "contest"
    record = _owned(request_id, action, role, actor)
    feedback_id = store.add_feedback({
        "request_id": request_id, "user_hash": record["user_hash"], "key_id": record["key_id"],
        "client_id": record["client_id"], "actor_role": role, "actor_id": actor, "correct": sent.correct,
        "reason": sent.reason.strip(), "comment": sent.comment,
    })
    store.journal(action, role, actor, user_hash=record["user_hash"], request_id=request_id, record_count=1)
    log.info("feedback recorded", extra={"event.action": "feedback", "user.hash": record["user_hash"],
                                          "feedback.correct": sent.correct})
    return jsonify({"feedback_id": feedback_id, "request_id": request_id, "correct": sent.correct,
                    "status": "recorded" if sent.correct else "contested: queued for human review",
                    "recorded_at": utc_now_iso()}), 201
