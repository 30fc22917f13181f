"""The manifest of one car_detector version directory: the SHA-256 of every file, written last
by the exporter and checked before anything of the version is served.

Copied into every version directory beside detector_runtime.py (training/version_dir.py), so
that the runtime stays self-contained: standard library only.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "manifest.json"
IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = {".pyc"}
OPENVINO_DIR = "openvino"


class IntegrityError(RuntimeError):
    """A file of the version does not match its manifest: the version must not be served."""



def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_files(version_dir: Path) -> dict[str, Path]:
    out = {}
    for file in sorted(Path(version_dir).rglob("*")):
        rel = file.relative_to(version_dir)
        if file.is_file() and not (set(rel.parts) & IGNORED_DIRS) and file.suffix not in IGNORED_SUFFIXES:
            out[rel.as_posix()] = file
    return out


def write_manifest(version_dir: Path) -> dict:
    files = {rel: sha256_file(p) for rel, p in version_files(version_dir).items() if rel != MANIFEST}
    manifest = {"algorithm": "sha256", "files": files}
    (Path(version_dir) / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def verify_manifest(version_dir: Path, required: Iterable[str] = ()) -> dict:
    """Raise IntegrityError naming the file unless every listed file (and ``required``) matches."""
    version_dir = Path(version_dir)
    path = version_dir / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{version_dir}: no {MANIFEST}; refusing to serve files whose hashes are unknown")
    try:
        listed = json.loads(path.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise IntegrityError(f"{path}: unreadable manifest ({e})") from None
    on_disk = version_files(version_dir)
    for rel in required:
        if rel not in listed:
            raise IntegrityError(f"{version_dir}: {rel} is not in {MANIFEST}; refusing an unregistered model file")
    ir = [r for r in on_disk if r.startswith(OPENVINO_DIR + "/")]
    for rel in ir:
        if rel not in listed:
            raise IntegrityError(f"{version_dir}: {rel} is not in {MANIFEST}; refusing an unregistered OpenVINO IR")
    for rel, expected in listed.items():
        if rel not in on_disk:
            raise IntegrityError(f"{version_dir}: {rel} listed in {MANIFEST} is missing")
        actual = sha256_file(on_disk[rel])
        if actual != expected:
            raise IntegrityError(
                f"{version_dir}: {rel} is corrupt or does not belong to this version "
                f"(SHA-256 {actual[:16]}..., manifest says {expected[:16]}...); refusing to serve it"
            )
    return listed
