"""Container health check: asks the service itself, the way its callers do.

    python /app/healthcheck.py http PORT PATH     # HTTP(S) GET, 2xx = healthy
    python /app/healthcheck.py grpc PORT          # grpc.health.v1 Check = SERVING

HTTPS when the container serves TLS (TLS_CERT_FILE set), verified against
TLS_CA_FILE, exactly as the other services call it; likewise the gRPC check
uses TLS when the adapter serves it (GRPC_TLS_CERT_FILE, or MODEL_SERVING_TLS=1).
The service token goes along when INTERNAL_TOKEN is set, so a check passes only
if the service would answer a real caller. Standard library + grpc only.
"""
from __future__ import annotations

import os
import ssl
import sys
import urllib.request

TIMEOUT_S = 3.0


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def http(port: str, path: str) -> bool:
    tls = bool(os.environ.get("TLS_CERT_FILE", "").strip())
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"
    request = urllib.request.Request(url)
    token = os.environ.get("INTERNAL_TOKEN", "").strip()
    if token:
        request.add_header("X-Internal-Token", token)
    context = ssl.create_default_context(cafile=os.environ.get("TLS_CA_FILE") or None) if tls else None
    with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as answer:
        return 200 <= answer.status < 300


def grpc_serving(port: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"127.0.0.1:{port}"
    if os.environ.get("GRPC_TLS_CERT_FILE", "").strip() or _flag("MODEL_SERVING_TLS"):
        ca = os.environ.get("TLS_CA_FILE", "").strip()
        roots = open(ca, "rb").read() if ca else None
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["http"] and len(argv) == 3:
            return 0 if http(argv[1], argv[2]) else 1
        if argv[:1] == ["grpc"] and len(argv) == 2:
            return 0 if grpc_serving(argv[1]) else 1
    except Exception as exc:  # any failure is "unhealthy"; say which for `docker inspect`
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
