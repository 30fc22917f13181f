"""The service-to-service token: what an internal service (feature, results, the gRPC
adapter) demands of every caller, and what the gateway presents.

Kept free of Flask so the gRPC adapter can use it too.
"""
from __future__ import annotations

import hmac

from services.common import config

INTERNAL_TOKEN_HEADER = "X-Internal-Token"
GRPC_TOKEN_KEY = "x-internal-token"  # the same token as gRPC metadata (the adapter)
MIN_TOKEN_LENGTH = 16


def internal_token() -> str:
    """The token from `INTERNAL_TOKEN`, or the file named by `INTERNAL_TOKEN_FILE`.
    Required: the feature and results services, the adapter and the gateway (their
    caller) refuse to start without it. The local stack generates one into var/secrets;
    compose and Kubernetes take it from their secrets. Never generated here: a service
    that made up its own token would lock out every caller."""
    if not (config.INTERNAL_TOKEN.strip() or config.INTERNAL_TOKEN_FILE.strip()):
        raise SystemExit("configuration error: INTERNAL_TOKEN (or INTERNAL_TOKEN_FILE) must be set: internal "
                         "services accept only callers holding the service token (scripts/stack.py generates one)")
    token = config.secret("INTERNAL_TOKEN")
    if len(token) < MIN_TOKEN_LENGTH:
        raise SystemExit(f"configuration error: INTERNAL_TOKEN must be at least {MIN_TOKEN_LENGTH} characters")
    return token


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    return hmac.compare_digest((presented or "").encode(), expected.encode())


TRITON_ADMIN_HEADER = "triton-admin-key"
# Triton's gRPC server expects a restricted protocol's key under this prefix.
TRITON_GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + TRITON_ADMIN_HEADER


def triton_admin_headers(grpc: bool = False) -> dict[str, str]:
    """The HTTP header (or, grpc=True, the gRPC metadata) that opens Triton's restricted
    APIs: model control, shared memory, trace, logging (services/triton/run.sh). The key
    comes from `TRITON_ADMIN_KEY`, `TRITON_ADMIN_KEY_FILE` or var/secrets/triton_admin_key,
    where the local stack writes it; for operator tools (training, the model registry),
    never for the serving path."""
    return {TRITON_GRPC_ADMIN_HEADER if grpc else TRITON_ADMIN_HEADER: config.secret("TRITON_ADMIN_KEY")}


def caller_headers() -> dict[str, str]:
    """The token header for an operator tool calling an internal service directly (e.g. the
    audit's canary): from `INTERNAL_TOKEN`, `INTERNAL_TOKEN_FILE` or the local stack's
    var/secrets/internal_token."""
    return {INTERNAL_TOKEN_HEADER: config.secret("INTERNAL_TOKEN")}
