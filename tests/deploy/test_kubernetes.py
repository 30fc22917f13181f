"""k8s/: the kustomization rendered (in Python; cross-checked against `kubectl
kustomize`, which scripts/install_tools.sh installs), every object validated offline against the
Kubernetes OpenAPI schemas in strict mode, and the wiring checked: selectors,
ports (CONTRACT.md), probes, resources, security, references to ConfigMap/Secret."""
from __future__ import annotations

import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.deploy.deploy_files import (
    CONTRACT_PORTS, K8S_DIR, MAX_UPLOAD_BYTES, OTHER_PORTS, PYTHON_IMAGES, REPO_ROOT, all_containers, check_address,
    compose, container_port_numbers, index, load_yaml_docs, pod_labels, pod_spec, render_kustomization,
    selected_workloads, split_image, workloads,
)

NAMESPACE = "car-detection"
# Oldest Kubernetes we target (gRPC probes GA in 1.27, CronJob timeZone GA in 1.27) and the newest schema shipped.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
HPA_TARGETS = {"gateway", "feature-service", "model-serving", "triton"}
K8S_LISTEN = {**CONTRACT_PORTS, **OTHER_PORTS, "model-serving": [50051, 9151]}
SECRET_TEMPLATE = K8S_DIR / "secrets.example.yaml"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render_kustomization()


@pytest.fixture(scope="module")
def objects(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return index(docs)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly(docs: list[dict], version: str) -> None:
    errors = []
    for doc in [*docs, *load_yaml_docs(SECRET_TEMPLATE)]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: no schema for {doc['apiVersion']} in Kubernetes {version}")
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_a_typo(docs: list[dict]) -> None:
    """The validation above can fail: an unknown field is an error."""
    deployment = yaml.safe_load(yaml.safe_dump(next(d for d in docs if d["kind"] == "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (scripts/install_tools.sh installs Debian's kubernetes-client)")
def test_python_renderer_matches_kubectl_kustomize(docs: list[dict]) -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(rendered, key=key) == sorted(docs, key=key)


def test_expected_objects_exist(objects: dict) -> None:
    for name in ("triton", "model-serving", "feature-service", "results-service", "gateway", "redis"):
        assert ("Deployment", name) in objects and ("Service", name) in objects, name
    assert ("StatefulSet", "postgres") in objects and objects[("Service", "postgres")]["spec"]["clusterIP"] == "None"
    assert objects[("StatefulSet", "postgres")]["spec"]["serviceName"] == "postgres"
    assert objects[("StatefulSet", "postgres")]["spec"]["volumeClaimTemplates"]
    assert ("CronJob", "retention-purge") in objects and ("Ingress", "car-detection") in objects
    assert ("ConfigMap", "car-detection-config") in objects and ("Namespace", NAMESPACE) in objects
    assert {name for kind, name in objects if kind == "HorizontalPodAutoscaler"} == HPA_TARGETS
    assert ("Secret", "car-detection-secrets") not in objects, "the Secret is created from .env, never applied with placeholders"


def test_everything_lives_in_the_namespace(docs: list[dict]) -> None:
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"


def test_workloads_are_restricted_and_sized(docs: list[dict]) -> None:
    problems = []
    for workload in workloads(docs):
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        if workload["kind"] != "CronJob":
            selector = workload["spec"]["selector"]["matchLabels"]
            if not selector.items() <= pod_labels(workload).items():
                problems.append(f"{name}: selector {selector} does not match its pod labels")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: mounts a service-account token it does not need")
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        for container in all_containers(workload):
            where = f"{name}/{container['name']}"
            security = {**pod_security, **container.get("securityContext", {})}
            if security.get("runAsNonRoot") is not True or not security.get("runAsUser"):
                problems.append(f"{where}: runAsNonRoot with a numeric runAsUser required")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: must drop ALL capabilities")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem should be read-only")
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(bound, {})):
                    problems.append(f"{where}: {bound} for cpu and memory required")
            image, tag = split_image(container["image"])
            if not tag or tag == "latest":
                problems.append(f"{where}: image {container['image']} needs a fixed tag")
        if workload["kind"] != "CronJob":
            for container in all_containers(workload, init=False):
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in container:
                        problems.append(f"{name}/{container['name']}: no {probe}")
    assert not problems, "\n".join(problems)


def _probe_port(probe: dict) -> tuple[str, object]:
    for kind in ("httpGet", "grpc", "tcpSocket"):
        if kind in probe:
            return kind, probe[kind]["port"]
    return "exec", None


def test_probes(objects: dict) -> None:
    def container(name: str) -> dict:
        return all_containers(objects[("Deployment", name)], init=False)[0]

    triton = container("triton")
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": CONTRACT_PORTS["triton"][0]}
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    adapter = container("model-serving")
    assert adapter["readinessProbe"]["grpc"]["port"] == CONTRACT_PORTS["model-serving"][0]
    assert _probe_port(adapter["livenessProbe"]) == ("tcpSocket", CONTRACT_PORTS["model-serving"][0])
    for name in ("feature-service", "results-service", "gateway"):
        port = CONTRACT_PORTS[name][0]
        assert container(name)["livenessProbe"]["httpGet"] == {"path": "/health", "port": port}, name
        ready = "/health" if name == "gateway" else "/ready"  # see k8s/gateway.yaml for why
        assert container(name)["readinessProbe"]["httpGet"] == {"path": ready, "port": port}, name


def test_probe_and_service_ports_resolve_to_container_ports(docs: list[dict]) -> None:
    problems = []
    for workload in workloads(docs):
        ports = container_port_numbers(workload)
        for container in all_containers(workload, init=False):
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                kind, port = _probe_port(container.get(probe, {}))
                if port is not None and port not in ports:
                    problems.append(f"{workload['metadata']['name']}: {probe} port {port} is no containerPort ({sorted(map(str, ports))})")
    for service in (d for d in docs if d["kind"] == "Service"):
        name = service["metadata"]["name"]
        targets = selected_workloads(service, docs)
        if len(targets) != 1:
            problems.append(f"Service {name} selects {len(targets)} workloads")
            continue
        ports = container_port_numbers(targets[0])
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if ports.get(target) != port["port"]:
                problems.append(f"Service {name}: port {port['port']} -> targetPort {target} resolves to {ports.get(target)}")
        expected = K8S_LISTEN.get(name)
        if expected and {p["port"] for p in service["spec"]["ports"]} != set(expected):
            problems.append(f"Service {name}: ports {[p['port'] for p in service['spec']['ports']]}, contract says {expected}")
    assert not problems, "\n".join(problems)


def test_port_check_catches_a_wrong_port(docs: list[dict]) -> None:
    """The checks above can fail: a Service on the wrong port is reported."""
    broken = yaml.safe_load(yaml.safe_dump(docs))
    service = next(d for d in broken if d["kind"] == "Service" and d["metadata"]["name"] == "feature-service")
    service["spec"]["ports"][0]["port"] = 5002
    with pytest.raises(AssertionError, match="feature-service"):
        test_probe_and_service_ports_resolve_to_container_ports(broken)


def test_config_addresses_point_at_services(objects: dict) -> None:
    config = objects[("ConfigMap", "car-detection-config")]["data"]
    problems = []
    for key, value in config.items():
        problems += check_address(key, value, K8S_LISTEN)
    for key, service, port in (("FEATURE_SERVICE_URL", "feature-service", 5001), ("RESULTS_SERVICE_URL", "results-service", 5002),
                               ("MODEL_SERVING_ADDR", "model-serving", 50051), ("TRITON_GRPC_URL", "triton", 8001),
                               ("RATELIMIT_STORAGE_URI", "redis", 6379)):
        assert f"{service}:{port}" in config[key], key
        assert ("Service", service) in objects
    assert int(config["MAX_UPLOAD_BYTES"]) == MAX_UPLOAD_BYTES
    for workload in workloads(list(objects.values())):
        for container in all_containers(workload):
            for env in container.get("env", []):
                if "value" in env:
                    problems += check_address(f"{workload['metadata']['name']}.{env['name']}", env["value"], K8S_LISTEN)
    assert not problems, "\n".join(problems)


def test_config_and_secret_references_resolve(objects: dict) -> None:
    template = load_yaml_docs(SECRET_TEMPLATE)[0]
    secret_keys = set(template["stringData"])
    assert all(value.startswith("REPLACE_WITH") for value in template["stringData"].values()), "placeholders only"
    config = objects[("ConfigMap", "car-detection-config")]["data"]
    problems = []
    for workload in workloads(list(objects.values())):
        for container in all_containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            defined = set()
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref != "car-detection-config":
                    problems.append(f"{where}: envFrom unknown ConfigMap {ref}")
                defined |= set(config)
            for env in container.get("env", []):
                secret_ref = env.get("valueFrom", {}).get("secretKeyRef")
                if secret_ref and (secret_ref["name"] != template["metadata"]["name"] or secret_ref["key"] not in secret_keys):
                    problems.append(f"{where}: {env['name']} reads secret key {secret_ref} missing from secrets.example.yaml")
                for var in re.findall(r"\$\((\w+)\)", env.get("value", "")):
                    if var not in defined:
                        problems.append(f"{where}: {env['name']} uses $({var}) before it is defined")
                defined.add(env["name"])
    assert not problems, "\n".join(problems)


def test_hpas_target_sized_deployments(objects: dict) -> None:
    for name in HPA_TARGETS:
        hpa = objects[("HorizontalPodAutoscaler", name)]
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        deployment = objects[(target["kind"], target["name"])]
        assert all("cpu" in c["resources"]["requests"] for c in all_containers(deployment, init=False))
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_ingress_reaches_only_the_gateway(objects: dict) -> None:
    ingress = objects[("Ingress", "car-detection")]
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends == [{"name": "gateway", "port": {"number": CONTRACT_PORTS["gateway"][0]}}]
    annotations = ingress["metadata"]["annotations"]
    size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(size.rstrip("m")) * 1024 * 1024 > MAX_UPLOAD_BYTES
    assert "nginx.ingress.kubernetes.io/limit-rps" in annotations
    assert "nginx.ingress.kubernetes.io/rewrite-target" not in annotations


def test_retention_cronjob(objects: dict) -> None:
    cronjob = objects[("CronJob", "retention-purge")]
    container = all_containers(cronjob)[0]
    assert container["command"] == ["python", "-m", "governance.purge"]
    assert split_image(container["image"])[0] == "car-detection/results-service"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


def test_images_are_the_ones_compose_builds(docs: list[dict]) -> None:
    built = {split_image(s["image"])[0] for s in compose()["services"].values() if "build" in s}
    ours = {split_image(c["image"])[0] for w in workloads(docs) for c in all_containers(w)
            if c["image"].startswith("car-detection/")}
    assert ours == built | {"car-detection/triton-model"}
    services = {service for service, _ in PYTHON_IMAGES.values()}
    assert services <= {w["metadata"]["name"] for w in workloads(docs)}
    assert (REPO_ROOT / "services" / "triton" / "Dockerfile").read_text().count("AS model") == 1
