"""What the security tests share: starting a service of their own, a detection and an
export through the gateway, and the check that an error is clean JSON without internals."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import requests

from tests.conftest import KEYS, REPO_ROOT, headers

VENV_BIN = REPO_ROOT / ".venv" / "bin"
INTERNAL_MARKERS = ("Traceback", 'File "', "/work/", ".py\"", "127.0.0.1", "localhost:", "postgresql",
                    "psycopg2", "sqlalchemy", "OperationalError", "werkzeug", "grpc._channel", "ipv4:")


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "wb")
    return subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def base_env(var: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLS_", "GRPC_TLS_", "MODEL_SERVING_TLS"))}
    env.update({"PYTHONPATH": str(REPO_ROOT), "VAR_DIR": str(var), "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "4",
                "PSEUDONYM_KEY": "security-test-key", "METRICS_TOKEN": "security-test-metrics", **extra})
    return env


def detect(stack, http, image: bytes, user_id: str, role: str = "client", filename: str = "frame.jpg",
           content_type: str = "image/jpeg", **extra_headers: str) -> requests.Response:
    return http.post(f"{stack.gateway}/api/detect", headers=headers(role, **extra_headers),
                     files={"image": (filename, image, content_type)}, data={"user_id": user_id}, timeout=60)


def export(stack, http, user: str, role: str = "dpo") -> dict:
    answer = http.get(f"{stack.gateway}/api/results/predictions/user/{quote(user, safe='')}", headers=headers(role))
    assert answer.status_code == 200, answer.text
    return answer.json()


def assert_clean_error(answer: requests.Response, status: int | tuple[int, ...] | None = None) -> dict:
    """A JSON error naming the problem: 4xx (or the given status), no internals."""
    expected = (status,) if isinstance(status, int) else status
    assert (answer.status_code in expected) if expected else 400 <= answer.status_code < 500, \
        (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert body.get("request_id") == answer.headers.get("X-Request-ID"), body
    for marker in INTERNAL_MARKERS:
        assert marker not in answer.text, (marker, answer.text[:300])
    return body


def client_id(role: str) -> str:
    return hashlib.sha256(KEYS[role].encode()).hexdigest()[:32]
