"""docs/api.md (the users' reference), the gateway's routes and its generated OpenAPI
document name the same routes: a route added to the code without its row, or a row left
behind by a removed route, fails here."""
from __future__ import annotations

import re

from gateway import api as gateway_api
from gateway.app import FEATURE_ROUTES, app
from services.common.config import REPO_ROOT

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def served_routes() -> set[str]:
    """`METHOD /path/<param>` for each rule of the gateway; the feature pass-through is
    expanded to the names it forwards (any other name is a 404)."""
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule)
        paths = [f"/api/features/{name}" for name in sorted(FEATURE_ROUTES)] if path == "/api/features/<path>" else [path]
        routes |= {f"{method} {p}" for method in (rule.methods or set()) & METHODS for p in paths}
    return routes


def documented_routes() -> set[str]:
    section = (REPO_ROOT / "docs" / "api.md").read_text().split("## Gateway HTTP API", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `((?:GET|POST|PUT|PATCH|DELETE) /[^`]*)` \|", section, re.MULTILINE))


def test_docs_api_md_lists_every_gateway_route_and_no_other():
    served = served_routes()
    assert "POST /api/detect" in served and "GET /api/reports/latest" in served
    # The console's files are named in the `GET /` row.
    assert documented_routes() == served - {"GET /static/<filename>"}


def test_the_gateway_openapi_document_describes_every_route_but_metrics_and_static_files():
    paths = gateway_api.document()["paths"]
    described = {method.upper() + " " + re.sub(r"{(\w+)}", r"<\1>", path) for path, operations in paths.items()
                 for method in operations if method.upper() in METHODS}
    assert described == served_routes() - {"GET /static/<filename>", "GET /metrics"}
