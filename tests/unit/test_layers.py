"""Dependencies run one way, without an import circle anywhere: services/ and gateway/ depend on the core (services/common) and
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


PACKAGES = ("services", "gateway", "governance", "training", "loadtest", "scripts", "observability")


def _module_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (lazy imports inside functions included:
    a circle through them still means two modules that cannot be understood apart)."""
    modules = {".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in _sources(*PACKAGES)}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                found |= {known(base), *(known(f"{base}.{alias.name}") for alias in node.names)}
        graph[name] = {m for m in found if m and m != name}
    return graph


def test_no_import_circle_in_the_project():
    graph, done, path = _module_graph(), set(), []

    def visit(node: str) -> None:
        assert node not in path, f"import circle: {' -> '.join(path[path.index(node):] + [node])}"
        if node not in done:
            path.append(node)
            for dep in sorted(graph[node]):
                visit(dep)
            path.pop()
            done.add(node)

    assert len(graph) > 100 and "training.cli" in graph["training.train"]
    for node in sorted(graph):
        visit(node)


# Over 400 lines, to be split (the list may only shrink). Version directories are snapshots
# (hash-registered), not sources: model_repository is not read here.
OVER_400_FOR_NOW: set[str] = set()


def test_no_source_file_of_the_project_is_over_400_lines():
    files = [p for p in _sources(*PACKAGES, "tests", "docker", "docs") if ".venv" not in p.parts]
    long = {str(p.relative_to(REPO_ROOT)) for p in files if len(p.read_text().splitlines()) > 400}
    assert len(files) > 150 and long == OVER_400_FOR_NOW, long
