"""Triton control for the model registry: which versions Triton serves, and how to change it.

Deprecating a version stops Triton from serving it: the model's `config.pbtxt` gets
`version_policy { specific { versions: [...] } }` naming the newest non-deprecated
version(s), and a running Triton is asked to reload (`POST /v2/repository/models/<name>/load`).
The local Triton (services/triton/run.sh) runs with `--model-control-mode=explicit
--load-model=car_detector`: that call rereads config.pbtxt, loads the pinned version and
unloads the deprecated one before it returns. Under `--model-control-mode=poll`
(docker-compose) Triton refuses explicit loads and rereads the changed config by itself
within `--repository-poll-secs`; under `none` a restart is needed.
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from services.common.config import settings
from services.common.integrity import DEFAULT_MODEL_NAME, version_key
from services.common.service_token import triton_admin_headers


def triton_http_url() -> str:
    url = settings.TRITON_HTTP_URL
    return url if url.startswith("http") else f"http://{url}"


def version_dirs(model_dir: Path) -> list[int]:
    """Numbered version directories of a model, ascending."""
    return sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()) \
        if model_dir.is_dir() else []


def _policy_span(text: str) -> tuple[int, int] | None:
    """Start and end of the `version_policy ... { ... }` block (braces balanced)."""
    match = re.search(r"^[ \t]*version_policy\s*:?\s*\{", text, re.MULTILINE)
    if not match:
        return None
    depth, index = 0, match.end() - 1
    while index < len(text):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return match.start(), index + 1
        index += 1
    raise ValueError("config.pbtxt: unbalanced braces in version_policy")


def set_version_policy(config_file: Path, versions: list[int], deprecated: list[str]) -> None:
    """Pin config.pbtxt's version_policy to `versions`, atomically."""
    text = config_file.read_text()
    text = re.sub(r"^# governance: .*\n", "", text, flags=re.MULTILINE)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    block = (f"# governance: version_policy set by governance/model_registry.py at {stamp}; "
             f"deprecated versions: {', '.join(deprecated) or 'none'}\n"
             f"version_policy: {{ specific: {{ versions: [ {', '.join(str(v) for v in versions)} ] }} }}")
    span = _policy_span(text)
    text = text[:span[0]] + block + text[span[1]:] if span else text.rstrip("\n") + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=config_file.parent, prefix=".config-", suffix=".pbtxt")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, config_file)  # atomic: a polling Triton never reads half a file


def request_triton_reload(name: str = DEFAULT_MODEL_NAME, timeout: float = 60.0) -> str:
    """Ask Triton to reload the model (explicit model control). Returns what happened."""
    url = f"{triton_http_url()}/v2/repository/models/{name}/load"
    try:
        answer = requests.post(url, headers=triton_admin_headers(), timeout=timeout)  # model control is restricted
    except requests.RequestException:
        return f"Triton not reachable at {triton_http_url()}: the new policy applies when it next loads the model"
    if answer.status_code == 200:
        return "reloaded by Triton (explicit model control)"
    message = answer.text[:300]
    if "poll" in message.lower():
        return ("Triton runs with --model-control-mode=poll: it rereads config.pbtxt by itself within "
                "--repository-poll-secs; explicit loads are refused in that mode")
    if "explicit model load / unload is not allowed" in message.lower():
        return "Triton runs with --model-control-mode=none: restart it to apply the new version_policy"
    return f"Triton refused the reload ({answer.status_code}): {message}"


def triton_ready_versions(name: str = DEFAULT_MODEL_NAME, timeout: float = 3.0) -> list[str] | None:
    """Versions Triton reports READY, or None if Triton is unreachable."""
    try:
        answer = requests.post(f"{triton_http_url()}/v2/repository/index", json={}, headers=triton_admin_headers(),
                               timeout=timeout)
        answer.raise_for_status()
    except requests.RequestException:
        return None
    return sorted((str(m.get("version")) for m in answer.json()
                   if m.get("name") == name and m.get("state") == "READY"), key=version_key)


def wait_until_unserved(name: str, version: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = triton_ready_versions(name)
        if ready is not None and version not in ready:
            return True
        time.sleep(2.0)
    return False
