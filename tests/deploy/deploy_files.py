"""Readers for the deployment files, shared by the tests in this folder.

Pure functions over parsed files: Dockerfiles, .dockerignore, the compose file
(with `${VAR:-default}` resolved to its default), the Kubernetes kustomization
(rendered in Python, so no kubectl is needed) and Kong's declarative config.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from scripts.compose.compose import SECRETS

from services.common.config import REPO_ROOT
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE_GPU_FILE = REPO_ROOT / "docker-compose.gpu.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
K8S_DIR = REPO_ROOT / "k8s"
KONG_FILE = REPO_ROOT / "gateway" / "kong" / "kong.yml"
KONG_RENDER = REPO_ROOT / "gateway" / "kong" / "render.sh"
CONTRACT_MD = Path(os.environ.get("CONTRACT_MD", REPO_ROOT.parent / "shared" / "CONTRACT.md"))

# CONTRACT.md "Processes and ports"; test_contract_ports checks this copy against it.
CONTRACT_PORTS = {
    "gateway": [8080],
    "feature-service": [5001],
    "results-service": [5002],
    "model-serving": [50051],
    "triton": [8000, 8001, 8002],
    "postgres": [5432],
    "logstash": [5000],
    "elasticsearch": [9200],
    "kibana": [5601],
}
# Ports of the components the contract does not list (compose services / k8s Services).
OTHER_PORTS = {"redis": [6379], "prometheus": [9090], "kong": [8800, 9080, 8100]}
LISTEN_PORTS = {**CONTRACT_PORTS, **OTHER_PORTS}

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # services/common/config.py default
SECRET_VARS = tuple(SECRETS)  # every ${VAR:?} secret of docker-compose.yml, as compose-up generates them

# The Python services' images: Dockerfile -> (compose service, requirements.in).
PYTHON_IMAGES = {
    "gateway/Dockerfile": ("gateway", "gateway/requirements.in"),
    "services/feature_service/Dockerfile": ("feature-service", "services/feature_service/requirements.in"),
    "services/results_service/Dockerfile": ("results-service", "services/results_service/requirements.in"),
    "services/model_serving/Dockerfile": ("model-serving", "services/model_serving/requirements.in"),
}
TRITON_DOCKERFILE = "services/triton/Dockerfile"
ALL_DOCKERFILES = [*PYTHON_IMAGES, TRITON_DOCKERFILE]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- Dockerfiles ---------------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def _logical_lines(text: str) -> Iterator[str]:
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and current):
            continue  # comments may sit inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            yield current.strip()
        current = ""
    if current.strip():
        yield current.strip()


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, with global ARG defaults substituted in FROM."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), rest.split()[0])
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None


def parse_copy(rest: str) -> Copy:
    words = shlex.split(rest)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    return Copy(tuple(paths[:-1]), paths[-1], from_stage)


def exec_form(rest: str) -> list[str]:
    """A JSON-array instruction argument (CMD/HEALTHCHECK ... CMD [...])."""
    return json.loads(rest[rest.index("["):])


# --- .dockerignore -------------------------------------------------------------------

def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def is_ignored(rel_path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins (`!` re-includes);
    a pattern matching a directory covers everything below it; `**/` matches any depth."""
    parts = rel_path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        candidates = [pattern]
        if pattern.startswith("**/"):
            candidates.append(pattern[3:])
        if any(fnmatch.fnmatchcase(prefix, cand) for prefix in prefixes for cand in candidates):
            ignored = not negate
    return ignored


# --- compose ---------------------------------------------------------------------------

_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose_vars(text: str) -> dict[str, tuple[str | None, str | None]]:
    """Every ${NAME...} reference: name -> (operator, default-or-message)."""
    return {m[1]: (m[2], m[3]) for m in _VAR.finditer(text)}


def with_defaults(value: Any) -> Any:
    """Resolve ${NAME:-default} to its default, ${NAME:?msg}/${NAME} to a marker."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m[3] if m[2] in (":-", "-") else f"<{m[1]}>", value).replace("$$", "$")
    if isinstance(value, list):
        return [with_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: with_defaults(v) for k, v in value.items()}
    return value


def compose(path: Path = COMPOSE_FILE) -> dict:
    return with_defaults(load_yaml(path))


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@dataclass(frozen=True)
class PortMapping:
    host_ip: str | None
    host: int
    container: int


def compose_ports(service: dict) -> list[PortMapping]:
    mappings = []
    for entry in service.get("ports") or []:
        parts = str(entry).split("/")[0].split(":")
        host_ip = parts[0] if len(parts) == 3 else None
        mappings.append(PortMapping(host_ip, int(parts[-2]), int(parts[-1])))
    return mappings


# --- Kubernetes ------------------------------------------------------------------------

SUPPORTED_KUSTOMIZE_KEYS = {"apiVersion", "kind", "namespace", "resources", "images"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "IngressClass", "PriorityClass", "CustomResourceDefinition"}


def render_kustomization(directory: Path = K8S_DIR) -> list[dict]:
    """What `kubectl kustomize` produces for the subset of kustomize used here
    (resources, namespace, images). Anything else fails loudly rather than being
    silently ignored."""
    kustomization = load_yaml(directory / "kustomization.yaml")
    unsupported = set(kustomization) - SUPPORTED_KUSTOMIZE_KEYS
    if unsupported:
        raise ValueError(f"kustomization keys this renderer does not implement: {sorted(unsupported)}")
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        target = directory / resource
        docs.extend(render_kustomization(target) if target.is_dir() else load_yaml_docs(target))
    namespace = kustomization.get("namespace")
    images = {image["name"]: image for image in kustomization.get("images", [])}
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        for container in all_containers(doc):
            name, tag = split_image(container["image"])
            if name in images:
                rule = images[name]
                new_name = rule.get("newName", name)
                if "digest" in rule:
                    container["image"] = f"{new_name}@{rule['digest']}"
                else:
                    container["image"] = f"{new_name}:{rule.get('newTag', tag)}" if rule.get("newTag", tag) else new_name
    return docs


def split_image(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image.split("@", 1)[0], None
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, None


def pod_spec(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return doc["spec"]
    return None


def pod_labels(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return doc["spec"]["template"]["metadata"].get("labels", {})


def all_containers(doc: dict, init: bool = True) -> list[dict]:
    spec = pod_spec(doc)
    if spec is None:
        return []
    return [*(spec.get("initContainers", []) if init else []), *spec.get("containers", [])]


def index(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def workloads(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if pod_spec(doc) is not None]


def selected_workloads(service: dict, docs: list[dict]) -> list[dict]:
    selector = service["spec"].get("selector") or {}
    return [w for w in workloads(docs)
            if w["kind"] != "CronJob" and selector and selector.items() <= pod_labels(w).items()]


def container_port_numbers(workload: dict) -> dict[str | int, int]:
    """containerPort by name and by number, for resolving targetPort / probe ports."""
    ports: dict[str | int, int] = {}
    for container in all_containers(workload, init=False):
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


# --- address references ------------------------------------------------------------------

_ADDRESS = re.compile(r"^(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?:[^@/]*@)?(?P<host>[A-Za-z0-9.-]+):(?P<port>\d+)(?:/.*)?$")


def address_refs(value: str) -> tuple[str, int] | None:
    """(host, port) of a `scheme://[user@]host:port/...` or `host:port` value, else None."""
    match = _ADDRESS.match(value.strip())
    if not match:
        return None
    return match["host"], int(match["port"])


def check_address(name: str, value: str, listening: dict[str, list[int]]) -> list[str]:
    """A setting that points at a known host must use one of its ports."""
    ref = address_refs(value)
    if ref is None or ref[0] not in listening:
        return []
    host, port = ref
    if port not in listening[host]:
        return [f"{name}={value}: {host} listens on {listening[host]}, not {port}"]
    return []
