"""The results service's OpenAPI document, from the prediction schema (`make openapi`
writes it to openapi.yaml, which the service serves at /openapi.json)."""
from __future__ import annotations

from pydantic import BaseModel

from services.common import openapi as oa
from services.common import schemas as s

ACTOR_ROLE = oa.param("X-Actor-Role", "header", {"type": "string", "enum": ["client", "dpo", "admin", "service"]},
                      "the role the gateway vouches for; a client sees only its own predictions")
ACTOR_ID = oa.param("X-Actor-Id", "header", {"type": "string", "pattern": s.ACTOR_ID_PATTERN},
                    "the pseudonymous client id the gateway vouches for (journaled)")
CLIENT_QUERY = oa.param("client_id", "query", {"type": "string", "minLength": 1, "maxLength": 64, "pattern": s.NO_NUL},
                        "restrict to this client's predictions (ignored for X-Actor-Role: client, "
                        "which is always restricted to itself)")
HEADERS = [oa.REQUEST_ID_HEADER, ACTOR_ROLE, ACTOR_ID]

DESCRIPTION = """\
Stores predictions and serves the data subjects' rights (access, portability,
erasure). Internal service (port 5002), reachable only from the gateway's
network; callers vouch for the actor with X-Actor-Role / X-Actor-Id (journaled).
User ids are only ever stored and compared as a keyed hash; the /subjects routes take
the hashes themselves, so that no id in clear reaches this service.
A request id belongs to the client that stored it: another client's prediction
answers 404, exactly like a missing one.
Every path but /health, /ready, /openapi.json and /metrics needs the service token
(INTERNAL_TOKEN) in the header X-Internal-Token (401 otherwise), so X-Actor-* count
only from a caller that holds it.
Generated from services/common/schemas.py by `make openapi`: do not edit the YAML.
"""


def document() -> dict:
    erasure = {"200": oa.answer("erased, and the database files compacted", s.Erasure)}
    export = {"200": oa.answer("the export", s.Export)}
    paths = {
        **oa.common_paths("Readiness (the database answers)"),
        "/predictions": {"post": {
            "summary": "Store a prediction (idempotent by client and request_id)",
            "description": "A client's request id is stored once: a second POST with the same request_id "
                           "by the same client is 409 and changes nothing, so a caller may retry a POST "
                           "whose answer it lost. Another client may use the same request id.",
            "parameters": HEADERS, "requestBody": oa.body(s.PredictionIn),
            "responses": {"201": oa.answer("stored", s.StoreAck), **oa.errors(400, 409, 413, 415, 503)}}},
        "/predictions/{request_id}": {"get": {
            "summary": "One stored prediction",
            "parameters": [oa.REQUEST_ID_PATH, *HEADERS, CLIENT_QUERY],
            "responses": {"200": oa.answer("the prediction", s.StoredPrediction),
                          **oa.errors(400, 404, 409, 503)}}},
        "/predictions/{request_id}/feedback": {"post": {
            "summary": "Feedback on / contestation of a prediction",
            "parameters": [oa.REQUEST_ID_PATH, *HEADERS, CLIENT_QUERY], "requestBody": oa.body(s.FeedbackIn),
            "responses": {"201": oa.answer("recorded", s.FeedbackAck), **oa.errors(400, 404, 409, 415, 503)}}},
        "/predictions/user/{user_id}": {
            "parameters": [oa.USER_ID_PATH, *HEADERS],
            "get": {"summary": "Access and portability (GDPR Art. 15, 20); the seed's route",
                    "parameters": [CLIENT_QUERY, oa.DOWNLOAD_QUERY],
                    "responses": {**export, **oa.errors(400, 503)}},
            "delete": {"summary": "Erasure (GDPR Art. 17); the seed's route",
                       "responses": {**erasure, **oa.errors(400, 403, 503)}}},
        "/subjects/access": {"post": {
            "summary": "Access and portability, the subject given as its keyed hashes",
            "parameters": [*HEADERS, oa.DOWNLOAD_QUERY], "requestBody": oa.body(s.SubjectLookup),
            "responses": {**export, **oa.errors(400, 415, 503)}}},
        "/subjects/erasure": {"post": {
            "summary": "Erasure, the subject given as its keyed hashes: deleted and journaled in one "
                       "transaction, then the tables compacted",
            "parameters": HEADERS, "requestBody": oa.body(s.SubjectLookup),
            "responses": {**erasure, **oa.errors(400, 403, 415, 503)}}},
    }
    models: list[type[BaseModel]] = [s.Health, s.Ready, s.ErrorBody, s.PredictionIn, s.StoreAck, s.StoredPrediction, s.FeedbackIn,
              s.FeedbackAck, s.SubjectLookup, s.Export, s.Erasure]
    return oa.document("Results service", DESCRIPTION, "http://127.0.0.1:5002", paths, models,
                       oa.error_responses("the database is down; retry after Retry-After seconds"))
