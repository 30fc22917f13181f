"""The audit's compliance checks, each measured on the live system.

Every check has a status: `pass`, `fail` (the property is measured false), `warning` (true
only in part, or stated rather than enforced) or `not_measured` (its source was
unreachable), the evidence it was judged on, how it was measured (`basis`) and a
`finding`: one sentence saying what was found.
"""
from __future__ import annotations

import json
import re
import stat
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
import sqlalchemy as sa

from governance.audit_sources import HEX64, TIMEOUT, UNAUTHENTICATED_BY_DESIGN, AuditContext, gateway_routes, http_get
from governance.purge import retention_days
from governance.store import DECLARED_COLUMNS, aware
from governance.triton_control import triton_ready_versions, version_dirs
from services.common.triton_client import http_url as triton_http_url
from services.common import config
from services.common.integrity import DEFAULT_MODEL_NAME, load_registry, registry_path, repository_path, verify_version

RAW_ID_KEYS = {"user_id", "user.id", "userid", "user.name", "user.email"}
# var/ folders where developer tools (make demo, training.explore, services/triton/check.py --draw,
# these reports) write drawings of dataset frames: not uploads, not scanned.
TOOL_OUTPUT_DIRS = {"reports", "demo", "dataset", "triton-check", "training"}
CANARY_CHECKS = (("erasure", "Right to erasure removes every row, leaves no residue"),
                 ("access_export", "Right of access/portability returns the user's data"),
                 ("recourse", "Feedback/contest channel records a contestation"),
                 ("access_journaled", "Every access to personal data is journaled"))


def now() -> datetime:
    return datetime.now(timezone.utc)


def check(check_id: str, title: str, status: str, evidence: Any, basis: str = "", finding: str = "") -> dict[str, Any]:
    return {"id": check_id, "title": title, "status": status, "evidence": evidence,
            **({"basis": basis} if basis else {}), "finding": finding or (evidence if isinstance(evidence, str) else "")}


def erasure_checks(ctx: AuditContext) -> list[dict[str, Any]]:
    if not ctx.canary_enabled:
        # The API's erasure path is not exercised, but the files can still be searched for
        # every subject whose erasure is journaled.
        residue = ctx.store.residue({}, ctx.store.erased_hashes())
        if residue.get("measured") and not residue["clean"]:
            return [check(CANARY_CHECKS[0][0], CANARY_CHECKS[0][1], "fail", {"file_residue": residue},
                          "the personal tables' files scanned for every erased subject's hash",
                          f"Erased data is still in the database files: {residue['erased_subjects_found']} of "
                          f"{residue['erased_subjects_checked']} erased subjects' hashes.")]
        return [check(CANARY_CHECKS[0][0], CANARY_CHECKS[0][1], "not_measured",
                      {"canary": "disabled (--no-canary)", "file_residue": residue},
                      "the personal tables' files scanned for every erased subject's hash",
                      "Canary disabled: the erasure path was not exercised; "
                      + (f"none of {residue['erased_subjects_checked']} erased subjects' hashes is left in the "
                         "database files." if residue.get("measured") else f"files not scanned: {residue.get('error')}."))]
    c = ctx.canary()
    if not c.get("reachable"):
        return [check(i, t, "not_measured", c.get("error")) for i, t in CANARY_CHECKS]
    residue = c["file_residue"]
    rows_ok = (c["stored"] == 201 and c["erasure"]["status"] == 200 and c["erasure"]["deleted"] == 1
               and c["erasure"]["deleted_feedback"] == 1 and c["rows_left_in_database"] == 0
               and c["after_erasure_export"] == {"predictions": 0, "feedback": 0})
    if not rows_ok:
        status, finding = "fail", "The canary subject's rows were not all erased through the API."
    elif not residue.get("measured"):
        status, finding = "not_measured", (f"Rows erased, but the database files could not be scanned: "
                                           f"{residue.get('error')}")
    elif not residue["clean"]:
        status = "fail"
        finding = (f"Rows are gone from every query, but erased data is still in the database files: "
                   f"{residue['erased_subjects_found']} of {residue['erased_subjects_checked']} erased subjects' hashes"
                   + (f", and the canary's {', '.join(residue['found'])}" if residue["found"] else "") + ".")
    else:
        status = "pass"
        finding = (f"The canary's prediction and feedback were deleted; none of {residue['erased_subjects_checked']} "
                   f"erased subjects' hashes, nor the canary's marker, is left in {residue['files']} database files "
                   f"({residue['bytes_scanned'] / 1e6:.1f} MB).")
    export = c["export"]
    export_ok = (export["status"] == 200 and export["predictions"] == 1 and export["feedback"] == 1
                 and export["access_log"] >= 1 and not export["raw_id_in_export"])
    actions = Counter(j["action"] for j in c["journal"])
    journal_ok = (actions.get("access_export", 0) >= 2 and actions.get("erasure", 0) >= 1
                  and actions.get("contest", 0) >= 1 and c["journal_raw_id_free"]
                  and all(j["actor_role"] == "service" for j in c["journal"]))
    vs_logs = journal_vs_logs(ctx)
    return [
        check("erasure", CANARY_CHECKS[0][1], status,
              {k: c[k] for k in ("stored", "erasure", "after_erasure_export", "rows_left_in_database", "file_residue")},
              "canary subject stored, contested and erased through the results service; the personal tables' "
              "files (SQLite file and WAL, or PostgreSQL relation files) scanned for the canary and every erased "
              "subject's hash", finding),
        check("access_export", CANARY_CHECKS[1][1], "pass" if export_ok else "fail", export,
              "canary export holds its prediction, its feedback and its access log, no raw id",
              f"The export held {export['predictions']} prediction, {export['feedback']} feedback and "
              f"{export['access_log']} access-log entries" + (", and no raw id." if not export["raw_id_in_export"]
                                                             else ", and the raw id (it must not).")),
        check("recourse", CANARY_CHECKS[2][1], "pass" if c["feedback"] == 201 else "fail",
              {"feedback_status": c["feedback"]}, "canary contest posted to the results service",
              "A contest was recorded (201)." if c["feedback"] == 201 else f"A contest was refused ({c['feedback']})."),
        check("access_journaled", CANARY_CHECKS[3][1], "pass" if journal_ok else "fail",
              {"canary_journal_actions": dict(actions), **vs_logs},
              "canary accesses found in audit_events (actor role, action, counts; no raw id); "
              "plus results-service access log lines vs journal entries",
              f"The canary's accesses were journaled ({', '.join(f'{k} x{v}' for k, v in sorted(actions.items()))}); "
              f"{vs_logs.get('journal_entries', 0)} journal entries for {vs_logs.get('logged_accesses', 0)} logged accesses."),
    ]


def journal_vs_logs(ctx: AuditContext) -> dict[str, Any]:
    """Successful personal-data accesses in the results service's access log vs journal entries since the log began."""
    access = [e for e in ctx.http_events("results-service")
              if int(e.get("http.response.status_code") or 0) == 200 and (
                  (e.get("http.request.method") in ("GET", "DELETE") and e.get("url.path") == "/predictions/user/<path:user_id>")
                  or (e.get("http.request.method") == "GET" and re.fullmatch(r"/predictions/[^/]+", str(e.get("url.path"))))
                  or (e.get("http.request.method") == "POST" and str(e.get("url.path", "")).endswith("/feedback")))]
    if not access:
        return {"logged_accesses": 0, "note": f"no results-service access log in {ctx.log_dir}"}
    first = min(aware(e.get("@timestamp")) or now() for e in access) - timedelta(seconds=1)
    journal = [a for a in ctx.store.rows("audit_events", first, "at")
               if a["action"] in ("read", "access_export", "erasure", "feedback", "contest")]
    return {"logged_accesses": len(access), "journal_entries": len(journal), "since": first.isoformat(timespec="seconds"),
            "complete": len(journal) >= len(access)}


def pseudonymisation(ctx: AuditContext) -> dict[str, Any]:
    bad: dict[str, int] = {}
    counted: dict[str, int] = {}
    for table in ("predictions", "feedback", "audit_events"):
        hashes = [r["user_hash"] for r in ctx.store.rows(table) if r.get("user_hash") is not None]
        counted[table] = len(hashes)
        bad[table] = sum(1 for h in hashes if not HEX64.match(h))
    evidence: dict[str, Any] = {"user_hash_values_checked": counted, "not_64_hex": bad}
    status = "pass" if not any(bad.values()) else "fail"
    if ctx.canary_enabled and (c := ctx.canary()).get("reachable"):
        evidence["canary_stored_as_hash"] = c["stored_hash_format_ok"]
        evidence["canary_raw_id_in_row"] = c["raw_id_in_stored_row"]
        if not c["stored_hash_format_ok"] or c["raw_id_in_stored_row"]:
            status = "fail"
    finding = (f"All {sum(counted.values())} stored user references are 64-hex keyed hashes." if status == "pass" else
               f"{sum(bad.values())} stored user references are not keyed hashes (or the canary's raw id was stored).")
    return check("pseudonymisation", "User ids stored only as keyed hashes (HMAC-SHA256)", status, evidence,
                 "every user_hash in every table is 64 hex chars; the canary's raw id is absent from its row", finding)


def logs(ctx: AuditContext) -> dict[str, Any]:
    events = ctx.log_events()
    raw_keys = [f"{e['_file']}:{e['_line']} key {k}" for e in events for k in e if k.lower() in RAW_ID_KEYS]
    files = sorted(ctx.log_dir.glob("*"))
    canary_hits = []
    if ctx.canary_enabled and (c := ctx.canary()).get("reachable"):
        needle = c["raw_id"].encode()
        canary_hits = [p.name for p in files if p.is_file() and needle in p.read_bytes()]
    evidence = {"log_dir": str(ctx.log_dir), "files_scanned": len(files), "json_events": len(events),
                "raw_user_id_fields": raw_keys[:20], "canary_raw_id_found_in": canary_hits}
    title = "No raw user id in any log"
    if not events:
        return check("no_raw_ids_in_logs", title, "not_measured", {**evidence, "note": "no JSON log lines found"},
                     finding=f"No JSON log line found in {ctx.log_dir}.")
    status = "fail" if raw_keys or canary_hits else "pass"
    finding = (f"{len(events)} log events in {len(files)} files hold no raw user id." if status == "pass" else
               f"Raw user ids found in the logs: {len(raw_keys)} fields, canary in {canary_hits or 'no file'}.")
    return check("no_raw_ids_in_logs", title, status, evidence,
                 "every JSON log line scanned for user_id-like keys; every log file scanned for the canary's raw id", finding)


def retention(ctx: AuditContext) -> dict[str, Any]:
    days = retention_days()
    expired = ctx.store.count_older("predictions", now() - timedelta(days=days))
    oldest, last_purge = ctx.store.oldest("predictions"), ctx.store.last_action("retention_purge")
    evidence = {"retention_days": days, "rows_older_than_retention": expired,
                "oldest_row_age_days": round((now() - oldest).total_seconds() / 86400, 2) if oldest else None,
                "last_purge": last_purge.isoformat(timespec="seconds") if last_purge else None}
    finding = (f"{expired} predictions are older than {days} days." if expired else
               (f"No prediction is older than {days} days (oldest: {evidence['oldest_row_age_days']} days)."
                if oldest else "No prediction is stored."))
    return check("retention", f"No prediction older than RETENTION_DAYS ({days})", "fail" if expired else "pass",
                 evidence, "rows counted in the results database; purge runs are journaled", finding)


def authentication(ctx: AuditContext) -> dict[str, Any]:
    title = "Authentication required on every non-health gateway endpoint"
    try:
        routes = gateway_routes()
    except Exception as exc:  # the gateway's code could not be imported here
        return check("authentication", title, "not_measured", f"gateway url map unavailable: {exc}")
    if http_get(f"{ctx.gateway_url}/health") is None:
        return check("authentication", title, "not_measured", f"gateway {ctx.gateway_url} unreachable; routes: {len(routes)}")
    results, open_routes = {}, []
    for method, path in routes:
        try:
            code: Any = requests.request(method, f"{ctx.gateway_url}{path}", timeout=TIMEOUT).status_code
        except requests.RequestException as exc:
            code = type(exc).__name__
        results[f"{method} {path}"] = code
        if code != 401:
            open_routes.append(f"{method} {path} -> {code}")
    finding = (f"All {len(results)} gateway routes answered 401 without a key." if not open_routes else
               f"{len(open_routes)} of {len(results)} routes did not answer 401 without a key: {', '.join(open_routes[:3])}.")
    return check("authentication", title, "fail" if open_routes else "pass",
                 {"probed": results, "not_401": open_routes, "exempt_by_design": UNAUTHENTICATED_BY_DESIGN},
                 "every route of the gateway's url map called without X-API-Key", finding)


def transport(ctx: AuditContext) -> dict[str, Any]:
    parsed = urlparse(ctx.gateway_url)
    loopback = parsed.hostname in ("127.0.0.1", "localhost", "::1")
    evidence: dict[str, Any] = {"gateway": ctx.gateway_url, "gateway_tls": parsed.scheme == "https",
                                "internal_grpc": "insecure channels (loopback / cluster network)"}
    if ctx.store.dialect == "postgresql":
        evidence["postgres_connection_ssl"] = ctx.store.postgres_ssl()
    if parsed.scheme == "https":
        status, finding = "pass", "The gateway answers over TLS."
    else:
        status = "warning" if loopback else "fail"
        evidence["note"] = ("plain HTTP on loopback (local stack): acceptable only because nothing leaves the host; "
                            "a deployment must terminate TLS in front of the gateway (ingress)") if loopback else \
            "plain HTTP on a non-loopback address: personal data travels unencrypted"
        finding = evidence["note"][0].upper() + evidence["note"][1:] + "."
    return check("encryption_in_transit", "Encryption in transit (TLS)", status, evidence,
                 "scheme of the audited gateway URL; PostgreSQL connection's pg_stat_ssl", finding)


def at_rest(ctx: AuditContext) -> dict[str, Any]:
    title = "Data at rest: encryption and key protection"
    evidence: dict[str, Any] = {"database": ctx.store.dialect, "images_stored": False,
                                "user_ids": "HMAC-SHA256 pseudonyms only"}
    if ctx.store.dialect == "sqlite":
        db_file = Path(ctx.store.engine.url.database or "")
        evidence.update(sqlite_file=str(db_file), sqlite_encrypted=False,
                        sqlite_file_mode=oct(db_file.stat().st_mode & 0o777) if db_file.exists() else None,
                        secure_delete="ON (erased rows overwritten)")
    else:
        evidence["postgres_at_rest"] = "not encrypted by the application; depends on the volume/disk encryption"
    key_file = config.var_dir() / "secrets" / "pseudonym_key"
    if config.PSEUDONYM_KEY:
        evidence["pseudonym_key"] = "from environment (secret store)"
    elif key_file.exists():
        mode = stat.S_IMODE(key_file.stat().st_mode)
        evidence["pseudonym_key"] = f"{key_file} mode {oct(mode)}"
        if mode & 0o077:
            return check("encryption_at_rest", title, "fail", {**evidence, "note": "pseudonymisation key readable by other users"},
                         finding="The pseudonymisation key file is readable by other users.")
    return check("encryption_at_rest", title, "warning",
                 {**evidence, "note": "the application does not encrypt its database; rely on disk/volume "
                                      "encryption (stated, not verifiable from here)"},
                 "database kind and pseudonymisation key file mode",
                 "The key is protected, but the database is not encrypted by the application: disk encryption is "
                 "assumed, not verified.")


def model_integrity(ctx: AuditContext) -> dict[str, Any]:
    served = triton_ready_versions(DEFAULT_MODEL_NAME)
    source = f"Triton {triton_http_url()} repository index"
    model_dir = repository_path() / DEFAULT_MODEL_NAME
    if served is None:
        served = [str(v) for v in version_dirs(model_dir)]
        source = f"version directories under {model_dir} (Triton unreachable)"
    registry = load_registry(registry_path())
    results = [verify_version(registry, model_dir / v, DEFAULT_MODEL_NAME, v) for v in served]
    bad = [r for r in results if r["status"] != "ok"]
    served_deprecated = [r["version"] for r in results if r.get("registry_status") == "deprecated"]
    status = "fail" if bad or served_deprecated else ("pass" if results else "not_measured")
    finding = (f"Served version(s) {', '.join(served)}: files match the registered SHA-256." if status == "pass" else
               "Served versions: " + (", ".join(f"v{r['version']} {r['status']}" for r in results) or "none found")
               + (f"; deprecated yet served: {', '.join(served_deprecated)}" if served_deprecated else "") + ".")
    return check("model_integrity", "Served model files match their registered SHA-256", status,
                 {"source": source, "registry": str(registry_path()),
                  "versions": [{k: r.get(k) for k in ("version", "status", "detail", "model_id", "registry_status")}
                               for r in results], "served_deprecated": served_deprecated},
                 "each served version directory hashed and compared with the registry", finding)


def minimisation(ctx: AuditContext, period_start: datetime) -> list[dict[str, Any]]:
    unexpected, binary = {}, []
    for table, expected in DECLARED_COLUMNS.items():
        columns = ctx.store.columns(table)
        extra = {c["name"] for c in columns} - expected
        if extra:
            unexpected[table] = sorted(extra)
        binary += [f"{table}.{c['name']}" for c in columns
                   if isinstance(c["type"], (sa.LargeBinary, sa.BLOB)) or "BYTEA" in str(c["type"]).upper()]
    preds = ctx.store.rows("predictions", period_start)
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
              {"unexpected_columns": unexpected, "tables": list(DECLARED_COLUMNS)},
              "database schema inspected against the documented record of processing (RGPD.md)",
              "Every stored column is in the record of processing." if not unexpected else
              f"Columns outside the record of processing: {unexpected}."),
        check("images_not_stored", "Uploaded images are not kept", "pass" if images_ok else "fail",
              {"binary_columns": binary, "feature_keys": feature_keys, "oversized_feature_records": heavy[:10],
               "image_files_under_var": upload_files,
               "not_scanned": sorted(TOOL_OUTPUT_DIRS) + ["(developer tools' drawings of dataset frames and reports)"]},
              "schema has no binary column; stored features are scalar statistics; no image file under var/ "
              "outside the developer tools' output folders",
              "No binary column, no image-sized feature record and no uploaded image file was found." if images_ok else
              f"Image data may be kept: {len(binary)} binary columns, {len(heavy)} large records, "
              f"{len(upload_files)} image files under var/."),
    ]


def documents() -> dict[str, Any]:
    root = Path(__file__).resolve().parent
    required = {"RGPD.md": ["Art. 30", "Art. 35", "Base légale", "Durée de conservation"],
                "MODEL_CARD.md": ["Limit"], "DATASHEET.md": ["Bias"], "CHECKLIST_GOUVERNANCE.md": ["### 8."],
                "EXPLAINABILITY.md": ["occlusion"]}
    missing: dict[str, Any] = {}
    for name, needles in required.items():
        path = root / name
        text = path.read_text() if path.exists() else ""
        lacks = [n for n in needles if n.lower() not in text.lower()]
        if not path.exists() or lacks:
            missing[name] = "missing" if not path.exists() else lacks
    return check("documentation", "Records of processing, DPIA, model card, datasheet present",
                 "fail" if missing else "pass", {"missing": missing, "checked": list(required)},
                 "each document exists and holds its required sections",
                 f"All {len(required)} documents are present with their sections." if not missing else
                 f"Missing or incomplete: {', '.join(missing)}.")
