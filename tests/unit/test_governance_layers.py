"""Governance sits on top: the serving path does not import it, its modules import each
other without a circle, only governance/store.py reaches the results service's store, and
no file is over 400 lines."""
from __future__ import annotations

import ast
from pathlib import Path

from services.common import config

ROOT = config.REPO_ROOT
GOVERNANCE = ROOT / "governance"


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_serving_adapter_and_the_core_do_not_import_governance():
    for path in [ROOT / "services" / "model_serving" / "server.py", *(ROOT / "services" / "common").glob("*.py")]:
        assert not [m for m in imports(path) if m.split(".")[0] == "governance"], path


def test_governance_modules_import_each_other_without_a_circle():
    graph = {p.stem: {m.split(".")[1] for m in imports(p) if m.startswith("governance.") and len(m.split(".")) > 1}
             for p in GOVERNANCE.glob("*.py")}
    graph = {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        assert node not in visiting, f"import circle: {' -> '.join(visiting[visiting.index(node):] + [node])}"
        if node in done:
            return
        visiting.append(node)
        for dep in graph[node]:
            visit(dep)
        visiting.pop()
        done.add(node)

    for node in graph:
        visit(node)
    assert graph["audit_report"] and "audit_report" not in graph["drift"]


def test_only_the_governance_store_reaches_the_results_store():
    users = sorted(p.name for p in GOVERNANCE.glob("*.py")
                   if any(m.startswith("services.results_service") for m in imports(p)))
    assert users == ["store.py"]


def test_no_governance_source_file_is_over_400_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in [*GOVERNANCE.glob("*.py"), ROOT / "services" / "common" / "integrity.py"]}
    assert max(sizes.values()) <= 400, sizes
