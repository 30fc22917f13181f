"""training.repackage (a version from another's artefacts with the current runtime files) and
the runtime's image statistics (IMAGE_STATS) against the feature service's, on real frames."""
from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest

from services.common import image_features
from services.common.images import check_image
from services.common.image_features import extract_features
from tests.conftest import REPO_ROOT, frame, ir_opening, version_resizing_in_float, version_resizing_in_its_graph
from training import serving_runtime
from training.repackage import check_images, repackage
from training.version_dir import RUNTIME_FILES

SERVED = max((p for p in (REPO_ROOT / "model_repository" / "car_detector").iterdir() if p.name.isdigit()),
             key=lambda p: int(p.name))


def test_repackage_keeps_every_artefact_and_takes_the_current_runtime(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    source = repository / "car_detector" / "1"
    shutil.copytree(SERVED, source, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "model.py").write_text("# an older runtime\n")
    new = repackage(repository, 1, "a reason worth recording")
    assert new == repository / "car_detector" / "2"
    artefacts = [p.relative_to(source) for p in source.rglob("*") if p.is_file()
                 and p.name not in ("model_metadata.json", "manifest.json", *RUNTIME_FILES)]
    assert artefacts and all(filecmp.cmp(source / a, new / a, shallow=False) for a in artefacts)
    for name, template in RUNTIME_FILES.items():
        assert (new / name).read_bytes() == template.read_bytes(), name
    old, meta = (json.loads((d / "model_metadata.json").read_text()) for d in (source, new))
    assert meta["version"] == 2 and meta["repackaged_from"]["version"] == 1
    assert meta["repackaged_from"]["reason"] == "a reason worth recording"
    assert meta["crossval"] == old["crossval"] and meta["calibration"] == old["calibration"]
    serving_runtime.verify_manifest(new)  # every file listed, every hash right


def test_repackage_refuses_a_folder_that_is_not_a_version(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a version directory"):
        repackage(tmp_path, 7, "no such version")


@pytest.mark.parametrize("name", ["vid_4_1000.jpg", "vid_4_10000.jpg", "vid_4_3120.jpg"])
def test_the_models_statistics_match_the_feature_services(name: str) -> None:
    """The model decodes at full size and box-filters down; the feature service lets libjpeg
    decode at reduced scale. The statistics agree within 3 % (docs/api.md)."""
    data = frame(name)
    from_model = image_features.pixel_statistics_of_full(serving_runtime.decode_image(data))
    from_service = extract_features(check_image(data, analysis_side=image_features.ANALYSIS_SIDE))
    assert set(from_model) == set(image_features.PIXEL)
    for key, value in from_model.items():
        assert value == pytest.approx(from_service[key], rel=0.03), key


def _crossval_of(meta: dict, out: Path, **changes: object) -> Path:
    """A crossval.json of the version's recipe (training.crossval's shape), with a report."""
    size = meta["input_size"]
    crossval = {**meta["crossval"], "input_size": [size["width"], size["height"]], "report": str(out / "crossval.md"),
                "dataset_fingerprint": meta["dataset"]["fingerprint"], "pooled": {"ap50": 0.96, "ap50_95": 0.59}}
    crossval.pop("plot", None)
    crossval.update({"threshold_calibrated": 0.3, **changes})  # the run's own map puts it elsewhere
    out.mkdir(parents=True, exist_ok=True)
    (out / "crossval.md").write_text("# Cross-validation (a new run)\n")
    summary = {"crossval": crossval, "box_scale": {"factor": 1.06, "held_out_factors": [1.06] * 5},
               "operating_precision": 0.92, "operating_recall": 0.95, "calibration": {"params": {"temperature": 9.0}}}
    (out / "crossval.json").write_text(json.dumps(summary))
    return out / "crossval.json"


def test_repackage_takes_the_box_scale_and_figures_of_a_crossval_of_the_same_recipe(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    source = repository / "car_detector" / "1"
    shutil.copytree(SERVED, source, ignore=shutil.ignore_patterns("__pycache__"))
    old = json.loads((source / "model_metadata.json").read_text())
    crossval = _crossval_of(old, tmp_path / "cv")
    new = repackage(repository, 1, "box scale", crossval=crossval)
    meta = json.loads((new / "model_metadata.json").read_text())
    assert meta["box_scale"]["factor"] == 1.06 and meta["crossval"]["pooled"]["ap50_95"] == 0.59
    assert (meta["operating_precision"], meta["operating_recall"]) == (0.92, 0.95)
    # The SavedModel's graph holds the old calibration: it and the threshold stay.
    assert meta["operating_threshold"] == old["operating_threshold"]
    assert meta["crossval"]["threshold_calibrated"] == old["operating_threshold"]
    assert {k: v for k, v in meta["calibration"].items() if k != "plot"} == {k: v for k, v in old["calibration"].items() if k != "plot"}
    assert meta["calibration"]["plot"].endswith("car_detector/2/reports/reliability.png")  # its own copy
    assert (new / "reports" / "crossval.md").read_text() == "# Cross-validation (a new run)\n"
    assert meta["crossval"]["report"].endswith("car_detector/2/reports/crossval.md")
    serving_runtime.verify_manifest(new)
    assert serving_runtime.load_detector(new, "openvino").box_factor == 1.06


@pytest.mark.parametrize("change, message", [({"threshold": 0.2}, "raw threshold"),
                                             ({"input_size": [640, 352]}, "another input size"),
                                             ({"dataset_fingerprint": "other"}, "another input size or dataset")])
def test_repackage_refuses_a_crossval_of_something_else(tmp_path: Path, change: dict, message: str) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(SERVED, repository / "car_detector" / "1", ignore=shutil.ignore_patterns("__pycache__"))
    old = json.loads((repository / "car_detector" / "1" / "model_metadata.json").read_text())
    with pytest.raises(ValueError, match=message):
        repackage(repository, 1, "box scale", crossval=_crossval_of(old, tmp_path / "cv", **change))
    assert not (repository / "car_detector" / "2").exists()


def test_repackage_rewrites_the_int8_ir_once_it_answers_the_same(tmp_path: Path) -> None:
    """--rewrite-ir: a version whose INT8 IR resizes in float comes out resizing in uint8 (the
    rewrite checked against the stored IR on real frames), every other artefact byte for byte."""
    repository = tmp_path / "repository"
    source = repository / "car_detector" / "1"
    shutil.copytree(version_resizing_in_float(), source, ignore=shutil.ignore_patterns("__pycache__"))
    new = repackage(repository, 1, "resize in uint8", rewrite_ir=True)
    assert ir_opening(new / "openvino" / "model_int8.xml") == ["Parameter", "Interpolate", "Convert"]
    rewritten = {Path("openvino/model_int8.xml"), Path("openvino/model_int8.bin")}
    artefacts = [p.relative_to(source) for p in source.rglob("*") if p.is_file()
                 and p.name not in ("model_metadata.json", "manifest.json", *RUNTIME_FILES)]
    assert all(filecmp.cmp(source / a, new / a, shallow=False) for a in artefacts if a not in rewritten)
    assert not filecmp.cmp(source / "openvino" / "model_int8.xml", new / "openvino" / "model_int8.xml", shallow=False)
    assert not list((new / "openvino").glob("*.rewritten.*"))
    meta = json.loads((new / "model_metadata.json").read_text())
    assert meta["repackaged_from"]["ir_rewrites"] == {"model_int8.xml": ["resize_in_uint8"]}
    serving_runtime.verify_manifest(new)  # the rewritten files are hashed as written
    # Repackaged again, the IR has nothing left to rewrite: the same bytes, no rewrite recorded.
    again = repackage(repository, 2, "nothing to rewrite", rewrite_ir=True)
    assert filecmp.cmp(new / "openvino" / "model_int8.xml", again / "openvino" / "model_int8.xml", shallow=False)
    assert "ir_rewrites" not in json.loads((again / "model_metadata.json").read_text())["repackaged_from"]


def test_a_rewrite_that_changes_the_answers_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    import numpy as np
    import openvino.opset13 as ops

    from training.openvino_export import rewrite_verified

    def lossy(model):  # type: ignore[no-untyped-def]
        result = model.outputs[0].get_node()
        result.input(0).replace_source_output(ops.add(result.input_value(0), ops.constant(np.float32(0.01))).output(0))
        model.validate_nodes_and_infer_types()
        return model

    ir = tmp_path / "openvino"
    shutil.copytree(version_resizing_in_float() / "openvino", ir)
    before = {p.name: p.read_bytes() for p in ir.iterdir()}
    with pytest.raises(ValueError, match=r"model_int8.xml: rewritten, its 'heat' output differs by 0.01 .* 676x380 image"):
        rewrite_verified(ir / "model_int8.xml", [serving_runtime.decode_image(frame())], rewrite=lossy)
    assert {p.name: p.read_bytes() for p in ir.iterdir()} == before


def test_a_version_whose_filling_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    from training.version_dir import write_version_dir

    def fill(tmp: Path, meta: dict) -> None:
        (tmp / "half.bin").write_bytes(b"half")
        raise ValueError("the export failed half way")

    with pytest.raises(ValueError, match="half way"):
        write_version_dir(tmp_path, {}, fill, version=3)
    assert list((tmp_path / "car_detector").iterdir()) == []


def test_repackage_cuts_the_resize_out_of_the_irs_and_the_runtime_finds_the_same_cars(tmp_path: Path) -> None:
    """--runtime-resize: both IRs take the frame at the input size, the runtime resizes it, and the
    new version serves the source's detections on frames of four sizes (within the INT8
    network's own jitter); every other artefact byte for byte."""
    import numpy as np

    from training.metrics import iou_matrix

    repository = tmp_path / "repository"
    source = repository / "car_detector" / "1"
    shutil.copytree(version_resizing_in_its_graph(), source, ignore=shutil.ignore_patterns("__pycache__"))
    new = repackage(repository, 1, "resize in the runtime", runtime_resize=True)
    meta = json.loads((new / "model_metadata.json").read_text())
    assert meta["repackaged_from"]["ir_rewrites"] == {"model_fp32.xml": ["resize_outside"], "model_int8.xml": ["resize_outside"]}
    width, height = meta["input_size"]["width"], meta["input_size"]["height"]
    import openvino as ov

    for name in ("model_int8.xml", "model_fp32.xml"):
        model = ov.Core().read_model(str(new / "openvino" / name))
        assert "Interpolate" not in ir_opening(new / "openvino" / name)
        assert str(model.input(0).get_partial_shape()) == f"[?,{height},{width},3]", name
    rewritten = {Path("openvino") / f"model_{p}.{e}" for p in ("int8", "fp32") for e in ("xml", "bin")}
    artefacts = [p.relative_to(source) for p in source.rglob("*") if p.is_file()
                 and p.name not in ("model_metadata.json", "manifest.json", *RUNTIME_FILES)]
    assert all(filecmp.cmp(source / a, new / a, shallow=False) for a in artefacts if a not in rewritten)
    serving_runtime.verify_manifest(new)
    images = check_images()
    before = serving_runtime.OpenVinoDetector(source, "int8", verify=False).infer_arrays(images)
    served = serving_runtime.OpenVinoDetector(new, "int8")
    assert not served.resizes_in_graph
    after = served.infer_arrays(images)
    compared = 0
    for image, (b1, s1, _), (b2, s2, _) in zip(images, before, after):
        keep = s1 >= meta["operating_threshold"]
        if keep.any():
            iou = iou_matrix(b1[keep], b2)
            best = iou.argmax(axis=1)
            assert (iou.max(axis=1) >= 0.9).all() and (np.abs(s1[keep] - s2[best]) <= 0.05).all(), image.shape
            assert (b2[:, 2] <= image.shape[1]).all() and (b2[:, 3] <= image.shape[0]).all()  # original pixels
            compared += int(keep.sum())
    assert compared >= 8
    # Nothing left to cut: the same bytes, no rewrite recorded.
    again = repackage(repository, 2, "nothing to cut", runtime_resize=True)
    assert filecmp.cmp(new / "openvino" / "model_int8.bin", again / "openvino" / "model_int8.bin", shallow=False)
    assert "ir_rewrites" not in json.loads((again / "model_metadata.json").read_text())["repackaged_from"]


def test_cutting_the_resize_is_refused_when_the_runtime_resizes_differently(tmp_path: Path) -> None:
    import numpy as np

    from training.openvino_export import resize_outside_verified

    def shifted(rgb, wh):  # type: ignore[no-untyped-def]
        return np.roll(serving_runtime.resize_frame(rgb, wh), 6, axis=1)  # six pixels to the right

    ir = tmp_path / "openvino"
    shutil.copytree(version_resizing_in_its_graph() / "openvino", ir)
    before = {p.name: p.read_bytes() for p in ir.iterdir()}
    with pytest.raises(ValueError, match=r"model_int8.xml: with the resize outside it, a detection changed on a 676x380 image"):
        resize_outside_verified(ir / "model_int8.xml", [serving_runtime.decode_image(frame())], 0.3, resize=shifted)
    assert {p.name: p.read_bytes() for p in ir.iterdir()} == before


def test_repackage_requantises_the_int8_ir_and_reruns_the_gates(tmp_path: Path) -> None:
    """--requantise: the INT8 IR quantised again from the FP32 IR with the exporter's scope (no
    FakeQuantize in a GroupNorm), the gates run again and recorded; refused while the FP32 IR
    still resizes in its graph."""
    import openvino as ov

    def fake_quantizes(version: Path) -> list[str]:
        model = ov.Core().read_model(str(version / "openvino" / "model_int8.xml"))
        return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]

    # The newest version that takes the frame at the input size and quantised its GroupNorms (v9).
    subject = next(v for v in sorted(SERVED.parent.iterdir(), key=lambda p: -int(p.name) if p.name.isdigit() else 0)
                   if v.name.isdigit() and (v / "openvino" / "model_int8.xml").is_file()
                   and "Interpolate" not in ir_opening(v / "openvino" / "model_fp32.xml")
                   and any("_gn" in n for n in fake_quantizes(v)))
    repository = tmp_path / "repository"
    source = repository / "car_detector" / "1"
    shutil.copytree(subject, source, ignore=shutil.ignore_patterns("__pycache__"))
    new = repackage(repository, 1, "GroupNorms unquantised", requantise=True)
    old, meta = (json.loads((d / "model_metadata.json").read_text()) for d in (source, new))
    assert fake_quantizes(new) and not [n for n in fake_quantizes(new) if "_gn" in n]
    assert len(fake_quantizes(new)) < len(fake_quantizes(source))
    gate = meta["runtime"]["int8_gate"]
    assert gate["int8"] != old["runtime"]["int8_gate"]["int8"]  # scored again, on the new INT8 IR
    assert 0.9 < gate["fp32"]["pooled"]["ap50"] <= 1.0
    assert gate["passed"] == (meta["runtime"]["serving"] == "openvino-int8")
    assert set(gate["drops"]) >= {"pooled_ap50_drop", "pooled_ap50_95_drop"}
    assert meta["repackaged_from"]["requantised"]["ignored_names"]
    assert filecmp.cmp(source / "openvino" / "model_fp32.bin", new / "openvino" / "model_fp32.bin", shallow=False)
    serving_runtime.verify_manifest(new)

    resizing = repository / "car_detector" / "3"
    shutil.copytree(version_resizing_in_its_graph(), resizing, ignore=shutil.ignore_patterns("__pycache__"))
    with pytest.raises(ValueError, match="resizes in its graph; cut the resize first"):
        repackage(repository, 3, "not yet", requantise=True)
    assert not (repository / "car_detector" / "4").exists()
