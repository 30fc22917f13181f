"""One-step training smoke test: CLI -> version dir -> serving signature on odd image files.

Tiny input (64x64), random backbone, 1 step: it checks the plumbing (loaders, targets, loss,
export, in-graph decoding of JPEG/PNG/GIF/BMP incl. grayscale, RGBA and 16-bit), not quality.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.unit.training_fixtures import make_kaggle

tf = pytest.importorskip("tensorflow")


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.train import main

    tmp = tmp_path_factory.mktemp("smoke")
    data = make_kaggle(tmp / "data", [20, 40, 60, 80, 100, 120], {20: [(5, 5, 30, 20)], 60: [(40, 10, 70, 40)], 120: [(10, 10, 40, 30)]})
    repo = tmp / "repo"
    (repo / "car_detector" / "3").mkdir(parents=True)  # an older version: the new one must be 4
    rc = main(["--data", str(data), "--output", str(repo), "--backbone-weights", "none", "--input-size", "64x64",
               "--batch-size", "2", "--steps-per-epoch", "1", "--max-epochs", "1", "--val-fraction", "0.2",
               "--registry", str(tmp / "registry.json")])
    assert rc == 0
    return repo / "car_detector" / "4"


def test_the_new_version_is_registered_with_its_hash(version_dir: Path) -> None:
    from governance.model_registry import ModelRegistry

    registry = ModelRegistry(version_dir.parent.parent.parent / "registry.json")
    entry = registry.get_latest_version("car_detector")
    assert entry is not None and str(entry["version"]) == "4"
    assert len(entry["sha256"]) == 64


def test_version_dir_contents(version_dir: Path) -> None:
    assert (version_dir / "model.py").is_file()
    assert (version_dir / "model.savedmodel" / "saved_model.pb").is_file()
    meta = json.loads((version_dir / "model_metadata.json").read_text())
    assert meta["version"] == 4
    assert meta["class_names"] == ["car"]
    assert meta["input_size"] == {"width": 64, "height": 64}
    assert len(meta["dataset"]["fingerprint"]) == 64
    assert "operating_threshold" in meta and "validation_metrics" in meta
    assert meta["training"]["epochs_run"] == 1


def test_serving_signature_accepts_odd_images(version_dir: Path) -> None:
    fn = tf.saved_model.load(str(version_dir / "model.savedmodel")).signatures["serving_default"]
    rgb = Image.fromarray((np.random.default_rng(0).random((50, 90, 3)) * 255).astype(np.uint8))
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    files = [
        _encode(rgb, "JPEG"),
        _encode(rgb.convert("L"), "JPEG"),
        _encode(rgb.convert("RGBA"), "PNG"),
        _encode(grey16, "PNG"),
        _encode(rgb.convert("P"), "GIF"),
        _encode(rgb, "BMP"),
        _encode(rgb.resize((300, 120)), "PNG"),
    ]
    out = fn(images=tf.constant(files))
    n = len(files)
    assert out["boxes"].shape[0] == n and out["boxes"].shape[2] == 4
    assert out["boxes"].dtype == tf.float32 and out["labels"].dtype == tf.string
    assert out["num_detections"].dtype == tf.int32
    scores = out["scores"].numpy()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # descending
    boxes = out["boxes"].numpy()
    k = out["num_detections"].numpy()
    # Boxes are clipped to each ORIGINAL image (the last one is 300x120).
    assert np.all(boxes[-1, : k[-1], 2] <= 300) and np.all(boxes[:-1, :, 2] <= 90) and np.all(boxes[:-1, :, 3] <= 50)
    labels = out["labels"].numpy()
    for i in range(n):
        assert all(v == b"car" for v in labels[i, : k[i]]) and all(v == b"" for v in labels[i, k[i] :])


def test_serving_signature_rejects_corrupt_image(version_dir: Path) -> None:
    fn = tf.saved_model.load(str(version_dir / "model.savedmodel")).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(images=tf.constant([b"definitely not an image"]))


# --------------------------------------------------------------------------- Triton model.py


class _FakePb:
    """The parts of triton_python_backend_utils that model.py uses."""

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self.name, self.array = name, array

        def as_numpy(self) -> np.ndarray:
            return self.array

    class TritonError(Exception):
        def message(self) -> str:
            return str(self)

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None) -> None:  # type: ignore[no-untyped-def]
            self.outputs = {t.name: t.array for t in output_tensors or []}
            self.error = error

    class Logger:
        lines: list[str] = []

        @classmethod
        def log_info(cls, msg: str) -> None:
            cls.lines.append(msg)

    @staticmethod
    def get_input_tensor_by_name(request, name: str):  # type: ignore[no-untyped-def]
        return request.inputs[name]


class _Request:
    def __init__(self, rid: str, files: list[bytes]) -> None:
        self.rid = rid
        self.inputs = {"IMAGE": _FakePb.Tensor("IMAGE", np.array([[f] for f in files], dtype=object))}

    def request_id(self) -> str:
        return self.rid


@pytest.fixture(scope="module")
def triton_model(version_dir: Path):  # type: ignore[no-untyped-def]
    import importlib.util
    import sys

    sys.modules["triton_python_backend_utils"] = _FakePb  # type: ignore[assignment]
    spec = importlib.util.spec_from_file_location("car_detector_model", version_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    m = module.TritonPythonModel()
    config = {"parameters": {"TF_INTRA_OP_THREADS": {"string_value": "1"}}}
    m.initialize({"model_config": json.dumps(config), "model_repository": str(version_dir.parent), "model_version": "4"})
    yield m, module
    del sys.modules["triton_python_backend_utils"]


def test_triton_model_batches_and_isolates_bad_requests(triton_model) -> None:  # type: ignore[no-untyped-def]
    m, _ = triton_model
    rgb = Image.fromarray((np.random.default_rng(1).random((40, 70, 3)) * 255).astype(np.uint8))
    good = _encode(rgb, "JPEG")
    responses = m.execute([_Request("a", [good]), _Request("b", [b"broken"]), _Request("c", [good, _encode(rgb, "PNG")])])
    assert responses[0].error is None and responses[2].error is None
    assert "could not decode image" in str(responses[1].error)
    a, c = responses[0].outputs, responses[2].outputs
    assert a["BOXES"].shape[0] == 1 and a["BOXES"].shape[2] == 4 and a["BOXES"].dtype == np.float32
    assert a["SCORES"].shape == a["BOXES"].shape[:2] and a["LABELS"].shape == a["SCORES"].shape
    assert c["BOXES"].shape[0] == 2
    assert any("request ids [a,b,c]" in line for line in _FakePb.Logger.lines)


def test_exif_orientation_is_applied(triton_model) -> None:  # type: ignore[no-untyped-def]
    _, module = triton_model
    img = Image.fromarray(np.zeros((20, 60, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    upright = Image.open(io.BytesIO(module.exif_upright(buf.getvalue())))
    assert upright.size == (20, 60)  # rotated for display
    plain = _encode(img, "JPEG")
    assert module.exif_upright(plain) is plain


def test_evaluate_cli_in_process(version_dir: Path, tmp_path: Path) -> None:
    from training.evaluate import main as evaluate_main

    data = version_dir.parent.parent.parent / "data"
    out = tmp_path / "report"
    rc = evaluate_main(["--data", str(data), "--repository", str(version_dir.parent.parent), "--version", "4",
                        "--split", "all", "--out", str(out)])
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "AP50" in report and "| all | 3 |" in report
    assert (out / "pr_curve.png").is_file() or "PR curve" not in report


def test_explore_cli(version_dir: Path, tmp_path: Path) -> None:
    from training.explore import main as explore_main

    data = version_dir.parent.parent.parent / "data"
    assert explore_main([str(data), "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "Images: 6 (3 without objects)" in summary


def test_train_cli_reports_bad_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.train import main

    assert main(["--data", str(tmp_path / "missing")]) == 2
    assert "error: data directory not found" in capsys.readouterr().err


def test_the_irs_take_the_input_size_and_leave_the_group_norms_unquantised(version_dir: Path) -> None:
    """The export cuts the IRs' opening resize (the runtime resizes) and quantises the
    convolutions, not the GroupNorms' means and variances."""
    import openvino as ov

    for name in ("model_fp32.xml", "model_int8.xml"):
        model = ov.Core().read_model(str(version_dir / "openvino" / name))
        assert str(model.input(0).get_partial_shape()) == "[?,64,64,3]", name
        assert "Interpolate" not in [op.get_type_name() for op in model.get_ordered_ops()][:4], name
    quantised = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert quantised and not [n for n in quantised if "_gn" in n], [n for n in quantised if "_gn" in n][:3]
