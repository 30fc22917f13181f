"""The audit pack's model section: the served version's figures as tables and sentences.

The metadata nests per-block training logs, per-block slices and the precision gates'
per-block scores; printed as nested tables they bury the figures an auditor reads. Here
each gets one flat table: blocks, cross-validated slices, the calibration, the drift and
the runtime's gates.
"""
from __future__ import annotations

from typing import Any, Callable

from governance.audit_markdown import fmt
from governance.audit_plots import Plot

SLICE_FIELDS = (("n_gt", "boxes"), ("ap50", "AP50"), ("ap50_95", "AP50-95"), ("precision", "precision"),
                ("recall", "recall"), ("f1", "F1"))


def model_html(report: dict[str, Any], plots: dict[str, Plot], esc: Callable[[Any], str],
               table: Callable[[list[str], list[list[str]]], str], figure: Callable[[Plot], str],
               links: Callable[[list[str]], str]) -> str:
    """The section; the page's own helpers (escaping, tables, figures, check links) are passed in."""
    m = report["model"]
    head = table(["item", "value"], [[k, esc(v)] for k, v in (
        ("version served", f"{m['version']} ({m['version_source']})"), ("exported", m.get("exported_at")),
        ("git commit", m.get("git_commit")), ("architecture", m.get("architecture")),
        ("input size", _size(m.get("input_size"))), ("operating threshold (calibrated score)", m.get("operating_threshold")),
        ("cross-validated precision at that threshold", m.get("operating_precision")))])
    out = [f"<section id='model'><h2>Model — the served version</h2>{head}<h3>Cross-validation</h3>"]
    cv = m["crossval"]
    if isinstance(cv, dict):
        pooled, spread, worst = cv.get("pooled") or {}, cv.get("spread") or {}, cv.get("worst_block") or {}
        out.append(f"<p>{esc(cv.get('k'))} held-out blocks of consecutive frames, {esc(cv.get('gap_frames'))} frames of "
                   f"gap on each side, input {esc(_size(cv.get('input_size')))}, threshold {esc(cv.get('threshold'))} on the "
                   f"raw score. Pooled over the held-out blocks: AP50 {esc(pooled.get('ap50'))}, AP50-95 "
                   f"{esc(pooled.get('ap50_95'))}, precision {esc(pooled.get('precision'))}, recall "
                   f"{esc(pooled.get('recall'))}; spread across blocks (std) AP50 {esc(spread.get('ap50_std'))}, AP50-95 "
                   f"{esc(spread.get('ap50_95_std'))}; worst block {esc(worst.get('block'))} at AP50 "
                   f"{esc(worst.get('ap50'))}. Measured by {links(['model_validation'])}.</p>")
        rows = [[esc(b.get("block")), esc(f"{b.get('first_frame')} to {b.get('last_frame')}"), esc(b.get("images")),
                 esc(b.get("boxes")), *(esc(b.get(k)) for k in ("ap50", "ap50_95", "precision", "recall"))]
                for b in cv.get("blocks") or []]
        out.append(table(["held-out block", "frames", "images", "boxes", "AP50", "AP50-95", "precision", "recall"], rows))
    else:
        out.append(f"<p>Cross-validation: {esc(cv)} for this version ({links(['model_validation'])}).</p>")
    out.append(figure(plots["crossval"]) if "crossval" in plots else "")
    out.append(_slices(m, esc, table))
    out.append(_calibration(m, esc, links))
    out.append(figure(plots["reliability"]) if "reliability" in plots else "")
    out.append(f"<h3>Drift against the training baseline</h3><p>{esc(_drift_sentence(m['drift']))} Measured by "
               f"{links(['data_drift'])}.</p>")
    out.append(figure(plots["drift"]) if "drift" in plots else "")
    out.append(f"<h3>Runtime</h3>{_runtime(m['runtime'], esc, table)}</section>")
    return "".join(out)


def _size(size: Any) -> Any:
    if isinstance(size, dict) and {"width", "height"} <= set(size):
        return f"{size['width']} x {size['height']}"
    if isinstance(size, list) and len(size) == 2:  # training.crossval records [width, height]
        return f"{size[0]} x {size[1]}"
    return size


def _slices(m: dict[str, Any], esc: Callable[[Any], str], table: Callable[[list[str], list[list[str]]], str]) -> str:
    """Slices of the version's own validation block, else (trained on every frame) the pooled
    out-of-fold slices of its cross-validation: the figures that describe unseen frames."""
    val, cv = m["validation"], m["crossval"]
    if isinstance(val, dict) and val.get("slices"):
        intro, slices = (f"{fmt(val.get('num_images'))} validation images held out of this version's training, "
                         f"threshold {fmt(val.get('threshold'))}."), val["slices"]
    elif isinstance(cv, dict) and (cv.get("pooled") or {}).get("slices"):
        intro = ("This version trained on every frame, so its slices are the cross-validation's, pooled over the "
                 f"out-of-fold detections of the {fmt(cv.get('k'))} held-out blocks, threshold {fmt(cv.get('threshold'))}.")
        slices = cv["pooled"]["slices"]
    else:
        return "<h3 id='slices'>Slices</h3><p>Slices: not measured for this version.</p>"
    rows = [[esc(name), *(esc(s.get(k)) for k, _ in SLICE_FIELDS)] for name, s in slices.items()]
    return (f"<h3 id='slices'>Slices</h3><p>{esc(intro)} Box sizes follow COCO; \"edge\" is a box that touches the "
            f"frame's border.</p>" + table(["slice", *(label for _, label in SLICE_FIELDS)], rows))


def _calibration(m: dict[str, Any], esc: Callable[[Any], str], links: Callable[[list[str]], str]) -> str:
    cal = m["calibration"]
    if not isinstance(cal, dict):
        return (f"<h3>Calibration</h3><p>Calibration: {esc(cal)} for this version ({links(['calibration'])}); scores "
                f"are detector confidences, not probabilities.</p>")
    params = cal.get("params") or {}
    formula = (f" The map is {params.get('formula')} with temperature {fmt(params.get('temperature'))} and shift "
               f"{fmt(params.get('shift'))}." if params.get("formula") else "")
    method = str(cal.get("method") or "unnamed")
    return (f"<h3>Calibration</h3><p>{esc(method[:1].upper() + method[1:])} scaling fitted on {esc(cal.get('fitted_on'))} "
            f"({esc(cal.get('detections'))} detections, a detection counts as a car when it matches one at IoU "
            f"{esc(cal.get('matched_at_iou'))}): expected calibration error {esc(cal.get('ece_before'))} before, "
            f"{esc(cal.get('ece_after'))} after.{esc(formula)} The map is strictly increasing, so the ranking of the "
            f"detections, and therefore AP at every IoU, does not change; the operating threshold "
            f"{esc(m.get('operating_threshold'))} on the calibrated scale is where the cross-validated precision is "
            f"{esc(m.get('operating_precision'))}. Measured by {links(['calibration'])}.</p>")


def _drift_sentence(drift: Any) -> str:
    if not isinstance(drift, dict):
        return f"Drift: {fmt(drift)}."
    if not drift.get("n"):
        return "No production image features are stored yet, so drift cannot be measured."
    drifting = drift.get("drifting") or []
    return (f"{drift['n']} production images compared with the training frames, largest PSI {fmt(drift.get('max_psi'))}: "
            + (f"{len(drifting)} features drift significantly ({', '.join(drifting)})" if drifting else
               "no feature drifts significantly")
            + ("." if drift.get("enough_data") else " (too few images for a firm verdict: indicative only)."))


def _runtime(runtime: Any, esc: Callable[[Any], str], table: Callable[[list[str], list[list[str]]], str]) -> str:
    if not isinstance(runtime, dict):
        return f"<p>Runtime: {esc(runtime)}.</p>"
    rows = [[k, esc(runtime.get(key))] for k, key in (("served as", "serving"), ("artifact of record", "artifact_of_record"),
                                                       ("fallback", "fallback"), ("OpenVINO", "openvino"))
            if runtime.get(key)]
    for name, label in (("int8_gate", "INT8 gate"), ("bf16_gate", "BF16 gate")):
        gate = runtime.get(name)
        if isinstance(gate, dict):
            drops = gate.get("drops") or {}
            rows.append([label, esc(f"{'passed' if gate.get('passed') else 'failed'} (tolerance {fmt(gate.get('tolerance'))}): "
                                    f"pooled AP50 drop {fmt(drops.get('pooled_ap50_drop'))}, AP50-95 drop "
                                    f"{fmt(drops.get('pooled_ap50_95_drop'))}, worst block AP50-95 drop "
                                    f"{fmt(drops.get('worst_block_ap50_95_drop'))}")])
    note = runtime.get("int8_gate", {}).get("evaluated_on") if isinstance(runtime.get("int8_gate"), dict) else None
    return table(["item", "value"], rows) + (f"<p class='muted'>Gates evaluated on {esc(note)}.</p>" if note else "")
