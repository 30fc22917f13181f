"""The audit's parts without the stack: the residue scan on a real SQLite file, the model
section and its plots from a version's metadata (v3's cross-validation and calibration
keys), and the document-figure checker."""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from governance import figures
from governance.audit_measures import model_checks, model_section
from governance.audit_checks import minimisation
from governance.audit_plots import make_plots
from governance.audit_sources import AuditContext
from governance.store import DECLARED_COLUMNS, TABLES, GovernanceStore
from services.common import config

DOCS = Path(figures.__file__).resolve().parent
CROSSVAL = {"k": 4, "gap_frames": 30, "input_size": [192, 352], "threshold": 0.45, "report": "r.md", "plot": "p.png",
            "blocks": [{"block": i, "first_frame": 600 + i * 5000, "last_frame": 5000 + i * 5000, "images": 200,
                        "boxes": 110, "ap50": 0.9 + i / 100, "ap50_95": 0.6, "precision": 0.95, "recall": 0.97}
                       for i in range(4)],
            "pooled": {"ap50": 0.9312, "ap50_95": 0.6043, "precision": 0.951, "recall": 0.968},
            "spread": {"ap50_std": 0.0129, "ap50_95_std": 0.01}, "worst_block": {"block": 0, "ap50": 0.9}}
CALIBRATION = {"method": "temperature", "fitted_on": "out-of-fold detections of the 4 blocks",
               "ece_before": 0.187, "ece_after": 0.021,
               "reliability": {"bin_edges": [i / 10 for i in range(11)], "counts": [0, 0, 0, 0, 40, 50, 60, 70, 80, 90],
                               "accuracy_before": [None, None, None, None, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99],
                               "accuracy_after": [None, None, None, None, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]}}


@pytest.fixture()
def v3(tmp_path, monkeypatch):
    """A model repository whose newest version, one past the committed ones, carries v3's metadata keys."""
    served = config.REPO_ROOT / "model_repository" / "car_detector"
    newest = max((p for p in served.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    meta = json.loads((newest / "model_metadata.json").read_text())
    version = int(newest.name) + 1
    meta.update(version=version, crossval=CROSSVAL, calibration=CALIBRATION, operating_threshold=0.5, operating_precision=0.9)
    (tmp_path / "repo" / "car_detector" / str(version)).mkdir(parents=True)
    (tmp_path / "repo" / "car_detector" / str(version) / "model_metadata.json").write_text(json.dumps(meta))
    monkeypatch.setenv("MODEL_REPOSITORY", str(tmp_path / "repo"))
    monkeypatch.setenv("TRITON_HTTP_URL", "127.0.0.1:9")
    return meta


def test_sqlite_residue_scan_finds_what_a_plain_delete_leaves(tmp_path):
    store = GovernanceStore(f"sqlite:///{tmp_path / 'results.db'}")
    kept, erased = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    results = store.results_store()
    for user_hash in (kept, erased):
        results.add({"request_id": f"r-{user_hash[:8]}", "user_hash": user_hash, "client_id": "t", "detections": [],
                     "detection_count": 0, "model_version": "mk-unit", "inference_time_ms": 1.0})
    results.journal("erasure", "dpo", "t", user_hash=erased)
    store.dispose()
    raw = sqlite3.connect(tmp_path / "results.db")  # no secure_delete: the bytes stay in the page
    raw.execute("PRAGMA secure_delete=OFF")
    raw.execute("DELETE FROM predictions WHERE user_hash = ?", (erased,))
    raw.commit()
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    store = GovernanceStore(f"sqlite:///{tmp_path / 'results.db'}")
    assert store.erased_hashes() == {erased}
    found = store.residue({"marker": "mk-unit"}, store.erased_hashes())
    assert found["measured"] and found["erased_subjects_found"] == 1 and not found["clean"]
    assert found["found"] == {"marker": ["results.db"]}  # the kept row's marker
    results = store.results_store()
    results.add({"request_id": "r-again", "user_hash": erased, "client_id": "t", "detections": [],
                 "detection_count": 0, "model_version": "1", "inference_time_ms": 1.0})
    assert store.erased_hashes() == set()  # detected again since: its rows are legitimate
    third = uuid.uuid4().hex * 2
    results.add({"request_id": "r-third", "user_hash": third, "client_id": "t", "detections": [],
                 "detection_count": 0, "model_version": "1", "inference_time_ms": 1.0})
    assert results.erase_user_data(third)["predictions"] == 1  # the service's erasure overwrites (secure_delete)
    results.journal("erasure", "dpo", "t", user_hash=third)
    clean = store.residue({}, {third})
    assert clean["erased_subjects_checked"] == 1 and clean["erased_subjects_found"] == 0 and clean["clean"]
    assert store.residue({}, {erased})["erased_subjects_found"] == 1  # the plain delete's bytes are still there
    store.dispose()


def test_the_record_of_processing_is_the_tables_the_results_service_declares():
    # RGPD.md lists the allowed columns; the audit takes them from the store's one declaration.
    text = (DOCS / "RGPD.md").read_text().split("Colonnes autorisées", 1)[1].split("\n\n", 1)[0]
    listed = {m[1]: {c.strip() for c in m[2].split(",")} for m in re.finditer(r"`(\w+)\(([^)`]*)\)`", text)}
    assert listed == {table: set(columns) for table, columns in DECLARED_COLUMNS.items()}
    assert set(TABLES) == set(DECLARED_COLUMNS)


def test_data_minimisation_fails_on_a_column_outside_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("VAR_DIR", str(tmp_path / "var"))
    store = GovernanceStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.results_store()  # creates the declared tables
    ctx = AuditContext(store, tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9", 30, canary=False)
    since = datetime.now(timezone.utc) - timedelta(days=30)
    assert minimisation(ctx, since)[0]["status"] == "pass"
    with store.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE predictions ADD COLUMN plate_number TEXT")
    store = GovernanceStore(store.url)  # reflects the table again
    ctx.store = store
    verdict = minimisation(ctx, since)[0]
    assert verdict["status"] == "fail" and verdict["evidence"]["unexpected_columns"] == {"predictions": ["plate_number"]}
    store.dispose()


def test_the_model_section_reads_v3_metadata_and_plots_the_reliability_diagram(v3, tmp_path):
    model = model_section({"error": "no baseline"})
    assert model["version"] == str(v3["version"]) and model["crossval"]["pooled"]["ap50"] == 0.9312
    assert model["operating_precision"] == 0.9 and model["calibration"]["ece_after"] == 0.021
    checks = {c["id"]: c for c in model_checks(model, {"error": "no baseline"})}
    assert checks["model_validation"]["status"] == "pass" and "0.9312" in checks["model_validation"]["finding"]
    assert checks["calibration"]["status"] == "pass" and checks["data_drift"]["status"] == "not_measured"
    report = {"usage": {"per_day": {}, "class_distribution": {}},
              "performance": {"confidence": {"histogram": {"0.0-0.1": 0}}, "model_inference_ms": {"n": 0},
                              "data_drift": {}}, "model": model}
    plots = make_plots(report, tmp_path / "plots")
    assert set(plots) == {"reliability", "crossval"}
    assert plots["reliability"].path.stat().st_size > 5000 and "diagonal" in plots["reliability"].caption
    worse = {**CALIBRATION, "ece_after": 0.3}
    assert model_checks({**model, "calibration": worse}, {})[1]["status"] == "fail"


def test_without_v3_keys_the_model_section_says_not_measured(v3, tmp_path):
    for key in ("crossval", "calibration"):
        v3.pop(key)
    (tmp_path / "repo" / "car_detector" / str(v3["version"]) / "model_metadata.json").write_text(json.dumps(v3))
    model = model_section({})
    assert model["crossval"] == model["calibration"] == "not measured"
    statuses = {c["id"]: c["status"] for c in model_checks(model, {})}
    assert statuses["model_validation"] == statuses["calibration"] == "not_measured"


def copy_docs(tmp_path: Path) -> Path:
    for name in figures.DOCS:
        shutil.copy(DOCS / name, tmp_path / name)
    return tmp_path


def test_the_committed_documents_agree_with_the_measurements(monkeypatch):
    monkeypatch.setenv("TRITON_HTTP_URL", "127.0.0.1:9")
    result = figures.check_documents()
    assert result["claims_checked"] >= 20 and result["contradictions"] == [], result["contradictions"]


def test_a_quoted_figure_the_measurement_contradicts_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_HTTP_URL", "127.0.0.1:9")
    root = copy_docs(tmp_path)
    m = figures.measured()
    ap50 = f"{m['meta']['crossval']['blocks'][0]['ap50']:.3f}"
    card = (root / "MODEL_CARD.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| 0 |"))
    assert ap50 in row
    (root / "MODEL_CARD.md").write_text(card.replace(row, row.replace(ap50, "0.777", 1)))
    rgpd = (root / "RGPD.md").read_text()
    (root / "RGPD.md").write_text(rgpd.replace("`RETENTION_DAYS` = 30", "`RETENTION_DAYS` = 45"))
    bad = figures.check_documents(root)["contradictions"]
    assert {(b["document"], b["quoted"]) for b in bad} == {("MODEL_CARD.md", "0.777"), ("RGPD.md", "45")}, bad


def test_every_kind_of_quoted_figure_is_checked_against_its_measurement(tmp_path, monkeypatch):
    """One stale figure of each kind, in the document that quotes it: the datasheet's counts and
    drift-baseline statistics, the model card's calibration (ECE, parameters, threshold on
    either scale), the checklist's thresholds, a phrase wrapped onto the next line."""
    monkeypatch.setenv("TRITON_HTTP_URL", "127.0.0.1:9")
    root = copy_docs(tmp_path)
    edits = {"DATASHEET.md": [("| boxes | **464**", "| boxes | **465**"), ("contrast 61.9", "contrast 61.1"),
                              ("sharpness\n(Laplacian variance, on the feature service's reduced-scale decode) 2150",
                               "sharpness\n(Laplacian variance, on the feature service's reduced-scale decode) 888"),
                              ("medium 389", "medium 390")],
             "MODEL_CARD.md": [("**0.137 before, 0.013 after**", "**0.137 before, 0.031 after**"),
                               ("T = 0.281", "T = 0.381"), ("**0.455 on the\ncalibrated scale (raw 0.45)",
                                                          "**0.555 on the\ncalibrated scale (raw 0.40)"),
                               ("AP50\n  is 0.377, recall", "AP50\n  is 0.477, recall")],
             "CHECKLIST_GOUVERNANCE.md": [("seuil 0.45 sur le score brut, 0.4554 calibré",
                                           "seuil 0.45 sur le score brut, 0.5554 calibré")]}
    for name, pairs in edits.items():
        text = (root / name).read_text()
        for old, new in pairs:
            assert old in text, (name, old)
            text = text.replace(old, new)
        (root / name).write_text(text)
    bad = {(b["document"], b["figure"].split(" (")[0], b["quoted"]) for b in figures.check_documents(root)["contradictions"]}
    assert bad == {("DATASHEET.md", "data set boxes", "465"), ("DATASHEET.md", "baseline contrast", "61.1"),
                   ("DATASHEET.md", "baseline sharpness", "888"), ("DATASHEET.md", "medium boxes", "390"),
                   ("MODEL_CARD.md", "ECE after", "0.031"), ("MODEL_CARD.md", "calibration temperature", "0.381"),
                   ("MODEL_CARD.md", "calibrated threshold", "0.555"), ("MODEL_CARD.md", "raw threshold", "0.40"),
                   ("MODEL_CARD.md", "ap50", "0.477"),
                   ("CHECKLIST_GOUVERNANCE.md", "calibrated threshold", "0.5554")}, bad


def test_the_model_section_of_a_version_trained_on_every_frame_shows_its_cross_validated_slices(monkeypatch):
    """The committed newest version has no validation block of its own: the pack shows the
    pooled out-of-fold slices, and the blocks as one flat table (no table nested in it)."""
    monkeypatch.setenv("TRITON_HTTP_URL", "127.0.0.1:9")
    from governance.audit_render import _model

    model = model_section({"error": "no baseline"})
    assert model["validation"] == "not measured" and model["crossval"]["pooled"]["slices"]
    html = _model({"model": model, "compliance": {"checks": []}}, {})
    slices = html[html.index("id='slices'"):html.index("<h3>Calibration")]
    for name, figures_of in model["crossval"]["pooled"]["slices"].items():
        assert f"<td>{name.replace('<', '&lt;').replace('>', '&gt;')}</td><td>{figures_of['n_gt']}</td>" \
               f"<td>{figures_of['ap50']:.3f}</td>" in slices, name
    blocks = html[html.index("<h3>Cross-validation"):html.index("id='slices'")]
    assert blocks.count("<table") == 1 and blocks.count("<tr>") == 1 + len(model["crossval"]["blocks"])
    assert "Slices: not measured" not in html and "does not change" in html


def test_documents_that_describe_another_version_than_the_served_one_fail(v3):
    bad = figures.check_documents()["contradictions"]
    assert any(b["figure"] == "model card version" and str(b["measured"]) == str(v3["version"]) for b in bad), bad


def test_the_seeds_command_runs_the_audit_as_a_script():
    run = subprocess.run([sys.executable, "governance/audit_report.py", "--help"], cwd=config.REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--no-canary" in run.stdout, run.stderr


def test_an_audit_with_every_service_down_says_what_it_could_not_measure(tmp_path, monkeypatch):
    for name in ("GATEWAY_URL", "RESULTS_SERVICE_URL", "FEATURE_SERVICE_URL"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("TRITON_HTTP_URL", "127.0.0.1:9")
    monkeypatch.setenv("VAR_DIR", str(tmp_path))
    from governance.audit_report import main

    assert main(["--no-pdf", "--out", str(tmp_path / "reports")]) == 0
    (report_file,) = (tmp_path / "reports").glob("audit_report_*.json")
    report = json.loads(report_file.read_text())
    checks = {c["id"]: c for c in report["compliance"]["checks"]}
    for check_id in ("erasure", "access_export", "recourse", "access_journaled", "authentication"):
        assert checks[check_id]["status"] == "not_measured" and "unreachable" in checks[check_id]["finding"]
    assert all(c["owner"] and c["action"] and c["due"] and c["finding"] for c in checks.values())
    assert report["database"] == "sqlite" and report["frameworks"]["annex_iv"]
    html = report_file.with_suffix(".html").read_text()
    assert html.count("<section id=") == 10 and html.index("id='summary'") < html.index("<details>")


def test_drift_on_too_few_images_is_a_warning_whatever_it_shows():
    model = {"version": "4", "crossval": "not measured", "calibration": "not measured"}
    few = {"features": {"brightness": {}}, "n": 2, "max_psi": 8.3, "drifting": [], "enough_data": False}
    status = {name: model_checks(model, data)[2]["status"] for name, data in (
        ("few", few), ("few drifting", {**few, "drifting": ["brightness"]}), ("enough", {**few, "n": 300, "enough_data": True}),
        ("enough drifting", {**few, "n": 300, "enough_data": True, "drifting": ["brightness"]}))}
    assert status == {"few": "warning", "few drifting": "warning", "enough": "pass", "enough drifting": "fail"}
