from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway.auth import KeyRing, parse_keys
from services.common import pseudonym
from services.common.validation import check_request_id, check_user_id
from services.common.web import ApiError


def test_keys_are_kept_hashed_and_identify_their_role():
    keys = parse_keys("alpha-key:client, beta-key:dpo,gamma:admin")
    assert all(len(digest) == 32 for digest in keys)
    assert b"alpha-key" not in b"".join(keys)
    ring = KeyRing(keys)
    assert ring.identify("alpha-key").role == "client"
    assert ring.identify("beta-key").role == "dpo"
    assert ring.identify("alpha-ke") is None and ring.identify("") is None and ring.identify(None) is None
    assert ring.identify("alpha-key").client_id != ring.identify("gamma").client_id


@pytest.mark.parametrize("spec", ["", "nokey", "k:superuser", ":client"])
def test_bad_key_specs_are_configuration_errors(spec):
    with pytest.raises(SystemExit):
        parse_keys(spec)


def test_user_ids_are_hashed_with_the_key(monkeypatch):
    monkeypatch.setenv("PSEUDONYM_KEY", "k1")
    pseudonym._key.cache_clear()
    first = pseudonym.hash_user_id("alice")
    assert len(first) == 64 and first == pseudonym.hash_user_id("alice") != pseudonym.hash_user_id("bob")
    monkeypatch.setenv("PSEUDONYM_KEY", "k2")
    pseudonym._key.cache_clear()
    assert pseudonym.hash_user_id("alice") != first
    pseudonym._key.cache_clear()


@pytest.mark.parametrize("value", ["", "   ", None, 5, "a\x00b", "a\nb", "x" * 257])
def test_bad_user_ids(value):
    with pytest.raises(ApiError) as refused:
        check_user_id(value)
    assert refused.value.status == 400


@pytest.mark.parametrize("value", ["alice", "'; DROP TABLE x; --", "../../etc/passwd", "\u202eevil", "ü" * 256])
def test_odd_but_acceptable_user_ids(value):
    assert check_user_id(value) == value


@pytest.mark.parametrize("value", ["", "a b", "a/b", "x" * 129, None, "é"])
def test_bad_request_ids(value):
    with pytest.raises(ApiError):
        check_request_id(value)


def test_api_keys_are_kept_hashed_and_compared_in_constant_time(monkeypatch):
    """Only digests are held, and identify() compares the presented key's digest with
    every known digest through hmac.compare_digest, whichever key matches or none: the
    work (and so the time) does not depend on which key, or how much of it, is right."""
    from gateway import auth

    keys = ",".join(f"secret-key-number-{i:02d}-abcdefgh:{'client' if i % 2 else 'dpo'}" for i in range(6))
    ring = auth.KeyRing(auth.parse_keys(keys))
    held = repr(ring.__dict__)
    assert not any(f"secret-key-number-{i:02d}" in held for i in range(6))
    compared: list[tuple[bytes, bytes]] = []

    class CountingHmac:
        @staticmethod
        def compare_digest(a: bytes, b: bytes) -> bool:
            compared.append((a, b))
            return hmac.compare_digest(a, b)

    monkeypatch.setattr(auth, "hmac", CountingHmac)
    for presented, role in (("secret-key-number-00-abcdefgh", "dpo"), ("secret-key-number-05-abcdefgh", "client"),
                            ("secret-key-number-05-abcdefgX", None), ("x", None)):
        compared.clear()
        found = ring.identify(presented)
        assert (found.role if found else None) == role, presented
        assert len(compared) == 6, (presented, len(compared))  # every key, no early exit
        # the presented key's SHA-256 digest against each held digest, never the raw key
        assert {b for _, b in compared} == {hashlib.sha256(presented.encode()).digest()}
        assert len({a for a, _ in compared}) == 6
    assert ring.identify(None) is None and ring.identify("") is None
