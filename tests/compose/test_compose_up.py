"""`make compose-up` itself: a second run reuses what was built, a machine without
Docker or any image source fails fast with one line, an unhealthy container's log
tail is printed, and a fresh .env gets every secret compose requires."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.compose.conftest import COMPOSE_PY, REPO_ROOT, Composed

sys.path.insert(0, str(REPO_ROOT / "scripts" / "compose"))
import compose as compose_py  # noqa: E402
import images as images_py  # noqa: E402


def _image_ids() -> dict[str, str]:
    out = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", "car-detection/*"],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split() for line in out.splitlines())


def _container_ids() -> set[str]:
    return set(subprocess.run(["docker", "ps", "-q", "--no-trunc", "--filter", "label=com.docker.compose.project=car-detection-test"],
                              capture_output=True, text=True, check=True).stdout.split())


def test_a_second_compose_up_reuses_the_images_and_the_running_containers(composed: Composed) -> None:
    images, containers = _image_ids(), _container_ids()
    started = time.monotonic()
    again = composed.compose_up()
    took = time.monotonic() - started
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-4000:]
    assert _image_ids() == images, "a second compose-up rebuilt an image"
    assert _container_ids() == containers, "a second compose-up recreated containers"
    assert "compose stack ready" in again.stdout
    print(f"second compose-up: {took:.0f}s")


def _bin_without_docker(tmp_path: Path) -> Path:
    """A PATH with what engine.sh needs to decide, but no docker, dockerd or apt-get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "timeout", "seq", "sleep", "tail", "python3", "sed", "head"):
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if found:
            (bin_dir / tool).symlink_to(found)
    return bin_dir


def test_without_docker_or_any_image_source_compose_up_fails_within_seconds_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": str(_bin_without_docker(tmp_path)), "HOME": str(tmp_path)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(COMPOSE_PY), "up", "--env-file", str(tmp_path / ".env")],
                            env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    took = time.monotonic() - started
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "docker" in lines[0].lower() and ("not installed" in lines[0] or "not available" in lines[0]), lines[0]
    assert took < 10, f"took {took:.1f}s to say so"
    assert not (tmp_path / ".env").exists(), "wrote secrets before knowing whether anything can run"


def test_an_image_that_is_neither_present_nor_pullable_is_named(engine: None) -> None:
    missing = f"car-detection-none/missing:{uuid.uuid4().hex[:8]}"
    with pytest.raises(images_py.ImageError, match=re.escape(missing)):
        images_py.resolve({"PYTHON_IMAGE": missing}, [], dict(os.environ), pull_timeout=30)


def test_an_unhealthy_container_is_named_and_its_log_tail_shown(engine: None) -> None:
    project = f"cd-unhealthy-{uuid.uuid4().hex[:8]}"
    marker = f"the-last-words-{uuid.uuid4().hex[:8]}"
    run = subprocess.run(["docker", "run", "-d", "--label", f"com.docker.compose.project={project}",
                          "--label", "com.docker.compose.service=broken", "--health-cmd", "false",
                          "--health-interval", "1s", "--health-retries", "1", "--entrypoint", "/bin/sh",
                          images_py.LOCAL_BASE if images_py.present(images_py.LOCAL_BASE) else "car-detection/gateway:dev",
                          "-c", f"echo {marker}; sleep 120"], capture_output=True, text=True, check=True)
    container = run.stdout.strip()
    try:
        name = subprocess.run(["docker", "inspect", "-f", "{{.Name}}", container], capture_output=True, text=True,
                              check=True).stdout.strip().lstrip("/")
        assert compose_py.wait_healthy(project, {"broken"}) == name
        failed = name
        assert marker in compose_py.log_tail(failed)
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def test_a_fresh_env_file_gets_every_required_secret(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    compose_py.ensure_env(env_file)
    values = compose_py.read_env(env_file)
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (REPO_ROOT / "docker-compose.yml").read_text()))
    assert required <= {k for k, v in values.items() if v}
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    before = env_file.read_text()
    compose_py.ensure_env(env_file)
    assert env_file.read_text() == before, "a second run changed existing secrets"
