"""The audit's measurements: usage, performance, data-subject requests, and the served
model's own validation (cross-validation, slices, calibration, drift), with the checks
that judge the model section."""
from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from governance import drift as drift_mod
from governance.audit_checks import check, now
from governance.audit_sources import AuditContext, model_metadata, probe_health, served_version
from governance.store import aware

NOT_MEASURED = "not measured"
CALIBRATION_TARGET_ECE = 0.05
CROSSVAL_MAX_STD = 0.10


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {"n": int(array.size), "mean": round(float(array.mean()), 3), "min": round(float(array.min()), 3),
            "p50": round(float(np.percentile(array, 50)), 3), "p95": round(float(np.percentile(array, 95)), 3),
            "p99": round(float(np.percentile(array, 99)), 3), "max": round(float(array.max()), 3)}


def _code(event: dict[str, Any]) -> int:
    return int(event.get("http.response.status_code") or 0)


def usage(ctx: AuditContext, since: datetime, days: int) -> dict[str, Any]:
    preds = ctx.store.rows("predictions", since)
    feedback = ctx.store.rows("feedback", since)
    audit = ctx.store.rows("audit_events", since, "at")
    classes: Counter[str] = Counter()
    per_day: dict[str, dict[str, Any]] = defaultdict(lambda: {"predictions": 0, "users": set(), "requests": 0,
                                                             "client_errors": 0, "server_errors": 0})
    for p in preds:
        for d in p["detections"] or []:
            classes[d.get("class_name", "?")] += 1
        day = per_day[(aware(p["created_at"]) or now()).date().isoformat()]
        day["predictions"] += 1
        day["users"].add(p["user_hash"])
    gateway = [e for e in ctx.http_events("gateway") if (aware(e.get("@timestamp")) or now()) >= since]
    for e in gateway:
        day = per_day[(aware(e.get("@timestamp")) or now()).date().isoformat()]
        day["requests"] += 1
        day["client_errors"] += 400 <= _code(e) < 500
        day["server_errors"] += _code(e) >= 500
    codes = Counter(_code(e) // 100 for e in gateway)
    detect_calls = [e for e in gateway if e.get("url.path") == "/api/detect"]
    detect_failures = sum(_code(e) >= 500 for e in detect_calls)
    contested = [f for f in feedback if not f["correct"]]
    return {
        "period": {"days": days, "from": since.isoformat(timespec="seconds"), "to": now().isoformat(timespec="seconds")},
        "predictions": len(preds),
        "distinct_users": len({p["user_hash"] for p in preds}),
        "distinct_clients": len({p["client_id"] for p in preds}),
        "inference_time_ms": percentiles([float(p["inference_time_ms"]) for p in preds]),
        "detections": sum(p["detection_count"] for p in preds),
        "predictions_without_detection": sum(1 for p in preds if not p["detection_count"]),
        "class_distribution": dict(classes.most_common()),
        "model_versions": dict(Counter(str(p["model_version"]) for p in preds)),
        "error_rate": {
            "source": f"gateway http.request events in {ctx.log_dir}/gateway.jsonl" if gateway
            else f"no gateway log events in {ctx.log_dir}",
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


def data_subject_requests(ctx: AuditContext, since: datetime) -> dict[str, Any]:
    """Requests handled per right: how many (journal), how long the service took to answer
    them (results-service access log), and for contests how long until a DPO reviewed them."""
    journal = Counter(a["action"] for a in ctx.store.rows("audit_events", since, "at"))
    events = [e for e in ctx.http_events("results-service") if (aware(e.get("@timestamp")) or now()) >= since]

    def answered(method: str, match: Any) -> list[float]:
        return [float(e["event.duration"]) / 1e6 for e in events if e.get("http.request.method") == method
                and match(str(e.get("url.path", ""))) and _code(e) < 500 and isinstance(e.get("event.duration"), (int, float))]

    user_path = "/predictions/user/<path:user_id>"
    feedback = sorted(ctx.store.rows("feedback", since), key=lambda f: aware(f["created_at"]) or now())
    reviews: list[float] = []
    open_contests, overdue = 0, 0
    for contest in (f for f in feedback if not f["correct"] and f["actor_role"] not in ("dpo", "admin")):
        at = aware(contest["created_at"]) or now()
        later = [aware(f["created_at"]) or now() for f in feedback if f["request_id"] == contest["request_id"]
                 and f["actor_role"] in ("dpo", "admin") and (aware(f["created_at"]) or now()) >= at]
        if later:
            reviews.append((min(later) - at).total_seconds() / 3600)
        else:
            open_contests += 1
            overdue += (now() - at) > timedelta(days=30)
    return {
        "period_from": since.isoformat(timespec="seconds"),
        "access_and_export": {"count": journal.get("access_export", 0),
                              "answer_ms": percentiles(answered("GET", lambda p: p == user_path))},
        "erasure": {"count": journal.get("erasure", 0),
                    "answer_ms": percentiles(answered("DELETE", lambda p: p == user_path))},
        "contest": {"count": journal.get("contest", 0),
                    "answer_ms": percentiles(answered("POST", lambda p: p.endswith("/feedback"))),
                    "reviewed": len(reviews), "open": open_contests, "open_over_30_days": overdue,
                    "hours_to_review": percentiles(reviews)},
        "record_reads": journal.get("read", 0),
        "legal_deadline": "one month (GDPR Art. 12(3)); access, export and erasure are answered at once by the API",
    }


def performance(ctx: AuditContext, since: datetime, days: int) -> dict[str, Any]:
    preds = ctx.store.rows("predictions", since)
    confidences = [float(d["confidence"]) for p in preds for d in (p["detections"] or [])]
    end_to_end = [float(e["event.duration"]) / 1e6 for e in ctx.http_events("gateway")
                  if e.get("url.path") == "/api/detect" and _code(e) == 201
                  and isinstance(e.get("event.duration"), (int, float))]
    edges = np.linspace(0, 1, 11)
    hist = np.histogram(confidences, bins=edges)[0] if confidences else np.zeros(10)
    baseline = drift_mod.load_baseline()
    features = [p["features"] for p in preds if isinstance(p.get("features"), dict)]
    data_drift: dict[str, Any] = drift_mod.drift(baseline, features) if baseline else {"error": f"no baseline at {drift_mod.baseline_path()}"}
    if baseline:
        data_drift["baseline"] = {k: baseline[k] for k in ("computed_at", "images", "dataset_fingerprint", "source")}
    probes = probe_health(ctx.gateway_url, ctx.results_url, ctx.feature_url)
    gateway = ctx.http_events("gateway")
    not_serving = sum(1 for e in ctx.log_events() if e.get("event.action") == "health" and "NOT_SERVING" in str(e.get("message")))
    return {
        "period_days": days,
        "model_inference_ms": percentiles([float(p["inference_time_ms"]) for p in preds]),
        "gateway_detect_end_to_end_ms": {**percentiles(end_to_end), "source": "gateway http.request events (POST /api/detect 201)"},
        "confidence": {**percentiles(confidences),
                       "histogram": {f"{edges[i]:.1f}-{edges[i + 1]:.1f}": int(hist[i]) for i in range(len(hist))},
                       "below_0.5_share": round(sum(c < 0.5 for c in confidences) / len(confidences), 4) if confidences else None},
        "data_drift": data_drift,
        "availability": {"probes_now": probes, "healthy_now": f"{sum(v == 200 for v in probes.values())}/{len(probes)}",
                         "adapter_not_serving_transitions": not_serving,
                         "gateway_non_5xx_ratio": round(sum(_code(e) < 500 for e in gateway) / len(gateway), 5) if gateway else None},
    }


def model_section(data_drift: dict[str, Any]) -> dict[str, Any]:
    """The served version's own figures, read from its model_metadata.json."""
    version, source = served_version()
    meta = model_metadata(version)
    validation = meta.get("validation_metrics") or {}
    return {
        "version": version, "version_source": source, "metadata_found": bool(meta),
        "exported_at": meta.get("exported_at"), "git_commit": meta.get("git_commit"),
        "architecture": meta.get("architecture"), "input_size": meta.get("input_size"),
        "dataset": {k: v for k, v in (meta.get("dataset") or {}).items() if k != "path"},
        "operating_threshold": meta.get("operating_threshold", validation.get("threshold")),
        "operating_precision": meta.get("operating_precision", NOT_MEASURED),
        "validation": {"threshold": validation.get("threshold"), "num_images": validation.get("num_images"),
                       "slices": validation.get("slices") or {}} if validation else NOT_MEASURED,
        "crossval": meta.get("crossval") or NOT_MEASURED,
        "calibration": meta.get("calibration") or NOT_MEASURED,
        "runtime": meta.get("runtime") or NOT_MEASURED,
        "drift": {k: data_drift.get(k) for k in ("n", "max_psi", "drifting", "enough_data")} if "features" in data_drift
        else data_drift.get("error", NOT_MEASURED),
    }


def model_checks(model: dict[str, Any], data_drift: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    cv = model["crossval"]
    title = "Accuracy cross-validated on held-out blocks of frames"
    if not isinstance(cv, dict):
        out.append(_not_in_metadata("model_validation", title, "crossval", "Cross-validation", model["version"]))
    else:
        pooled, spread, worst = cv.get("pooled") or {}, cv.get("spread") or {}, cv.get("worst_block") or {}
        std = spread.get("ap50_std")
        status = "pass" if isinstance(std, (int, float)) and std <= CROSSVAL_MAX_STD and pooled.get("ap50") is not None \
            else "warning"
        out.append(check("model_validation", title, status,
                         {"k": cv.get("k"), "gap_frames": cv.get("gap_frames"), "pooled": pooled, "spread": spread,
                          "worst_block": worst},
                         f"k-block cross-validation recorded in model_metadata.json; AP50 spread at most {CROSSVAL_MAX_STD}",
                         f"{cv.get('k')}-block cross-validation: pooled AP50 {_r(pooled.get('ap50'))}, AP50-95 "
                         f"{_r(pooled.get('ap50_95'))}; spread (std) {_r(std)}; worst block {worst.get('block')} at AP50 "
                         f"{_r(worst.get('ap50'))}."))
    cal = model["calibration"]
    title = "Confidence scores are calibrated (a score of 0.9 means about 90 % are cars)"
    if not isinstance(cal, dict):
        out.append(_not_in_metadata("calibration", title, "calibration", "Calibration", model["version"]))
    else:
        before, after = cal.get("ece_before"), cal.get("ece_after")
        if not isinstance(after, (int, float)) or not isinstance(before, (int, float)):
            status = "not_measured"
        elif after > before:
            status = "fail"
        else:
            status = "pass" if after <= CALIBRATION_TARGET_ECE else "warning"
        out.append(check("calibration", title, status, {k: cal.get(k) for k in ("method", "fitted_on", "ece_before", "ece_after")},
                         f"expected calibration error before and after {cal.get('method')} scaling, fitted out of fold; "
                         f"target ECE at most {CALIBRATION_TARGET_ECE}",
                         f"{cal.get('method')} calibration: ECE {_r(before)} before, {_r(after)} after."))
    title = "No significant drift of production images from the training baseline"
    if "features" not in data_drift or not data_drift.get("n"):
        out.append(check("data_drift", title, "not_measured", data_drift.get("error", "no stored image features"),
                         finding="No production image features to compare with the baseline."))
    else:
        drifting = data_drift["drifting"]
        # Too few images is no evidence either way: a warning, whether or not a feature looks drifted.
        status = ("fail" if drifting else "pass") if data_drift["enough_data"] else "warning"
        out.append(check("data_drift", title, status,
                         {k: data_drift.get(k) for k in ("n", "max_psi", "drifting", "enough_data")},
                         "PSI per image feature against the training frames, judged after its sampling noise",
                         (f"{len(drifting)} features drift significantly ({', '.join(drifting)})" if drifting else
                          "No feature drifts significantly") + f" over {data_drift['n']} images"
                         + ("" if data_drift["enough_data"] else f" (fewer than {drift_mod.MIN_SAMPLE}: indicative)") + "."))
    return out


def _not_in_metadata(check_id: str, title: str, key: str, label: str, version: object) -> dict[str, Any]:
    """The check of a figure the served version's model_metadata.json does not hold (`key`)."""
    return check(check_id, title, "not_measured", f"no {key} in v{version}'s model_metadata.json",
                 "model_metadata.json of the served version", f"{label}: {NOT_MEASURED} for v{version}.")


def _r(value: object) -> object:
    """A figure as a person reads it (4 decimals); anything else unchanged."""
    return round(value, 4) if isinstance(value, float) else value
