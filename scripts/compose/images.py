"""Base images for the compose build: the public image where it is present or can
be pulled, else a local stand-in built from Debian's packages (docker/).

Each base is a compose variable (and a build arg) whose default is the public
image; `resolve()` returns the value to use for each, building stand-ins as
needed. Standard library only: it runs before any virtualenv exists.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_BASE = "car-detection-local/bookworm:python3.11"


@dataclass(frozen=True)
class Base:
    variable: str       # compose variable and build arg
    public: str         # default: the public image
    stand_in: str       # local image built where the public one cannot be had
    dockerfile: str | None  # stand-in's Dockerfile (None: the debootstrap base itself)
    context: str = "."
    profile: str | None = None  # only needed with this compose profile


BASES = [
    Base("PYTHON_IMAGE", "python:3.11.14-slim-bookworm", LOCAL_BASE, None),
    Base("MODEL_BASE_IMAGE", "busybox:1.37.0", LOCAL_BASE, None),
    Base("TRITON_IMAGE", "nvcr.io/nvidia/tritonserver:25.08-py3", "car-detection-local/tritonserver:pytriton",
         "docker/tritonserver/Dockerfile"),
    Base("POSTGRES_IMAGE", "postgres:17.6-alpine", "car-detection-local/postgres:15",
         "docker/postgres/Dockerfile", "docker/postgres"),
    Base("REDIS_IMAGE", "redis:7.4.6-alpine", "car-detection-local/redis:7", "docker/redis/Dockerfile", "docker/redis"),
    Base("PROMETHEUS_IMAGE", "prom/prometheus:v3.5.0", "car-detection-local/prometheus:2",
         "docker/prometheus/Dockerfile", "docker/prometheus", profile="observability"),
]


class ImageError(RuntimeError):
    pass


def _quiet(*command: str, timeout: float = 30) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def present(image: str) -> bool:
    return _quiet("docker", "image", "inspect", image)


def pull(image: str, timeout: float) -> bool:
    """True once pulled; False quickly where the registry does not answer."""
    return _quiet("docker", "pull", "--quiet", image, timeout=timeout)


def build_stand_in(base: Base, build_env: dict[str, str]) -> None:
    if base.dockerfile is None:
        made = subprocess.run(["bash", str(REPO_ROOT / "scripts/compose/local_base.sh"), base.stand_in])
        if made.returncode != 0:
            raise ImageError(f"{base.variable}: {base.public} cannot be pulled and the local base could not be built")
        return
    build_stand_in(BASES[0], build_env)  # every stand-in starts from the local base
    print(f"images: building {base.stand_in} (stand-in for {base.public})", file=sys.stderr, flush=True)
    result = subprocess.run(
        ["docker", "build", "--build-arg", f"BASE_IMAGE={LOCAL_BASE}", "-f", base.dockerfile, "-t", base.stand_in,
         base.context],
        cwd=REPO_ROOT, env=build_env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise ImageError(f"{base.variable}: building the stand-in {base.stand_in} failed:\n{tail}")


def resolve(chosen: dict[str, str], profiles: list[str], build_env: dict[str, str],
            pull_timeout: float = 300) -> dict[str, str]:
    """The image for every base: `chosen` (from the environment or .env) when set and
    present or pullable; the public default when present or pullable; else the stand-in."""
    result = {}
    for base in BASES:
        if base.profile and base.profile not in profiles:
            continue
        wanted = chosen.get(base.variable) or base.public
        if present(wanted):
            result[base.variable] = wanted
            continue
        if wanted == base.stand_in:
            build_stand_in(base, build_env)
            result[base.variable] = wanted
            continue
        print(f"images: pulling {wanted}", file=sys.stderr, flush=True)
        if pull(wanted, pull_timeout):
            result[base.variable] = wanted
            continue
        if wanted != base.public:
            raise ImageError(f"{base.variable}={wanted} is neither present nor pullable")
        print(f"images: {wanted} cannot be pulled; using the local stand-in {base.stand_in}", file=sys.stderr, flush=True)
        if not present(base.stand_in):
            build_stand_in(base, build_env)
        result[base.variable] = base.stand_in
    return result
