"""Audit reports: usage, compliance and performance, measured on the live system.

    python governance/audit_report.py [--period-days 30] [--out var/reports] [--no-canary] [--strict] [--no-pdf]
    python -m governance.audit_report ...          (make audit)

Writes `audit_report_<UTC timestamp>.json`, `.md`, `.html` (the audit pack, plots embedded)
and `.pdf` (the same pack printed by headless chromium) under var/reports/, and prints the
paths. Sources: the results database (governance/store.py), the services' JSON logs
(`$VAR_DIR/log/*.jsonl`), the running services (health probes, an unauthenticated probe of
every gateway route, a canary data subject created, exported, contested and erased through
the results service), Triton, the model registry and the served version's
model_metadata.json, and the drift baseline (governance/baseline_features.json).
Checks: governance/audit_checks.py; measurements: governance/audit_measures.py; what
auditors ask for: governance/audit_frameworks.py; rendering: governance/audit_render.py.
`--strict` exits 1 when any check fails.
"""
from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # `python governance/audit_report.py` (the seed's command): Python put governance/ first on
    # the path, where its modules would shadow top-level names; run as the package module instead.
    import runpy
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parents[1])
    runpy.run_module("governance.audit_report", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

import argparse  # noqa: E402
import json  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from governance import audit_checks, audit_frameworks, audit_measures  # noqa: E402
from governance.audit_markdown import STATUS_MARK, report_to_markdown  # noqa: E402
from governance.audit_plots import make_plots  # noqa: E402
from governance.audit_render import report_to_html, write_pdf  # noqa: E402
from governance.audit_sources import AuditContext  # noqa: E402
from governance.figures import documents_check  # noqa: E402
from governance.registry_store import ModelRegistry  # noqa: E402
from governance.store import GovernanceStore  # noqa: E402
from services.common import config  # noqa: E402
from services.common.integrity import DEFAULT_MODEL_NAME, registry_path  # noqa: E402


class AuditReportGenerator:
    """Generates the usage, compliance and performance reports (the seed's API)."""

    def __init__(self, db_url: str | None = None, log_dir: str | Path | None = None,
                 gateway_url: str | None = None, results_url: str | None = None,
                 feature_url: str | None = None, period_days: int = 30, canary: bool = True) -> None:
        self.store = GovernanceStore(db_url)
        self.engine = self.store.engine
        self.period_days = period_days
        self.ctx = AuditContext(
            self.store, Path(log_dir) if log_dir else config.var_dir() / "log",
            (gateway_url or config.GATEWAY_URL).rstrip("/"),
            (results_url or config.RESULTS_SERVICE_URL).rstrip("/"), (feature_url or config.FEATURE_SERVICE_URL).rstrip("/"),
            period_days, canary)

    def _since(self, period_days: int | None = None) -> datetime:
        return audit_checks.now() - timedelta(days=period_days or self.period_days)

    def generate_usage_report(self, period_days: int | None = None) -> dict[str, Any]:
        return audit_measures.usage(self.ctx, self._since(period_days), period_days or self.period_days)

    def generate_performance_report(self, period_days: int | None = None) -> dict[str, Any]:
        return audit_measures.performance(self.ctx, self._since(period_days), period_days or self.period_days)

    def generate_compliance_report(self, model_id: str | None = None,
                                   performance: dict[str, Any] | None = None) -> dict[str, Any]:
        latest = ModelRegistry(registry_path()).get_latest_version(DEFAULT_MODEL_NAME)
        if self.ctx.canary_enabled:
            self.ctx.canary()  # first, so every later check also sees the canary's traces
        performance = performance or self.generate_performance_report()
        model = audit_measures.model_section(performance["data_drift"])
        c = audit_checks
        checks = [c.pseudonymisation(self.ctx), c.logs(self.ctx), *c.erasure_checks(self.ctx), c.retention(self.ctx),
                  c.authentication(self.ctx), c.transport(self.ctx), c.at_rest(self.ctx), c.model_integrity(self.ctx),
                  *c.minimisation(self.ctx, self._since()), c.documents(),
                  *audit_measures.model_checks(model, performance["data_drift"]), documents_check(),
                  c.check("legal_basis", "Legal basis of the processing", "warning",
                          "documented, not measurable: legitimate interest (Art. 6(1)(f)) for road-traffic analysis "
                          "by the operator; see governance/RGPD.md",
                          finding="Legitimate interest (Art. 6(1)(f)) is declared in RGPD.md; no check can measure it.")]
        date = audit_checks.now()
        audit_frameworks.annotate(checks, date)
        summary = Counter(ch["status"] for ch in checks)
        return {"report_date": date.isoformat(timespec="seconds"),
                "model_id": model_id or (latest["model_id"] if latest else None),
                "overall": "fail" if summary.get("fail") else "warning" if summary.get("warning") else "pass",
                "summary": dict(summary), "checks": checks, "model": model}

    def generate(self, period_days: int | None = None) -> dict[str, Any]:
        if self.ctx.canary_enabled:
            self.ctx.canary()  # before anything reads the logs, so its traces are in them
        performance = self.generate_performance_report(period_days)
        compliance = self.generate_compliance_report(performance=performance)
        model = compliance.pop("model")
        checks = {ch["id"]: ch for ch in compliance["checks"]}
        return {"generated_at": audit_checks.now().isoformat(timespec="seconds"), "database": self.store.dialect,
                "usage": self.generate_usage_report(period_days), "compliance": compliance, "performance": performance,
                "model": model, "data_subject_requests": audit_measures.data_subject_requests(self.ctx, self._since(period_days)),
                "frameworks": {"gdpr_art30": audit_frameworks.gdpr_art30(self.store.dialect),
                               "dpia": audit_frameworks.dpia(checks), "annex_iv": audit_frameworks.annex_iv()}}

    def export_report(self, report: dict[str, Any], output_path: str | Path, pdf: bool = True) -> dict[str, Path]:
        """Write <output_path>.json, .md, .html and .pdf (+ plots); return the paths."""
        output_path = Path(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        plots = make_plots(report, output_path.parent / f"{output_path.name}_plots")
        paths = {"json": output_path.with_suffix(".json"), "markdown": output_path.with_suffix(".md"),
                 "html": output_path.with_suffix(".html")}
        paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
        paths["markdown"].write_text(report_to_markdown(report, plots))
        paths["html"].write_text(report_to_html(report, plots))
        if pdf:
            why_not = write_pdf(paths["html"], output_path.with_suffix(".pdf"))
            if why_not is None:
                paths["pdf"] = output_path.with_suffix(".pdf")
            else:
                print(f"pdf not written: {why_not}", file=sys.stderr)
        for name, plot in plots.items():
            paths[f"plot:{name}"] = plot.path
        return paths

    def _report_to_markdown(self, report: dict[str, Any], plots: dict[str, Any] | None = None) -> str:
        return report_to_markdown(report, plots or {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m governance.audit_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--period-days", type=int, default=30)
    parser.add_argument("--out", default=None, help="folder (default $VAR_DIR/reports)")
    parser.add_argument("--no-canary", action="store_true", help="do not create/erase the synthetic canary subject")
    parser.add_argument("--no-pdf", action="store_true", help="do not print the pack to PDF")
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--strict", action="store_true", help="exit 1 if any compliance check fails")
    args = parser.parse_args(argv)
    generator = AuditReportGenerator(log_dir=args.log_dir, period_days=args.period_days, canary=not args.no_canary)
    report = generator.generate()
    folder = Path(args.out) if args.out else Path(config.REPORTS_DIR)
    stamp = audit_checks.now().strftime("%Y%m%dT%H%M%SZ")
    paths = generator.export_report(report, folder / f"audit_report_{stamp}", pdf=not args.no_pdf)
    comp = report["compliance"]
    for c in comp["checks"]:
        print(f"  {STATUS_MARK.get(c['status'], c['status']):4}  {c['id']:24} {c['title']}")
    print(f"compliance: {comp['overall']} {dict(comp['summary'])}")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    generator.store.dispose()
    return 1 if args.strict and comp["overall"] == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
