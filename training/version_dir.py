"""One Triton version directory of car_detector, written whole or not at all (no TensorFlow).

A version directory holds the runtime files (the same three for every version written from
this checkout), the model's artefacts (SavedModel, OpenVINO IR, reports), model_metadata.json
and, written last, manifest.json with the SHA-256 of every other file. It is built in a
temporary directory beside its place and renamed into it, so a running Triton never sees
half a version.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training import MODEL_NAME, REPO_ROOT

log = logging.getLogger(__name__)

# Version-dir file name -> its source in this checkout.
RUNTIME_FILES: dict[str, Path] = {
    "model.py": REPO_ROOT / "training" / "triton_model.py",
    "detector_runtime.py": REPO_ROOT / "training" / "serving_runtime.py",
    "version_manifest.py": REPO_ROOT / "training" / "version_manifest.py",
    # Top-k, NMS, score calibration and box scale (from version 7; earlier ones hold them in their runtime).
    "detections.py": REPO_ROOT / "training" / "detections.py",
    # The monitoring statistics the runtime computes from its decoded pixels (IMAGE_STATS).
    "image_features.py": REPO_ROOT / "services" / "common" / "image_features.py",
}


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in Path(model_dir).glob("*") if p.is_dir() and re.fullmatch(r"\d+", p.name)]
    return max(versions, default=0) + 1


def git_commit() -> str:
    """HEAD of this checkout, "-dirty" when training/ has uncommitted changes."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "training"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("-dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_version_dir(repository: Path, metadata: dict, fill: Callable[[Path, dict], None],
                      version: int | None = None, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``<repository>/car_detector/<N>/`` (N: ``version``, else the next free number):
    the runtime files, whatever ``fill(tmp_dir, metadata)`` adds, model_metadata.json (with
    name, version, export time and git commit) and manifest.json. Returns the directory."""
    from training.version_manifest import write_manifest

    model_dir = Path(repository) / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(model_dir)
    vdir = model_dir / str(version)
    tmp = model_dir / f".tmp-{version}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    meta = dict(metadata)
    try:
        fill(tmp, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left for Triton to find
        raise
    for name, source in RUNTIME_FILES.items():
        shutil.copy2(source, tmp / name)
    meta.update({
        "model_name": MODEL_NAME,
        "version": version,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    })
    (tmp / "model_metadata.json").write_text(json.dumps(meta, indent=2, default=default) + "\n")
    write_manifest(tmp)
    if vdir.exists():
        shutil.rmtree(vdir)
    tmp.rename(vdir)
    log.info("wrote %s", vdir)
    return vdir
