"""Pseudonymisation of data-subject identifiers (GDPR Art. 4(5), Art. 32).

User ids are never stored or logged in clear: everywhere they are replaced by a
keyed HMAC-SHA256. Without the key the hash cannot be reversed by brute-forcing
likely ids, unlike a plain SHA-256.

Keys rotate (scripts/rotate_pseudonym_key.py, governance/RGPD.md): new rows are hashed
under the current key (`PSEUDONYM_KEY`) and carry its key id; rows hashed under an
earlier key stay findable as long as that key is listed in `PSEUDONYM_PREVIOUS_KEYS`,
because a lookup hashes the id under every known key. A hash cannot be re-keyed without
the id in clear, so a previous key is retired only once no row carries its id.

Ids are compared as Unicode NFC: "Zoé" typed with a combining accent (NFD) is the same
person as the precomposed spelling. Lookups also try the NFD and as-given spellings, so
rows stored before normalisation was introduced are still found.
"""
from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from services.common.config import secret, secret_list

_KEY_ID_LABEL = b"car-detection pseudonym key id"
HASH_PATTERN = r"^[0-9a-f]{64}$"
KEY_ID_PATTERN = r"^[0-9a-f]{8}$"


@dataclass(frozen=True)
class PseudonymKey:
    key_id: str  # 8 hex digits derived from the key: stable, needs no configuration, reveals nothing
    secret: bytes

    def hash(self, user_id: str) -> str:
        return hmac.new(self.secret, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def make_key(value: str) -> PseudonymKey:
    raw = value.encode()
    return PseudonymKey(hmac.new(raw, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:8], raw)


@lru_cache(maxsize=1)
def keyring() -> tuple[PseudonymKey, ...]:
    """The current key first, then the previous ones still needed for lookups."""
    keys = [make_key(secret("PSEUDONYM_KEY"))]
    for value in secret_list("PSEUDONYM_PREVIOUS_KEYS"):
        key = make_key(value)
        if key.key_id not in {k.key_id for k in keys}:
            keys.append(key)
    return tuple(keys)


_key = keyring  # older name of the cache (tests clear it after changing the key)


def current_key() -> PseudonymKey:
    return keyring()[0]


def key_id() -> str:
    """The id of the key new hashes are made under (stored next to each hash)."""
    return current_key().key_id


def normalise(user_id: str) -> str:
    return unicodedata.normalize("NFC", user_id)


def hash_user_id(user_id: str) -> str:
    """Hex HMAC-SHA256 of the NFC form of a user id under the current key."""
    return current_key().hash(normalise(user_id))


def lookup_hashes(user_id: str) -> list[str]:
    """Every hash a stored row about this user may carry: the current key's NFC hash first,
    then each spelling under each known key, without duplicates."""
    spellings = dict.fromkeys([normalise(user_id), unicodedata.normalize("NFD", user_id), user_id])
    return list(dict.fromkeys(key.hash(spelling) for key in keyring() for spelling in spellings))
