"""Dependencies run one way: services/ and gateway/ depend on the core (services/common) and
their own package, never on governance/, training/ or the tools; the core depends on no service."""
from __future__ import annotations

import ast
from pathlib import Path

from services.common.config import REPO_ROOT

ABOVE = {"governance", "training", "loadtest", "scripts", "tests", "notebooks"}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def _sources(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (REPO_ROOT / folder).rglob("*.py") if "_pb2" not in p.name]


def test_services_and_the_gateway_import_nothing_above_them():
    offenders = {str(p.relative_to(REPO_ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] in ABOVE)
                 for p in _sources("services", "gateway")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_core_imports_no_service():
    for path in _sources("services/common"):
        services = [m for m in imported_modules(path) if m.startswith(("services.", "gateway"))
                    and not m.startswith(("services.common", "services.proto"))]
        assert not services, f"{path.relative_to(REPO_ROOT)} imports {services}"


def test_no_source_file_of_the_services_is_over_400_lines():
    long = {str(p.relative_to(REPO_ROOT)): n for p in _sources("services", "gateway")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long
