"""The feature service's OpenAPI document, from the schemas (`make openapi` writes it to
openapi.yaml, which the service serves at /openapi.json)."""
from __future__ import annotations

from pydantic import BaseModel

from services.common import openapi as oa
from services.common import schemas as s

DESCRIPTION = """\
Image in; model-ready image and monitoring features out. Internal service (port 5001):
reachable only from the gateway's network; the public API is the gateway's. A detection
does not pass here (the model returns the image's statistics); the gateway relays
/api/features/preprocess, and asks for the features of a model version that computes none.
Every answer carries X-Request-ID and the security headers; every error is JSON
`{"error", "request_id"}`.
Every path but /health, /ready, /openapi.json and /metrics needs the service token
(INTERNAL_TOKEN) in the header X-Internal-Token (401 otherwise).
Generated from services/common/schemas.py by `make openapi`: do not edit the YAML.
"""
BINARY = {"type": "string", "format": "binary"}
INCLUDE_IMAGE = oa.param("include_image", "query", {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]},
                         "false: the features only (a reduced-scale decode, no model-ready image)")


def document() -> dict:
    paths = {
        **oa.common_paths("Readiness (no dependencies)"),
        "/preprocess": {"post": {
            "summary": "Validate an image and compute its features",
            "description": "The image as a multipart file field `image`, as a raw body (image/* or "
                           "application/octet-stream), or as JSON `{\"image\": \"<base64>\"}` (the seed's format).",
            "parameters": [oa.REQUEST_ID_HEADER, INCLUDE_IMAGE],
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                                   "properties": {"image": BINARY}}},
                "application/octet-stream": {"schema": BINARY},
                "image/jpeg": {"schema": BINARY},
                "image/png": {"schema": BINARY},
                "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
                    "image": {"type": "string", "contentEncoding": "base64", "minLength": 1},
                    "request_id": {"type": "string"}}}}}},
            "responses": {"200": oa.answer("features (and the model-ready image unless include_image=false)",
                                           s.PreprocessResult),
                          **oa.errors(400, 413, 415)}}},
    }
    models: list[type[BaseModel]] = [s.Health, s.Ready, s.ErrorBody, s.PreprocessResult]
    return oa.document("Feature service", DESCRIPTION, "http://127.0.0.1:5001", paths, models,
                       oa.error_responses("a dependency is down; retry after Retry-After seconds"))
