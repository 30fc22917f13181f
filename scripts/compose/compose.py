"""`make compose-up` / `make compose-down`: the composed core stack on this machine.

    python3 scripts/compose/compose.py up   [--env-file .env] [--service NAME] [--plaintext]
    python3 scripts/compose/compose.py down [--env-file .env] [--volumes]

`up`: starts a Docker engine when none answers (engine.sh); writes the env file
with fresh secrets when it is missing (and adds any secret a newer compose file
needs); makes the TLS certificates (scripts/make_dev_certs.sh); picks every base
image (public where present or pullable, else a local stand-in, images.py) and
records the choice in the env file; builds; starts the core detached; returns 0
only once every container is healthy, else prints the failing container's log
tail. Standard library only: it runs before any virtualenv exists.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images  # noqa: E402  (a sibling module, not a package)

REPO_ROOT = images.REPO_ROOT
PROJECT = "car-detection"
START_TIMEOUT_S = float(os.environ.get("COMPOSE_START_TIMEOUT_S", "900"))
SERVICE_UID = 10001  # the Python services' and Triton's user (Dockerfiles)
CERT_SANS = ",".join(["IP:127.0.0.1", "DNS:localhost", *(f"DNS:{name}" for name in (
    "gateway", "feature-service", "results-service", "model-serving", "triton"))])
CHOSEN_MARK = "# --- base images chosen by make compose-up (public where reachable, else local stand-ins)"


def _role_keys() -> str:
    return ",".join(f"{role}-{secrets.token_urlsafe(24)}:{role}" for role in ("client", "dpo", "admin"))


# Every secret compose requires (${VAR:?}), and how a fresh one is made.
SECRETS = {
    "PSEUDONYM_KEY": lambda: secrets.token_hex(32),
    "API_KEYS": _role_keys,
    "POSTGRES_PASSWORD": lambda: secrets.token_hex(24),
    "METRICS_TOKEN": lambda: secrets.token_hex(32),
    "INTERNAL_TOKEN": lambda: secrets.token_hex(32),
    "TRITON_ADMIN_KEY": lambda: secrets.token_hex(32),
    "REDIS_PASSWORD": lambda: secrets.token_hex(24),
}


def fail(message: str) -> int:
    print(f"compose-up: {message}", file=sys.stderr, flush=True)
    return 1


def read_env(path: Path) -> dict[str, str]:
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
            if match:
                values[match[1]] = match[2]
    return values


def ensure_env(path: Path) -> None:
    """Fresh secrets for a missing env file; a secret added to compose later is
    appended to an existing one. Values already there are never changed."""
    existing = read_env(path)
    missing = [name for name in SECRETS if not existing.get(name)]
    if not missing:
        return
    lines = path.read_text().splitlines() if path.exists() else [
        "# Written by make compose-up: fresh secrets for docker compose (see .env.example).",
        f"COMPOSE_PROJECT_NAME={PROJECT}"]
    lines = [line for line in lines if line.split("=", 1)[0].strip() not in missing]
    lines += [f"{name}={SECRETS[name]()}" for name in missing]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"compose-up: wrote {', '.join(missing)} to {path}", flush=True)


PUBLISHED = re.compile(r'^\s*- "(?:127\.0\.0\.1:)?\$\{([A-Z_]+_PORT):-(\d+)\}:\d+"', re.M)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def own_published_ports(project: str) -> set[int]:
    """Host ports this project's running containers hold already (a second `up` keeps them)."""
    try:
        listed = subprocess.run(["docker", "ps", "--filter", f"label=com.docker.compose.project={project}",
                                 "--format", "{{.Ports}}"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    held: set[int] = set()
    for first, last in re.findall(r":(\d+)(?:-(\d+))?->", listed):  # "127.0.0.1:8000-8002->8000-8002/tcp"
        held.update(range(int(first), int(last or first) + 1))
    return held


def ensure_host_ports(path: Path) -> None:
    """Each host port compose publishes, decided once and written to the env file: the
    default when it is free, else default + 10000 (a developer's own PostgreSQL holds 5432,
    and compose would fail half-way with "port is already allocated"). Ports already in the
    env file or the environment are kept as they are."""
    existing = read_env(path)
    wanted = dict(PUBLISHED.findall((REPO_ROOT / "docker-compose.yml").read_text()))
    ours = own_published_ports(existing.get("COMPOSE_PROJECT_NAME", PROJECT))
    chosen: dict[str, int] = {}
    for name, default in sorted(wanted.items()):
        if name in existing or name in os.environ:
            continue
        port = next((p for p in (int(default), int(default) + 10000) if p not in chosen.values() and (p in ours or port_free(p))), None)
        if port is None:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        if port != int(default):
            print(f"compose-up: host port {default} is taken; publishing on {port} instead ({name} in {path})",
                  flush=True)
        chosen[name] = port
    if not chosen:
        return
    # Before the chosen-images block, which record_images rewrites at the end of the file.
    head, mark, images_block = path.read_text().partition("\n" + CHOSEN_MARK)
    lines = [*head.rstrip("\n").splitlines(), "# host ports chosen by make compose-up (the default where it was free)",
             *(f"{name}={port}" for name, port in chosen.items())]
    path.write_text("\n".join(lines) + ("\n" + CHOSEN_MARK + images_block if mark else "\n"))


def record_images(path: Path, chosen: dict[str, str]) -> None:
    text = path.read_text()
    text = text.split("\n" + CHOSEN_MARK, 1)[0].rstrip("\n")
    kept = [line for line in text.splitlines() if line.split("=", 1)[0] not in chosen]
    block = [CHOSEN_MARK, *(f"{name}={value}" for name, value in chosen.items())]
    path.write_text("\n".join([*kept, *block]) + "\n")


def ensure_certs(tls_dir: Path) -> None:
    """Server certificate for every compose service name, from scripts/make_dev_certs.sh
    (what `make certs` runs). The CA's private key stays in the sibling -ca folder:
    only ca.pem, server.pem and server.key are mounted into the containers."""
    ca_dir = tls_dir.with_name(tls_dir.name + "-ca")
    if not all((tls_dir / name).is_file() for name in ("ca.pem", "server.pem", "server.key")):
        subprocess.run(["bash", str(REPO_ROOT / "scripts/make_dev_certs.sh"), str(ca_dir)], check=True,
                       env={**os.environ, "CERT_SANS": CERT_SANS}, stdout=subprocess.DEVNULL)
        tls_dir.mkdir(parents=True, exist_ok=True)
        for name in ("ca.pem", "server.pem", "server.key"):
            shutil.copyfile(ca_dir / name, tls_dir / name)
    os.chmod(tls_dir, 0o755)
    for name in ("ca.pem", "server.pem"):
        os.chmod(tls_dir / name, 0o644)
    key = tls_dir / "server.key"
    if os.geteuid() == 0:
        os.chown(key, SERVICE_UID, SERVICE_UID)  # readable by the services' user only
        os.chmod(key, 0o400)
    else:
        os.chmod(key, 0o644)  # rootless engine: the container user is not ours to name


def compose_command() -> list[str] | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def caller_env() -> dict[str, str]:
    """The caller's environment without any secret: secrets come only from the env file.
    Compose would let a variable of the caller's shell (the local stack's INTERNAL_TOKEN,
    say) win over it, and the containers would hold a secret the env file does not."""
    return {k: v for k, v in os.environ.items() if k not in SECRETS}


def build_env() -> dict[str, str]:
    """An environment whose `docker build` is BuildKit (the Dockerfiles use cache
    mounts). Docker >= 23 needs the buildx plugin for that; Docker 20.10's own
    client (Debian's docker.io, /usr/bin/docker) has BuildKit built in."""
    env = {**caller_env(), "DOCKER_BUILDKIT": "1", "COMPOSE_DOCKER_CLI_BUILD": "1"}
    if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0:
        return env
    # /usr/bin/docker may be absent (a client installed elsewhere, no docker.io)
    for candidate in (c for c in dict.fromkeys([shutil.which("docker"), "/usr/bin/docker"]) if c and os.access(c, os.X_OK)):
        version = subprocess.run([candidate, "version", "--format", "{{.Client.Version}}"],
                                 capture_output=True, text=True).stdout.strip()
        if version and int(version.split(".")[0]) < 23:
            shim = Path(tempfile.gettempdir()) / "car-detection-docker-cli"
            shim.mkdir(exist_ok=True)
            link = shim / "docker"
            if not link.exists() or os.readlink(link) != candidate:
                link.unlink(missing_ok=True)
                link.symlink_to(candidate)
            env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
            return env
    raise images.ImageError("no docker client can build with BuildKit (install docker-buildx, or Debian's docker.io)")


def files(args: argparse.Namespace) -> list[str]:
    out = ["-f", str(REPO_ROOT / "docker-compose.yml")]
    if args.plaintext:
        out += ["-f", str(REPO_ROOT / "docker-compose.plaintext.yml")]
    return out


def base_command(args: argparse.Namespace, compose: list[str], profiles: list[str] | None = None) -> list[str]:
    command = [*compose, "--env-file", str(args.env_file), "--project-directory", str(REPO_ROOT), *files(args)]
    for profile in profiles or []:
        command += ["--profile", profile]
    return command


def profile_of(service: str) -> str | None:
    """The profile a non-core service belongs to (read from the compose file)."""
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    block = re.search(rf"^  {re.escape(service)}:\n((?:    .*\n|\n)*)", text, re.M)
    match = block and re.search(r'^    profiles: \["([a-z-]+)"\]', block[1], re.M)
    return match[1] if match else None


def containers(project: str) -> list[dict]:
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True).stdout.split()
    if not ids:
        return []
    return json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout or "[]")


def _state(container: dict) -> str:
    state = container["State"]
    if state.get("Health"):
        return state["Health"]["Status"]  # starting | healthy | unhealthy
    if state["Status"] == "running":
        return "healthy"  # no healthcheck (none in the core profile)
    return "exited" if state.get("ExitCode") else state["Status"]


def wait_healthy(project: str, expected: set[str]) -> str | None:
    """None once every expected service's container is healthy; else the failing container."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        found = {c["Config"]["Labels"].get("com.docker.compose.service"): c for c in containers(project)}
        states = {name: _state(found[name]) if name in found else "missing" for name in expected}
        bad = [name for name, state in states.items() if state in ("unhealthy", "exited", "dead")]
        if bad:
            return found[bad[0]]["Name"].lstrip("/")
        if all(state == "healthy" for state in states.values()):
            return None
        if time.monotonic() > deadline:
            name = next(n for n, s in states.items() if s != "healthy")
            return found[name]["Name"].lstrip("/") if name in found else name
        time.sleep(2)


def log_tail(container: str, lines: int = 40) -> str:
    result = subprocess.run(["docker", "logs", "--tail", str(lines), container], capture_output=True, text=True)
    return (result.stdout + result.stderr).rstrip() or f"(no log output from {container})"


def services_of(command: list[str], env: dict[str, str]) -> set[str]:
    out = subprocess.run([*command, "config", "--services"], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise images.ImageError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "compose config failed")
    return set(out.stdout.split())


def up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    engine = subprocess.run(["bash", str(REPO_ROOT / "scripts/compose/engine.sh")])
    if engine.returncode != 0:
        return 1  # engine.sh said why, in one line
    compose = compose_command()
    if compose is None:
        return fail("neither `docker compose` nor docker-compose is installed (apt-get install docker-compose)")
    ensure_env(args.env_file)
    ensure_host_ports(args.env_file)
    env_values = read_env(args.env_file)
    project = env_values.get("COMPOSE_PROJECT_NAME", PROJECT)
    profiles = sorted({p for p in map(profile_of, args.service) if p})
    try:
        benv = build_env()
        chosen = images.resolve({**env_values, **{k: v for k, v in os.environ.items() if k.endswith("_IMAGE")}},
                                profiles, benv)
    except images.ImageError as exc:
        return fail(str(exc))
    record_images(args.env_file, chosen)
    if not args.plaintext:
        ensure_certs(REPO_ROOT / env_values.get("TLS_DIR", "var/compose/tls"))
    command = base_command(args, compose, profiles)
    run_env = {**benv, **chosen, "COMPOSE_PROJECT_NAME": project}
    try:
        # the core (no profile; docker-compose 1.29 lists every service) plus the ones asked for
        expected = {s for s in services_of(command, run_env) if profile_of(s) is None} | set(args.service)
    except images.ImageError as exc:
        return fail(str(exc))
    print(f"compose-up: building {len(expected)} services' images", flush=True)
    built = subprocess.run([*command, "build", *sorted(expected & buildable(command, run_env))],
                           env=run_env, cwd=REPO_ROOT)
    if built.returncode != 0:
        return fail("the image build failed (output above)")
    print(f"compose-up: starting {', '.join(sorted(expected))}", flush=True)
    # `up -d` itself waits on depends_on health; an early unhealthy dependency ends it
    # non-zero, and the health wait below names the container and shows its log.
    subprocess.run([*command, "up", "-d", "--no-build", "--remove-orphans", *sorted(expected)], env=run_env, cwd=REPO_ROOT)
    failed = wait_healthy(project, expected)
    if failed:
        print(f"compose-up: container {failed} is not healthy; its last log lines:\n{log_tail(failed)}",
              file=sys.stderr, flush=True)
        return 1
    scheme = "http" if args.plaintext else "https"
    port = env_values.get("GATEWAY_PORT", "8080")
    ca = "" if args.plaintext else f" (CA: {REPO_ROOT / env_values.get('TLS_DIR', 'var/compose/tls')}/ca.pem)"
    print(f"compose stack ready in {time.monotonic() - started:.0f}s: gateway {scheme}://127.0.0.1:{port}{ca}\n"
          f"API keys (key:role): API_KEYS in {args.env_file}\n"
          f"logs: docker compose -p {project} logs", flush=True)
    return 0


def buildable(command: list[str], env: dict[str, str]) -> set[str]:
    config = subprocess.run([*command, "config"], capture_output=True, text=True, env=env, cwd=REPO_ROOT).stdout
    # `build:` sits under a service in the rendered config; a light scan is enough here.
    names, current = set(), None
    for line in config.splitlines():
        match = re.match(r"^  ([a-z0-9-]+):\s*$", line)
        if match:
            current = match[1]
        elif current and re.match(r"^    build:", line):
            names.add(current)
        elif re.match(r"^\S", line):
            current = None
    return names


def down(args: argparse.Namespace) -> int:
    compose = compose_command()
    if compose is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        print("compose-down: no Docker engine answers; nothing to stop")
        return 0
    env_values = read_env(args.env_file)
    env = {**os.environ, "COMPOSE_PROJECT_NAME": env_values.get("COMPOSE_PROJECT_NAME", PROJECT)}
    # Secrets are only needed to render the file: dummies do when the env file is gone.
    for name in SECRETS:
        if not env_values.get(name):
            env.setdefault(name, "unset")
    command = base_command(args, compose, ["observability", "edge"])
    result = subprocess.run([*command, "down", "--remove-orphans", *(["--volumes"] if args.volumes else [])],
                            env=env, cwd=REPO_ROOT)
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--env-file", type=Path, default=REPO_ROOT / ".env")
    parser.add_argument("--service", action="append", default=[],
                        help="up: also start this service of a profile (e.g. prometheus)")
    parser.add_argument("--plaintext", action="store_true", default=os.environ.get("TLS", "1") == "0",
                        help="TLS off between the services (docker-compose.plaintext.yml); also TLS=0")
    parser.add_argument("--volumes", action="store_true", help="down: also remove the named volumes")
    args = parser.parse_args(argv)
    args.env_file = args.env_file.resolve()
    return up(args) if args.action == "up" else down(args)


if __name__ == "__main__":
    sys.exit(main())
