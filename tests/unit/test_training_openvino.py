"""The served version's OpenVINO IR: same boxes as its TensorFlow SavedModel on real frames, and a
corrupt, swapped or unlisted IR refused at load with a message naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from services.common import config
from tests.conftest import version_resizing_in_float, version_resizing_in_its_graph
from training import REPO_ROOT
from training.metrics import iou_matrix

pytest.importorskip("openvino")
DATA_DIR = Path(config.DATA_DIR)
MODEL_DIR = REPO_ROOT / "model_repository" / "car_detector"


def _version_with_ir() -> Path:
    versions = sorted((p for p in MODEL_DIR.iterdir() if p.name.isdigit() and (p / "openvino").is_dir()),
                      key=lambda p: int(p.name))
    if not versions:
        pytest.skip("no version with an OpenVINO IR in model_repository")
    return versions[-1]


def _runtime(version_dir: Path):  # type: ignore[no-untyped-def]
    from training.triton_model import load_runtime

    return load_runtime(str(version_dir))


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    paths = sorted((DATA_DIR / "training_images").glob("*.jpg"))
    if not paths:
        pytest.skip(f"no frames under {DATA_DIR}")
    meta = json.loads((_version_with_ir() / "model_metadata.json").read_text())
    # Frames with cars, spread over the video (the labelled ones have rows in the CSV).
    import csv

    csv_path = next(DATA_DIR.glob("train_solution_bounding_boxes*.csv"))
    with open(csv_path) as f:
        names = sorted({row[next(k for k in row if k in ("image", "image_id"))] for row in csv.DictReader(f)})
    assert meta["class_names"] == ["car"]
    # Re-encoded losslessly as PNG: both runtimes then start from identical pixels. (From the
    # JPEGs, Pillow's and TensorFlow's JPEG decoders differ by a grey level here and there,
    # which moves some calibrated scores by up to ~0.09: a decoder difference, not a runtime one.)
    import io

    from PIL import Image

    out = []
    for n in names[:: max(1, len(names) // 12)][:12]:
        buf = io.BytesIO()
        Image.open(DATA_DIR / "training_images" / n).convert("RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def uncalibrate(scores: np.ndarray, calibration: dict | None) -> np.ndarray:
    """The raw network score behind a served one (the inverse of serving_runtime.calibrate)."""
    params = (calibration or {}).get("params") or {}
    if not params:
        return scores
    p = np.clip(scores.astype(np.float64), 1e-6, 1 - 1e-6)
    z = np.log(p) - np.log1p(-p)
    return 1.0 / (1.0 + np.exp(-(z * float(params["temperature"]) + float(params["shift"]))))


@pytest.mark.parametrize("precision", ["fp32", "served"])
def test_openvino_matches_tensorflow_on_real_frames(frames: list[bytes], precision: str) -> None:
    vdir = _version_with_ir()
    rt = _runtime(vdir)
    ov = rt.OpenVinoDetector(vdir, "auto" if precision == "served" else "fp32", threads=2)
    tf_det = rt.TensorFlowDetector(vdir, intra=2)
    calibration = json.loads((vdir / "model_metadata.json").read_text()).get("calibration")
    matched = 0
    for a, b in zip(tf_det.detect(frames), ov.detect(frames)):
        keep_a, keep_b = a["scores"] >= 0.3, b["scores"] >= 0.3
        if not keep_a.any():
            continue
        ious = iou_matrix(a["boxes"][keep_a], b["boxes"]) if len(b["boxes"]) else np.zeros((keep_a.sum(), 0))
        assert ious.shape[1] > 0, "OpenVINO found nothing where TensorFlow found a car"
        best = ious.argmax(axis=1)
        tol_iou, tol_score = (0.95, 0.02) if precision == "fp32" or ov.precision == "fp32" else (0.85, 0.08)
        assert np.all(ious.max(axis=1) > tol_iou), ious.max(axis=1)
        # Compared before calibration: its temperature (~0.2) multiplies a raw difference about
        # five-fold near the threshold, and the network's parity is what the runtimes must keep.
        raw_a, raw_b = uncalibrate(a["scores"][keep_a], calibration), uncalibrate(b["scores"][best], calibration)
        assert np.all(np.abs(raw_a - raw_b) < tol_score), np.abs(raw_a - raw_b)
        assert keep_b.sum() >= keep_a.sum() - 1  # at most one borderline box differs
        matched += int(keep_a.sum())
    assert matched >= 8, "too few cars detected to compare"


def test_openvino_reports_undecodable_images_per_file() -> None:
    vdir = _version_with_ir()
    rt = _runtime(vdir)
    out = rt.OpenVinoDetector(vdir, "fp32").detect([b"not an image", b""])
    assert all(isinstance(r, rt.DecodeError) for r in out)


@pytest.fixture()
def copy_of_version(tmp_path: Path) -> Path:
    dst = tmp_path / "car_detector" / "9"
    shutil.copytree(_version_with_ir(), dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_corrupt_ir_is_refused(copy_of_version: Path) -> None:
    rt = _runtime(copy_of_version)
    binary = copy_of_version / "openvino" / "model_fp32.bin"
    data = bytearray(binary.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    binary.write_bytes(bytes(data))
    with pytest.raises(rt.IntegrityError, match=r"openvino/model_fp32\.bin is corrupt"):
        rt.OpenVinoDetector(copy_of_version, "fp32")


def test_mismatched_ir_is_refused(copy_of_version: Path) -> None:
    rt = _runtime(copy_of_version)
    ir = copy_of_version / "openvino"
    # Another precision's IR under this name: valid OpenVINO, wrong file for this version.
    shutil.copy(ir / "model_int8.xml", ir / "model_fp32.xml")
    shutil.copy(ir / "model_int8.bin", ir / "model_fp32.bin")
    with pytest.raises(rt.IntegrityError, match="does not belong to this version"):
        rt.OpenVinoDetector(copy_of_version, "fp32")


def test_unlisted_ir_is_refused(copy_of_version: Path) -> None:
    rt = _runtime(copy_of_version)
    shutil.copy(copy_of_version / "openvino" / "model_fp32.xml", copy_of_version / "openvino" / "extra.xml")
    with pytest.raises(rt.IntegrityError, match="extra.xml is not in manifest.json"):
        rt.OpenVinoDetector(copy_of_version, "fp32")


def test_triton_model_refuses_to_load_a_corrupt_version(copy_of_version: Path) -> None:
    """model.py's initialize raises (Triton then marks the version unavailable with this message)."""
    import importlib.util
    import sys
    import types

    (copy_of_version / "openvino" / "model_int8.xml").write_text("<net/>")
    (copy_of_version / "openvino" / "model_fp32.xml").write_text("<net/>")
    fake = types.SimpleNamespace(Logger=types.SimpleNamespace(log_info=lambda msg: None))
    sys.modules["triton_python_backend_utils"] = fake  # type: ignore[assignment]
    try:
        spec = importlib.util.spec_from_file_location("car_detector_model_corrupt", copy_of_version / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        with pytest.raises(RuntimeError, match="corrupt or does not belong"):
            module.TritonPythonModel().initialize({"model_config": json.dumps({"parameters": {}}),
                                                   "model_repository": str(copy_of_version.parent), "model_version": "9"})
    finally:
        del sys.modules["triton_python_backend_utils"]


def test_a_padded_batch_gives_each_image_what_it_gets_alone(frames: list[bytes]) -> None:
    """Batches run through IRs compiled with a static batch size, padded up to one of
    BATCH_SIZES: three frames together (padded to four) are detected as each is alone."""
    from training import serving_runtime as rt

    detector = rt.OpenVinoDetector(_version_with_ir(), "fp32", threads=2)
    together = detector.detect(frames[:3])
    for data, joint in zip(frames[:3], together):
        alone = detector.detect([data])[0]
        assert len(alone["scores"]) == len(joint["scores"])
        np.testing.assert_allclose(joint["scores"], alone["scores"], atol=1e-3)
        np.testing.assert_allclose(joint["boxes"], alone["boxes"], atol=0.05)
    assert sorted(detector._compiled) == [1, 4]


def test_a_batch_over_max_batch_runs_in_parts_and_gives_each_image_what_it_gets_alone(frames: list[bytes]) -> None:
    """OPENVINO_MAX_BATCH (config.pbtxt) bounds the compiled sizes, hence the memory: five
    frames with max_batch 2 run as 2 + 2 + 1, unpinned, and match the frames run alone."""
    from training import serving_runtime as rt

    capped = rt.load_detector(_version_with_ir(), "openvino", "fp32", threads=1, cpu_pinning=False, max_batch=2)
    assert capped._config["ENABLE_CPU_PINNING"] is False
    together = capped.detect(frames[:5])
    assert sorted(capped._compiled) == [1, 2]
    for data, joint in zip(frames[:5], together):
        alone = capped.detect([data])[0]
        np.testing.assert_allclose(joint["scores"], alone["scores"], atol=1e-3)
        np.testing.assert_allclose(joint["boxes"], alone["boxes"], atol=0.05)


def test_auto_serves_int8_then_bf16_where_the_cpu_has_it_then_fp32() -> None:
    from training import serving_runtime as rt

    assert rt.served_precision({"runtime": {"serving": "openvino-int8"}}) == "int8"
    bf16_passed = {"runtime": {"serving": "openvino-bf16", "bf16_gate": {"passed": True}}}
    assert rt.served_precision(bf16_passed) == ("bf16" if rt.cpu_has_bf16() else "fp32")
    assert rt.served_precision({"runtime": {"serving": "openvino-fp32", "bf16_gate": {"passed": False}}}) == "fp32"
    assert rt.served_precision({}) == "fp32"
    with pytest.raises(ValueError, match="unknown OpenVINO precision"):
        rt.OpenVinoDetector(_version_with_ir(), "fp16")


def test_batch_decoded_in_parallel_keeps_each_file_in_place(frames: list[bytes]) -> None:
    """The checkout's runtime (training/serving_runtime.py, copied into the next version):
    with two threads a batch is decoded in parallel, and every file still gets its own result,
    an undecodable one its own error, exactly as one thread gives them."""
    from training import serving_runtime as rt

    vdir = _version_with_ir()
    batch = [frames[0], b"not an image", frames[1], frames[2]]
    parallel = rt.OpenVinoDetector(vdir, "fp32", threads=2)
    assert parallel._pool is not None
    serial = rt.OpenVinoDetector(vdir, "fp32", threads=1)
    for one, two in zip(serial.detect(batch), parallel.detect(batch)):
        if isinstance(one, Exception):
            assert isinstance(two, rt.DecodeError) and str(two).split(" <")[0] == str(one).split(" <")[0]
            continue
        np.testing.assert_allclose(two["boxes"], one["boxes"], atol=0.5)
        np.testing.assert_allclose(two["scores"], one["scores"], atol=1e-3)
        assert two["image_stats"] == one["image_stats"] and two["image_stats"]["brightness"] > 0


def test_the_box_scale_widens_the_same_boxes_in_both_runtimes(frames: list[bytes], copy_of_version: Path) -> None:
    """The version's box scale (model_metadata.json, fitted out of fold) widens each box about
    its centre after clipping, clipped again: the same map on the OpenVINO and the TensorFlow path."""
    import io

    from PIL import Image

    from training import serving_runtime as rt
    from training.detections import scale_boxes

    copies = {}
    for factor in (1.0, 1.06):
        copy = copy_of_version.with_name(f"factor-{factor}")
        shutil.copytree(copy_of_version, copy)
        meta = json.loads((copy / "model_metadata.json").read_text())
        (copy / "model_metadata.json").write_text(json.dumps({**meta, "box_scale": {"factor": factor}}))
        copies[factor] = (rt.OpenVinoDetector(copy, "fp32", verify=False), rt.TensorFlowDetector(copy, verify=False))
    assert copies[1.06][0].box_factor == copies[1.06][1].box_factor == 1.06
    sizes = [Image.open(io.BytesIO(data)).size for data in frames[:4]]
    for plain, scaled in zip(copies[1.0], copies[1.06]):
        widened = 0
        for wh, a, b in zip(sizes, plain.detect(frames[:4]), scaled.detect(frames[:4])):
            np.testing.assert_array_equal(a["scores"], b["scores"])
            np.testing.assert_allclose(b["boxes"], scale_boxes(np.asarray(a["boxes"], np.float32), 1.06, wh), atol=0.01)
            widened += int(((b["boxes"][:, 2] - b["boxes"][:, 0]) > (a["boxes"][:, 2] - a["boxes"][:, 0])).sum())
        assert widened >= 4, plain.backend


def test_the_int8_ir_resized_in_uint8_gives_the_same_outputs(frames: list[bytes]) -> None:
    """The exporter moves the INT8 IR's input resize before the uint8 -> float conversion: a
    stored INT8 IR that resizes in float, so rewritten, answers what it answers as stored, on
    frames of three sizes."""
    import io

    import openvino as ov
    from PIL import Image

    from training.openvino_export import resize_in_uint8
    from training.serving_runtime import decode_image

    xml = version_resizing_in_float() / "openvino" / "model_int8.xml"
    core = ov.Core()
    stored, rewritten = core.read_model(str(xml)), resize_in_uint8(core.read_model(str(xml)))
    opening = [op.get_type_name() for op in rewritten.get_ordered_ops() if op.get_type_name() != "Constant"][:3]
    assert opening == ["Parameter", "Interpolate", "Convert"]
    assert rewritten.inputs[0].get_element_type() == ov.Type.u8
    compiled = [core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": 1}) for m in (stored, rewritten)]
    big = Image.open(io.BytesIO(frames[0])).convert("RGB")
    images = [decode_image(d) for d in frames[:4]] + [np.asarray(big.resize(s)) for s in ((1280, 720), (320, 180))]
    for image in images:
        a, b = (c(image[None]) for c in compiled)
        for name in ("heat", "boxes"):
            np.testing.assert_allclose(a[name], b[name], atol=1e-4, err_msg=f"{name} at {image.shape}")


def test_a_model_without_the_resize_opening_is_left_as_it_is() -> None:
    import openvino as ov
    import openvino.opset13 as ops

    from training.openvino_export import resize_in_uint8

    from training.openvino_export import resize_outside

    image = ops.parameter([1, 8, 8, 3], ov.Type.f32)
    model = ov.Model([ops.relu(image)], [image])
    assert [op.get_type_name() for op in resize_in_uint8(model).get_ordered_ops()] == ["Parameter", "Relu", "Result"]
    assert resize_outside(model) is model


@pytest.mark.parametrize("library", ["opencv", "numpy"])
def test_the_runtime_resizes_as_the_ir_graph_did(frames: list[bytes], library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """serving_runtime.resize_frame, with OpenCV or (where it is absent) numpy, gives the pixels of
    the resize that the IRs up to version 8 run in their graph (OpenVINO's Interpolate), on frames
    down- and up-scaled, but for values at .5 that round the other way."""
    import io

    import openvino as ov
    from PIL import Image

    from training import serving_runtime

    if library == "numpy":
        monkeypatch.setattr(serving_runtime, "cv2", None)
    else:
        assert serving_runtime.cv2 is not None, "opencv-python-headless is in requirements.txt"
    xml = version_resizing_in_its_graph() / "openvino" / "model_int8.xml"
    stored = ov.Core().read_model(str(xml))
    resize = next(iter(stored.get_parameters()[0].output(0).get_target_inputs())).get_node()
    assert resize.get_type_name() == "Interpolate"
    height, width = (int(v) for v in resize.input_value(1).get_node().get_data())
    graph = ov.Core().compile_model(ov.Model([resize.output(0)], stored.get_parameters()), "CPU")  # the IR's opening alone
    big = Image.open(io.BytesIO(frames[0])).convert("RGB")
    images = [serving_runtime.decode_image(d) for d in frames[:3]] + [np.asarray(big.resize(s)) for s in ((1280, 720), (320, 180))]
    for image in images:
        expected = graph(image[None])[0][0]
        got = serving_runtime.resize_frame(image, (width, height))
        assert got.shape == expected.shape and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - expected.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-4, (image.shape, (diff > 0).mean())
    at_size = np.zeros((height, width, 3), np.uint8)
    assert serving_runtime.resize_frame(at_size, (width, height)) is at_size  # nothing to do, no copy
