"""The web console at `/` (static files in gateway/static/) and the latest audit report
for dpo/admin (`/api/reports/latest`, its HTML and plots).

The page is plain HTML, CSS and JavaScript served as they are (no build step). It holds no
data and no secret, so it is served without a key, like the rest of /static/; the key a
person enters stays in the tab's sessionStorage and goes to the API in X-API-Key. The page
runs under a strict Content-Security-Policy: scripts, styles and API calls from this origin
only, images from this origin or blob: (the uploaded frame, the report's plots), no inline
script or style, no framing.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from flask import Flask, Response, jsonify, request, send_file

from services.common import config
from services.common.web import ApiError

STATIC_DIR = Path(__file__).with_name("static")
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
# The report's own HTML: inline styles and data: plots, nothing executable, sandboxed.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'none'"
REPORT_GLOB = "audit_report_*.json"
_PLOT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}")


def reports_dir() -> Path:
    """Where `make audit` (python -m governance.audit_report) writes its reports."""
    return Path(config.REPORTS_DIR)


def latest_report() -> Path:
    """The newest report's JSON file; 404 when `make audit` has not run yet."""
    candidates = sorted(reports_dir().glob(REPORT_GLOB), key=lambda p: (p.stat().st_mtime, p.name))
    if not candidates:
        raise ApiError(404, "no audit report yet: run `make audit` (python -m governance.audit_report)")
    return candidates[-1]


def _plots_dir(report: Path) -> Path:
    return report.with_name(f"{report.stem}_plots")


def _report_summary(report: Path) -> dict[str, Any]:
    try:
        body = json.loads(report.read_text())
    except (OSError, ValueError):
        raise ApiError(503, "the latest audit report is being written or unreadable; retry shortly",
                       {"Retry-After": "2"}) from None
    plots = sorted(p.name for p in _plots_dir(report).glob("*.png")) if _plots_dir(report).is_dir() else []
    return {"name": report.stem, "generated_at": body.get("generated_at"), "plots": plots,
            "html": report.with_suffix(".html").exists(), "report": body}


def register(app: Flask, require: Callable[..., Callable]) -> None:
    """Add the console and report routes to the gateway (`require` is its role check)."""
    if "static" not in app.view_functions:  # Flask adds it when gateway/static exists at start
        app.add_url_rule("/static/<path:filename>", endpoint="static", view_func=app.send_static_file)
    app.static_folder = str(STATIC_DIR)
    # `/` is the console page itself: a static file like the others, under the same endpoint.
    app.add_url_rule("/", endpoint="static", defaults={"filename": "index.html"})

    @app.after_request
    def _console_headers(response: Response) -> Response:
        if request.endpoint == "static":
            response.headers["Content-Security-Policy"] = CONSOLE_CSP
        return response

    @app.get("/api/reports/latest")
    @require("dpo", "admin")
    def latest_audit_report() -> Response:
        """The newest audit report as written by `make audit`: its JSON and the names of its plots."""
        return jsonify(_report_summary(latest_report()))

    @app.get("/api/reports/latest.html")
    @require("dpo", "admin")
    def latest_audit_report_html() -> Response:
        page = latest_report().with_suffix(".html")
        if not page.exists():
            raise ApiError(404, f"the latest audit report ({page.stem}) has no HTML rendering")
        response = send_file(page, mimetype="text/html", download_name=f"{page.stem}.html", as_attachment=True)
        response.headers["Content-Security-Policy"] = REPORT_CSP
        return response

    @app.get("/api/reports/latest/plots/<name>")
    @require("dpo", "admin")
    def latest_audit_report_plot(name: str) -> Response:
        if not _PLOT_NAME.fullmatch(name) or not name.endswith(".png"):
            raise ApiError(400, "plot names are letters, digits, '_', '-' and '.', ending in .png")
        plot = _plots_dir(latest_report()) / name
        if not plot.is_file():
            raise ApiError(404, f"the latest audit report has no plot {name}")
        return send_file(plot, mimetype="image/png")
