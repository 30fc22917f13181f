"""The gateway's OpenAPI document, from the prediction schema (`make openapi` writes it
to openapi.yaml, which the gateway serves at /openapi.json)."""
from __future__ import annotations

from pydantic import BaseModel

from services.common import openapi as oa
from services.common import schemas as s

DESCRIPTION = """\
The single public entry of the car-detection system (port 8080).
Every call but `/health`, `/ready` and this document needs an API key in the
`X-API-Key` header (401 without or with an unknown key, 403 for a wrong role;
roles: client, dpo, admin). Rate-limited per key and route: 429 with Retry-After.
Errors are JSON `{"error": "...", "request_id": "..."}`: 4xx for anything the
caller sent wrong, 503 with Retry-After when a dependency is down.
Every answer carries X-Request-ID (an incoming valid one is honoured).
A client's request ids are its own: another client's use of the same id neither
blocks nor reveals anything, and another client's prediction answers 404 like a
missing one. Data-subject rights are also offered with the id in a JSON body
(`/api/results/subjects/...`), so that it appears in no URL.
Generated from services/common/schemas.py by `make openapi`: do not edit the YAML.
"""
RID = oa.REQUEST_ID_HEADER
CLIENT_QUERY = oa.param("client_id", "query", {"type": "string", "minLength": 1, "maxLength": 64, "pattern": s.NO_NUL},
                        "dpo/admin: only this client's data (ignored for the client role, always limited to itself)")
SECURED = (401, 429, 503)


def _multipart(required: list[str], properties: dict) -> dict:
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": required, "properties": properties}}}}


def _console_paths() -> dict:
    """The web console and the latest audit report (gateway/console.py)."""
    html = {"text/html": {"schema": {"type": "string"}}}
    report = {"type": "object", "required": ["name", "generated_at", "plots", "html", "report"], "properties": {
        "name": {"type": "string"}, "generated_at": {"type": ["string", "null"]},
        "plots": {"type": "array", "items": {"type": "string"}}, "html": {"type": "boolean"},
        "report": {"type": "object"}}}
    plot = oa.param("name", "path", {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,76}[.]png$"})
    return {
        "/": {"get": {"summary": "The web console (static page; the API key is entered in the page)", "security": [],
                      "responses": {"200": {"description": "the console page", "content": html}, **oa.errors(429)}}},
        "/api/reports/latest": {"get": {
            "summary": "The newest audit report written by make audit, and the names of its plots (roles dpo, admin)",
            "parameters": [RID], "responses": {"200": oa.answer("the report", report),
                                               **oa.errors(400, 401, 403, 404, 429, 503)}}},
        "/api/reports/latest.html": {"get": {
            "summary": "The newest audit report's HTML rendering, as an attachment (roles dpo, admin)",
            "parameters": [RID], "responses": {"200": {"description": "the report page", "content": html},
                                               **oa.errors(400, 401, 403, 404, 429)}}},
        "/api/reports/latest/plots/{name}": {"get": {
            "summary": "One plot of the newest audit report (roles dpo, admin)",
            "parameters": [plot, RID],
            "responses": {"200": {"description": "the plot", "content": {"image/png": {"schema": {
                "type": "string", "format": "binary"}}}}, **oa.errors(400, 401, 403, 404, 429)}}},
    }


def document() -> dict:
    image = {"type": "string", "format": "binary"}
    export = {"200": oa.answer("the export", s.Export)}
    erased = {"200": oa.answer("erased", s.Erasure)}
    paths = {
        **oa.common_paths("Readiness (every dependency reachable)", open_security=True),
        "/api/detect": {"post": {
            "summary": "Detect cars in an image (roles client, admin)",
            "description": "The image is checked (format, size, pixel count, full decode) before anything "
                           "else; the answer is 201 only once the result is stored. 409 only for a request "
                           "id this client already used.",
            "parameters": [RID],
            "requestBody": _multipart(["image", "user_id"], {
                "image": {**image, "description": "JPEG, PNG, GIF, BMP, WEBP or TIFF; at most MAX_UPLOAD_BYTES"},
                "user_id": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": s.USER_ID_PATTERN,
                            "description": "the data subject (only its keyed hash leaves the gateway)"}}),
            "responses": {"201": oa.answer("detections, stored", s.DetectResult),
                          **oa.errors(400, 401, 403, 409, 413, 415, 429, 503)}}},
        "/api/features/preprocess": {"post": {
            "summary": "The feature service's /preprocess (roles client, dpo, admin)",
            "parameters": [RID, oa.param("include_image", "query",
                                         {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]})],
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                                   "properties": {"image": image}}},
                "application/octet-stream": {"schema": image}}},
            "responses": {"200": oa.answer("features", {"type": "object", "required": ["request_id", "features"]}),
                          **oa.errors(400, 401, 413, 415, 429, 503)}}},
        "/api/explain": {"post": {
            "summary": "Occlusion-sensitivity explanation of the detections of an image (roles dpo, admin)",
            "parameters": [
                RID,
                oa.param("threshold", "query", {"type": "number", "minimum": 0.05, "maximum": 1}),
                oa.param("grid", "query", {"type": "string"}, "columns x rows, e.g. 12x8 (2-32 each, at most 192 cells)"),
                oa.param("format", "query", {"type": "string"}, "png: the heat map alone as image/png; anything else: JSON"),
                oa.param("png", "query", {"type": "string"},
                         "0 or false: leave the heat map out of the JSON answer; any other value: include it")],
            "requestBody": _multipart(["image"], {"image": image}),
            "responses": {"200": {"description": "the explanation (JSON, or a PNG heat map with format=png)",
                                  "content": {"application/json": {"schema": {"type": "object"}},
                                              "image/png": {"schema": image}}},
                          **oa.errors(400, 401, 403, 413, 415, 429, 503)}}},
        "/api/results/predictions/{request_id}": {"get": {
            "summary": "One stored prediction (a client reads only its own; another's is 404)",
            "parameters": [oa.REQUEST_ID_PATH, RID, CLIENT_QUERY],
            "responses": {"200": oa.answer("the prediction", s.StoredPrediction),
                          **oa.errors(400, 401, 404, 409, 429, 503)}}},
        "/api/results/predictions/{request_id}/feedback": {"post": {
            "summary": "Feedback on / contestation of a prediction (a client only on its own; another's is 404)",
            "parameters": [oa.REQUEST_ID_PATH, RID, CLIENT_QUERY], "requestBody": oa.body(s.FeedbackIn),
            "responses": {"201": oa.answer("recorded", s.FeedbackAck),
                          **oa.errors(400, 401, 404, 409, 415, 429, 503)}}},
        "/api/results/predictions/user/{user_id}": {
            "parameters": [oa.USER_ID_PATH, RID],
            "get": {"summary": "Access / export of a data subject's data (a client sees only what it created "
                               "and did); prefer POST /api/results/subjects/access",
                    "parameters": [oa.DOWNLOAD_QUERY, CLIENT_QUERY],
                    "responses": {**export, **oa.errors(400, 401, 403, 429, 503)}},
            "delete": {"summary": "Erasure of a data subject's data (roles dpo, admin); prefer "
                                  "POST /api/results/subjects/erasure",
                       "responses": {**erased, **oa.errors(400, 401, 403, 429, 503)}}},
        "/api/results/subjects/access": {"post": {
            "summary": "Access / export with the id in the body (a client sees only what it created and did)",
            "parameters": [RID, oa.DOWNLOAD_QUERY, CLIENT_QUERY], "requestBody": oa.body(s.SubjectRequest),
            "responses": {**export, **oa.errors(400, 401, 403, 415, 429, 503)}}},
        "/api/results/subjects/erasure": {"post": {
            "summary": "Erasure with the id in the body (roles dpo, admin)",
            "parameters": [RID], "requestBody": oa.body(s.SubjectRequest),
            "responses": {**erased, **oa.errors(400, 401, 403, 415, 429, 503)}}},
    }
    paths.update(_console_paths())
    paths["/openapi.json"]["get"]["responses"].update(oa.errors(429))
    retry_after = {"Retry-After": {"schema": {"type": "integer", "minimum": 0}}}
    responses = {
        **oa.error_responses("a dependency is down; nothing was stored; retry after Retry-After seconds",
                             retry_after_required=True),
        "Unauthorized": {"description": "no API key or an unknown one",
                         "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                         "content": oa.json_content(oa.ref(s.ErrorBody))},
        "RateLimited": {"description": "too many requests for this key; retry after Retry-After seconds",
                        "headers": retry_after, "content": oa.json_content(oa.ref(s.ErrorBody))},
    }
    models: list[type[BaseModel]] = [s.Health, s.Ready, s.ErrorBody, s.DetectResult, s.StoredPrediction, s.FeedbackIn, s.FeedbackAck,
              s.SubjectRequest, s.Export, s.Erasure]
    return oa.document("Car detection gateway", DESCRIPTION, "http://127.0.0.1:8080", paths, models, responses,
                       security_schemes={"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}})
