"""Metrics on hand-made boxes, target encoding and augmentation geometry."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import AugmentConfig, sample_geometry
from training.metrics import ImageResult, average_precision, choose_threshold, evaluate, iou_matrix, match_detections
from training.targets import encode_targets

GT = np.array([[10, 10, 50, 40], [100, 100, 200, 180]], np.float32)


def _res(boxes, scores, gt=GT, w=676, h=380) -> ImageResult:  # type: ignore[no-untyped-def]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return ImageResult(gt, np.zeros(len(gt), np.int32), boxes, np.asarray(scores, np.float32), np.zeros(len(boxes), np.int32), w, h)


def test_iou() -> None:
    m = iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(m, [[1.0, 1 / 3, 0.0]])


def test_perfect_detections() -> None:
    m = evaluate([_res(GT, [0.9, 0.8])], ["car"], threshold=0.5)
    assert m["ap50"] == pytest.approx(1.0)
    assert m["ap50_95"] == pytest.approx(1.0)
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)


def test_false_positive_ranked_first_and_a_miss() -> None:
    # FP at 0.95, TP at 0.9, second GT missed: precision at recall 0.5 is 0.5.
    r = _res([[300, 300, 350, 350], GT[0]], [0.95, 0.9])
    s, tp, n = match_detections([r], 0, 0.5)
    assert n == 2 and tp.tolist() == [False, True]
    ap = average_precision(s, tp, n)
    assert ap == pytest.approx(0.5 * 51 / 101, abs=1e-6)  # precision 0.5 on recall points 0..0.5
    m = evaluate([r], ["car"], threshold=0.92)
    assert m["precision"] == 0.0 and m["recall"] == 0.0
    m = evaluate([r], ["car"], threshold=0.5)
    assert m["precision"] == 0.5 and m["recall"] == 0.5


def test_duplicate_detection_counts_once() -> None:
    s, tp, n = match_detections([_res([GT[0], GT[0] + 1], [0.9, 0.8], gt=GT[:1])], 0, 0.5)
    assert tp.tolist() == [True, False]


def test_iou_threshold_matters_for_ap50_95() -> None:
    shifted = GT + np.array([6, 0, 6, 0], np.float32)  # IoU ~0.74 and ~0.89
    m = evaluate([_res(shifted, [0.9, 0.8])], ["car"], threshold=0.5)
    assert m["ap50"] == pytest.approx(1.0)
    assert 0.3 < m["ap50_95"] < 0.9


def test_size_slices_and_edge() -> None:
    gt = np.array([[0, 10, 20, 30], [100, 100, 250, 250]], np.float32)  # small at the edge, large
    m = evaluate([_res([gt[1]], [0.9], gt=gt)], ["car"], threshold=0.5)
    assert m["slices"]["small (<32^2)"]["recall"] == 0.0
    assert m["slices"]["large (>96^2)"]["recall"] == 1.0
    assert m["slices"]["edge"]["n_gt"] == 1
    assert np.isnan(m["slices"]["medium (32^2-96^2)"]["ap50"])


def test_choose_threshold_prefers_low_among_ties() -> None:
    results = [_res(GT, [0.9, 0.8]), _res([[300, 300, 340, 340]], [0.3], gt=np.zeros((0, 4), np.float32))]
    thr = choose_threshold(results, 1)
    assert 0.3 < thr <= 0.8  # excludes the 0.3 false positive, keeps both true positives
    assert thr == pytest.approx(0.35)


def test_targets_peak_on_centre_cell() -> None:
    heat, reg, w = encode_targets([np.array([[16, 16, 48, 40]], np.float32)], [np.array([0])], (64, 96), 1)
    assert heat.shape == (1, 8, 12, 1)
    assert heat[0, 3, 4, 0] == 1.0  # centre (32, 28) -> cell (4, 3)
    assert heat.max() == 1.0 and (heat == 1.0).sum() == 1
    assert w[0, 3, 4] > 0
    np.testing.assert_allclose(reg[0, 3, 4], [16, 16, 48, 40])
    assert w.sum() == pytest.approx(np.log(32 * 24 + 1), rel=1e-5)


def test_geometry_identity_and_flip() -> None:
    rng = np.random.default_rng(0)
    box = [np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)]
    cfg = AugmentConfig(identity_prob=1.0)
    crops, bxs, _ = sample_geometry(rng, box, [np.array([0])], (100, 200), cfg)
    np.testing.assert_allclose(crops[0], [0, 0, 1, 1])
    np.testing.assert_allclose(bxs[0][0], [20, 20, 60, 40], atol=1e-4)
    cfg = AugmentConfig(identity_prob=0.0, min_scale=1.0, max_scale=1.0, aspect_jitter=0.0, flip_prob=1.0)
    crops, bxs, _ = sample_geometry(rng, box, [np.array([0])], (100, 200), cfg)
    np.testing.assert_allclose(crops[0], [0, 1, 1, 0])  # x1 > x2: crop_and_resize flips
    np.testing.assert_allclose(bxs[0][0], [140, 20, 180, 40], atol=1e-4)


def test_geometry_zoom_in_drops_mostly_cut_boxes() -> None:
    rng = np.random.default_rng(1)
    boxes = [np.array([[0.0, 0.0, 0.05, 0.05], [0.45, 0.45, 0.55, 0.55]], np.float32)]
    cfg = AugmentConfig(identity_prob=0.0, min_scale=2.0, max_scale=2.0, aspect_jitter=0.0, flip_prob=0.0)
    for _ in range(20):
        _, bxs, _ = sample_geometry(rng, boxes, [np.array([0, 0])], (100, 100), cfg)
        b = bxs[0]
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b >= 0) and np.all(b <= 100)
