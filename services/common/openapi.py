"""Building blocks of the services' OpenAPI 3.1 documents, whose schemas come from the
pydantic models (services/common/schemas.py). Each service describes its paths in its
own `api.py`; `make openapi` (scripts/openapi.py) writes the documents the services serve."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.common import schemas

REF = "#/components/schemas/{model}"
Json = dict[str, Any]


def ref(model: type[BaseModel] | str) -> Json:
    return {"$ref": REF.format(model=model if isinstance(model, str) else model.__name__)}


def json_content(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def body(model: type[BaseModel]) -> Json:
    return {"required": True, "content": json_content(ref(model))}


def answer(description: str, schema: type[BaseModel] | Json, headers: Json | None = None) -> Json:
    out: Json = {"description": description,
                 "content": json_content(ref(schema) if isinstance(schema, type) else schema)}
    if headers:
        out["headers"] = headers
    return out


def errors(*statuses: int) -> Json:
    """The shared error answers by status (components.responses)."""
    names = {401: "Unauthorized", 429: "RateLimited", 503: "Unavailable"}
    return {str(status): {"$ref": f"#/components/responses/{names.get(status, 'Error')}"} for status in statuses}


def param(name: str, where: str, schema: Json, description: str = "", required: bool = False) -> Json:
    out: Json = {"name": name, "in": where, "required": required or where == "path", "schema": schema}
    if description:
        out["description"] = description
    return out


REQUEST_ID_HEADER = param("X-Request-ID", "header", {"type": "string", "pattern": schemas.REQUEST_ID_PATTERN})
REQUEST_ID_PATH = param("request_id", "path", {"type": "string", "pattern": schemas.REQUEST_ID_PATTERN})
USER_ID_PATH = param("user_id", "path", {"type": "string", "minLength": 1, "maxLength": 256,
                                         "pattern": schemas.USER_ID_PATTERN},
                     "the data subject's id in clear (hashed on arrival; it appears in URL access logs: "
                     "prefer the POST routes with the id in the body)")
DOWNLOAD_QUERY = param("download", "query", {"type": "string"},
                       "1 or true: answer as an attachment (Content-Disposition); any other value: inline")


def common_paths(ready_summary: str, open_security: bool = False) -> Json:
    extra: Json = {"security": []} if open_security else {}
    return {
        "/health": {"get": {"summary": "Liveness", **extra,
                            "responses": {"200": answer("alive", schemas.Health)}}},
        "/ready": {"get": {"summary": ready_summary, **extra,
                           "responses": {"200": answer("ready", schemas.Ready), **errors(503)}}},
        "/openapi.json": {"get": {"summary": "This document (no authentication; it holds no data)", **extra,
                                  "responses": {"200": answer("the OpenAPI document", {"type": "object"})}}},
    }


def document(title: str, description: str, server: str, paths: Json, models: list[type[BaseModel]],
             responses: Json, security_schemes: Json | None = None) -> Json:
    """The whole document: `models` become components.schemas (with what they reference);
    with `security_schemes`, every operation needs one of them unless it says otherwise."""
    _, definitions = models_json_schema([(model, "validation") for model in models], ref_template=REF)
    components: Json = {"securitySchemes": security_schemes} if security_schemes else {}
    top: Json = {"security": [{name: []} for name in security_schemes]} if security_schemes else {}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1.0", "description": description},
        "servers": [{"url": server}],
        **top,
        "paths": paths,
        "components": {**components, "responses": responses,
                       "schemas": dict(sorted(definitions.get("$defs", {}).items()))},
    }


def error_responses(unavailable: str, retry_after_required: bool = False) -> Json:
    retry_after: Json = {"schema": {"type": "integer", "minimum": 1}}
    if retry_after_required:
        retry_after["required"] = True
    return {
        "Error": {"description": "the caller sent something wrong; the message names it",
                  "content": json_content(ref(schemas.ErrorBody))},
        "Unavailable": {"description": unavailable, "headers": {"Retry-After": retry_after},
                        "content": json_content({"type": "object"})},
    }
