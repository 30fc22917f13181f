"""The deployment files name only declared settings and agree with their defaults.

Every environment variable is declared once, with its default, in services/common/config.py.
docker-compose.yml, the Kubernetes manifests and .env.example may name only those, and where
they spell out a value that is a default (not a deployment's own host, URL or store), it is
the declared default: CONFIDENCE_THRESHOLD once said 0.5 there while the code said 0.45.
"""
from __future__ import annotations

import re

import yaml

from services.common.config import Settings, Var
from tests.deploy.deploy_files import (
    COMPOSE_FILE, COMPOSE_GPU_FILE, ENV_EXAMPLE, K8S_DIR, all_containers, compose_env, compose_vars, load_yaml,
    render_kustomization, workloads,
)

DECLARED = Settings.variables()
# Values each deployment sets for itself: its own addresses and stores, not shared defaults.
PER_DEPLOYMENT = {name for name, var in DECLARED.items() if var.group == Settings.GATEWAY_PORT.group
                  and not name.endswith("_PORT")} | {
    "DATABASE_URL", "RATELIMIT_STORAGE_URI", "LOGSTASH_HOST", "VAR_DIR", "MODEL_REPOSITORY", "METRICS_DIR",
    # TLS is off by default and switched on, with the deployment's own files, per hop.
    *(name for name in DECLARED if "TLS" in name)}
OUR_IMAGE = re.compile(r"^car-detection/(?!triton)")


def agrees(var: Var, value: str) -> bool:
    if var.kind in ("int", "float"):
        return var.default is not None and float(value) == float(var.default)
    if var.kind == "bool":
        return (value.strip().lower() in ("1", "true", "yes", "on")) == bool(var.default)
    return value == str(var.default)


def _check(where: str, name: str, value: str | None, problems: list[str]) -> None:
    if name not in DECLARED:
        problems.append(f"{where}: {name} is not declared in services/common/config.py")
        return
    var = DECLARED[name]
    if value in (None, "") or "${" in value or name in PER_DEPLOYMENT or var.kind == "secret":
        return
    if not agrees(var, value):
        problems.append(f"{where}: {name}={value!r}, but its declared default is {var.default!r}")


def _our_compose_services(path):
    services = load_yaml(path).get("services") or {}
    return {name: svc for name, svc in services.items() if OUR_IMAGE.match(str(svc.get("image", "")))}


def test_compose_names_only_declared_variables_with_their_defaults():
    problems: list[str] = []
    for path in (COMPOSE_FILE, COMPOSE_GPU_FILE):
        for name, (operator, default) in compose_vars(path.read_text()).items():
            _check(f"{path.name} ${{{name}}}", name, default if operator in (":-", "-") else None, problems)
        for service, spec in _our_compose_services(path).items():
            for name, value in compose_env(spec).items():
                _check(f"{path.name} {service}", name, value, problems)
    assert not problems, "\n".join(problems)


def test_env_example_names_only_declared_variables_with_their_defaults():
    problems: list[str] = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            _check(".env.example", match[1], match[2].strip(), problems)
    assert not problems, "\n".join(problems)


def test_kubernetes_names_only_declared_variables_with_their_defaults():
    problems: list[str] = []
    docs = render_kustomization(K8S_DIR)
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "car-detection-config":
            for name, value in (doc.get("data") or {}).items():
                _check("k8s ConfigMap", name, str(value), problems)
    for workload in workloads(docs):
        for container in all_containers(workload):
            if not OUR_IMAGE.match(container.get("image", "")) or container.get("image", "").endswith("triton-model"):
                continue
            for entry in container.get("env") or []:
                _check(f"k8s {workload['metadata']['name']}", entry["name"], entry.get("value"), problems)
    secrets = yaml.safe_load((K8S_DIR / "secrets.example.yaml").read_text())
    for name in secrets.get("stringData") or {}:
        _check("k8s secrets.example.yaml", name, None, problems)
    assert not problems, "\n".join(problems)


def test_confidence_threshold_is_left_to_the_served_model_everywhere():
    """The operating threshold is the served version's (model_metadata.json) unless overridden."""
    assert Settings.CONFIDENCE_THRESHOLD.default is None
    assert "CONFIDENCE_THRESHOLD" not in compose_vars(COMPOSE_FILE.read_text()) or \
        compose_vars(COMPOSE_FILE.read_text())["CONFIDENCE_THRESHOLD"] == (":-", "")
    assert re.search(r"^# CONFIDENCE_THRESHOLD=$", ENV_EXAMPLE.read_text(), re.M)
    configmap = (K8S_DIR / "configmap.yaml").read_text()
    assert not re.search(r"^\s+CONFIDENCE_THRESHOLD:", configmap, re.M)
