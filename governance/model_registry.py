"""Model registry: what shipped, where it came from, and proof that it is what is served.

Each entry records one version directory of the Triton model repository
(`model_repository/car_detector/<N>/`): a SHA-256 over its files (sorted relative
paths, each path's bytes; `__pycache__` and `*.pyc` that Triton's python backend may
write are left out), one SHA-256 per file (to say *which* file changed), and the
lineage read from the version's `model_metadata.json` (export date, git commit,
dataset fingerprint, class names, hyperparameters, validation metrics), plus who
registered it and when. The store is `governance/model_registry.json` (committed: it
is the record of what shipped and holds no personal data) or `$MODEL_REGISTRY_PATH`.

Deprecating a version stops Triton from serving it: the model's `config.pbtxt`
gets `version_policy { specific { versions: [...] } }` naming the newest
non-deprecated version(s), and a running Triton is asked to reload
(`POST /v2/repository/models/<name>/load`). The local Triton (services/triton/run.sh)
runs with `--model-control-mode=explicit --load-model=car_detector`: that call rereads
config.pbtxt, loads the pinned version and unloads the deprecated one before it returns.
Under `--model-control-mode=poll` (docker-compose) Triton refuses explicit loads and
rereads the changed config by itself within `--repository-poll-secs`; under `none` a
restart is needed. `--wait` checks Triton's repository index until the version is gone.

`ServingGuard` is what the gRPC adapter uses to refuse, loudly, a version whose
files no longer match their registered hash.

    python -m governance.model_registry register model_repository/car_detector/1 [--by NAME]
    python -m governance.model_registry list [--name car_detector] [--json]
    python -m governance.model_registry get car_detector:1
    python -m governance.model_registry latest [--name car_detector]
    python -m governance.model_registry deprecate car_detector:2 --reason "..." [--wait]
    python -m governance.model_registry verify [--repository model_repository]   # exit 1 on mismatch
    python -m governance.model_registry sync      # re-pin version_policy (e.g. after a new version) and reload
"""
from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from services.common.config import REPO_ROOT
DEFAULT_REGISTRY = REPO_ROOT / "governance" / "model_registry.json"
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"
DEFAULT_MODEL_NAME = "car_detector"
IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = {".pyc", ".pyo"}
# Large or machine-specific parts of model_metadata.json not copied into the registry
# (the whole file is still covered by the version's hash).
_DROPPED_METADATA = {("training", "history")}

log = logging.getLogger("governance.registry")


class RegistryError(Exception):
    """A registry operation that cannot be done (unknown id, conflicting hash, ...)."""


def registry_path() -> Path:
    return Path(os.environ.get("MODEL_REGISTRY_PATH", "").strip() or DEFAULT_REGISTRY)


def repository_path() -> Path:
    return Path(os.environ.get("MODEL_REPOSITORY", "").strip() or DEFAULT_REPOSITORY)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------- hashing


def model_files(path: Path) -> list[tuple[str, Path]]:
    """(relative posix path, file) of every file that makes up a model, sorted by path."""
    path = Path(path)
    if path.is_file():
        return [(path.name, path)]
    if not path.is_dir():
        raise RegistryError(f"model path not found: {path}")
    found = []
    for file in path.rglob("*"):
        rel = file.relative_to(path)
        if any(part in IGNORED_DIRS for part in rel.parts) or file.suffix in IGNORED_SUFFIXES:
            continue
        if file.is_file():
            found.append((rel.as_posix(), file))
    return sorted(found)


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_model(path: Path) -> dict[str, Any]:
    """Deterministic SHA-256 over a model's files: for each file in sorted path
    order, its relative path, a NUL, and its own SHA-256. Same files, same hash,
    wherever the directory lives."""
    files = {rel: _file_sha256(file) for rel, file in model_files(path)}
    if not files:
        raise RegistryError(f"no model files under {path}")
    total = hashlib.sha256()
    for rel, file_hash in files.items():
        total.update(rel.encode() + b"\0" + file_hash.encode() + b"\n")
    size = sum(file.stat().st_size for _, file in model_files(path))
    return {"sha256": total.hexdigest(), "files": files, "file_count": len(files), "size_bytes": size}


def stat_signature(path: Path) -> tuple:
    """Cheap change detector (paths, sizes, mtimes) so a guard rehashes only when needed."""
    try:
        return tuple((rel, f.stat().st_size, f.stat().st_mtime_ns) for rel, f in model_files(path))
    except (RegistryError, OSError):
        return ()


# --------------------------------------------------------------------------- registry


def _prune(metadata: dict[str, Any]) -> dict[str, Any]:
    pruned = json.loads(json.dumps(metadata, default=str))
    for outer, inner in _DROPPED_METADATA:
        if isinstance(pruned.get(outer), dict):
            pruned[outer].pop(inner, None)
    return pruned


def _display_path(path: Path) -> str:
    path = path.resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


class ModelRegistry:
    """Centralised register of model versions (the seed's API, backed by a JSON file)."""

    def __init__(self, registry_path_: str | Path | None = None) -> None:
        self.registry_path = Path(registry_path_) if registry_path_ else registry_path()
        self.registry = self._load_registry()

    # -- storage
    def _load_registry(self) -> dict[str, Any]:
        if self.registry_path.exists():
            with self.registry_path.open() as handle:
                data = json.load(handle)
            data.setdefault("models", [])
            return data
        return {"models": []}

    def _save_registry(self) -> None:
        self.registry_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.registry_path.parent, prefix=".registry-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(self.registry, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, self.registry_path)

    # -- the seed's API
    def register_model(self, model_path: str | Path, metadata: dict[str, Any] | None = None,
                       by: str | None = None, force: bool = False) -> str:
        """Register a model version directory (or single file); return its model_id.

        `metadata` defaults to the version's model_metadata.json. Registering the
        same files again returns the existing id; different files under an already
        registered name and version are refused unless `force` (the old entry is
        then marked `superseded`)."""
        model_path = Path(model_path)
        if metadata is None:
            meta_file = model_path / "model_metadata.json"
            if not meta_file.is_file():
                raise RegistryError(f"{meta_file} not found: pass metadata explicitly")
            metadata = json.loads(meta_file.read_text())
        name = str(metadata.get("model_name") or metadata.get("name")
                   or (model_path.parent.name if model_path.is_dir() else model_path.stem))
        # Triton serves a version by its directory name: that is the version recorded.
        version = model_path.name if model_path.is_dir() and model_path.name.isdigit() \
            else str(metadata.get("version") or model_path.name)
        digest = hash_model(model_path)
        for entry in self.registry["models"]:
            if entry["name"] == name and entry["version"] == version and entry["status"] != "superseded":
                if entry["sha256"] == digest["sha256"]:
                    return entry["model_id"]
                if not force:
                    raise RegistryError(
                        f"{name} version {version} is already registered with sha256 {entry['sha256'][:16]}… "
                        f"but {model_path} hashes to {digest['sha256'][:16]}…: a shipped version must not change "
                        "(export a new version, or --force to supersede the record)")
                entry["status"] = "superseded"
                entry["superseded_at"] = _now()
        dataset = metadata.get("dataset") if isinstance(metadata.get("dataset"), dict) else {}
        training = metadata.get("training") if isinstance(metadata.get("training"), dict) else {}
        entry = {
            "model_id": f"{name}-v{version}-{digest['sha256'][:12]}",
            "name": name,
            "version": version,
            "status": "active",
            "path": _display_path(model_path),
            "sha256": digest["sha256"],
            "file_count": digest["file_count"],
            "size_bytes": digest["size_bytes"],
            "files": digest["files"],
            "registered_at": _now(),
            "registered_by": _who(by),
            "lineage": {
                "exported_at": metadata.get("exported_at") or metadata.get("date"),
                "git_commit": metadata.get("git_commit"),
                "dataset_fingerprint": dataset.get("fingerprint") or metadata.get("dataset_fingerprint"),
                "dataset": {k: v for k, v in dataset.items() if k != "path"},
                "class_names": metadata.get("class_names"),
                "architecture": metadata.get("architecture"),
                "training": {k: v for k, v in training.items() if k != "history"},
            },
            "metrics": metadata.get("validation_metrics") or metadata.get("metrics"),
            "hyperparameters": metadata.get("hyperparameters"),
            "description": metadata.get("description"),
            "metadata_version_mismatch": (str(metadata.get("version")) != version) if metadata.get("version") else None,
            "metadata": _prune(metadata),
        }
        self.registry["models"].append(entry)
        self._save_registry()
        return entry["model_id"]

    def get_model(self, model_id: str) -> dict[str, Any] | None:
        """By model_id, by `name:version`, or by version number alone (default model name)."""
        for entry in self.registry["models"]:
            if entry["model_id"] == model_id:
                return entry
        name, _, version = model_id.rpartition(":") if ":" in model_id else (DEFAULT_MODEL_NAME, "", model_id)
        matches = [e for e in self.registry["models"] if e["name"] == name and e["version"] == version]
        live = [e for e in matches if e["status"] != "superseded"]
        return (live or matches or [None])[-1]

    def list_models(self, name: str | None = None, version: str | None = None,
                    status: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.registry["models"]
                if (name is None or e["name"] == name) and (version is None or e["version"] == str(version))
                and (status is None or e["status"] == status)]

    def get_latest_version(self, name: str = DEFAULT_MODEL_NAME) -> dict[str, Any] | None:
        """The highest active (non-deprecated, non-superseded) version of a model."""
        active = self.list_models(name, status="active")
        return max(active, key=lambda e: _version_key(e["version"]), default=None)

    def deprecate_model(self, model_id: str, reason: str, by: str | None = None,
                        repository: str | Path | None = None, keep: int = 1,
                        reload: bool = True) -> dict[str, Any]:
        """Mark a version deprecated and stop Triton from serving it."""
        if not reason or not reason.strip():
            raise RegistryError("a deprecation needs a reason")
        entry = self.get_model(model_id)
        if entry is None:
            raise RegistryError(f"unknown model {model_id!r}")
        repository = Path(repository) if repository else repository_path()
        model_dir = repository / entry["name"]
        # Check first that something would remain to serve, then record.
        servable = self._servable(model_dir, entry["name"], extra_deprecated={entry["version"]})
        if model_dir.is_dir() and not servable:
            raise RegistryError(f"deprecating {entry['name']} v{entry['version']} would leave no version to "
                                "serve: register a replacement first")
        entry["status"] = "deprecated"
        entry["deprecated_at"] = _now()
        entry["deprecated_by"] = _who(by)
        entry["deprecation_reason"] = reason.strip()
        self._save_registry()
        outcome = {"model_id": entry["model_id"], "version": entry["version"], "status": "deprecated"}
        if model_dir.is_dir():
            outcome.update(self.sync_version_policy(repository, entry["name"], keep=keep, reload=reload))
        else:
            outcome["config"] = f"no model directory {model_dir}: version_policy not changed"
        return outcome

    # -- Triton model repository
    def deprecated_versions(self, name: str) -> set[str]:
        return {e["version"] for e in self.list_models(name, status="deprecated")}

    def _servable(self, model_dir: Path, name: str, extra_deprecated: set[str] = frozenset()) -> list[int]:
        on_disk = sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()) \
            if model_dir.is_dir() else []
        blocked = self.deprecated_versions(name) | set(extra_deprecated)
        return [v for v in on_disk if str(v) not in blocked]

    def sync_version_policy(self, repository: str | Path | None = None, name: str = DEFAULT_MODEL_NAME,
                            keep: int = 1, reload: bool = True) -> dict[str, Any]:
        """Point config.pbtxt's version_policy at the newest `keep` non-deprecated
        versions (the repository's own policy serves `latest 1`), then ask Triton to reload."""
        repository = Path(repository) if repository else repository_path()
        model_dir = repository / name
        servable = self._servable(model_dir, name)
        if not servable:
            raise RegistryError(f"no non-deprecated version of {name} under {model_dir}")
        versions = servable[-max(1, keep):]
        deprecated = sorted(self.deprecated_versions(name), key=_version_key)
        config = model_dir / "config.pbtxt"
        set_version_policy(config, versions, deprecated)
        result = {"config": _display_path(config), "served_versions": versions, "deprecated_versions": deprecated}
        if reload:
            result["triton"] = request_triton_reload(name)
        return result

    def verify(self, repository: str | Path | None = None, name: str = DEFAULT_MODEL_NAME,
               versions: list[str] | None = None) -> list[dict[str, Any]]:
        """Compare each version directory on disk (or the given versions) with its record."""
        repository = Path(repository) if repository else repository_path()
        model_dir = repository / name
        if versions is None:
            versions = sorted((p.name for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()), key=int) \
                if model_dir.is_dir() else []
        return [verify_version(self, model_dir / str(v), name, str(v)) for v in versions]


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\-]", str(version)))


def verify_version(registry: ModelRegistry, version_dir: Path, name: str, version: str) -> dict[str, Any]:
    entry = registry.get_model(f"{name}:{version}")
    result: dict[str, Any] = {"name": name, "version": version, "path": _display_path(version_dir)}
    if entry is None:
        return {**result, "status": "unregistered", "detail": f"{name} v{version} is not in the registry"}
    result.update(model_id=entry["model_id"], expected=entry["sha256"], registry_status=entry["status"])
    if not version_dir.exists():
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


# --------------------------------------------------------------------------- config.pbtxt and Triton


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
    raise RegistryError("config.pbtxt: unbalanced braces in version_policy")


def set_version_policy(config: Path, versions: list[int], deprecated: list[str]) -> None:
    text = config.read_text()
    text = re.sub(r"^# governance: .*\n", "", text, flags=re.MULTILINE)
    block = (f"# governance: version_policy set by governance/model_registry.py at {_now()}; "
             f"deprecated versions: {', '.join(deprecated) or 'none'}\n"
             f"version_policy: {{ specific: {{ versions: [ {', '.join(str(v) for v in versions)} ] }} }}")
    span = _policy_span(text)
    text = text[:span[0]] + block + text[span[1]:] if span else text.rstrip("\n") + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=config.parent, prefix=".config-", suffix=".pbtxt")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, config)  # atomic: a polling Triton never reads half a file


def triton_http_url() -> str:
    url = os.environ.get("TRITON_HTTP_URL", "").strip()
    if not url:
        url = f"127.0.0.1:{os.environ.get('TRITON_HTTP_PORT', '8000')}"
    return url if url.startswith("http") else f"http://{url}"


def request_triton_reload(name: str = DEFAULT_MODEL_NAME, timeout: float = 60.0) -> str:
    """Ask Triton to reload the model (explicit model control). Returns what happened."""
    import requests

    url = f"{triton_http_url()}/v2/repository/models/{name}/load"
    try:
        answer = requests.post(url, timeout=timeout)
    except requests.RequestException:
        return f"Triton not reachable at {triton_http_url()}: the new policy applies when it next loads the model"
    if answer.status_code == 200:
        return "reloaded by Triton (explicit model control)"
    message = answer.text[:300]
    if "poll" in message.lower():
        return ("Triton runs with --model-control-mode=poll: it rereads config.pbtxt by itself within "
                "--repository-poll-secs; explicit loads are refused in that mode")
    if "explicit model load / unload is not allowed" in message.lower():
        return ("Triton runs with --model-control-mode=none: restart it to apply the new version_policy")
    return f"Triton refused the reload ({answer.status_code}): {message}"


def triton_ready_versions(name: str = DEFAULT_MODEL_NAME, timeout: float = 3.0) -> list[str] | None:
    """Versions Triton reports READY, or None if Triton is unreachable."""
    import requests

    try:
        answer = requests.post(f"{triton_http_url()}/v2/repository/index", json={}, timeout=timeout)
        answer.raise_for_status()
    except requests.RequestException:
        return None
    return sorted((str(m.get("version")) for m in answer.json()
                   if m.get("name") == name and m.get("state") == "READY"), key=_version_key)


def wait_until_unserved(name: str, version: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = triton_ready_versions(name)
        if ready is not None and version not in ready:
            return True
        time.sleep(2.0)
    return False


# --------------------------------------------------------------------------- serving guard


class ServingGuard:
    """Does the version Triton serves still match its registered hash?

    `refusal(version)` returns None when the version may be served, else the reason
    to refuse. Hashes are recomputed only when the files' sizes or mtimes, or the
    registry file, change. A mismatch is always refused; an unregistered version
    (or a missing registry) is refused only with MODEL_REGISTRY_ENFORCE=strict,
    otherwise logged once as a warning. The files are looked at again at most every
    `recheck_s` seconds (MODEL_GUARD_RECHECK_S, default 1)."""

    def __init__(self, repository: Path | None = None, registry: Path | None = None,
                 name: str = DEFAULT_MODEL_NAME, strict: bool | None = None,
                 recheck_s: float | None = None) -> None:
        self.repository = Path(repository) if repository else repository_path()
        self.registry = Path(registry) if registry else registry_path()
        self.name = name
        self.strict = (os.environ.get("MODEL_REGISTRY_ENFORCE", "").strip().lower() == "strict"
                       if strict is None else strict)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, str | None]] = {}
        self._checked_at: dict[str, float] = {}
        self.recheck_s = float(os.environ.get("MODEL_GUARD_RECHECK_S", "1.0")) if recheck_s is None else recheck_s
        self._warned: set[str] = set()

    def _registry_stamp(self) -> tuple:
        try:
            st = self.registry.stat()
            return (st.st_size, st.st_mtime_ns)
        except OSError:
            return ()

    def refusal(self, version: str) -> str | None:
        if not version:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(str(version))
            # Walking and stat-ing the version's files on every request cost ~7 % of the
            # adapter's CPU; a change is still caught within recheck_s (and the health
            # probe runs this too).
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
            result = verify_version(ModelRegistry(self.registry), version_dir, self.name, version)
        except (RegistryError, OSError, ValueError) as exc:
            return f"registry check of {self.name} v{version} failed: {exc}"
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
            log.error("%s (MODEL_REGISTRY_ENFORCE=strict): refusing", detail,
                      extra={"event.action": "model.verify", "event.outcome": "failure"})
            return detail
        if version not in self._warned:
            self._warned.add(version)
            log.warning("%s; serving it anyway (set MODEL_REGISTRY_ENFORCE=strict to refuse)", detail,
                        extra={"event.action": "model.verify", "event.outcome": "unknown"})
        return None


# --------------------------------------------------------------------------- CLI


def _summary(entry: dict[str, Any]) -> str:
    metrics = entry.get("metrics") or {}
    shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("ap50", "precision", "recall", "f1")
                      if isinstance(metrics.get(k), (int, float)))
    return (f"{entry['model_id']:40} {entry['status']:11} v{entry['version']:>3}  "
            f"sha256 {entry['sha256'][:16]}…  {entry['registered_at']} by {entry['registered_by']}"
            + (f"  [{shown}]" if shown else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m governance.model_registry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", default=None, help="registry JSON (default $MODEL_REGISTRY_PATH or governance/model_registry.json)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("register", help="register a version directory")
    p.add_argument("path")
    p.add_argument("--by", default=None)
    p.add_argument("--force", action="store_true", help="supersede a record of the same version with other files")
    p = sub.add_parser("list")
    p.add_argument("--name", default=None)
    p.add_argument("--status", default=None, choices=["active", "deprecated", "superseded"])
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("get")
    p.add_argument("model_id", help="model_id, name:version or version")
    p = sub.add_parser("latest")
    p.add_argument("--name", default=DEFAULT_MODEL_NAME)
    p = sub.add_parser("deprecate")
    p.add_argument("model_id")
    p.add_argument("--reason", required=True)
    p.add_argument("--by", default=None)
    p.add_argument("--repository", default=None, help="Triton model repository (default $MODEL_REPOSITORY or model_repository)")
    p.add_argument("--keep", type=int, default=1, help="how many newest non-deprecated versions Triton serves (default 1)")
    p.add_argument("--no-reload", action="store_true")
    p.add_argument("--wait", action="store_true", help="wait until Triton no longer serves the version")
    p = sub.add_parser("sync", help="re-pin config.pbtxt to the newest non-deprecated version(s) and reload Triton")
    p.add_argument("--repository", default=None)
    p.add_argument("--keep", type=int, default=1)
    p.add_argument("--no-reload", action="store_true")
    p = sub.add_parser("verify", help="compare the files on disk with the registry (exit 1 on mismatch)")
    p.add_argument("versions", nargs="*")
    p.add_argument("--repository", default=None)
    p.add_argument("--name", default=DEFAULT_MODEL_NAME)
    args = parser.parse_args(argv)
    registry = ModelRegistry(args.registry)
    try:
        if args.command == "register":
            model_id = registry.register_model(args.path, by=args.by, force=args.force)
            print(f"registered {model_id} in {registry.registry_path}")
            entry = registry.get_model(model_id)
            print(_summary(entry))
            config = Path(args.path).resolve().parent / "config.pbtxt"
            if config.is_file() and "# governance: version_policy" in config.read_text():
                print(f"note: {config} pins versions (a version was deprecated); run "
                      "`python -m governance.model_registry sync` to serve the newest non-deprecated version")
        elif args.command == "list":
            entries = registry.list_models(args.name, status=args.status)
            if args.json:
                print(json.dumps(entries, indent=2))
            else:
                for entry in entries:
                    print(_summary(entry))
                if not entries:
                    print(f"no model registered in {registry.registry_path}")
        elif args.command == "get":
            entry = registry.get_model(args.model_id)
            if entry is None:
                print(f"unknown model {args.model_id}", file=sys.stderr)
                return 2
            print(json.dumps(entry, indent=2))
        elif args.command == "latest":
            entry = registry.get_latest_version(args.name)
            if entry is None:
                print(f"no active version of {args.name}", file=sys.stderr)
                return 2
            print(_summary(entry))
        elif args.command == "deprecate":
            outcome = registry.deprecate_model(args.model_id, args.reason, by=args.by, repository=args.repository,
                                               keep=args.keep, reload=not args.no_reload)
            print(json.dumps(outcome, indent=2))
            if args.wait:
                gone = wait_until_unserved(DEFAULT_MODEL_NAME, outcome["version"])
                print(f"Triton {'no longer serves' if gone else 'STILL serves (or is unreachable)'} v{outcome['version']}")
                return 0 if gone else 1
        elif args.command == "sync":
            print(json.dumps(registry.sync_version_policy(args.repository, keep=args.keep,
                                                          reload=not args.no_reload), indent=2))
        elif args.command == "verify":
            results = registry.verify(args.repository, args.name, args.versions or None)
            bad = 0
            for result in results:
                print(f"{result['name']} v{result['version']:>3}  {result['status']:12} {result['detail']}")
                bad += result["status"] in ("mismatch", "missing")
            if not results:
                print("no version to verify")
            return 1 if bad else 0
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
