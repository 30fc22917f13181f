"""The audit pack: one self-contained HTML document (plots embedded), and the same as PDF.

Page one is the summary (overall verdict, one line per check: status, finding, owner,
action due). Then the sections an auditor asks for, each starting on a new page in the
PDF; evidence as tables and sentences; the raw JSON only in a collapsible appendix.
"""
from __future__ import annotations

import base64
import html
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import markdown

from governance.audit_markdown import fmt, performance_markdown, usage_markdown
from governance.audit_model_html import model_html
from governance.audit_plots import Plot
from services.common.config import settings

COLOUR = {"pass": "#1a7f37", "fail": "#cf222e", "warning": "#9a6700", "not_measured": "#57606a"}
LABEL = {"pass": "pass", "fail": "fail", "warning": "warning", "not_measured": "not measured"}
CSS = """body{font-family:system-ui,'DejaVu Sans',sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#1f2328}
h1{font-size:1.6em}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em}table{border-collapse:collapse;width:100%;margin:.5em 0}
td,th{border:1px solid #d0d7de;padding:4px 6px;vertical-align:top;font-size:12.5px;text-align:left}th{background:#f6f8fa}table.kv>tbody>tr>th,table.kv>tr>th{width:28%}
.badge{display:inline-block;padding:1px 7px;border-radius:10px;color:#fff;font-weight:600;font-size:11.5px;white-space:nowrap}
figure{margin:1em 0;break-inside:avoid}figure img{max-width:100%;border:1px solid #d0d7de}figcaption{font-size:12.5px;color:#57606a}
.verdict{font-size:1.25em;padding:.6em 1em;border-radius:6px;color:#fff;display:inline-block}.muted{color:#57606a}
pre{white-space:pre-wrap;font-size:10.5px}section{margin-bottom:2em}
@media print{section{break-before:page}section#summary{break-before:auto}body{max-width:none;margin:0}details>pre{display:block}}"""


NAMES = {"ap50": "AP50", "ap50_95": "AP50-95", "ap50_std": "AP50 std", "ap50_95_std": "AP50-95 std", "f1": "F1",
         "n_gt": "boxes", "psi": "PSI", "ece_before": "ECE before", "ece_after": "ECE after"}


def name(key: Any) -> str:
    return html.escape(NAMES.get(str(key), str(key).replace("_", " ")))


def esc(value: Any) -> str:
    return html.escape(fmt(value) if not isinstance(value, str) else value)


def badge(status: str) -> str:
    return f"<span class='badge status-{status}' style='background:{COLOUR.get(status, '#57606a')}'>{LABEL.get(status, status)}</span>"


def value_html(value: Any, depth: int = 0) -> str:
    """Evidence as readable HTML: dicts as two-column tables, lists of records as tables."""
    if isinstance(value, dict):
        if not value:
            return "<span class='muted'>none</span>"
        if depth > 2:
            return esc(value)
        rows = "".join(f"<tr><th>{name(k)}</th><td>{value_html(v, depth + 1)}</td></tr>"
                       for k, v in value.items())
        return f"<table class='kv'>{rows}</table>"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value) and depth <= 2:
            keys = list(dict.fromkeys(k for v in value for k in v))
            head = "".join(f"<th>{name(k)}</th>" for k in keys)
            body = "".join("<tr>" + "".join(f"<td>{value_html(v.get(k), depth + 1)}</td>" for k in keys) + "</tr>"
                           for v in value[:50])
            return f"<table><tr>{head}</tr>{body}</table>"
        return esc(", ".join(fmt(v) for v in value[:50]) + (" …" if len(value) > 50 else "") if value else "none")
    return esc(value)


def table(head: list[str], rows: list[list[str]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows) + "</table>")


def figure(plot: Plot) -> str:
    data = base64.b64encode(plot.path.read_bytes()).decode()
    return (f"<figure><img alt='{html.escape(plot.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption><b>{html.escape(plot.title)}.</b> {html.escape(plot.caption)}</figcaption></figure>")


def check_links(ids: list[str], checks: dict[str, dict[str, Any]]) -> str:
    if not ids:
        return "<span class='muted'>declared, not measured by any check</span>"
    return ", ".join(f"<a href='#check-{i}'>{html.escape(checks[i]['title'] if i in checks else i)}</a> "
                     f"{badge(checks[i]['status']) if i in checks else badge('not_measured')}" for i in ids)


def md(lines: list[str]) -> str:
    return markdown.markdown("\n".join(lines), extensions=["tables"])


def _summary(report: dict[str, Any]) -> str:
    comp = report["compliance"]
    counts = ", ".join(f"<span class='count count-{k}'>{v}</span> {LABEL.get(k, k)}" for k, v in comp["summary"].items())
    rows = [[badge(c["status"]), f"<a href='#check-{c['id']}'>{html.escape(c['title'])}</a>", esc(c.get("finding")),
             esc(c.get("owner")), esc(c.get("action")), esc(c.get("due"))] for c in comp["checks"]]
    model = report.get("model", {})
    return (f"<section id='summary'><h1>Audit report — car detection system</h1>"
            f"<p class='muted'>Generated {esc(report['generated_at'])} · database {esc(report['database'])} · "
            f"period {esc(report['usage']['period']['days'])} days · model served: version {esc(model.get('version'))} "
            f"({esc(comp.get('model_id'))})</p>"
            f"<p><span id='overall' class='verdict' style='background:{COLOUR.get(comp['overall'], '#57606a')}'>"
            f"Overall: {LABEL.get(comp['overall'], comp['overall'])}</span> &nbsp; <span id='counts'>{counts}</span> "
            f"of <span id='check-total'>{len(comp['checks'])}</span> checks</p>"
            + table(["status", "check", "finding", "owner", "action", "due"], rows) + "</section>")


def _dsr(report: dict[str, Any]) -> str:
    d = report["data_subject_requests"]

    def answer(p: dict[str, Any]) -> str:
        return f"{fmt(p['p50'])} / {fmt(p['max'])} ms (n={p['n']})" if p.get("n") else "no request in the log"

    c = d["contest"]
    rows = [["Access and export (Art. 15, 20)", esc(d["access_and_export"]["count"]), esc(answer(d["access_and_export"]["answer_ms"])), "—"],
            ["Erasure (Art. 17)", esc(d["erasure"]["count"]), esc(answer(d["erasure"]["answer_ms"])), "—"],
            ["Contest (Art. 22(3), AI Act human oversight)", esc(c["count"]), esc(answer(c["answer_ms"])),
             esc(f"{c['reviewed']} reviewed (median {fmt(c['hours_to_review']['p50'])} h), {c['open']} open, "
                 f"{c['open_over_30_days']} open for more than 30 days")]]
    return (f"<section id='dsr'><h2>Data-subject requests handled</h2><p>Since {esc(d['period_from'])}. Legal deadline: "
            f"{esc(d['legal_deadline'])}. Counts from the access journal; answer times from the results service's log "
            f"(median / max). Measured by {check_links(['access_export', 'erasure', 'recourse', 'access_journaled'], _checks(report))}.</p>"
            + table(["right", "requests", "answer time", "follow-up"], rows)
            + f"<p>Records read by their owner or the DPO: {esc(d['record_reads'])}.</p></section>")


def _checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["compliance"]["checks"]}


def _claims_table(claims: list[dict[str, Any]], checks: dict[str, dict[str, Any]]) -> str:
    return table(["claim", "measured by"], [[esc(c["claim"]), check_links(c["checks"], checks)] for c in claims])


def _frameworks(report: dict[str, Any]) -> str:
    fw, checks = report["frameworks"], _checks(report)
    dpia = fw["dpia"]
    out = [f"<section id='art30'><h2>GDPR Art. 30 — record of processing activities</h2>"
           f"{_claims_table(fw['gdpr_art30'], checks)}</section>",
           f"<section id='dpia'><h2>GDPR Art. 35 — data protection impact assessment</h2>"
           f"<p>Status: {esc(dpia['status'])}. Residual risk: <b>{esc(dpia['residual_risk'])}</b>"
           + (f"; mitigations measured false: {check_links(dpia['failing_mitigations'], checks)}" if dpia["failing_mitigations"] else "")
           + f".</p>{_claims_table(dpia['risks'], checks)}</section>",
           "<section id='annex-iv'><h2>EU AI Act Annex IV — technical documentation</h2>"]
    for part in fw["annex_iv"]:
        out.append(f"<h3>{esc(part['section'])}</h3>{_claims_table(part['claims'], checks)}")
    out.append("</section>")
    return "".join(out)


def _model(report: dict[str, Any], plots: dict[str, Plot]) -> str:
    checks = _checks(report)
    return model_html(report, plots, esc, table, figure, lambda ids: check_links(ids, checks))


def report_to_html(report: dict[str, Any], plots: dict[str, Plot]) -> str:
    def figs(section: str, skip: tuple[str, ...] = ()) -> str:
        return "".join(figure(p) for p in plots.values() if p.section == section and p.name not in skip)

    evidence = "".join(
        f"<h3 id='check-{c['id']}'>{badge(c['status'])} {html.escape(c['title'])}</h3><p>{esc(c.get('finding'))}</p>"
        f"<p class='muted'>How it is measured: {esc(c.get('basis') or 'see the evidence')}. Owner: {esc(c.get('owner'))}; "
        f"action: {esc(c.get('action'))} (due {esc(c.get('due'))}).</p>"
        f"{value_html(c['evidence']) if c['evidence'] != c.get('finding') else ''}"
        for c in report["compliance"]["checks"])
    raw = html.escape(json.dumps(report, indent=1, default=str))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Audit report "
            f"{html.escape(report['generated_at'])}</title><style>{CSS}</style></head><body>"
            + _summary(report) + _dsr(report) + _frameworks(report) + _model(report, plots)
            + f"<section id='usage'><h2>Usage</h2>{md(usage_markdown(report['usage']))}{figs('usage')}</section>"
            + f"<section id='performance'><h2>Performance</h2>{md(performance_markdown(report['performance']))}"
              f"{figs('performance')}</section>"
            + f"<section id='evidence'><h2>Evidence per check</h2>{evidence}</section>"
            + f"<section id='appendix'><h2>Appendix — raw report (JSON)</h2><details><summary>Show the machine-readable "
              f"report</summary><pre id='raw-json'>{raw}</pre></details></section></body></html>\n")


def chromium_binary() -> str | None:
    named = settings.CHROMIUM_BIN
    return named or shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def write_pdf(html_path: Path, pdf_path: Path, timeout: float = 180.0) -> str | None:
    """Print the HTML to PDF with headless chromium; None on success, else why not."""
    binary = chromium_binary()
    if not binary:
        return "chromium not found (scripts/install_tools.sh installs Debian's chromium)"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               f"--user-data-dir={profile}", "--no-pdf-header-footer", f"--print-to-pdf={pdf_path}",
                               html_path.resolve().as_uri()], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not pdf_path.exists():
        return f"chromium exited {done.returncode}: {done.stderr.strip()[-300:]}"
    return None
