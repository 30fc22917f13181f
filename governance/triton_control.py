"""Triton control for the model registry: which versions Triton serves, and how to change it.

Deprecating a version stops Triton from serving it: the model's `config.pbtxt` gets
`version_policy { specific { versions: [...] } }` naming the newest non-deprecated
version(s), and a running Triton is asked to reload (`POST /v2/repository/models/<name>/load`, through services/common/triton_client.py).
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

from services.common.triton_client import ready_versions as triton_ready_versions
from services.common.triton_client import reload_model as request_triton_reload

__all__ = ["request_triton_reload", "set_version_policy", "triton_ready_versions", "version_dirs", "wait_until_unserved"]


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


def wait_until_unserved(name: str, version: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = triton_ready_versions(name)
        if ready is not None and version not in ready:
            return True
        time.sleep(2.0)
    return False
