"""docker-compose.yml: valid for Compose (docker-compose config), core by default,
health-gated start order, secrets only from .env, every mounted file present,
and ports as in CONTRACT.md."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploy_files import (
    COMPOSE_FILE, COMPOSE_GPU_FILE, CONTRACT_MD, CONTRACT_PORTS, ENV_EXAMPLE, K8S_DIR, LISTEN_PORTS,
    PYTHON_IMAGES, REPO_ROOT, SECRET_VARS, TRITON_DOCKERFILE, all_containers, check_address,
    compose, compose_env, compose_ports, compose_vars, exec_form, load_yaml, parse_dockerfile, render_kustomization,
    workloads,
)

CORE = {"triton", "model-serving", "feature-service", "results-service", "gateway", "postgres", "redis", "retention-purge"}
PROFILES = {
    "observability": {"elasticsearch", "logstash", "kibana", "kibana-setup", "prometheus"},
    "edge": {"kong"},
}
# Compose services listen where the contract says, plus the adapter's metrics port.
COMPOSE_LISTEN = {**LISTEN_PORTS, "model-serving": [*LISTEN_PORTS["model-serving"], 9151]}


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def _env_file(tmp_path: Path, drop: str | None = None) -> Path:
    """.env.example with dummy secrets (minus `drop`): what a user's .env looks like."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.split("=", 1)[0]
        if name in SECRET_VARS:
            if name == drop:
                continue
            line = f"{name}=test-{name.lower().replace('_', '-')}" + (":client" if name == "API_KEYS" else "")
        lines.append(line)
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_config(tmp_path: Path, *args: str, drop: str | None = None) -> subprocess.CompletedProcess:
    command = _compose_command()
    if command is None:
        pytest.skip("neither docker-compose nor `docker compose` is installed (scripts/install_tools.sh installs it)")
    return subprocess.run(
        [*command, "--env-file", str(_env_file(tmp_path, drop)), "-f", str(COMPOSE_FILE), *args, "config", "-q"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        # Only the env file counts: variables exported in the caller's shell would override it.
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")},
    )


def test_compose_config_is_valid(tmp_path: Path) -> None:
    result = _run_config(tmp_path)
    assert result.returncode == 0, result.stderr


def test_compose_config_with_gpu_and_every_profile_is_valid(tmp_path: Path) -> None:
    result = _run_config(tmp_path, "-f", str(COMPOSE_GPU_FILE), "--profile", "observability", "--profile", "edge")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("secret", SECRET_VARS)
def test_compose_refuses_to_start_without_a_secret(tmp_path: Path, secret: str) -> None:
    result = _run_config(tmp_path, "--profile", "observability", "--profile", "edge", drop=secret)
    assert result.returncode != 0 and secret in result.stderr, f"compose accepted an empty {secret}"


def test_no_version_key_and_core_by_default() -> None:
    raw = load_yaml(COMPOSE_FILE)
    assert "version" not in raw, "the Compose specification has no `version:` key"
    services = raw["services"]
    assert {name for name, s in services.items() if not s.get("profiles")} == CORE
    for profile, names in PROFILES.items():
        assert {name for name, s in services.items() if profile in (s.get("profiles") or [])} == names


def test_gpu_override_reserves_a_gpu_for_triton_only() -> None:
    override = load_yaml(COMPOSE_GPU_FILE)
    assert set(override["services"]) == {"triton"}
    devices = override["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices and "gpu" in devices[0]["capabilities"]


def _healthchecked(name: str, service: dict) -> bool:
    check = service.get("healthcheck") or {}
    if check.get("disable"):
        return False
    if check.get("test"):
        return True
    dockerfile = (service.get("build") or {}).get("dockerfile")
    return bool(dockerfile and parse_dockerfile(REPO_ROOT / dockerfile)[-1].all("HEALTHCHECK"))


def test_start_order_waits_for_health() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = rule.get("condition") if isinstance(rule, dict) else None
            assert condition in ("service_healthy", "service_completed_successfully"), \
                f"{name} -> {dependency}: condition {condition!r} only waits for the container to start"
            if condition == "service_healthy":
                assert _healthchecked(dependency, services[dependency]), f"{name} waits for {dependency}, which has no healthcheck"
            dep_profiles = set(services[dependency].get("profiles") or [])
            assert not dep_profiles or dep_profiles & set(service.get("profiles") or []), \
                f"{name} depends on {dependency} of profile {dep_profiles}"


def test_builds_use_the_repo_root_and_existing_dockerfiles() -> None:
    built = {}
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build is None:
            continue
        assert build.get("context") == ".", f"{name}: the build context must be the repo root"
        dockerfile = build["dockerfile"]
        assert (REPO_ROOT / dockerfile).exists(), f"{name}: {dockerfile} does not exist"
        assert service["image"].startswith("car-detection/"), f"{name}: image {service['image']}"
        built[name] = dockerfile
    expected = {service: dockerfile for dockerfile, (service, _) in PYTHON_IMAGES.items()}
    expected |= {"triton": TRITON_DOCKERFILE, "retention-purge": "services/results_service/Dockerfile"}
    assert built == expected


def test_mounted_files_exist() -> None:
    missing = []
    for name, service in compose()["services"].items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("./var/compose/tls"):
                # made at start by make compose-up (scripts/compose/compose.py, TLS_DIR)
                assert "var/compose/tls" in (REPO_ROOT / "scripts/compose/compose.py").read_text()
                continue
            if source.startswith("./") and not (REPO_ROOT / source[2:].rstrip("/")).exists():
                missing.append(f"{name} mounts {source}, which does not exist")
    assert not missing, "\n".join(missing)


def test_secrets_come_only_from_env() -> None:
    text = COMPOSE_FILE.read_text()
    refs = compose_vars(text)
    for secret in SECRET_VARS:
        assert refs.get(secret, (None,))[0] == ":?", f"{secret} must be ${{{secret}:?...}} (required, no default)"
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    for secret in SECRET_VARS:
        assert example.get(secret) == "", f".env.example must list {secret} with an empty value"


def test_every_variable_is_documented_in_env_example() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    used = set(compose_vars(COMPOSE_FILE.read_text()) | compose_vars(COMPOSE_GPU_FILE.read_text()))
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"


def test_ports_match_the_contract() -> None:
    services = compose()["services"]
    for name, ports in CONTRACT_PORTS.items():
        mappings = {m.container: m for m in compose_ports(services[name])}
        for port in ports:
            assert port in mappings, f"{name}: container port {port} is not published"
            assert mappings[port].host == port, f"{name}: host port {mappings[port].host} by default, contract says {port}"
    for name, service in services.items():
        for mapping in compose_ports(service):
            if name != "gateway" and name != "kong":
                assert mapping.host_ip == "127.0.0.1", f"{name}: internal port {mapping.container} published beyond loopback"


def test_addresses_point_at_listening_ports() -> None:
    problems = []
    for name, service in compose()["services"].items():
        for key, value in compose_env(service).items():
            problems += check_address(f"{name}.{key}", value, COMPOSE_LISTEN)
    assert not problems, "\n".join(problems)


def test_address_check_catches_a_wrong_port() -> None:
    """The check above can fail: a gateway pointed at the wrong feature port is reported."""
    assert check_address("FEATURE_SERVICE_URL", "http://feature-service:5002", COMPOSE_LISTEN)
    assert not check_address("FEATURE_SERVICE_URL", "http://feature-service:5001", COMPOSE_LISTEN)
    assert check_address("DATABASE_URL", "postgresql://u:p@postgres:5433/results", COMPOSE_LISTEN)


def test_contract_ports_match_contract_md() -> None:
    assert CONTRACT_MD.exists(), f"{CONTRACT_MD} not found (set CONTRACT_MD)"
    table = CONTRACT_MD.read_text().split("## Processes and ports", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.search(r"\d", cells[1]):
            rows[cells[0].lower()] = [int(n) for n in re.findall(r"\d+", cells[1])]
    def row(word: str) -> list[int]:
        return next(ports for component, ports in rows.items() if word in component)
    assert row("gateway") == CONTRACT_PORTS["gateway"]
    assert row("feature") == CONTRACT_PORTS["feature-service"]
    assert row("results") == CONTRACT_PORTS["results-service"]
    assert row("adapter") == CONTRACT_PORTS["model-serving"]
    assert row("triton") == CONTRACT_PORTS["triton"]
    assert row("postgres") == CONTRACT_PORTS["postgres"]
    assert row("logstash") == CONTRACT_PORTS["logstash"]
    assert row("elasticsearch") == CONTRACT_PORTS["elasticsearch"] + CONTRACT_PORTS["kibana"]


def test_retention_purge_runs_the_governance_module() -> None:
    service = compose()["services"]["retention-purge"]
    assert "python -m governance.purge" in " ".join(service["command"])
    assert compose_env(service)["DATABASE_URL"].startswith("postgresql://")
    assert (REPO_ROOT / "governance" / "purge.py").exists()


def _observability_file(rel: str) -> Path:
    path = REPO_ROOT / rel
    assert path.exists(), f"{rel} is missing"
    return path


def test_prometheus_scrapes_listening_ports_with_the_token_compose_writes() -> None:
    config = load_yaml(_observability_file("observability/prometheus/prometheus.yml"))
    service = compose()["services"]["prometheus"]
    entrypoint = " ".join(service["entrypoint"])
    problems = []
    for job in config["scrape_configs"]:
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                problems += check_address(f"prometheus job {job['job_name']}", target, COMPOSE_LISTEN)
        token_file = (job.get("authorization") or {}).get("credentials_file")
        if token_file and f"> {token_file}" not in entrypoint:
            problems.append(f"job {job['job_name']} reads {token_file}, which compose does not write")
    for rule_file in config.get("rule_files", []):
        if not any(str(v).endswith(f":{rule_file}:ro") for v in service["volumes"]):
            problems.append(f"rule file {rule_file} is not mounted")
    assert not problems, "\n".join(problems)


def test_logstash_listens_where_services_ship() -> None:
    pipeline = _observability_file("observability/logstash/pipeline/logstash.conf").read_text()
    port = CONTRACT_PORTS["logstash"][0]
    assert re.search(rf"port\s*=>\s*{port}\b", pipeline), f"the pipeline's tcp input is not on {port}"
    for name in ("model-serving", "feature-service", "results-service", "gateway"):
        assert compose_env(compose()["services"][name])["LOGSTASH_PORT"] == str(port)


def test_kibana_setup_gets_the_files_and_urls_its_script_reads() -> None:
    script = _observability_file("observability/kibana/setup.sh").read_text()
    service = compose()["services"]["kibana-setup"]
    env = compose_env(service)
    for variable in ("ELASTICSEARCH_URL", "KIBANA_URL", "SETUP_DIR"):
        assert variable in script and variable in env, variable
    mounted = {str(v).split(":")[1] for v in service["volumes"]}
    for name in re.findall(r"\$SETUP_DIR/([\w.-]+)", script):
        assert f"{env['SETUP_DIR']}/{name}" in mounted, f"setup.sh reads $SETUP_DIR/{name}, not mounted"


def test_compose_triton_keeps_the_image_flags() -> None:
    """Compose adds polling to Triton's command; every flag of the image's CMD stays."""
    image_command = exec_form(parse_dockerfile(REPO_ROOT / TRITON_DOCKERFILE)[-1].all("CMD")[-1])
    compose_command = compose()["services"]["triton"]["command"]
    assert set(image_command) <= set(compose_command), sorted(set(image_command) - set(compose_command))
    volume = next(v for v in compose()["services"]["triton"]["volumes"] if v.startswith("./model_repository:"))
    assert volume.split(":")[1] == "/models" and "--model-repository=/models" in compose_command


# --- compose and Kubernetes run the same thing --------------------------------------

def _kubernetes_docs() -> list[dict]:
    """`kubectl kustomize k8s/` (Debian's kubernetes-client) where installed, else the
    Python renderer that test_kubernetes.py checks against it."""
    if shutil.which("kubectl"):
        result = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return render_kustomization()


def _cpu(value: object) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _bytes(value: object) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", str(value))
    assert match, value
    units = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}
    return int(float(match[1]) * units[match[2].lower().rstrip("b")])


def _main_container(doc: dict) -> dict:
    return all_containers(doc, init=False)[0]


def test_compose_and_kubernetes_run_the_same_images_with_the_same_limits() -> None:
    services = compose()["services"]
    workloads_by_name = {doc["metadata"]["name"]: doc for doc in workloads(_kubernetes_docs())}
    for name in sorted(CORE):
        assert name in workloads_by_name, f"compose service {name} has no Kubernetes workload"
        container = _main_container(workloads_by_name[name])
        service = services[name]
        assert container["image"] == service["image"], f"{name}: k8s {container['image']}, compose {service['image']}"
        limits = container["resources"]["limits"]
        assert _cpu(limits["cpu"]) == float(service["cpus"]), f"{name}: cpu k8s {limits['cpu']}, compose {service['cpus']}"
        assert _bytes(limits["memory"]) == _bytes(service["mem_limit"]), \
            f"{name}: memory k8s {limits['memory']}, compose {service['mem_limit']}"


def test_limit_comparison_catches_a_difference() -> None:
    assert _bytes("512Mi") == _bytes("512m") != _bytes("1g")
    assert _cpu("500m") == 0.5 != _cpu("1")


SHARED_SETTINGS = ("LOG_LEVEL", "RATE_LIMIT", "MAX_UPLOAD_BYTES", "MAX_IMAGE_PIXELS",
                   "GUNICORN_WORKERS", "GUNICORN_THREADS", "RETENTION_DAYS", "AUDIT_RETENTION_DAYS")


def test_compose_and_the_kubernetes_configmap_agree_on_every_setting() -> None:
    configmap = next(d for d in _kubernetes_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "car-detection-config")
    compose_values: dict[str, set[str]] = {}
    for service in compose()["services"].values():
        for key, value in compose_env(service).items():
            compose_values.setdefault(key, set()).add(value)
    for key in SHARED_SETTINGS:
        assert key in configmap["data"], f"the ConfigMap lacks {key}"
        assert compose_values.get(key) == {str(configmap["data"][key])}, \
            f"{key}: compose {compose_values.get(key)}, Kubernetes {configmap['data'][key]!r}"


def _code_default(name: str) -> str:
    """The default the code itself uses (services/common/config.py, environment cleared)."""
    env = {k: v for k, v in os.environ.items() if k != name}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", f"from services.common import config; print(config.{name})"],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_threshold_and_model_version_agree_between_compose_kubernetes_and_the_code() -> None:
    """The served version is the newest under model_repository/car_detector (version_policy
    latest 1) in compose (mounted) and in Kubernetes (the triton-model image built from it).
    Its operating threshold applies everywhere: the code's default defers to it, and neither
    compose nor the ConfigMap sets another (an explicit override must equal it)."""
    model_dir = REPO_ROOT / "model_repository" / "car_detector"
    policy = (model_dir / "config.pbtxt").read_text()
    pinned = re.search(r"^version_policy: \{ specific: \{ versions: \[ ([0-9, ]+) \] \} \}", policy, re.M)
    assert pinned or "latest: { num_versions: 1 }" in policy, "one served version: the newest, or the registry's pin"
    newest = (max(int(v) for v in pinned.group(1).split(",")) if pinned
              else max(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()))
    threshold = float(json.loads((model_dir / str(newest) / "model_metadata.json").read_text())["operating_threshold"])
    code = _code_default("CONFIDENCE_THRESHOLD")
    assert code == "None" or float(code) == threshold, f"code default {code}, model v{newest}: {threshold}"
    configmap = next(d for d in _kubernetes_docs() if d["kind"] == "ConfigMap")
    value = configmap["data"].get("CONFIDENCE_THRESHOLD")
    assert value in (None, "") or float(value) == threshold, f"ConfigMap {value}, model v{newest}: {threshold}"
    for name, service in compose()["services"].items():
        value = compose_env(service).get("CONFIDENCE_THRESHOLD")
        assert value in (None, "") or float(value) == threshold, f"{name}: {value}, model v{newest}: {threshold}"
    # The same model images: Kubernetes' triton and triton-model carry compose's tag.
    tag = compose()["services"]["triton"]["image"].rsplit(":", 1)[1]
    images = {c["image"] for d in workloads(_kubernetes_docs()) for c in all_containers(d)}
    assert f"car-detection/triton-model:{tag}" in images and f"car-detection/triton:{tag}" in images
