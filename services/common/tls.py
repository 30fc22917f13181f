"""Optional TLS on every hop (see docs/reliability.md, "TLS").

Off by default: the local stack talks plaintext on loopback. Turned on per hop by
configuration only:

- HTTP servers (gunicorn): `TLS_CERT_FILE` + `TLS_KEY_FILE` (read by
  services/common/gunicorn_conf.py). Callers then use an `https://` URL
  (`FEATURE_SERVICE_URL`, `RESULTS_SERVICE_URL`).
- gRPC adapter server: `GRPC_TLS_CERT_FILE` + `GRPC_TLS_KEY_FILE` (default: the
  TLS_* pair when `MODEL_SERVING_TLS=1`). The gateway then dials it with TLS when
  `MODEL_SERVING_TLS=1`.
- Every client verifies the server against `TLS_CA_FILE` (else the system CAs);
  verification is never switched off.
- adapter -> Triton stays plaintext on loopback unless `TRITON_TLS=1` (Triton
  started with its own --grpc-use-ssl flags).

`scripts/make_dev_certs.sh` writes a local CA and a server certificate for
127.0.0.1/localhost under var/tls/ for tests and trials.
"""
from __future__ import annotations

from pathlib import Path

import grpc

from services.common import config


def _env(name: str) -> str:
    return str(getattr(config.settings, name))


def _flag(name: str) -> bool:
    return bool(getattr(config.settings, name))


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"configuration error: cannot read TLS file {path}: {exc.strerror}") from None


def ca_file() -> str | None:
    return _env("TLS_CA_FILE") or None


def requests_verify() -> str | bool:
    """`verify=` for requests: the private CA when configured, else the system store (never False)."""
    return ca_file() or True


def server_cert_pair(prefix: str = "") -> tuple[str, str] | None:
    cert, key = _env(f"{prefix}TLS_CERT_FILE"), _env(f"{prefix}TLS_KEY_FILE")
    if bool(cert) != bool(key):
        raise SystemExit(f"configuration error: set both {prefix}TLS_CERT_FILE and {prefix}TLS_KEY_FILE, or neither")
    return (cert, key) if cert else None


def grpc_server_credentials() -> grpc.ServerCredentials | None:
    """Credentials for the adapter's gRPC port, or None for plaintext."""
    pair = server_cert_pair("GRPC_") or (server_cert_pair() if _flag("MODEL_SERVING_TLS") else None)
    if pair is None:
        return None
    return grpc.ssl_server_credentials([(_read(pair[1]), _read(pair[0]))])


def grpc_channel(address: str, options: list[tuple[str, object]], tls: bool | None = None) -> grpc.Channel:
    """A channel to the adapter: TLS (verified against TLS_CA_FILE) when MODEL_SERVING_TLS=1."""
    use_tls = _flag("MODEL_SERVING_TLS") if tls is None else tls
    if not use_tls:
        return grpc.insecure_channel(address, options=options)
    ca = ca_file()
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(ca) if ca else None)
    return grpc.secure_channel(address, credentials, options=options)


def triton_client_kwargs() -> dict[str, object]:
    """tritonclient.grpc.InferenceServerClient arguments for the adapter -> Triton hop."""
    if not _flag("TRITON_TLS"):
        return {}
    return {"ssl": True, "root_certificates": ca_file()}
