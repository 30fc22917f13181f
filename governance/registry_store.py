"""The model registry's store: what shipped, where it came from, and its status.

Each entry records one version directory of the Triton model repository
(`model_repository/car_detector/<N>/`): a SHA-256 over its files and one per file
(services/common/integrity.py, which the serving side uses to verify them), the lineage
read from the version's `model_metadata.json` (export date, git commit, dataset
fingerprint, class names, hyperparameters, validation metrics), and who registered it
and when. The store is `governance/model_registry.json` (committed: it is the record of
what shipped and holds no personal data) or `$MODEL_REGISTRY_PATH`.
"""
from __future__ import annotations

import getpass
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from governance.triton_control import request_triton_reload, set_version_policy, version_dirs
from services.common.integrity import (
    DEFAULT_MODEL_NAME,
    IntegrityError,
    display_path,
    find_entry,
    hash_model,
    load_registry,
    registry_path,
    repository_path,
    verify_version,
    version_key,
)

# Large or machine-specific parts of model_metadata.json not copied into the registry
# (the whole file is still covered by the version's hash).
_DROPPED_METADATA = {("training", "history")}


class RegistryError(IntegrityError):
    """A registry operation that cannot be done (unknown id, conflicting hash, ...)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:
        return "unknown"


def _prune(metadata: dict[str, Any]) -> dict[str, Any]:
    pruned = json.loads(json.dumps(metadata, default=str))
    for outer, inner in _DROPPED_METADATA:
        if isinstance(pruned.get(outer), dict):
            pruned[outer].pop(inner, None)
    return pruned


class ModelRegistry:
    """Centralised register of model versions (the seed's API, backed by a JSON file)."""

    def __init__(self, registry_path_: str | Path | None = None) -> None:
        self.registry_path = Path(registry_path_) if registry_path_ else registry_path()
        self.registry = self._load_registry()

    # -- storage
    def _load_registry(self) -> dict[str, Any]:
        return load_registry(self.registry_path)

    def _save_registry(self) -> None:
        self.registry_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.registry_path.parent, prefix=".registry-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(self.registry, handle, indent=2, sort_keys=False)
            handle.write("\n")
        # Readable by every service user (mkstemp makes 0600): the adapter's guard and the
        # images read it; it holds hashes and lineage, no secret.
        os.chmod(tmp, 0o644)
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
        dataset: dict[str, Any] = metadata["dataset"] if isinstance(metadata.get("dataset"), dict) else {}
        training: dict[str, Any] = metadata["training"] if isinstance(metadata.get("training"), dict) else {}
        entry = {
            "model_id": f"{name}-v{version}-{digest['sha256'][:12]}",
            "name": name,
            "version": version,
            "status": "active",
            "path": display_path(model_path),
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
        return find_entry(self.registry, name, version)

    def list_models(self, name: str | None = None, version: str | None = None,
                    status: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.registry["models"]
                if (name is None or e["name"] == name) and (version is None or e["version"] == str(version))
                and (status is None or e["status"] == status)]

    def get_latest_version(self, name: str = DEFAULT_MODEL_NAME) -> dict[str, Any] | None:
        """The highest active (non-deprecated, non-superseded) version of a model."""
        active = self.list_models(name, status="active")
        return max(active, key=lambda e: version_key(e["version"]), default=None)

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

    def _servable(self, model_dir: Path, name: str, extra_deprecated: frozenset[str] | set[str] = frozenset()) -> list[int]:
        blocked = self.deprecated_versions(name) | set(extra_deprecated)
        return [v for v in version_dirs(model_dir) if str(v) not in blocked]

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
        deprecated = sorted(self.deprecated_versions(name), key=version_key)
        config = model_dir / "config.pbtxt"
        try:
            set_version_policy(config, versions, deprecated)
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
        result = {"config": display_path(config), "served_versions": versions, "deprecated_versions": deprecated}
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
        return [verify_version(self.registry, model_dir / str(v), name, str(v)) for v in versions]
