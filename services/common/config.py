"""Configuration from environment variables, with the defaults of the local stack.

Every service reads its settings here so that ports, URLs and limits have one
definition (see ../shared/CONTRACT.md for the port contract).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"configuration error: {name}={raw!r} is not an integer") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"configuration error: {name}={raw!r} is not a number") from exc


def var_dir() -> Path:
    """Runtime files (logs, SQLite file, generated secrets); git ignores it."""
    path = Path(env_str("VAR_DIR", str(REPO_ROOT / "var")))
    path.mkdir(parents=True, exist_ok=True)
    return path


def secret(name: str, generate_bytes: int = 32) -> str:
    """A secret from `$NAME`, else from the file named by `$NAME_FILE`, else from
    `var/secrets/<name>` (generated on first use, mode 0600) so a fresh clone works
    without any secret ever being committed."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    file_name = os.environ.get(f"{name}_FILE", "").strip()
    path = Path(file_name) if file_name else var_dir() / "secrets" / name.lower()
    if not path.exists():
        if file_name:
            raise SystemExit(f"configuration error: {name}_FILE={file_name} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_EXCL: when several workers start at once, exactly one writes the secret.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(generate_bytes))
    for _ in range(50):  # another worker may be between create and write
        value = path.read_text().strip()
        if value:
            return value
        import time

        time.sleep(0.02)
    raise SystemExit(f"configuration error: secret file {path} is empty")


# Ports and addresses (CONTRACT.md); each can be overridden.
GATEWAY_PORT = env_int("GATEWAY_PORT", 8080)
FEATURE_PORT = env_int("FEATURE_PORT", 5001)
RESULTS_PORT = env_int("RESULTS_PORT", 5002)
MODEL_SERVING_PORT = env_int("MODEL_SERVING_PORT", 50051)
TRITON_HTTP_PORT = env_int("TRITON_HTTP_PORT", 8000)
TRITON_GRPC_PORT = env_int("TRITON_GRPC_PORT", 8001)
TRITON_METRICS_PORT = env_int("TRITON_METRICS_PORT", 8002)

FEATURE_SERVICE_URL = env_str("FEATURE_SERVICE_URL", f"http://127.0.0.1:{FEATURE_PORT}")
RESULTS_SERVICE_URL = env_str("RESULTS_SERVICE_URL", f"http://127.0.0.1:{RESULTS_PORT}")
MODEL_SERVING_ADDR = env_str("MODEL_SERVING_ADDR", f"127.0.0.1:{MODEL_SERVING_PORT}")
TRITON_GRPC_URL = env_str("TRITON_GRPC_URL", f"127.0.0.1:{TRITON_GRPC_PORT}")
TRITON_MODEL_NAME = env_str("TRITON_MODEL_NAME", "car_detector")

# Detections below this score are not returned by the adapter or explained by the gateway.
# Default: the operating threshold chosen on validation data for the served model
# (operating_threshold in model_repository/car_detector/2/model_metadata.json; v1's was 0.50).
CONFIDENCE_THRESHOLD = env_float("CONFIDENCE_THRESHOLD", 0.45)

# Input limits, checked before any pixel is decoded.
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
MAX_IMAGE_PIXELS = env_int("MAX_IMAGE_PIXELS", 40_000_000)

# Budget of every internal call, so that a dead dependency costs a bounded wait.
INTERNAL_TIMEOUT_S = env_float("INTERNAL_TIMEOUT_S", 10.0)


def secret_list(name: str) -> list[str]:
    """Optional secrets (e.g. retired-but-still-needed keys): `$NAME` comma-separated, else
    the file named by `$NAME_FILE`, else `var/secrets/<name>` if it exists; one per line."""
    value = os.environ.get(name, "").strip()
    if not value:
        file_name = os.environ.get(f"{name}_FILE", "").strip()
        path = Path(file_name) if file_name else var_dir() / "secrets" / name.lower()
        if file_name and not path.exists():
            raise SystemExit(f"configuration error: {name}_FILE={file_name} does not exist")
        value = path.read_text() if path.exists() else ""
    return [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]
