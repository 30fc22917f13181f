"""Model integrity on the running stack: the committed registry matches the served version,
the registry CLI detects a tampered copy, and a real adapter process refuses a version whose
files no longer match their registered hash (health NOT_SERVING, Predict FAILED_PRECONDITION)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from services.proto import model_serving_pb2 as pb
from services.proto import model_serving_pb2_grpc as pb_grpc
from tests.conftest import REPO_ROOT, adapter_channel, frame
from tests.system.test_governance import python


SERVED = REPO_ROOT / "model_repository" / "car_detector"

def served_version_dir() -> Path:
    versions = sorted((p for p in SERVED.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    assert versions, "no model version in model_repository/car_detector"
    return versions[-1]

def test_the_committed_registry_matches_the_served_model(stack):
    run = python(stack, "-m", "governance.model_registry", "verify", served_version_dir().name)
    assert run.returncode == 0 and " ok " in run.stdout, run.stdout + run.stderr

def test_registry_detects_a_tampered_copy(stack, tmp_path):
    repo = tmp_path / "repo" / "car_detector"
    shutil.copytree(served_version_dir(), repo / "1", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(SERVED / "config.pbtxt", repo / "config.pbtxt")
    env = {"MODEL_REGISTRY_PATH": str(tmp_path / "registry.json"), "MODEL_REPOSITORY": str(tmp_path / "repo")}
    registered = python(stack, "-m", "governance.model_registry", "register", str(repo / "1"), "--by", "pytest", env=env)
    assert registered.returncode == 0, registered.stderr
    assert python(stack, "-m", "governance.model_registry", "verify", env=env).returncode == 0
    target = max((p for p in (repo / "1" / "model.savedmodel").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    verify = python(stack, "-m", "governance.model_registry", "verify", env=env)
    assert verify.returncode == 1 and "mismatch" in verify.stdout and target.name in verify.stdout

def test_a_real_adapter_refuses_a_tampered_version(stack, tmp_path):
    """A second adapter process whose model repository copy no longer matches the registry:
    health NOT_SERVING and Predict FAILED_PRECONDITION, although Triton itself is fine."""
    version = served_version_dir()
    repo = tmp_path / "repo" / "car_detector"
    shutil.copytree(version, repo / version.name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"MODEL_REGISTRY_PATH": str(tmp_path / "registry.json"), "MODEL_REPOSITORY": str(tmp_path / "repo")}
    assert python(stack, "-m", "governance.model_registry", "register", str(repo / version.name), env=env).returncode == 0
    (repo / version.name / "model.py").write_text((repo / version.name / "model.py").read_text() + "\n# tampered\n")
    port = "15061"
    process = subprocess.Popen([sys.executable, "-m", "services.model_serving.server"], cwd=REPO_ROOT,
                               env={**stack.env, **env, "PYTHONPATH": str(REPO_ROOT), "MODEL_SERVING_PORT": port,
                                    "MODEL_SERVING_METRICS_PORT": "15161"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with adapter_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ModelServingStub(channel)
            for _ in range(100):
                try:
                    health = stub.HealthCheck(pb.HealthCheckRequest(), timeout=2)
                    break
                except grpc.RpcError:
                    time.sleep(0.2)
            else:
                pytest.fail("the second adapter did not start")
            assert health.status == "NOT_SERVING" and "registered hash" in health.detail
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(pb.PredictionRequest(request_id="tamper-1", image_data=frame(), user_id="u"), timeout=30)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "model.py" in refused.value.details()
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert "does not match its registered hash" in output and "ERROR" in output.upper()
