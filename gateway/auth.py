"""API keys and roles.

Keys come from `API_KEYS` (`key:role,key:role`), else from the file named by
`API_KEYS_FILE`, else from `var/secrets/api_keys`, which is generated with one
key per role on first use. Only SHA-256 digests of the keys are kept in memory,
and a presented key is compared against every digest in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.common import config
from services.common.config import var_dir

ROLES = ("client", "dpo", "admin")


@dataclass(frozen=True)
class Principal:
    role: str
    client_id: str  # pseudonymous and stable: a prefix of the key's digest, safe to store and log


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def default_keys_file() -> Path:
    return var_dir() / "secrets" / "api_keys"


def ensure_keys_file(path: Path) -> None:
    """Write one fresh key per role, once (concurrent workers agree on one file)."""
    config.write_secret_once(path, ",".join(f"{role}-{secrets.token_urlsafe(24)}:{role}" for role in ROLES) + "\n")


def parse_keys(spec: str) -> dict[bytes, Principal]:
    keys: dict[bytes, Principal] = {}
    for entry in filter(None, (part.strip() for part in spec.replace("\n", ",").split(","))):
        key, sep, role = entry.rpartition(":")
        if not sep or not key or role not in ROLES:
            raise SystemExit(f"configuration error: API key entry must be 'key:role' with role in {ROLES}")
        digest = _digest(key)
        keys[digest] = Principal(role=role, client_id=digest.hex()[:32])
    if not keys:
        raise SystemExit("configuration error: no API keys configured")
    return keys


def load_keys() -> dict[bytes, Principal]:
    spec = config.API_KEYS
    if not spec:
        path = Path(config.API_KEYS_FILE or default_keys_file())
        if not config.API_KEYS_FILE:
            ensure_keys_file(path)
        spec = path.read_text()
    return parse_keys(spec)


class KeyRing:
    def __init__(self, keys: dict[bytes, Principal]) -> None:
        self._keys = list(keys.items())

    def identify(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        digest = _digest(presented)
        found = None
        for known, principal in self._keys:  # no early exit: timing does not tell which key matched
            if hmac.compare_digest(known, digest):
                found = principal
        return found
