"""scripts/compose/compose.py, what `make compose-up` runs before Compose: host ports decided
once in the env file, and secrets taken from the env file only."""
from __future__ import annotations

from pathlib import Path

from tests.deploy.deploy_files import REPO_ROOT


def test_compose_up_moves_a_taken_host_port_once_and_keeps_it(tmp_path: Path, monkeypatch) -> None:
    """A port the developer's machine already holds (its own PostgreSQL on 5432, say) is
    published on default + 10000 instead, recorded in the env file; a second run changes nothing."""
    import socket

    from scripts.compose import compose as compose_up

    published = dict(compose_up.PUBLISHED.findall((REPO_ROOT / "docker-compose.yml").read_text()))
    assert {"GATEWAY_PORT", "POSTGRES_PORT", "TRITON_GRPC_PORT"} <= set(published)
    for name in published:
        monkeypatch.delenv(name, raising=False)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", int(published["GATEWAY_PORT"])))
        holder.listen()
    except OSError:
        pass  # held by something else already: taken either way
    env_file = tmp_path / ".env"
    others = {name: str(40000 + i) for i, name in enumerate(sorted(published)) if name != "GATEWAY_PORT"}
    env_file.write_text("".join(f"{name}={port}\n" for name, port in others.items()) + f"{compose_up.CHOSEN_MARK}\nX_IMAGE=x\n")
    try:
        compose_up.ensure_host_ports(env_file)
        first = env_file.read_text()
        compose_up.ensure_host_ports(env_file)
    finally:
        holder.close()
    values = compose_up.read_env(env_file)
    assert values["GATEWAY_PORT"] != published["GATEWAY_PORT"], first
    assert {name: values[name] for name in others} == others, "ports already decided are kept"
    assert env_file.read_text() == first, "a second run changes nothing"
    assert first.rstrip().endswith(f"{compose_up.CHOSEN_MARK}\nX_IMAGE=x"), "the chosen-images block stays last"


def test_compose_up_takes_secrets_from_the_env_file_only(monkeypatch) -> None:
    """A secret exported in the caller's shell (the local stack's INTERNAL_TOKEN) must not
    reach compose, which would let it win over the env file's value."""
    from scripts.compose import compose as compose_up

    monkeypatch.setenv("INTERNAL_TOKEN", "from-the-shell")
    monkeypatch.setenv("SOME_SETTING", "kept")
    env = compose_up.caller_env()  # what build_env() starts from, whichever docker client is here
    assert not set(compose_up.SECRETS) & set(env) and env["SOME_SETTING"] == "kept"
