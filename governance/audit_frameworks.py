"""What auditors ask for, mapped to the checks that measure it.

Each check has an owner role and, unless it passes, an action with a due date. The GDPR
Art. 30 record, the Art. 35 DPIA status and the EU AI Act Annex IV technical
documentation are lists of claims; each claim names the checks that measured it, and a
claim that no check measures says so (`checks: []`, rendered as "declared, not measured").
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from governance.purge import audit_retention_days, retention_days

OWNERS = {
    "pseudonymisation": "DPO", "no_raw_ids_in_logs": "platform engineer", "erasure": "DPO",
    "access_export": "DPO", "recourse": "DPO", "access_journaled": "DPO", "retention": "data engineer",
    "authentication": "security engineer", "encryption_in_transit": "platform engineer",
    "encryption_at_rest": "platform engineer", "model_integrity": "ML lead", "data_minimisation": "DPO",
    "images_not_stored": "platform engineer", "documentation": "DPO", "legal_basis": "controller (DPO advises)",
    "model_validation": "ML lead", "calibration": "ML lead", "data_drift": "ML lead",
    "documents_consistent": "ML lead",
}
# What to do when a check does not pass (a failed check is always "fix, then re-run the audit").
REMEDIES = {
    "encryption_in_transit": "terminate TLS in front of the gateway (ingress, make certs for compose)",
    "encryption_at_rest": "confirm disk/volume encryption of the database host and record it",
    "legal_basis": "confirm the legal basis in writing with the controller (RGPD.md section 3)",
    "model_validation": "run the cross-validation (make crossval) and ship its figures with the version",
    "calibration": "fit calibration on the cross-validation folds and record ECE in model_metadata.json",
    "data_drift": "if a feature drifts, collect and label frames of that condition and re-validate before further "
                  "use; with fewer than 200 images stored, re-run the audit when more are",
    "documents_consistent": "regenerate or correct the documents' figures (python -m governance.figures write)",
}
DUE_DAYS = {"fail": 3, "not_measured": 7, "warning": 90}


def action(check: dict[str, Any], report_date: datetime) -> dict[str, str]:
    status = check["status"]
    if status == "pass":
        return {"action": "none", "due": "next audit"}
    remedy = REMEDIES.get(check["id"])
    text = {"fail": f"fix, then re-run make audit{'; ' + remedy if remedy else ''}",
            "not_measured": remedy or "make the source reachable, then re-run make audit",
            "warning": remedy or "review the evidence and record the decision"}[status]
    return {"action": text, "due": (report_date + timedelta(days=DUE_DAYS[status])).date().isoformat()}


def annotate(checks: list[dict[str, Any]], report_date: datetime) -> None:
    """Add owner, action and due date to each check."""
    for c in checks:
        c["owner"] = OWNERS.get(c["id"], "DPO")
        c.update(action(c, report_date))


def _claim(text: str, *checks: str) -> dict[str, Any]:
    return {"claim": text, "checks": list(checks)}


def gdpr_art30(database: str) -> list[dict[str, Any]]:
    return [
        _claim("Controller: the operator of the road-traffic analysis; contact: its DPO (RGPD.md section 1).", "documentation"),
        _claim("Purpose: detect and locate cars on road frames for traffic analysis; no identification of persons."),
        _claim("Data subjects: the users (drivers, operators) on whose behalf a frame is analysed.", "documentation"),
        _claim("Personal data: a keyed hash of the user id, the API client, detections, image statistics, "
               "model version, timings, contests; never the image.", "pseudonymisation", "data_minimisation",
               "images_not_stored"),
        _claim(f"Storage: the results database ({database}); no raw user id in the database or the logs.",
               "pseudonymisation", "no_raw_ids_in_logs"),
        _claim("Recipients: the API client that created a prediction, the DPO and administrators; no transfer "
               "outside the EU (no third-party processor in the stack).", "authentication"),
        _claim(f"Retention: predictions and contests {retention_days()} days; access journal "
               f"{audit_retention_days()} days (RETENTION_DAYS, AUDIT_RETENTION_DAYS).", "retention"),
        _claim("Security measures: API keys and roles, pseudonymisation, access journal, model integrity, "
               "TLS at the ingress.", "authentication", "access_journaled", "model_integrity",
               "encryption_in_transit", "encryption_at_rest"),
    ]


def dpia(checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    risks = [
        _claim("Re-identification of a user from stored data: only keyed hashes are kept, the key is a secret.",
               "pseudonymisation", "no_raw_ids_in_logs", "encryption_at_rest"),
        _claim("Data kept longer than needed: expired rows are purged, erased rows leave no residue in the "
               "database files.", "retention", "erasure"),
        _claim("Unauthorised access to another tenant's data: every route needs a key, accesses are journaled.",
               "authentication", "access_journaled"),
        _claim("Wrong detections presented as facts: scores calibrated, performance cross-validated, users can "
               "contest a prediction.", "calibration", "model_validation", "recourse"),
        _claim("Use outside the validated conditions: drift of the production images is monitored.", "data_drift"),
        _claim("Images of persons or plates kept: images are never stored.", "images_not_stored"),
    ]
    measured = [c for r in risks for c in r["checks"]]
    failing = sorted({c for c in measured if checks.get(c, {}).get("status") == "fail"})
    return {"status": "carried out (RGPD.md section 4, Analyse d'impact, Art. 35); reviewed at each audit",
            "residual_risk": "high: a mitigation measured false" if failing else "acceptable, with the open actions below",
            "failing_mitigations": failing, "risks": risks}


def annex_iv() -> list[dict[str, Any]]:
    return [
        {"section": "1. General description of the system", "claims": [
            _claim("Intended purpose: car detection on road frames similar to the training video; not for "
                   "safety-critical decisions (MODEL_CARD.md).", "documentation"),
            _claim("The version in service is the registered one, byte for byte.", "model_integrity"),
            _claim("Interaction with other systems: HTTP gateway, gRPC adapter, Triton; described in README.md."),
        ]},
        {"section": "2. Data and data governance", "claims": [
            _claim("Training data documented with its biases (DATASHEET.md); dataset fingerprint recorded with "
                   "every version.", "documentation", "documents_consistent"),
            _claim("Production images are compared with the training baseline.", "data_drift"),
        ]},
        {"section": "3. Metrics and their validation", "claims": [
            _claim("AP50, AP50-95, precision and recall measured by blocked cross-validation over the frames.",
                   "model_validation"),
            _claim("Scores are calibrated probabilities; the operating threshold is stated as a precision.", "calibration"),
            _claim("Every document quotes the measured figures.", "documents_consistent"),
        ]},
        {"section": "4. Human oversight", "claims": [
            _claim("Users contest a prediction; contests are journaled and reviewed by the DPO.", "recourse",
                   "access_journaled"),
            _claim("No automated decision with legal effect (Art. 22 GDPR): the output informs a person."),
            _claim("Explanations (occlusion sensitivity) are available per detection (EXPLAINABILITY.md)."),
        ]},
        {"section": "5. Logging (record-keeping)", "claims": [
            _claim("Every access to personal data is journaled; logs hold no raw user id.", "access_journaled",
                   "no_raw_ids_in_logs"),
            _claim("Every prediction is stored with its model version.", "data_minimisation"),
        ]},
        {"section": "6. Accuracy, robustness and cybersecurity", "claims": [
            _claim("Accuracy stated with its spread across blocks and its worst block.", "model_validation"),
            _claim("Robustness to unusual inputs: malformed images are refused with a 4xx (tests/system)."),
            _claim("Tampered model files are refused by the serving adapter.", "model_integrity"),
            _claim("Authentication on every route; encryption in transit.", "authentication", "encryption_in_transit"),
        ]},
    ]
