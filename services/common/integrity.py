"""Model integrity: is the model version being served made of the files that were registered?

The registry (`governance/model_registry.json`, or `$MODEL_REGISTRY_PATH`) records, per
version directory of the Triton model repository, a SHA-256 over its files and one SHA-256
per file. This module holds the hashing and the serving-side check, so the adapter (and
anything else on the serving path) verifies a version without depending on the governance
tools that write the registry.

Hash: for each file in sorted relative-path order, its path, a NUL and its own SHA-256;
`__pycache__` and `*.pyc` that Triton's python backend may write are left out.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from services.common import config

DEFAULT_MODEL_NAME = "car_detector"
IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = {".pyc", ".pyo"}

log = logging.getLogger("model-integrity")


class IntegrityError(Exception):
    """A model directory that cannot be hashed (missing, empty)."""


def registry_path() -> Path:
    return Path(config.MODEL_REGISTRY_PATH)


def repository_path() -> Path:
    return Path(config.MODEL_REPOSITORY)


def model_files(path: Path) -> list[tuple[str, Path]]:
    """(relative posix path, file) of every file that makes up a model, sorted by path."""
    path = Path(path)
    if path.is_file():
        return [(path.name, path)]
    if not path.is_dir():
        raise IntegrityError(f"model path not found: {path}")
    found = []
    for file in path.rglob("*"):
        rel = file.relative_to(path)
        if any(part in IGNORED_DIRS for part in rel.parts) or file.suffix in IGNORED_SUFFIXES:
            continue
        if file.is_file():
            found.append((rel.as_posix(), file))
    return sorted(found)


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_model(path: Path) -> dict[str, Any]:
    """Deterministic SHA-256 over a model's files: same files, same hash, wherever the
    directory lives."""
    listed = model_files(path)
    files = {rel: file_sha256(file) for rel, file in listed}
    if not files:
        raise IntegrityError(f"no model files under {path}")
    total = hashlib.sha256()
    for rel, file_hash in files.items():
        total.update(rel.encode() + b"\0" + file_hash.encode() + b"\n")
    size = sum(file.stat().st_size for _, file in listed)
    return {"sha256": total.hexdigest(), "files": files, "file_count": len(files), "size_bytes": size}


def stat_signature(path: Path) -> tuple:
    """Cheap change detector so the guard rehashes only when needed. Size and mtime can be
    restored by whoever swaps a file (touch -r); the inode changes when a file is replaced,
    and ctime cannot be set from user space, so both are part of the key."""
    try:
        signature = []
        for rel, file in model_files(path):
            st = file.stat()
            signature.append((rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
        return tuple(signature)
    except (IntegrityError, OSError):
        return ()


def version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\-]", str(version)))


def load_registry(path: Path | None = None) -> dict[str, Any]:
    """The registry document ({"models": [...]}); empty when the file does not exist."""
    path = Path(path) if path else registry_path()
    if not path.exists():
        return {"models": []}
    with path.open() as handle:
        data = json.load(handle)
    data.setdefault("models", [])
    return data


def find_entry(registry: dict[str, Any], name: str, version: str) -> dict[str, Any] | None:
    """The live record of name:version (the newest non-superseded one, else the newest)."""
    matches = [e for e in registry.get("models", []) if e.get("name") == name and str(e.get("version")) == str(version)]
    live = [e for e in matches if e.get("status") != "superseded"]
    return (live or matches or [None])[-1]


def display_path(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return path.relative_to(config.REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def verify_version(registry: dict[str, Any], version_dir: Path, name: str, version: str) -> dict[str, Any]:
    """Compare a version directory with its record: status ok, mismatch (with the changed
    files), missing or unregistered."""
    entry = find_entry(registry, name, version)
    result: dict[str, Any] = {"name": name, "version": version, "path": display_path(version_dir)}
    if entry is None:
        return {**result, "status": "unregistered", "detail": f"{name} v{version} is not in the registry"}
    result.update(model_id=entry["model_id"], expected=entry["sha256"], registry_status=entry["status"])
    if not Path(version_dir).exists():
        return {**result, "status": "missing", "detail": f"{version_dir} does not exist"}
    digest = hash_model(version_dir)
    result["actual"] = digest["sha256"]
    if digest["sha256"] == entry["sha256"]:
        return {**result, "status": "ok", "detail": f"{digest['file_count']} files match"}
    recorded = entry.get("files", {})
    changed = sorted(rel for rel in set(recorded) | set(digest["files"])
                     if recorded.get(rel) != digest["files"].get(rel))
    return {**result, "status": "mismatch", "changed_files": changed,
            "detail": f"files differ from the registered hash: {', '.join(changed) or 'file list'}"}


class ServingGuard:
    """Does the version Triton serves still match its registered hash?

    `refusal(version)` returns None when the version may be served, else the reason to
    refuse. Strict by default: a mismatch, an unregistered version, a missing or unreadable
    registry and files this process cannot see are all refused. MODEL_REGISTRY_ENFORCE=warn
    serves the last three with a logged warning (a development opt-out); a mismatch is
    always refused. Hashes are recomputed only when a file's size, mtime, inode or ctime,
    or the registry file, change; the files are looked at again at most every `recheck_s`
    seconds (MODEL_GUARD_RECHECK_S, default 1)."""

    def __init__(self, repository: Path | None = None, registry: Path | None = None,
                 name: str = DEFAULT_MODEL_NAME, strict: bool | None = None,
                 recheck_s: float | None = None) -> None:
        self.repository = Path(repository) if repository else repository_path()
        self.registry = Path(registry) if registry else registry_path()
        self.name = name
        self.strict = (str(config.MODEL_REGISTRY_ENFORCE).strip().lower() != "warn" if strict is None else strict)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, str | None]] = {}
        self._checked_at: dict[str, float] = {}
        self.recheck_s = float(config.MODEL_GUARD_RECHECK_S) if recheck_s is None else recheck_s
        self._warned: set[str] = set()

    def _registry_stamp(self) -> tuple:
        try:
            st = self.registry.stat()
            return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        except OSError:
            return ()

    def refusal(self, version: str) -> str | None:
        if not version:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(str(version))
            # Walking and stat-ing the version's files on every request is a visible share of
            # the adapter's CPU; a change is still caught within recheck_s.
            if cached and now - self._checked_at.get(str(version), 0.0) < self.recheck_s:
                return cached[1]
        version_dir = self.repository / self.name / str(version)
        key = (stat_signature(version_dir), self._registry_stamp())
        with self._lock:
            self._checked_at[str(version)] = now
            cached = self._cache.get(str(version))
            if cached and cached[0] == key:
                return cached[1]
            reason = self._check(version_dir, str(version))
            self._cache[str(version)] = (key, reason)
            return reason

    def _check(self, version_dir: Path, version: str) -> str | None:
        if not self.registry.exists():
            return self._soft(version, f"no model registry at {self.registry}: {self.name} v{version} is unverified")
        if not version_dir.exists():
            return self._soft(version, f"{version_dir} is not visible to this process: v{version} is unverified")
        try:
            result = verify_version(load_registry(self.registry), version_dir, self.name, version)
        except (IntegrityError, OSError, ValueError) as exc:
            reason = f"registry check of {self.name} v{version} failed: {exc}: refusing to serve it"
            log.error(reason, extra={"event.action": "model.verify", "event.outcome": "failure", "model.version": version})
            return reason
        if result["status"] == "ok":
            log.info("model %s v%s matches its registered hash %s", self.name, version, result["expected"][:16],
                     extra={"event.action": "model.verify", "event.outcome": "success", "model.version": version})
            return None
        if result["status"] == "unregistered":
            return self._soft(version, result["detail"])
        reason = (f"model {self.name} v{version} does not match its registered hash "
                  f"(expected {result.get('expected', '')[:16]}…, found {result.get('actual', '')[:16]}…; "
                  f"{result['detail']}): refusing to serve it")
        log.error(reason, extra={"event.action": "model.verify", "event.outcome": "failure", "model.version": version})
        return reason

    def _soft(self, version: str, detail: str) -> str | None:
        if self.strict:
            log.error("%s: refusing to serve it", detail,
                      extra={"event.action": "model.verify", "event.outcome": "failure", "model.version": version})
            return f"{detail}: refusing to serve it"
        if version not in self._warned:
            self._warned.add(version)
            log.warning("%s; serving it anyway (MODEL_REGISTRY_ENFORCE=warn)", detail,
                        extra={"event.action": "model.verify", "event.outcome": "unknown", "model.version": version})
        return None
