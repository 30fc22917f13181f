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
