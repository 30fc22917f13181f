"""The edge and the cluster network, as security properties of the deployment files:
Kong's only unauthenticated route is exactly /health, Kong presents the service token
to the gRPC adapter (and drops a client's), and the Kubernetes NetworkPolicies deny
by default and allow exactly the call paths the services make."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploy_files import KONG_FILE, KONG_RENDER, REPO_ROOT, load_yaml

K8S = REPO_ROOT / "k8s"
TOKEN = "internal-token-for-edge-test-0123456789"


def _routes() -> dict[str, dict]:
    return {route["name"]: route for service in load_yaml(KONG_FILE)["services"] for route in service.get("routes", [])}


def _kong_regex_matches(path_pattern: str, path: str) -> bool:
    """Kong matches a `~` path as a regex anchored at the start of the request path."""
    return re.match(path_pattern[1:], path) is not None


def test_only_exactly_health_skips_key_auth() -> None:
    unauthenticated = {name: route for name, route in _routes().items()
                       if "key-auth" not in {p["name"] for p in route.get("plugins", [])}}
    assert list(unauthenticated) == ["health"]
    pattern = unauthenticated["health"]["paths"][0]
    assert _kong_regex_matches(pattern, "/health")
    for other in ("/api/results/predictions/user/health", "/health/x", "/healthz", "/ready", "/x/health"):
        assert not _kong_regex_matches(pattern, other), other
    assert set(unauthenticated["health"]["methods"]) == {"GET", "HEAD"}


def test_kong_presents_the_service_token_to_the_adapter(tmp_path: Path) -> None:
    run = subprocess.run(["sh", str(KONG_RENDER), str(KONG_FILE), str(tmp_path / "kong.yml")],
                         env={"API_KEYS": "k-1:client", "INTERNAL_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    rendered = yaml.safe_load((tmp_path / "kong.yml").read_text())
    grpc_route = next(r for s in rendered["services"] for r in s.get("routes", []) if r["name"] == "model-serving-grpc")
    transformer = next(p["config"] for p in grpc_route["plugins"] if p["name"] == "request-transformer")
    assert transformer["remove"]["headers"] == ["x-internal-token"], "a client's own token is dropped"
    assert transformer["add"]["headers"] == [f"x-internal-token:{TOKEN}"]
    assert (tmp_path / "kong.yml").stat().st_mode & 0o077 == 0, "the rendered file holds a secret"
    assert "__INTERNAL_TOKEN__" in KONG_FILE.read_text() and TOKEN not in KONG_FILE.read_text()


@pytest.mark.parametrize("token", ["", "bad token", 'quote"d', "slash/ed"])
def test_render_refuses_a_missing_or_unsafe_token(tmp_path: Path, token: str) -> None:
    run = subprocess.run(["sh", str(KONG_RENDER), str(KONG_FILE), str(tmp_path / "kong.yml")],
                         env={"API_KEYS": "k-1:client", "INTERNAL_TOKEN": token, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode != 0 and not (tmp_path / "kong.yml").exists()


# --------------------------------------------------------------------------- NetworkPolicies

def _policies() -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / "networkpolicy.yaml").read_text()) if d and d["kind"] == "NetworkPolicy"]


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: dict, source: tuple[str, dict[str, str]]) -> bool:
    namespace, labels = source
    ns_ok = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}) \
        if "namespaceSelector" in peer else namespace == "car-detection"
    pod_ok = _selects(peer["podSelector"], labels) if "podSelector" in peer else True
    return ns_ok and pod_ok


def _rule_allows(rule: dict, peers_key: str, other: tuple[str, dict[str, str]], port: int) -> bool:
    peers = rule.get(peers_key)
    ports = rule.get("ports")
    peer_ok = peers is None or any(_peer_matches(p, other) for p in peers)
    port_ok = ports is None or any(p.get("port") == port for p in ports)
    return peer_ok and port_ok


def _allowed(direction: str, pod: tuple[str, dict[str, str]], other: tuple[str, dict[str, str]], port: int) -> bool:
    """Kubernetes semantics: a pod selected by any policy of this direction is isolated
    and gets the union of their rules; one selected by none is open."""
    if pod[0] != "car-detection":
        return True  # outside the namespace: not governed by these policies
    kind, peers_key = ("Ingress", "from") if direction == "ingress" else ("Egress", "to")
    selecting = [p for p in _policies() if kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], pod[1])]
    if not selecting:
        return True
    return any(_rule_allows(rule, peers_key, other, port) for p in selecting for rule in p["spec"].get(direction, []))


def _pod(name: str, namespace: str = "car-detection") -> tuple[str, dict[str, str]]:
    return namespace, {"app.kubernetes.io/name": name}


def _connects(source: tuple, target: tuple, port: int) -> bool:
    return _allowed("egress", source, target, port) and _allowed("ingress", target, source, port)


REAL_PATHS = [
    (_pod("ingress-nginx", "ingress-nginx"), _pod("gateway"), 8080),
    (_pod("gateway"), _pod("feature-service"), 5001),
    (_pod("gateway"), _pod("results-service"), 5002),
    (_pod("gateway"), _pod("model-serving"), 50051),
    (_pod("gateway"), _pod("triton"), 8001),
    (_pod("gateway"), _pod("redis"), 6379),
    (_pod("model-serving"), _pod("triton"), 8001),
    (_pod("results-service"), _pod("postgres"), 5432),
    (_pod("retention-purge"), _pod("postgres"), 5432),
    (_pod("prometheus", "monitoring"), _pod("model-serving"), 9151),
    (_pod("prometheus", "monitoring"), _pod("triton"), 8002),
]
FORBIDDEN_PATHS = [
    (_pod("ingress-nginx", "ingress-nginx"), _pod("results-service"), 5002),
    (_pod("ingress-nginx", "ingress-nginx"), _pod("triton"), 8000),
    (_pod("attacker", "default"), _pod("triton"), 8001),
    (_pod("attacker", "default"), _pod("redis"), 6379),
    (_pod("feature-service"), _pod("postgres"), 5432),
    (_pod("feature-service"), _pod("results-service"), 5002),
    (_pod("model-serving"), _pod("results-service"), 5002),
    (_pod("model-serving"), _pod("triton"), 8000),
    (_pod("results-service"), _pod("triton"), 8001),
    (_pod("gateway"), _pod("postgres"), 5432),
    (_pod("triton"), _pod("postgres"), 5432),
    (_pod("some-new-pod"), _pod("gateway"), 8080),
]


@pytest.mark.parametrize("source,target,port", REAL_PATHS)
def test_network_policies_allow_the_real_call_paths(source, target, port) -> None:
    assert _connects(source, target, port)


@pytest.mark.parametrize("source,target,port", FORBIDDEN_PATHS)
def test_network_policies_deny_everything_else(source, target, port) -> None:
    assert not _connects(source, target, port)


def test_deny_by_default_and_dns_stays_reachable() -> None:
    default = next(p for p in _policies() if p["metadata"]["name"] == "default-deny")
    assert default["spec"]["podSelector"] == {} and set(default["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in default["spec"] and "egress" not in default["spec"]
    kube_dns = ("kube-system", {"k8s-app": "kube-dns"})
    for name in ("gateway", "model-serving", "results-service", "feature-service"):
        assert _allowed("egress", _pod(name), kube_dns, 53)


def test_ingress_serves_tls_by_default() -> None:
    ingress = load_yaml(K8S / "ingress.yaml")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["tls"][0]["secretName"] and ingress["spec"]["tls"][0]["hosts"]
    assert annotations["cert-manager.io/cluster-issuer"]
    assert annotations["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"


def test_secrets_feed_the_service_token_redis_password_and_triton_key() -> None:
    template = load_yaml(K8S / "secrets.example.yaml")["stringData"]
    assert {"INTERNAL_TOKEN", "REDIS_PASSWORD", "TRITON_ADMIN_KEY"} <= set(template)
    for name in ("gateway", "feature-service", "results-service", "model-serving"):
        text = (K8S / f"{name}.yaml").read_text()
        assert re.search(r"name: INTERNAL_TOKEN\s+valueFrom:\s+secretKeyRef:", text), name
    redis = (K8S / "redis.yaml").read_text()
    assert '"--requirepass", "$(REDIS_PASSWORD)"' in redis
    image = re.search(r"image: redis:(\d+)\.(\d+)\.(\d+)", redis)
    assert image and tuple(map(int, image.groups())) >= (7, 4, 10), "7.4.2 has known CVEs"
    triton = (K8S / "triton.yaml").read_text()
    assert "--grpc-restricted-protocol=model-repository,shared-memory" in triton
    assert "--http-restricted-api=model-repository,shared-memory" in triton


def test_compose_keeps_the_service_token_off_tritons_command_line() -> None:
    """Triton takes its restricted-API key as an argument (visible in `ps`, `docker inspect`):
    that key is TRITON_ADMIN_KEY of its own, never INTERNAL_TOKEN, and compose-up generates it."""
    from scripts.compose.compose import SECRETS

    assert "TRITON_ADMIN_KEY" in SECRETS and "TRITON_ADMIN_KEY=" in (REPO_ROOT / ".env.example").read_text()
    for name in ("docker-compose.yml", "docker-compose.plaintext.yml"):
        triton = load_yaml(REPO_ROOT / name)["services"]["triton"]
        arguments = [str(a) for a in triton.get("command", [])]
        restricted = [a for a in arguments if "restricted" in a]
        assert len(restricted) == 2, (name, restricted)
        assert all(":triton-admin-key=${TRITON_ADMIN_KEY:?" in a for a in restricted), (name, restricted)
        assert not any("INTERNAL_TOKEN" in a for a in arguments), name
