"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.system.schemathesis_hooks): a case whose
body is generated as valid gets a real, decodable image and a valid user id, so the
image endpoints reach their 2xx answers and those are validated against the schemas.
Negative cases keep their random bytes (the refusals are checked as before).
Explanations cost about a hundred inferences each, so only a few get a real image."""
from __future__ import annotations

import base64
import io
import itertools
import os

import schemathesis
from PIL import Image

from tests.conftest import frame

JPEG = frame()
_small = io.BytesIO()
Image.open(io.BytesIO(JPEG)).convert("RGB").resize((96, 54)).save(_small, "JPEG", quality=90)
SMALL_JPEG = _small.getvalue()
EXPLAIN_BUDGET = int(os.environ.get("SCHEMATHESIS_EXPLAIN_IMAGES", "3"))
_explained = itertools.count()
FUZZ_SUBJECT = "fuzz-subject"  # one data subject, so the stateful links export and erase it


@schemathesis.hook
def map_body(context, body):  # type: ignore[no-untyped-def]
    """Applied to generated bodies (valid or not): an image part or a raw image body is
    replaced by a real image; the structure (and so a structural defect) is kept."""
    operation = context.operation
    explain = operation is not None and operation.path.endswith("/explain")
    if explain and next(_explained) >= EXPLAIN_BUDGET:
        return body
    image = SMALL_JPEG if explain else JPEG
    if isinstance(body, dict) and isinstance(body.get("image"), (bytes, str)):
        # A multipart part holds the bytes, a JSON body holds them in base64. Which one this
        # body is for is not in the hook's context; an operation without a JSON alternative
        # (every gateway route) is multipart, whatever type the generator drew (often a str).
        as_bytes = isinstance(body["image"], bytes) or not _has_json_body(operation)
        body = {**body, "image": image if as_bytes else base64.b64encode(image).decode()}
        user = body.get("user_id")
        if isinstance(user, str) and 1 <= len(user) <= 256:  # a valid one stays valid
            body["user_id"] = FUZZ_SUBJECT
        elif user is not None and not isinstance(user, str) and as_bytes:
            # A non-string user id is a type violation a multipart form cannot carry (true
            # arrives as the text "true", a valid id): swap in one it can, an empty id.
            body["user_id"] = ""
    elif isinstance(body, (bytes, bytearray)):
        body = image
    return body


def _has_json_body(operation) -> bool:  # type: ignore[no-untyped-def]
    alternatives = getattr(getattr(operation, "body", None), "items", None) or []
    return any(getattr(a, "media_type", "") == "application/json" for a in alternatives)
