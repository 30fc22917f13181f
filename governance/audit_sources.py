"""Where the audit's evidence comes from, other than the database (governance/store.py):
the services' JSON logs, HTTP probes of the running services, the gateway's route map,
a synthetic "canary" data subject sent through the results service's API, and the
served model version's own metadata."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import requests

from governance.store import GovernanceStore
from governance.triton_control import triton_ready_versions, version_dirs
from services.common.triton_client import http_url as triton_http_url
from services.common import config
from services.common.integrity import DEFAULT_MODEL_NAME, repository_path
from services.common.service_token import caller_headers

HEX64 = re.compile(r"^[0-9a-f]{64}$")
TIMEOUT = 5.0
# Routes open without a key on purpose (no personal data behind them); everything else must answer 401.
UNAUTHENTICATED_BY_DESIGN = {"/health": "liveness probe", "/ready": "readiness probe",
                             "/openapi.json": "public API description, no data", "/": "static web console, no data"}


def flatten(doc: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from flatten(value, f"{prefix}{key}.")
            if not isinstance(value, dict):
                yield f"{prefix}{key}", value


def read_log_events(log_dir: Path) -> list[dict[str, Any]]:
    """Every JSON log line of every service, flattened (`event.action`, ...)."""
    events = []
    for path in sorted(log_dir.glob("*.jsonl")):
        with path.open(errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.startswith("{"):
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                flat = dict(flatten(doc))
                flat["_file"], flat["_line"] = path.name, number
                events.append(flat)
    return events


def http_get(url: str, **kwargs: Any) -> requests.Response | None:
    try:
        return requests.get(url, timeout=TIMEOUT, **kwargs)
    except requests.RequestException:
        return None


def probe_health(gateway_url: str, results_url: str, feature_url: str) -> dict[str, Any]:
    probes = {
        "gateway /health": f"{gateway_url}/health", "gateway /ready": f"{gateway_url}/ready",
        "results-service /ready": f"{results_url}/ready", "feature-service /health": f"{feature_url}/health",
        "triton car_detector ready": f"{triton_http_url()}/v2/models/{DEFAULT_MODEL_NAME}/ready",
    }
    results = {}
    for name, url in probes.items():
        answer = http_get(url)
        results[name] = answer.status_code if answer is not None else "unreachable"
    return results


def gateway_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the gateway's url map, read from its code in a throwaway
    process (own VAR_DIR and metrics dir, dummy keys) so the live stack's files are untouched."""
    script = ("import json; from gateway.app import app; print(json.dumps([[r.rule, sorted(r.methods or [])] "
              "for r in app.url_map.iter_rules() if r.endpoint != 'static']))")
    with tempfile.TemporaryDirectory() as scratch:
        env = {k: v for k, v in os.environ.items() if k not in ("LOGSTASH_HOST", "API_KEYS_FILE")}
        env.update(VAR_DIR=scratch, METRICS_DIR=str(Path(scratch) / "metrics"), LOG_LEVEL="ERROR",
                   API_KEYS="audit-probe-never-valid-0123456789:admin",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(config.REPO_ROOT), env.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                              cwd=config.REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "import failed")
    routes = []
    for rule, methods in json.loads(done.stdout.strip().splitlines()[-1]):
        if rule in UNAUTHENTICATED_BY_DESIGN:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "audit-probe", rule)
        routes += [(method, path) for method in methods if method not in ("HEAD", "OPTIONS")]
    return routes


def run_canary(store: GovernanceStore, results_url: str) -> dict[str, Any]:
    """A synthetic data subject through the results service: store, contest, export, erase,
    then look for any trace of it in the database and its files. Nothing about a real
    person is touched."""
    raw_id = f"audit-canary-{uuid.uuid4().hex}"
    request_id = f"audit-canary-{uuid.uuid4().hex}"
    marker = f"canary{uuid.uuid4().hex[:24]}"
    # internal services refuse callers without the service token
    headers = {"X-Actor-Role": "service", "X-Actor-Id": "governance-audit", **caller_headers()}
    steps: dict[str, Any] = {"raw_id": raw_id, "request_id": request_id}
    base = results_url
    try:
        stored = requests.post(f"{base}/predictions", headers=headers, timeout=TIMEOUT, json={
            "request_id": request_id, "user_id": raw_id, "client_id": "governance-audit", "model_version": marker,
            "inference_time_ms": 1.0, "detections": [{"class_name": "car", "confidence": 0.5,
                                                      "bbox": {"x_min": 1, "y_min": 1, "x_max": 2, "y_max": 2}}]})
    except requests.RequestException as exc:
        return {"reachable": False, "error": f"results service at {base} unreachable: {type(exc).__name__}"}
    steps["stored"] = stored.status_code
    row = store.first("predictions", request_id=request_id)
    row_text = json.dumps(row, default=str) if row else ""
    steps["stored_hash_format_ok"] = row is not None and bool(HEX64.match(str(row["user_hash"])))
    steps["raw_id_in_stored_row"] = raw_id in row_text
    fb = requests.post(f"{base}/predictions/{request_id}/feedback", headers=headers, timeout=TIMEOUT,
                       json={"correct": False, "reason": "audit canary contest", "comment": marker})
    steps["feedback"] = fb.status_code
    export = requests.get(f"{base}/predictions/user/{raw_id}", headers=headers, timeout=TIMEOUT)
    body = export.json() if export.ok else {}
    steps["export"] = {"status": export.status_code, "predictions": body.get("count"),
                       "feedback": len(body.get("feedback", [])), "access_log": len(body.get("access_log", [])),
                       "raw_id_in_export": raw_id in export.text}
    erased = requests.delete(f"{base}/predictions/user/{raw_id}", headers=headers, timeout=TIMEOUT)
    erased_body = erased.json() if erased.ok else {}
    user_hash = erased_body.get("user_hash") or body.get("user_hash") or (row or {}).get("user_hash")
    steps["erasure"] = {"status": erased.status_code, "deleted": erased_body.get("deleted"),
                        "deleted_feedback": erased_body.get("deleted_feedback")}
    after = requests.get(f"{base}/predictions/user/{raw_id}", headers=headers, timeout=TIMEOUT)
    after_body = after.json() if after.ok else {}
    steps["after_erasure_export"] = {"predictions": after_body.get("count"), "feedback": len(after_body.get("feedback", []))}
    steps["rows_left_in_database"] = store.count("predictions", request_id=request_id) + \
        store.count("feedback", request_id=request_id)
    journal = store.journal_for(user_hash) if user_hash else []
    steps["journal"] = [{k: v for k, v in j.items() if k != "at"} for j in journal]
    steps["journal_raw_id_free"] = all(raw_id not in json.dumps(j, default=str) for j in journal)
    hashes = store.erased_hashes()
    if user_hash:
        hashes.add(user_hash)
    steps["file_residue"] = store.residue({"canary marker": marker, "canary raw id": raw_id}, hashes)
    steps["user_hash"] = user_hash
    return {"reachable": True, **steps, "marker": marker}


class AuditContext:
    """What every check and measure reads: the store, the logs, the services' URLs, and the
    canary's result (run once, first, so every later check also sees its traces)."""

    def __init__(self, store: GovernanceStore, log_dir: Path, gateway_url: str, results_url: str,
                 feature_url: str, period_days: int, canary: bool) -> None:
        self.store, self.log_dir = store, log_dir
        self.gateway_url, self.results_url, self.feature_url = gateway_url, results_url, feature_url
        self.period_days, self.canary_enabled = period_days, canary
        self._events: list[dict[str, Any]] | None = None
        self._canary: dict[str, Any] | None = None

    def log_events(self) -> list[dict[str, Any]]:
        if self._events is None:
            self._events = read_log_events(self.log_dir)
        return self._events

    def http_events(self, service: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.log_events() if e.get("event.action") == "http.request"
                and (service is None or e.get("service.name") == service)]

    def canary(self) -> dict[str, Any]:
        if self._canary is None:
            self._canary = run_canary(self.store, self.results_url)
        return self._canary


def served_version() -> tuple[str | None, str]:
    """The version Triton serves (else the newest on disk) and where that was read."""
    ready = triton_ready_versions(DEFAULT_MODEL_NAME)
    if ready:
        return ready[-1], f"Triton {triton_http_url()} repository index"
    on_disk = version_dirs(repository_path() / DEFAULT_MODEL_NAME)
    return (str(on_disk[-1]) if on_disk else None), f"newest version directory under {repository_path()} (Triton unreachable)"


def model_metadata(version: str | None) -> dict[str, Any]:
    if version is None:
        return {}
    path = repository_path() / DEFAULT_MODEL_NAME / str(version) / "model_metadata.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
