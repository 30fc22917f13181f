"""Model registry CLI: register, list, get, latest, deprecate, verify, sync.

The store is governance/registry_store.py (`governance/model_registry.json`), Triton's
version policy and reloads governance/triton_control.py, the hashing and the serving-side
check services/common/integrity.py (the gRPC adapter refuses, loudly, a version whose
files do not match their registered hash, or that is not registered).

    python -m governance.model_registry register model_repository/car_detector/1 [--by NAME]
    python -m governance.model_registry list [--name car_detector] [--json]
    python -m governance.model_registry get car_detector:1
    python -m governance.model_registry latest [--name car_detector]
    python -m governance.model_registry deprecate car_detector:2 --reason "..." [--wait]
    python -m governance.model_registry verify [--repository model_repository]   # exit 1 on mismatch
    python -m governance.model_registry sync      # re-pin version_policy (e.g. after a new version) and reload

`--wait` checks Triton's repository index until the deprecated version is gone.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from governance.registry_store import ModelRegistry, RegistryError
from governance.triton_control import wait_until_unserved
from services.common.integrity import DEFAULT_MODEL_NAME, IntegrityError, hash_model, registry_path, repository_path

__all__ = ["DEFAULT_MODEL_NAME", "ModelRegistry", "RegistryError", "hash_model", "main", "registry_path",
           "repository_path"]


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
            if entry is not None:
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
    except IntegrityError as exc:  # RegistryError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
