"""Audit reports: usage, compliance and performance, measured on the live system.

    python -m governance.audit_report [--period-days 30] [--out var/reports] [--no-canary] [--strict]
    (make audit)

Writes `audit_report_<UTC timestamp>.json`, `.md` and `.html` (plots embedded; PNGs
beside them in `audit_report_<timestamp>_plots/`) under var/reports/ and prints the
paths. Sources: the results database (DATABASE_URL or the SQLite default, through
services/results_service/store.py), the services' JSON logs (`$VAR_DIR/log/*.jsonl`),
the running services (health probes, an unauthenticated probe of every gateway
route, a canary data subject created, exported, contested and erased through the
results service), Triton and the model registry, and the drift baseline
(governance/baseline_features.json).

Every compliance check has a status: `pass`, `fail` (the property is measured false),
`warning` (true only in part, or stated rather than enforced) or `not_measured`
(its source was unreachable), with the evidence it was judged on. `--strict`
exits 1 when any check fails.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import re
import stat
import sys
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import numpy as np
import requests
import sqlalchemy as sa

from governance import drift as drift_mod
from governance.model_registry import (DEFAULT_MODEL_NAME, ModelRegistry, registry_path, repository_path,
                                       triton_http_url, triton_ready_versions, verify_version)
from governance.purge import retention_days
from services.common import config

HEX64 = re.compile(r"^[0-9a-f]{64}$")
RAW_ID_KEYS = {"user_id", "user.id", "userid", "user.name", "user.email"}
EXPECTED_COLUMNS = {
    "predictions": {"id", "request_id", "user_hash", "key_id", "client_id", "detections", "detection_count",
                    "features", "model_name", "model_version", "inference_time_ms", "created_at"},
    "feedback": {"id", "request_id", "user_hash", "key_id", "client_id", "actor_role", "actor_id", "correct",
                 "reason", "comment", "created_at"},
    "audit_events": {"id", "at", "action", "actor_role", "actor_id", "user_hash", "request_id", "record_count"},
}
# Routes open without a key on purpose (no personal data behind them); everything else must answer 401.
# var/ folders where developer tools (make demo, training.explore, services/triton/check.py --draw,
# these reports) write drawings of dataset frames: not uploads, not scanned.
TOOL_OUTPUT_DIRS = {"reports", "demo", "dataset", "triton-check", "training"}
UNAUTHENTICATED_BY_DESIGN = {"/health": "liveness probe", "/ready": "readiness probe",
                             "/openapi.json": "public API description, no data"}
TIMEOUT = 5.0


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {"n": int(array.size), "mean": round(float(array.mean()), 3), "min": round(float(array.min()), 3),
            "p50": round(float(np.percentile(array, 50)), 3), "p95": round(float(np.percentile(array, 95)), 3),
            "p99": round(float(np.percentile(array, 99)), 3), "max": round(float(array.max()), 3)}


def _flatten(doc: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _flatten(value, f"{prefix}{key}.")
            if not isinstance(value, dict):
                yield f"{prefix}{key}", value
    elif prefix:
        return


def check(check_id: str, title: str, status: str, evidence: Any, basis: str = "") -> dict[str, Any]:
    return {"id": check_id, "title": title, "status": status, "evidence": evidence, **({"basis": basis} if basis else {})}


class AuditReportGenerator:
    """Generates the usage, compliance and performance reports (the seed's API)."""

    def __init__(self, db_url: str | None = None, log_dir: str | Path | None = None,
                 gateway_url: str | None = None, results_url: str | None = None,
                 feature_url: str | None = None, period_days: int = 30, canary: bool = True) -> None:
        from services.results_service.store import database_url, make_engine

        self.db_url = db_url or database_url()
        self.engine = make_engine(self.db_url)
        self.log_dir = Path(log_dir) if log_dir else config.var_dir() / "log"
        self.gateway_url = (gateway_url or config.env_str("GATEWAY_URL", f"http://127.0.0.1:{config.GATEWAY_PORT}")).rstrip("/")
        self.results_url = (results_url or config.RESULTS_SERVICE_URL).rstrip("/")
        self.feature_url = (feature_url or config.FEATURE_SERVICE_URL).rstrip("/")
        self.period_days = period_days
        self.canary = canary
        self._logs: list[dict[str, Any]] | None = None
        self._canary_result: dict[str, Any] | None = None

    # ------------------------------------------------------------------ sources
    def _since(self, period_days: int | None = None) -> datetime:
        return _now() - timedelta(days=period_days or self.period_days)

    def _rows(self, table: str, since: datetime | None = None, time_column: str = "created_at") -> list[dict[str, Any]]:
        from services.results_service import store

        tab = getattr(store, table)
        query = sa.select(tab)
        if since is not None:
            query = query.where(tab.c[time_column] >= since)
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(query)]

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON log line of every service, flattened (`event.action`, ...)."""
        if self._logs is None:
            events = []
            for path in sorted(self.log_dir.glob("*.jsonl")):
                with path.open(errors="replace") as handle:
                    for number, line in enumerate(handle, start=1):
                        if not line.startswith("{"):
                            continue
                        try:
                            doc = json.loads(line)
                        except ValueError:
                            continue
                        flat = dict(_flatten(doc))
                        flat["_file"], flat["_line"] = path.name, number
                        events.append(flat)
            self._logs = events
        return self._logs

    def _http_events(self, service: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.log_events() if e.get("event.action") == "http.request"
                and (service is None or e.get("service.name") == service)]

    def _get(self, url: str, **kwargs: Any) -> requests.Response | None:
        try:
            return requests.get(url, timeout=TIMEOUT, **kwargs)
        except requests.RequestException:
            return None

    # ------------------------------------------------------------------ usage
    def generate_usage_report(self, period_days: int | None = None) -> dict[str, Any]:
        since = self._since(period_days)
        preds = self._rows("predictions", since)
        feedback = self._rows("feedback", since)
        audit = self._rows("audit_events", since, "at")
        times = [float(p["inference_time_ms"]) for p in preds]
        classes: Counter[str] = Counter()
        per_day: dict[str, dict[str, Any]] = defaultdict(lambda: {"predictions": 0, "users": set(), "requests": 0,
                                                                 "client_errors": 0, "server_errors": 0})
        for p in preds:
            for d in p["detections"] or []:
                classes[d.get("class_name", "?")] += 1
            day = per_day[_aware(p["created_at"]).date().isoformat()]
            day["predictions"] += 1
            day["users"].add(p["user_hash"])
        gateway = [e for e in self._http_events("gateway") if (_aware(e.get("@timestamp")) or _now()) >= since]
        for e in gateway:
            day = per_day[(_aware(e.get("@timestamp")) or _now()).date().isoformat()]
            code = int(e.get("http.response.status_code") or 0)
            day["requests"] += 1
            day["client_errors"] += 400 <= code < 500
            day["server_errors"] += code >= 500
        codes = Counter(int(e.get("http.response.status_code") or 0) // 100 for e in gateway)
        detect_calls = [e for e in gateway if e.get("url.path") == "/api/detect"]
        detect_failures = sum(int(e.get("http.response.status_code") or 0) >= 500 for e in detect_calls)
        contested = [f for f in feedback if not f["correct"]]
        return {
            "period": {"days": period_days or self.period_days, "from": since.isoformat(timespec="seconds"),
                       "to": _now().isoformat(timespec="seconds")},
            "predictions": len(preds),
            "distinct_users": len({p["user_hash"] for p in preds}),
            "distinct_clients": len({p["client_id"] for p in preds}),
            "inference_time_ms": percentiles(times),
            "detections": sum(p["detection_count"] for p in preds),
            "predictions_without_detection": sum(1 for p in preds if not p["detection_count"]),
            "class_distribution": dict(classes.most_common()),
            "model_versions": dict(Counter(str(p["model_version"]) for p in preds)),
            "error_rate": {
                "source": f"gateway http.request events in {self.log_dir}/gateway.jsonl" if gateway
                else f"no gateway log events in {self.log_dir}",
                "requests": len(gateway),
                "by_class": {f"{k}xx": v for k, v in sorted(codes.items())},
                "server_error_rate": round(codes.get(5, 0) / len(gateway), 4) if gateway else None,
                "client_error_rate": round(codes.get(4, 0) / len(gateway), 4) if gateway else None,
                "detect_requests": len(detect_calls),
                "detect_server_error_rate": round(detect_failures / len(detect_calls), 4) if detect_calls else None,
            },
            "feedback": {"total": len(feedback), "contested": len(contested),
                         "contested_predictions": len({f["request_id"] for f in contested}),
                         "contest_rate": round(len({f["request_id"] for f in contested}) / len(preds), 4) if preds else None},
            "data_subject_requests": dict(Counter(a["action"] for a in audit)),
            "per_day": {day: {**v, "users": len(v["users"])} for day, v in sorted(per_day.items())},
        }

    # ------------------------------------------------------------------ compliance
    def run_canary(self) -> dict[str, Any]:
        """A synthetic data subject through the results service: store, contest, export,
        erase, then look for any trace of it. Nothing about a real person is touched."""
        if self._canary_result is not None:
            return self._canary_result
        raw_id = f"audit-canary-{uuid.uuid4().hex}"
        request_id = f"audit-canary-{uuid.uuid4().hex}"
        marker = f"canary{uuid.uuid4().hex[:24]}"
        headers = {"X-Actor-Role": "service", "X-Actor-Id": "governance-audit"}
        steps: dict[str, Any] = {"raw_id": raw_id, "request_id": request_id}
        base = self.results_url
        try:
            stored = requests.post(f"{base}/predictions", headers=headers, timeout=TIMEOUT, json={
                "request_id": request_id, "user_id": raw_id, "client_id": "governance-audit", "model_version": marker,
                "inference_time_ms": 1.0, "detections": [{"class_name": "car", "confidence": 0.5,
                                                          "bbox": {"x_min": 1, "y_min": 1, "x_max": 2, "y_max": 2}}]})
        except requests.RequestException as exc:
            self._canary_result = {"reachable": False, "error": f"results service at {base} unreachable: {type(exc).__name__}"}
            return self._canary_result
        steps["stored"] = stored.status_code
        with self.engine.connect() as connection:
            from services.results_service.store import predictions

            row = connection.execute(sa.select(predictions).where(predictions.c.request_id == request_id)).first()
        row_text = json.dumps(dict(row._mapping), default=str) if row else ""
        steps["stored_hash_format_ok"] = bool(row) and bool(HEX64.match(row.user_hash))
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
        user_hash = erased_body.get("user_hash") or body.get("user_hash")
        steps["erasure"] = {"status": erased.status_code, "deleted": erased_body.get("deleted"),
                            "deleted_feedback": erased_body.get("deleted_feedback")}
        after = requests.get(f"{base}/predictions/user/{raw_id}", headers=headers, timeout=TIMEOUT)
        after_body = after.json() if after.ok else {}
        steps["after_erasure_export"] = {"predictions": after_body.get("count"), "feedback": len(after_body.get("feedback", []))}
        from services.results_service.store import audit_events, feedback

        with self.engine.connect() as connection:
            left = connection.execute(sa.select(sa.func.count()).select_from(predictions)
                                      .where(predictions.c.request_id == request_id)).scalar_one()
            left += connection.execute(sa.select(sa.func.count()).select_from(feedback)
                                       .where(feedback.c.request_id == request_id)).scalar_one()
            journal = [dict(r._mapping) for r in connection.execute(
                sa.select(audit_events.c.action, audit_events.c.actor_role, audit_events.c.user_hash,
                          audit_events.c.record_count).where(audit_events.c.user_hash == user_hash))] if user_hash else []
        steps["rows_left_in_database"] = int(left)
        steps["journal"] = [{k: v for k, v in j.items() if k != "user_hash"} for j in journal]
        steps["journal_raw_id_free"] = all(raw_id not in json.dumps(j, default=str) for j in journal)
        residue = {}
        if self.engine.dialect.name == "sqlite":
            db_file = Path(self.engine.url.database)
            for path in (db_file, db_file.with_name(db_file.name + "-wal")):
                if path.exists():
                    data = path.read_bytes()
                    residue[path.name] = {"marker": marker.encode() in data, "raw_id": raw_id.encode() in data}
            steps["file_residue"] = residue
        else:
            steps["file_residue"] = ("PostgreSQL: rows are gone from every query; dead tuples stay in heap pages "
                                     "until autovacuum reuses them (not readable through SQL)")
        steps["user_hash"] = user_hash
        self._canary_result = {"reachable": True, **steps, "marker": marker}
        return self._canary_result

    def _check_erasure(self) -> list[dict[str, Any]]:
        if not self.canary:
            return [check("erasure", "Right to erasure removes every row, leaves no residue", "not_measured",
                          "canary disabled (--no-canary)")]
        c = self.run_canary()
        if not c.get("reachable"):
            reason = c.get("error")
            return [check(i, t, "not_measured", reason) for i, t in (
                ("erasure", "Right to erasure removes every row, leaves no residue"),
                ("access_export", "Right of access/portability returns the user's data"),
                ("recourse", "Feedback/contest channel records a contestation"),
                ("access_journaled", "Every access to personal data is journaled"))]
        residue = c["file_residue"]
        residue_ok = all(not v["marker"] and not v["raw_id"] for v in residue.values()) if isinstance(residue, dict) else True
        erasure_ok = (c["stored"] == 201 and c["erasure"]["status"] == 200 and c["erasure"]["deleted"] == 1
                      and c["erasure"]["deleted_feedback"] == 1 and c["rows_left_in_database"] == 0
                      and c["after_erasure_export"] == {"predictions": 0, "feedback": 0} and residue_ok)
        export_ok = (c["export"]["status"] == 200 and c["export"]["predictions"] == 1 and c["export"]["feedback"] == 1
                     and c["export"]["access_log"] >= 1 and not c["export"]["raw_id_in_export"])
        actions = Counter(j["action"] for j in c["journal"])
        journal_ok = (actions.get("access_export", 0) >= 2 and actions.get("erasure", 0) >= 1
                      and actions.get("contest", 0) >= 1 and c["journal_raw_id_free"]
                      and all(j["actor_role"] == "service" for j in c["journal"]))
        evidence = {k: v for k, v in c.items() if k not in ("raw_id", "marker", "user_hash", "journal")}
        return [
            check("erasure", "Right to erasure removes every row, leaves no residue", "pass" if erasure_ok else "fail",
                  {k: evidence[k] for k in ("stored", "erasure", "after_erasure_export", "rows_left_in_database", "file_residue")},
                  "canary subject stored, contested, erased through the results service; database and file scanned"),
            check("access_export", "Right of access/portability returns the user's data", "pass" if export_ok else "fail",
                  evidence["export"], "canary export holds its prediction, its feedback and its access log, no raw id"),
            check("recourse", "Feedback/contest channel records a contestation",
                  "pass" if c["feedback"] == 201 else "fail", {"feedback_status": c["feedback"]}),
            check("access_journaled", "Every access to personal data is journaled",
                  "pass" if journal_ok else "fail", {"canary_journal_actions": dict(actions), **self._journal_vs_logs()},
                  "canary accesses found in audit_events (actor role, action, counts; no raw id); "
                  "plus results-service access log lines vs journal entries"),
        ]

    def _journal_vs_logs(self) -> dict[str, Any]:
        """Successful personal-data accesses in the results service's access log vs journal entries since the log began."""
        access = [e for e in self._http_events("results-service")
                  if int(e.get("http.response.status_code") or 0) == 200 and (
                      (e.get("http.request.method") in ("GET", "DELETE") and e.get("url.path") == "/predictions/user/<path:user_id>")
                      or (e.get("http.request.method") == "GET" and re.fullmatch(r"/predictions/[^/]+", str(e.get("url.path"))))
                      or (e.get("http.request.method") == "POST" and str(e.get("url.path", "")).endswith("/feedback")))]
        if not access:
            return {"logged_accesses": 0, "note": f"no results-service access log in {self.log_dir}"}
        first = min(_aware(e.get("@timestamp")) or _now() for e in access) - timedelta(seconds=1)
        journal = [a for a in self._rows("audit_events", first, "at")
                   if a["action"] in ("read", "access_export", "erasure", "feedback", "contest")]
        return {"logged_accesses": len(access), "journal_entries": len(journal), "since": first.isoformat(timespec="seconds"),
                "complete": len(journal) >= len(access)}

    def _check_pseudonymisation(self) -> dict[str, Any]:
        bad: dict[str, int] = {}
        counted: dict[str, int] = {}
        for table in ("predictions", "feedback", "audit_events"):
            rows = self._rows(table)
            hashes = [r["user_hash"] for r in rows if r.get("user_hash") is not None]
            counted[table] = len(hashes)
            bad[table] = sum(1 for h in hashes if not HEX64.match(h))
        evidence: dict[str, Any] = {"user_hash_values_checked": counted, "not_64_hex": bad}
        status = "pass" if not any(bad.values()) else "fail"
        if self.canary and (c := self.run_canary()).get("reachable"):
            evidence["canary_stored_as_hash"] = c["stored_hash_format_ok"]
            evidence["canary_raw_id_in_row"] = c["raw_id_in_stored_row"]
            if not c["stored_hash_format_ok"] or c["raw_id_in_stored_row"]:
                status = "fail"
        return check("pseudonymisation", "User ids stored only as keyed hashes (HMAC-SHA256)", status, evidence,
                     "every user_hash in every table is 64 hex chars; the canary's raw id is absent from its row")

    def _check_logs(self) -> dict[str, Any]:
        events = self.log_events()
        raw_keys = [f"{e['_file']}:{e['_line']} key {k}" for e in events for k in e
                    if k.lower() in RAW_ID_KEYS]
        files = sorted(self.log_dir.glob("*"))
        canary_hits = []
        if self.canary and (c := self.run_canary()).get("reachable"):
            needle = c["raw_id"].encode()
            for path in files:
                if path.is_file() and needle in path.read_bytes():
                    canary_hits.append(path.name)
        evidence = {"log_dir": str(self.log_dir), "files_scanned": len(files), "json_events": len(events),
                    "raw_user_id_fields": raw_keys[:20], "canary_raw_id_found_in": canary_hits}
        if not events:
            return check("no_raw_ids_in_logs", "No raw user id in any log", "not_measured",
                         {**evidence, "note": "no JSON log lines found"})
        status = "fail" if raw_keys or canary_hits else "pass"
        return check("no_raw_ids_in_logs", "No raw user id in any log", status, evidence,
                     "every JSON log line scanned for user_id-like keys; every log file scanned for the canary's raw id")

    def _check_retention(self) -> dict[str, Any]:
        days = retention_days()
        from services.results_service.store import audit_events, predictions

        cutoff = _now() - timedelta(days=days)
        with self.engine.connect() as connection:
            expired = connection.execute(sa.select(sa.func.count()).select_from(predictions)
                                         .where(predictions.c.created_at < cutoff)).scalar_one()
            oldest = connection.execute(sa.select(sa.func.min(predictions.c.created_at))).scalar_one()
            last_purge = connection.execute(sa.select(sa.func.max(audit_events.c.at))
                                            .where(audit_events.c.action == "retention_purge")).scalar_one()
        oldest = _aware(oldest)
        last_purge = _aware(last_purge)
        evidence = {"retention_days": days, "rows_older_than_retention": int(expired),
                    "oldest_row_age_days": round((_now() - oldest).total_seconds() / 86400, 2) if oldest else None,
                    "last_purge": last_purge.isoformat(timespec="seconds") if last_purge else None}
        return check("retention", f"No prediction older than RETENTION_DAYS ({days})", "fail" if expired else "pass",
                     evidence, "rows counted in the results database; purge runs are journaled")

    def _gateway_routes(self) -> list[tuple[str, str]]:
        """Every (method, path) of the gateway's url map, read from its code in a throwaway
        process (own VAR_DIR and metrics dir, dummy keys) so the live stack's files are untouched."""
        import subprocess
        import tempfile

        script = ("import json; from gateway.app import app; print(json.dumps([[r.rule, sorted(r.methods or [])] "
                  "for r in app.url_map.iter_rules() if r.endpoint != 'static']))")
        with tempfile.TemporaryDirectory() as scratch:
            env = {k: v for k, v in os.environ.items() if k not in ("LOGSTASH_HOST", "API_KEYS_FILE")}
            env.update(VAR_DIR=scratch, METRICS_DIR=str(Path(scratch) / "metrics"), LOG_LEVEL="ERROR",
                       API_KEYS="audit-probe-never-valid-0123456789:admin",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")])))
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "import failed")
        routes = []
        for rule, methods in json.loads(done.stdout.strip().splitlines()[-1]):
            if rule in UNAUTHENTICATED_BY_DESIGN:
                continue
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "audit-probe", rule)
            routes += [(method, path) for method in methods if method not in ("HEAD", "OPTIONS")]
        return routes

    def _check_authentication(self) -> dict[str, Any]:
        try:
            routes = self._gateway_routes()
        except Exception as exc:  # the gateway's code could not be imported here
            return check("authentication", "Authentication required on every non-health gateway endpoint",
                         "not_measured", f"gateway url map unavailable: {exc}")
        if self._get(f"{self.gateway_url}/health") is None:
            return check("authentication", "Authentication required on every non-health gateway endpoint",
                         "not_measured", f"gateway {self.gateway_url} unreachable; routes: {len(routes)}")
        results, open_routes = {}, []
        for method, path in routes:
            try:
                answer = requests.request(method, f"{self.gateway_url}{path}", timeout=TIMEOUT)
                code = answer.status_code
            except requests.RequestException as exc:
                code = type(exc).__name__
            results[f"{method} {path}"] = code
            if code != 401:
                open_routes.append(f"{method} {path} -> {code}")
        return check("authentication", "Authentication required on every non-health gateway endpoint",
                     "fail" if open_routes else "pass",
                     {"probed": results, "not_401": open_routes, "exempt_by_design": UNAUTHENTICATED_BY_DESIGN},
                     "every route of the gateway's url map called without X-API-Key")

    def _check_transport(self) -> dict[str, Any]:
        parsed = urlparse(self.gateway_url)
        loopback = parsed.hostname in ("127.0.0.1", "localhost", "::1")
        evidence: dict[str, Any] = {"gateway": self.gateway_url, "gateway_tls": parsed.scheme == "https",
                                    "internal_grpc": "insecure channels (loopback / cluster network)"}
        if self.engine.dialect.name == "postgresql":
            try:
                with self.engine.connect() as connection:
                    evidence["postgres_connection_ssl"] = bool(connection.execute(
                        sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar())
            except Exception as exc:
                evidence["postgres_connection_ssl"] = f"unknown ({type(exc).__name__})"
        if parsed.scheme == "https":
            status = "pass"
        else:
            status = "warning" if loopback else "fail"
            evidence["note"] = ("plain HTTP on loopback (local stack): acceptable only because nothing leaves the host; "
                                "a deployment must terminate TLS in front of the gateway (ingress)") if loopback else \
                "plain HTTP on a non-loopback address: personal data travels unencrypted"
        return check("encryption_in_transit", "Encryption in transit (TLS)", status, evidence)

    def _check_at_rest(self) -> dict[str, Any]:
        evidence: dict[str, Any] = {"database": self.engine.dialect.name,
                                    "images_stored": False, "user_ids": "HMAC-SHA256 pseudonyms only"}
        if self.engine.dialect.name == "sqlite":
            db_file = Path(self.engine.url.database)
            evidence["sqlite_file"] = str(db_file)
            evidence["sqlite_encrypted"] = False
            evidence["sqlite_file_mode"] = oct(db_file.stat().st_mode & 0o777) if db_file.exists() else None
            evidence["secure_delete"] = "ON (erased rows overwritten)"
        else:
            evidence["postgres_at_rest"] = "not encrypted by the application; depends on the volume/disk encryption"
        key_file = config.var_dir() / "secrets" / "pseudonym_key"
        if os.environ.get("PSEUDONYM_KEY"):
            evidence["pseudonym_key"] = "from environment (secret store)"
        elif key_file.exists():
            mode = stat.S_IMODE(key_file.stat().st_mode)
            evidence["pseudonym_key"] = f"{key_file} mode {oct(mode)}"
            if mode & 0o077:
                return check("encryption_at_rest", "Data at rest: encryption and key protection", "fail",
                             {**evidence, "note": "pseudonymisation key readable by other users"})
        return check("encryption_at_rest", "Data at rest: encryption and key protection", "warning",
                     {**evidence, "note": "the application does not encrypt its database; rely on disk/volume "
                                          "encryption (stated, not verifiable from here)"})

    def _check_model_integrity(self) -> dict[str, Any]:
        served = triton_ready_versions(DEFAULT_MODEL_NAME)
        source = f"Triton {triton_http_url()} repository index"
        model_dir = repository_path() / DEFAULT_MODEL_NAME
        if served is None:
            served = sorted((p.name for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()), key=int)
            source = f"version directories under {model_dir} (Triton unreachable)"
        registry = ModelRegistry(registry_path())
        results = [verify_version(registry, model_dir / v, DEFAULT_MODEL_NAME, v) for v in served]
        bad = [r for r in results if r["status"] != "ok"]
        served_deprecated = [r["version"] for r in results if r.get("registry_status") == "deprecated"]
        status = "fail" if bad or served_deprecated else ("pass" if results else "not_measured")
        return check("model_integrity", "Served model files match their registered SHA-256", status,
                     {"source": source, "registry": str(registry_path()),
                      "versions": [{k: r.get(k) for k in ("version", "status", "detail", "model_id", "registry_status")}
                                   for r in results], "served_deprecated": served_deprecated})

    def _check_minimisation(self) -> list[dict[str, Any]]:
        inspector = sa.inspect(self.engine)
        unexpected, binary = {}, []
        for table, expected in EXPECTED_COLUMNS.items():
            columns = inspector.get_columns(table)
            extra = {c["name"] for c in columns} - expected
            if extra:
                unexpected[table] = sorted(extra)
            binary += [f"{table}.{c['name']}" for c in columns
                       if isinstance(c["type"], (sa.LargeBinary, sa.BLOB)) or "BYTEA" in str(c["type"]).upper()]
        preds = self._rows("predictions", self._since())
        feature_keys = sorted({k for p in preds for k in (p.get("features") or {})})
        heavy = [p["request_id"] for p in preds if len(json.dumps(p.get("features") or {})) > 4096]
        image_keys = [k for k in feature_keys if "image" in k.lower() or "base64" in k.lower()]
        var = config.var_dir()
        upload_files = [str(p) for p in var.rglob("*")
                        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
                        and not set(p.relative_to(var).parts[:-1]) & TOOL_OUTPUT_DIRS][:20]
        images_ok = not binary and not heavy and not image_keys and not upload_files
        return [
            check("data_minimisation", "Only the necessary columns are stored", "fail" if unexpected else "pass",
                  {"unexpected_columns": unexpected, "tables": list(EXPECTED_COLUMNS)},
                  "database schema inspected against the documented record of processing (RGPD.md)"),
            check("images_not_stored", "Uploaded images are not kept", "pass" if images_ok else "fail",
                  {"binary_columns": binary, "feature_keys": feature_keys, "oversized_feature_records": heavy[:10],
                   "image_files_under_var": upload_files,
                   "not_scanned": sorted(TOOL_OUTPUT_DIRS) + ["(developer tools' drawings of dataset frames and reports)"]},
                  "schema has no binary column; stored features are scalar statistics; no image file under var/ "
                  "outside the developer tools' output folders"),
        ]

    def _check_documents(self) -> dict[str, Any]:
        root = Path(__file__).resolve().parent
        required = {"RGPD.md": ["Art. 30", "Art. 35", "Base légale", "Durée de conservation"],
                    "MODEL_CARD.md": ["Limit"], "DATASHEET.md": ["Bias"], "CHECKLIST_GOUVERNANCE.md": ["### 8."],
                    "EXPLAINABILITY.md": ["occlusion"]}
        missing = {}
        for name, needles in required.items():
            path = root / name
            text = path.read_text() if path.exists() else ""
            lacks = [n for n in needles if n.lower() not in text.lower()]
            if not path.exists() or lacks:
                missing[name] = "missing" if not path.exists() else lacks
        return check("documentation", "Records of processing, DPIA, model card, datasheet present",
                     "fail" if missing else "pass", {"missing": missing, "checked": list(required)})

    def generate_compliance_report(self, model_id: str | None = None) -> dict[str, Any]:
        registry = ModelRegistry(registry_path())
        latest = registry.get_latest_version(DEFAULT_MODEL_NAME)
        if self.canary:
            self.run_canary()  # first, so every later check also sees the canary's traces
        checks = [self._check_pseudonymisation(), self._check_logs(), *self._check_erasure(), self._check_retention(),
                  self._check_authentication(), self._check_transport(), self._check_at_rest(),
                  self._check_model_integrity(), *self._check_minimisation(), self._check_documents(),
                  check("legal_basis", "Legal basis of the processing", "warning",
                        "documented, not measurable: legitimate interest (Art. 6(1)(f)) for road-traffic analysis "
                        "by the operator; see governance/RGPD.md")]
        summary = Counter(c["status"] for c in checks)
        return {"report_date": _now().isoformat(timespec="seconds"),
                "model_id": model_id or (latest["model_id"] if latest else None),
                "overall": "fail" if summary.get("fail") else "warning" if summary.get("warning") else "pass",
                "summary": dict(summary), "checks": checks}

    # ------------------------------------------------------------------ performance
    def _availability(self) -> dict[str, Any]:
        probes = {
            "gateway /health": f"{self.gateway_url}/health", "gateway /ready": f"{self.gateway_url}/ready",
            "results-service /ready": f"{self.results_url}/ready", "feature-service /health": f"{self.feature_url}/health",
            "triton car_detector ready": f"{triton_http_url()}/v2/models/{DEFAULT_MODEL_NAME}/ready",
        }
        results = {}
        for name, url in probes.items():
            answer = self._get(url)
            results[name] = answer.status_code if answer is not None else "unreachable"
        up = sum(1 for v in results.values() if v == 200)
        health_changes = [e for e in self.log_events() if e.get("event.action") == "health"]
        not_serving = sum(1 for e in health_changes if "NOT_SERVING" in str(e.get("message")))
        gateway = self._http_events("gateway")
        served = sum(1 for e in gateway if int(e.get("http.response.status_code") or 0) < 500)
        return {"probes_now": results, "healthy_now": f"{up}/{len(results)}",
                "adapter_not_serving_transitions": not_serving,
                "gateway_non_5xx_ratio": round(served / len(gateway), 5) if gateway else None}

    def generate_performance_report(self, period_days: int | None = None) -> dict[str, Any]:
        preds = self._rows("predictions", self._since(period_days))
        confidences = [float(d["confidence"]) for p in preds for d in (p["detections"] or [])]
        end_to_end = [float(e["event.duration"]) / 1e6 for e in self._http_events("gateway")
                      if e.get("url.path") == "/api/detect" and int(e.get("http.response.status_code") or 0) == 201
                      and isinstance(e.get("event.duration"), (int, float))]
        hist, edges = np.histogram(confidences, bins=np.linspace(0, 1, 11)) if confidences else (np.zeros(10), np.linspace(0, 1, 11))
        baseline = drift_mod.load_baseline()
        features = [p["features"] for p in preds if isinstance(p.get("features"), dict)]
        data_drift = drift_mod.drift(baseline, features) if baseline else {"error": f"no baseline at {drift_mod.baseline_path()}"}
        if baseline:
            data_drift["baseline"] = {k: baseline[k] for k in ("computed_at", "images", "dataset_fingerprint", "source")}
        return {
            "period_days": period_days or self.period_days,
            "model_inference_ms": percentiles([float(p["inference_time_ms"]) for p in preds]),
            "gateway_detect_end_to_end_ms": {**percentiles(end_to_end), "source": "gateway http.request events (POST /api/detect 201)"},
            "confidence": {**percentiles(confidences),
                           "histogram": {f"{edges[i]:.1f}-{edges[i + 1]:.1f}": int(hist[i]) for i in range(len(hist))},
                           "below_0.5_share": round(sum(c < 0.5 for c in confidences) / len(confidences), 4) if confidences else None},
            "data_drift": data_drift,
            "availability": self._availability(),
        }

    # ------------------------------------------------------------------ export
    def generate(self, period_days: int | None = None) -> dict[str, Any]:
        return {"generated_at": _now().isoformat(timespec="seconds"), "database": self.engine.dialect.name,
                "usage": self.generate_usage_report(period_days),
                "compliance": self.generate_compliance_report(),
                "performance": self.generate_performance_report(period_days)}

    def export_report(self, report: dict[str, Any], output_path: str | Path) -> dict[str, Path]:
        """Write <output_path>.json, .md and .html (+ plots); return the paths."""
        output_path = Path(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        plots = make_plots(report, output_path.parent / f"{output_path.name}_plots")
        paths = {"json": output_path.with_suffix(".json"), "markdown": output_path.with_suffix(".md"),
                 "html": output_path.with_suffix(".html")}
        paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
        paths["markdown"].write_text(self._report_to_markdown(report, plots))
        paths["html"].write_text(report_to_html(report, plots))
        for name, plot in plots.items():
            paths[f"plot:{name}"] = plot
        return paths

    def _report_to_markdown(self, report: dict[str, Any], plots: dict[str, Path] | None = None) -> str:
        return report_to_markdown(report, plots or {})


# ---------------------------------------------------------------------- rendering

STATUS_MARK = {"pass": "PASS", "fail": "FAIL", "warning": "WARN", "not_measured": "N/A"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if not math.isnan(value) else "n/a"
    if value is None:
        return "n/a"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 400 else text[:400] + "…"
    return str(value)


def report_to_markdown(report: dict[str, Any], plots: dict[str, Path]) -> str:
    usage, comp, perf = report["usage"], report["compliance"], report["performance"]
    lines = ["# Audit report — car detection system", "",
             f"Generated {report['generated_at']} · database {report['database']} · period {usage['period']['days']} days "
             f"({usage['period']['from']} → {usage['period']['to']})", "",
             "## 1. Usage", "",
             "| metric | value |", "|---|---|",
             f"| predictions | {usage['predictions']} |",
             f"| distinct users (pseudonymous hashes) | {usage['distinct_users']} |",
             f"| distinct API clients | {usage['distinct_clients']} |",
             f"| detections | {usage['detections']} ({usage['predictions_without_detection']} predictions without any) |",
             f"| inference time ms mean / p95 / p99 | {_fmt(usage['inference_time_ms']['mean'])} / "
             f"{_fmt(usage['inference_time_ms']['p95'])} / {_fmt(usage['inference_time_ms']['p99'])} |",
             f"| class distribution | {_fmt(usage['class_distribution'])} |",
             f"| model versions | {_fmt(usage['model_versions'])} |",
             f"| gateway requests / 5xx rate / 4xx rate | {usage['error_rate']['requests']} / "
             f"{_fmt(usage['error_rate']['server_error_rate'])} / {_fmt(usage['error_rate']['client_error_rate'])} |",
             f"| feedback / contested predictions / contest rate | {usage['feedback']['total']} / "
             f"{usage['feedback']['contested_predictions']} / {_fmt(usage['feedback']['contest_rate'])} |",
             f"| data-subject and access events | {_fmt(usage['data_subject_requests'])} |", "",
             f"Error-rate source: {usage['error_rate']['source']}.", "",
             "| day | predictions | users | gateway requests | 4xx | 5xx |", "|---|---|---|---|---|---|",
             *[f"| {d} | {v['predictions']} | {v['users']} | {v['requests']} | {v['client_errors']} | {v['server_errors']} |"
               for d, v in usage["per_day"].items()], ""]
    for name in ("per_day", "classes"):
        if name in plots:
            lines += [f"![{name}]({plots[name].parent.name}/{plots[name].name})", ""]
    lines += ["## 2. Compliance", "", f"Overall: **{comp['overall'].upper()}** — {_fmt(comp['summary'])} "
              f"(model {comp['model_id']})", "", "| status | check | evidence |", "|---|---|---|"]
    for c in comp["checks"]:
        lines.append(f"| {STATUS_MARK.get(c['status'], c['status'])} | {c['title']} | "
                     f"{_fmt(c['evidence']).replace('|', '/')} |")
    lines += ["", "Basis of each measurement:", ""]
    lines += [f"- `{c['id']}`: {c['basis']}" for c in comp["checks"] if c.get("basis")]
    dd = perf["data_drift"]
    lines += ["", "## 3. Performance", "",
              "| latency (ms) | n | mean | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for label, key in (("model inference", "model_inference_ms"), ("gateway /api/detect end to end", "gateway_detect_end_to_end_ms")):
        p = perf[key]
        lines.append(f"| {label} | {p['n']} | {_fmt(p['mean'])} | {_fmt(p['p50'])} | {_fmt(p['p95'])} | {_fmt(p['p99'])} | {_fmt(p['max'])} |")
    lines += ["", f"Confidence of stored detections: mean {_fmt(perf['confidence']['mean'])}, "
              f"share below 0.5: {_fmt(perf['confidence']['below_0.5_share'])}; histogram {_fmt(perf['confidence']['histogram'])}", ""]
    if "features" in dd:
        lines += [f"Data drift (PSI vs {dd.get('baseline', {}).get('images')} training frames; "
                  f"<0.1 stable, 0.1-0.25 moderate, >0.25 significant; "
                  f"levels judged on PSI minus its sampling noise (k-1)/n; "
                  f"{'enough data' if dd['enough_data'] else f'fewer than {drift_mod.MIN_SAMPLE} images: indicative only'}):", "",
                  "| feature | n | PSI | noise floor | level | baseline mean | production mean |", "|---|---|---|---|---|---|---|",
                  *[f"| {k} | {v['n']} | {_fmt(v['psi'])} | {_fmt(v.get('noise_floor'))} | {v['level']} | {_fmt(v.get('baseline_mean'))} | {_fmt(v.get('production_mean'))} |"
                    for k, v in dd["features"].items()], ""]
    else:
        lines += [f"Data drift: {dd.get('error')}", ""]
    lines += [f"Availability now: {perf['availability']['healthy_now']} probes healthy "
              f"{_fmt(perf['availability']['probes_now'])}; gateway non-5xx ratio "
              f"{_fmt(perf['availability']['gateway_non_5xx_ratio'])}; adapter NOT_SERVING transitions "
              f"{perf['availability']['adapter_not_serving_transitions']}", ""]
    for name in ("latency", "confidence", "drift"):
        if name in plots:
            lines += [f"![{name}]({plots[name].parent.name}/{plots[name].name})", ""]
    return "\n".join(lines) + "\n"


def report_to_html(report: dict[str, Any], plots: dict[str, Path]) -> str:
    comp = report["compliance"]
    colour = {"pass": "#1a7f37", "fail": "#cf222e", "warning": "#9a6700", "not_measured": "#57606a"}
    rows = "".join(
        f"<tr><td style='color:{colour.get(c['status'], '#000')};font-weight:bold'>{html.escape(c['status'])}</td>"
        f"<td>{html.escape(c['title'])}</td><td><pre>{html.escape(json.dumps(c['evidence'], indent=1, default=str)[:3000])}</pre></td></tr>"
        for c in comp["checks"])
    images = "".join(
        f"<figure><img alt='{name}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
        f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, path in plots.items())
    body_md = html.escape(report_to_markdown(report, {}))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Audit report {html.escape(report['generated_at'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}}
pre{{white-space:pre-wrap;margin:0;font-size:11px}}img{{max-width:100%}}figure{{display:inline-block;width:48%;margin:0.5%}}</style></head>
<body><h1>Audit report — car detection system</h1><p>Generated {html.escape(report['generated_at'])}. Overall compliance:
<b style="color:{colour.get(comp['overall'], '#000')}">{html.escape(comp['overall'].upper())}</b> {html.escape(json.dumps(comp['summary']))}</p>
<h2>Compliance checks</h2><table><tr><th>status</th><th>check</th><th>evidence</th></tr>{rows}</table>
<h2>Plots</h2>{images}<h2>Full report (Markdown)</h2><pre>{body_md}</pre></body></html>
"""


def make_plots(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    usage, perf = report["usage"], report["performance"]

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        plots[name] = path

    days = list(usage["per_day"])
    if days:
        fig, ax = plt.subplots(figsize=(7, 3))
        x = np.arange(len(days))
        ax.bar(x - 0.2, [usage["per_day"][d]["predictions"] for d in days], 0.4, label="predictions")
        ax.bar(x + 0.2, [usage["per_day"][d]["server_errors"] + usage["per_day"][d]["client_errors"] for d in days], 0.4,
               label="4xx+5xx", color="#cf222e")
        ax.set_xticks(x, days, rotation=45, fontsize=7)
        ax.legend()
        ax.set_title("Predictions and errors per day")
        save(fig, "per_day")
    if usage["class_distribution"]:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(list(usage["class_distribution"]), list(usage["class_distribution"].values()))
        ax.set_title("Detections per class")
        save(fig, "classes")
    hist = perf["confidence"]["histogram"]
    if any(hist.values()):
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(list(hist), list(hist.values()), color="#3a7bd5")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.set_title("Confidence of stored detections")
        save(fig, "confidence")
    lat = perf["model_inference_ms"]
    if lat["n"]:
        fig, ax = plt.subplots(figsize=(5, 3))
        labels = ["mean", "p50", "p95", "p99", "max"]
        ax.bar(labels, [lat[k] for k in labels], color="#8250df", label="model")
        e2e = perf["gateway_detect_end_to_end_ms"]
        if e2e["n"]:
            ax.plot(labels, [e2e[k] for k in labels], "o-", color="#cf222e", label="gateway end to end")
        ax.set_ylabel("ms")
        ax.legend()
        ax.set_title("Latency")
        save(fig, "latency")
    feats = perf["data_drift"].get("features", {})
    scored = {k: v["psi"] for k, v in feats.items() if v["psi"] is not None}
    if scored:
        fig, ax = plt.subplots(figsize=(6, 3))
        palette = {"significant": "#cf222e", "moderate": "#9a6700", "stable": "#1a7f37"}
        ax.bar(list(scored), list(scored.values()), color=[palette.get(feats[k]["level"], "#57606a") for k in scored])
        ax.plot(list(scored), [feats[k].get("noise_floor", 0) for k in scored], "k_", markersize=14, label="sampling noise")
        ax.legend(fontsize=7)
        ax.axhline(0.1, ls="--", color="#9a6700", lw=1)
        ax.axhline(0.25, ls="--", color="#cf222e", lw=1)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.set_title("Data drift: PSI per image feature (colour = level after noise)")
        save(fig, "drift")
    return plots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m governance.audit_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--period-days", type=int, default=30)
    parser.add_argument("--out", default=None, help="folder (default $VAR_DIR/reports)")
    parser.add_argument("--no-canary", action="store_true", help="do not create/erase the synthetic canary subject")
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--strict", action="store_true", help="exit 1 if any compliance check fails")
    args = parser.parse_args(argv)
    generator = AuditReportGenerator(log_dir=args.log_dir, period_days=args.period_days, canary=not args.no_canary)
    report = generator.generate()
    folder = Path(args.out) if args.out else config.var_dir() / "reports"
    stamp = _now().strftime("%Y%m%dT%H%M%SZ")
    paths = generator.export_report(report, folder / f"audit_report_{stamp}")
    comp = report["compliance"]
    for c in comp["checks"]:
        print(f"  {STATUS_MARK.get(c['status'], c['status']):4}  {c['id']:24} {c['title']}")
    print(f"compliance: {comp['overall']} {dict(comp['summary'])}")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 1 if args.strict and comp["overall"] == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
