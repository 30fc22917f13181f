"""Data loaders (Kaggle / YOLO / COCO), bad-row handling and the contiguous split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import load_dataset, split_contiguous
from training.samples import DataError, Sample, frame_sort_key
from tests.unit.training_fixtures import H, W, make_coco, make_image, make_kaggle, make_yolo


def test_kaggle_positives_and_negatives(tmp_path: Path) -> None:
    root = make_kaggle(tmp_path, [20, 40, 60], {20: [(5, 5, 30, 20)], 60: [(40, 10, 70, 40), (1, 1, 10, 10)]})
    ds = load_dataset(root)
    assert ds.layout == "kaggle"
    assert ds.class_names == ["car"]
    by_name = {s.path.name: s for s in ds.samples}
    assert len(by_name) == 3
    assert len(by_name["vid_4_40.jpg"].boxes) == 0  # no CSV row: a negative frame
    assert len(by_name["vid_4_60.jpg"].boxes) == 2
    np.testing.assert_allclose(by_name["vid_4_20.jpg"].boxes[0], [5, 5, 30, 20])
    assert ds.problems == []


def test_kaggle_accepts_image_column(tmp_path: Path) -> None:
    root = make_kaggle(tmp_path, [1, 2], {1: [(5, 5, 30, 20)]}, id_col="image")
    assert load_dataset(root).num_boxes == 1


def test_kaggle_bad_rows_are_skipped_and_named(tmp_path: Path) -> None:
    bad = [
        "vid_4_999.jpg,1,1,10,10",  # image does not exist
        "vid_4_20.jpg,30,5,10,20",  # x_max < x_min
        "vid_4_20.jpg,500,400,600,450",  # outside the image
        "vid_4_20.jpg,a,b,c,d",  # unparsable
        f"vid_4_20.jpg,-5,-5,{W + 10},{H + 10}",  # partly outside: clipped, kept
    ]
    root = make_kaggle(tmp_path, [20, 40], {20: [(5, 5, 30, 20)]}, extra_rows=bad)
    (root / "training_images" / "vid_4_60.jpg").write_bytes(b"not a jpeg")  # unreadable image
    ds = load_dataset(root)
    assert ds.num_boxes == 2
    clipped = [b for b in ds.samples[0].boxes if b[0] == 0]
    np.testing.assert_allclose(clipped[0], [0, 0, W, H])
    text = "\n".join(ds.problems)
    assert len(ds.problems) == 5
    assert "row 3" in text and "vid_4_999.jpg" in text and "does not exist" in text
    assert "row 4" in text and "x_max <= x_min" in text
    assert "row 5" in text and "outside" in text
    assert "row 6" in text and "unparsable" in text
    assert "vid_4_60.jpg" in text and "unreadable" in text
    assert all(s.path.name != "vid_4_60.jpg" for s in ds.samples)


def test_missing_and_empty_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="empty"):
        load_dataset(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="unknown dataset layout"):
        load_dataset(tmp_path)


def test_kaggle_missing_columns(tmp_path: Path) -> None:
    make_image(tmp_path / "training_images" / "vid_4_1.jpg")
    (tmp_path / "train_solution_bounding_boxes (1).csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(DataError, match="expected columns"):
        load_dataset(tmp_path)


def test_yolo_three_classes(tmp_path: Path) -> None:
    root = make_yolo(
        tmp_path,
        ["car", "truck", "bus"],
        {"a": [(0, 0.5, 0.5, 0.25, 0.25), (2, 0.2, 0.3, 0.2, 0.2)], "b": [(1, 0.7, 0.6, 0.3, 0.4)], "c": []},
    )
    (root / "labels" / "d.txt").write_text("7 0.5 0.5 0.1 0.1\nbroken line\n")
    make_image(root / "images" / "d.jpg")
    ds = load_dataset(root)
    assert ds.layout == "yolo"
    assert ds.class_names == ["car", "truck", "bus"]
    by = {s.path.stem: s for s in ds.samples}
    assert sorted(by["a"].labels.tolist()) == [0, 2]
    np.testing.assert_allclose(by["a"].boxes[0], [0.375 * W, 0.375 * H, 0.625 * W, 0.625 * H], atol=1e-4)
    assert len(by["c"].boxes) == 0 and len(by["d"].boxes) == 0
    assert len(ds.problems) == 2 and "d.txt line 1" in ds.problems[0]


def test_coco(tmp_path: Path) -> None:
    root = make_coco(tmp_path, ["car", "truck", "bus"], {"x.jpg": [(0, 2, 3, 20, 10), (2, 40, 10, 30, 30)], "y.jpg": []})
    ds = load_dataset(root)
    assert ds.layout == "coco"
    assert ds.class_names == ["car", "truck", "bus"]
    x = next(s for s in ds.samples if s.path.name == "x.jpg")
    np.testing.assert_allclose(x.boxes, [[2, 3, 22, 13], [40, 10, 70, 40]])
    assert x.labels.tolist() == [0, 2]


def test_fingerprint_changes_with_annotations(tmp_path: Path) -> None:
    a = load_dataset(make_kaggle(tmp_path / "a", [1, 2], {1: [(5, 5, 30, 20)]}))
    b = load_dataset(make_kaggle(tmp_path / "b", [1, 2], {1: [(5, 5, 31, 20)]}))
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == load_dataset(tmp_path / "a").fingerprint()


def _samples(frames: list[int]) -> list[Sample]:
    return [Sample(Path(f"vid_4_{f}.jpg"), W, H, np.zeros((0, 4), np.float32), np.zeros(0, np.int32)) for f in frames]


def test_frame_sort_is_numeric() -> None:
    assert frame_sort_key("vid_4_1000.jpg") > frame_sort_key("vid_4_980.jpg")


def test_split_is_contiguous_deterministic_and_gapped() -> None:
    frames = list(range(0, 2000, 20))
    shuffled = list(reversed(_samples(frames)))
    train, val = split_contiguous(shuffled, val_fraction=0.2, gap=2)
    val_frames = [s.sort_key[1] for s in val]
    train_frames = sorted(s.sort_key[1] for s in train)
    assert len(val) == 20
    assert val_frames == frames[-20:]  # default: the last block, contiguous
    assert set(val_frames).isdisjoint(train_frames)
    assert max(train_frames) == frames[-23]  # two frames dropped before the block
    train2, val2 = split_contiguous(_samples(frames), val_fraction=0.2, gap=2)
    assert [s.path for s in val2] == [s.path for s in val]
    # A block in the middle stays contiguous too.
    _, mid = split_contiguous(_samples(frames), val_fraction=0.1, gap=0, position=0.5)
    mf = [s.sort_key[1] for s in mid]
    assert mf == list(range(mf[0], mf[0] + 20 * len(mf), 20))
