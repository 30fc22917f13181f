"""Checks of identifiers that arrive from outside (paths, headers, JSON fields)."""
from __future__ import annotations

import re
import unicodedata

from services.common.web import ApiError

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_USER_ID_LENGTH = 256


def check_user_id(value: object, field: str = "user_id") -> str:
    """A data-subject id: 1-256 printable characters, no surrounding whitespace. It is only ever hashed, so
    quotes, slashes and scripts are harmless; control characters are refused
    because they are never part of a genuine id and break logs and exports."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{field} is required and must be a non-empty string")
    if len(value) > MAX_USER_ID_LENGTH:
        raise ApiError(400, f"{field} is {len(value)} characters long; the limit is {MAX_USER_ID_LENGTH}")
    # " alice" and "alice" would hash apart and erase apart: refuse rather than guess.
    if value != value.strip():
        raise ApiError(400, f"{field} must not start or end with whitespace")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise ApiError(400, f"{field} must not contain control characters")
    return value


def check_request_id(value: object, field: str = "request_id") -> str:
    if not isinstance(value, str) or not REQUEST_ID_PATTERN.fullmatch(value):
        raise ApiError(400, f"{field} must be 1-128 characters from A-Z a-z 0-9 . _ : -")
    return value
