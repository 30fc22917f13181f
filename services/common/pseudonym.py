"""Pseudonymisation of data-subject identifiers (GDPR Art. 4(5), Art. 32).

User ids are never stored or logged in clear: everywhere they are replaced by a
keyed HMAC-SHA256. Without the key the hash cannot be reversed by brute-forcing
likely ids, unlike a plain SHA-256.
"""
from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from services.common.config import secret


@lru_cache(maxsize=1)
def _key() -> bytes:
    return secret("PSEUDONYM_KEY").encode()


def hash_user_id(user_id: str) -> str:
    """Hex HMAC-SHA256 of a user id under the deployment's pseudonymisation key."""
    return hmac.new(_key(), user_id.encode("utf-8"), hashlib.sha256).hexdigest()
