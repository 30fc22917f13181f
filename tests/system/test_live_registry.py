"""The model registry CLI and training's version handling against a live Triton: a Triton
of its own (not the session stack's) serving a copy of the model repository, so that
deprecating, re-pinning and reloading change nothing the other tests use.

In order: register v1 and v2, list/get/latest, deprecate v2 with --wait (Triton then
serves v1); then train a tiny v3 with --triton (reloaded; still pinned to v1), sync (v3
served), train v3 again with --version 3 (overwritten: a new record, Triton reloads it)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import REPO_ROOT, frame, free_port, wait_until
from tests.system.security_helpers import spawn, stop
from tests.unit.training_fixtures import make_kaggle

TINY_TRAINING = ["--backbone-weights", "none", "--input-size", "64x64", "--batch-size", "2", "--steps-per-epoch", "1",
                 "--max-epochs", "1", "--val-fraction", "0.2"]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("live-registry")
    model = folder / "repository" / "car_detector"
    model.mkdir(parents=True)
    source = REPO_ROOT / "model_repository" / "car_detector"
    for name in ("1", "2", "warmup"):
        if (source / name).exists():
            shutil.copytree(source / name, model / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = (source / "config.pbtxt").read_text()
    # Versions 1 and 2 only, so the newest of them is served whatever the committed registry pins.
    config = re.sub(r"^# governance: version_policy.*\n", "", config, flags=re.M)
    config = re.sub(r"^version_policy: .*$", "version_policy: { latest: { num_versions: 1 } }", config, flags=re.M)
    (model / "config.pbtxt").write_text(config)
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MODEL_REPOSITORY": str(folder / "repository"),
           "TRITON_HTTP_PORT": str(http_port), "TRITON_GRPC_PORT": str(grpc_port), "TRITON_METRICS_PORT": str(free_port()),
           "MODEL_REGISTRY_PATH": str(folder / "registry.json"), "TRITON_HTTP_URL": f"127.0.0.1:{http_port}",
           "TRITON_ADMIN_KEY": "live-registry-" + uuid.uuid4().hex}
    process = spawn([str(REPO_ROOT / "services" / "triton" / "run.sh")], env, folder / "triton.log")
    try:
        ready = wait_until(lambda: requests.get(f"http://127.0.0.1:{http_port}/v2/models/car_detector/ready",
                                                timeout=2).status_code == 200, 900, 1.0)
        assert ready, (folder / "triton.log").read_text()[-3000:]
        yield {"folder": folder, "model": model, "env": env, "http": f"http://127.0.0.1:{http_port}",
               "grpc": f"127.0.0.1:{grpc_port}"}
    finally:
        stop(process)


def cli(live: dict, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=live["env"], capture_output=True, text=True,
                          timeout=timeout)


def registry(live: dict, *args: str) -> subprocess.CompletedProcess:
    return cli(live, "-m", "governance.model_registry", *args)


def served(live: dict) -> list[str]:
    index = requests.post(f"{live['http']}/v2/repository/index", json={}, timeout=10,  # a restricted API
                          headers={"triton-admin-key": live["env"]["TRITON_ADMIN_KEY"]}).json()
    return sorted(m["version"] for m in index if m["name"] == "car_detector" and m.get("state") == "READY")


def served_version_of_an_inference(live: dict) -> str:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(live["grpc"])
    image = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[frame()]], dtype=np.object_))
    return client.infer("car_detector", [image], client_timeout=120).get_response().model_version


def test_registry_cli_and_training_versions_against_a_live_triton(live):
    model = live["model"]
    for version in ("1", "2"):
        done = registry(live, "register", str(model / version), "--by", "test")
        assert done.returncode == 0, done.stdout + done.stderr
    assert served(live) == ["2"] and served_version_of_an_inference(live) == "2"

    listed = registry(live, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert sorted(e["version"] for e in entries) == ["1", "2"] and {e["status"] for e in entries} == {"active"}
    got = registry(live, "get", "car_detector:2")
    assert got.returncode == 0 and json.loads(got.stdout)["sha256"] == next(e for e in entries if e["version"] == "2")["sha256"]
    assert registry(live, "get", "car_detector:9").returncode == 2
    latest = registry(live, "latest")
    assert latest.returncode == 0 and re.search(r"\bactive\s+v\s*2\b", latest.stdout), latest.stdout

    deprecated = registry(live, "deprecate", "car_detector:2", "--reason", "regression on night frames", "--by", "test",
                          "--repository", str(model.parent), "--wait")
    assert deprecated.returncode == 0, deprecated.stdout + deprecated.stderr
    assert "no longer serves v2" in deprecated.stdout
    assert served(live) == ["1"] and served_version_of_an_inference(live) == "1"
    assert json.loads(registry(live, "get", "car_detector:2").stdout)["status"] == "deprecated"
    assert re.search(r"\bactive\s+v\s*1\b", registry(live, "latest").stdout)


def test_training_version_overwrite_and_triton_reload(live):
    """After the test above (v2 deprecated, v1 pinned): a tiny v3 trained with --triton."""
    model = live["model"]
    data = make_kaggle(live["folder"] / "data", [20, 40, 60, 80, 100, 120],
                       {20: [(5, 5, 30, 20)], 60: [(40, 10, 70, 40)], 120: [(10, 10, 40, 30)]})
    train = ["-m", "training.train", "--data", str(data), "--output", str(model.parent), "--registry",
             live["env"]["MODEL_REGISTRY_PATH"], *TINY_TRAINING, "--version", "3", "--triton", live["grpc"]]
    first = cli(live, *train)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "reloaded car_detector" in first.stdout, first.stdout[-1000:] + first.stderr[-1000:]
    assert served(live) == ["1"]  # still pinned by the deprecation until the policy is synced
    synced = registry(live, "sync", "--repository", str(model.parent))
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert wait_until(lambda: served(live) == ["3"], 300, 2.0), served(live)
    assert served_version_of_an_inference(live) == "3"
    record = json.loads(registry(live, "get", "car_detector:3").stdout)

    again = cli(live, *train)  # --version 3 again: the version is rewritten, not added
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert sorted(p.name for p in model.iterdir() if p.name.isdigit()) == ["1", "2", "3"]
    rewritten = json.loads(registry(live, "get", "car_detector:3").stdout)
    assert rewritten["sha256"] != record["sha256"] and rewritten["status"] == "active"
    verify = registry(live, "verify", "3", "--repository", str(model.parent))
    assert verify.returncode == 0 and " ok " in verify.stdout, verify.stdout
    assert served(live) == ["3"] and served_version_of_an_inference(live) == "3"
    assert Path(live["folder"] / "triton.log").read_text().count("loading: car_detector:3") >= 2  # reloaded both times
