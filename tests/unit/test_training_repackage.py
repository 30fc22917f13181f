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
from tests.conftest import REPO_ROOT, frame
from training import serving_runtime
from training.repackage import repackage
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
