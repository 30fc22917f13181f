"""Blocked cross-validation: the blocks, and one tiny end-to-end run of the command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from tests.unit.training_fixtures import make_kaggle
from training.data import load_dataset, make_blocks
from training.samples import DataError


def test_blocks_are_contiguous_cover_everything_and_keep_a_gap(tmp_path: Path) -> None:
    frames = list(range(20, 20 + 20 * 23, 20))
    ds = load_dataset(make_kaggle(tmp_path / "d", frames, {20: [(5, 5, 30, 20)]}))
    samples = sorted(ds.samples, key=lambda s: s.sort_key)
    folds = make_blocks(samples, 5, gap=2)
    held = [h for _, h in folds]
    assert sorted(i for h in held for i in h) == list(range(len(samples)))  # every frame held out once
    for train, h in folds:
        assert h == list(range(h[0], h[-1] + 1))  # contiguous
        assert not set(train) & set(range(h[0] - 2, h[-1] + 3))  # 2 guard frames each side
        assert len(train) >= len(samples) - len(h) - 4
    with pytest.raises(DataError):
        make_blocks(samples[:6], 5, 2)


def test_train_and_crossval_read_the_same_recipe_from_the_same_arguments() -> None:
    """What crossval measures is what train ships: one set of recipe arguments, one Recipe."""
    from training import crossval, train
    from training.cli import recipe_from

    recipe_args = ["--input-size", "640x352", "--patch-size", "320x192", "--zoom", "0.45-1.6", "--positive-oversample", "1.5",
                   "--lr", "0.001", "--seed", "7"]
    from_train = recipe_from(train.build_parser().parse_args(recipe_args), 25.0)
    from_crossval = recipe_from(crossval.build_parser().parse_args(recipe_args), 25.0)
    assert from_train == from_crossval
    assert (from_train.augment.min_scale, from_train.augment.max_scale, from_train.positive_oversample) == (0.45, 1.6, 1.5)
    assert from_train.input_hw == (352, 640) and from_train.patch_hw == (192, 320)
    default = recipe_from(crossval.build_parser().parse_args([]), 10.0)
    assert (default.augment.min_scale, default.augment.max_scale, default.positive_oversample) == (0.6, 1.8, 2.0)
    for bad in ("1.8-0.6", "0-1", "x"):
        with pytest.raises(SystemExit):
            crossval.build_parser().parse_args(["--zoom", bad])


def test_crossval_command_on_a_tiny_configuration(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from training.crossval import main

    frames = list(range(20, 20 + 20 * 15, 20))
    boxes = {f: [(5 + i % 20, 5, 35 + i % 20, 25)] for i, f in enumerate(frames) if i % 2 == 0}
    data = make_kaggle(tmp_path / "data", frames, boxes)
    out = tmp_path / "cv"
    rc = main([str(data), "--k", "3", "--input-size", "64x64", "--patch-size", "64x64", "--batch-size", "2",
               "--steps-per-epoch", "1", "--max-epochs", "1", "--backbone-weights", "none", "--zoom", "0.45-1.6",
               "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "crossval.json").read_text())
    cv, cal = summary["crossval"], summary["calibration"]
    assert (cv["recipe"]["augment"]["min_scale"], cv["recipe"]["augment"]["max_scale"]) == (0.45, 1.6)
    assert cv["k"] == 3 and cv["gap_frames"] == 2 and cv["input_size"] == [64, 64]
    assert [b["block"] for b in cv["blocks"]] == [0, 1, 2]
    assert sum(b["images"] for b in cv["blocks"]) == len(frames)
    assert sum(b["boxes"] for b in cv["blocks"]) == len(boxes)
    for key in ("ap50", "ap50_95", "precision", "recall"):
        assert key in cv["pooled"] and all(key in b for b in cv["blocks"])
    assert set(cv["spread"]) >= {"ap50_std", "ap50_95_std"} and "ap50" in cv["worst_block"]
    assert cal["method"] == "temperature" and "ece_before" in cal and "ece_after" in cal
    assert len(cal["reliability"]["bin_edges"]) == len(cal["reliability"]["counts"]) + 1
    assert "operating_threshold" in summary and "operating_precision" in summary
    box = summary["box_scale"]
    assert 1.0 <= box["factor"] <= 1.15 and len(box["held_out_factors"]) == 3
    assert set(box["unscaled"]) == {"ap50", "ap50_95", "worst_block_ap50"}
    assert (out / "crossval.md").read_text().startswith("# Cross-validation (3 contiguous blocks")
    assert (out / "ap_per_block.png").stat().st_size > 1000 and (out / "reliability.png").stat().st_size > 1000
    assert len(summary["out_of_fold"]) == 3
    # Each fold's network is kept and is the one that made its out-of-fold detections.
    from training.export import Detector
    from training.fit import predict_files
    from training.model import build_model

    fold = json.loads((out / "fold_1.json").read_text())
    model = build_model((64, 64), 1, None, any_size=True)
    model.load_weights(str(out / "fold_1.weights.h5"))
    samples = sorted(load_dataset(str(data), "auto").samples, key=lambda s: s.sort_key)
    again = predict_files(Detector(model, (64, 64), ["car"]), [samples[i].path for i in fold["held_out"]])
    assert any(d["scores"] for d in fold["detections"])
    for was, now in zip(fold["detections"], again):
        np.testing.assert_allclose(np.asarray(now["scores"]).round(5), was["scores"], atol=2e-5)


def test_deeper_heads_add_convolutions_and_keep_the_first_ones_names() -> None:
    """--head-convs 2: one more separable convolution in each head; the first keeps its name,
    so a network of one convolution per head is the same model it always was."""
    from training.cli import add_recipe_arguments, recipe_from
    from training.model import build_model

    one, two = (build_model((64, 64), 1, None, any_size=True, head_convs=n) for n in (1, 2))
    names = {layer.name for layer in one.layers}
    added = {layer.name for layer in two.layers} - names
    assert {"hm_head_sep", "reg_head_sep"} <= names
    assert added == {f"{head}2_{part}" for head in ("hm_head", "reg_head") for part in ("sep", "gn", "relu")}
    assert two.count_params() > one.count_params()
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    assert recipe_from(parser.parse_args(["--head-convs", "2"]), 1.0).as_dict()["head_convs"] == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--head-convs", "0"])
