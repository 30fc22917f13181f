"""What the training commands (train, crossval) share: the recipe's arguments (what crossval
measures is what train ships), and how a command runs and fails (a data problem is one line on
stderr and exit status 2)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from services.common import config
from training.samples import DataError

if TYPE_CHECKING:
    from training.fit import Recipe


def parse_size(text: str) -> tuple[int, int]:
    """'352x192' (width x height) -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got '{text}'") from None
    if w % 32 or h % 32 or w < 64 or h < 64:
        raise argparse.ArgumentTypeError("width and height must be multiples of 32, at least 64")
    return h, w


def parse_range(text: str) -> tuple[float, float]:
    """'0.6-1.8' -> (0.6, 1.8), with 0 < low <= high."""
    try:
        low, high = (float(v) for v in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, got '{text}'") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH, got '{text}'")
    return low, high


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The training recipe's arguments, shared by train and crossval."""
    p.add_argument("--input-size", type=parse_size, default=parse_size(config.INPUT_SIZE),
                   help="network input WIDTHxHEIGHT (multiples of 32); keep the frames' aspect")
    p.add_argument("--patch-size", type=parse_size, default=parse_size(config.PATCH_SIZE),
                   help="training patch WIDTHxHEIGHT cut from the augmented frame (= input size: whole frames)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=400)
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0 = one pass over the training images")
    p.add_argument("--lr", type=float, default=config.TRAIN_LR)
    p.add_argument("--positive-oversample", type=float, default=2.0,
                   help="how often images with objects are drawn relative to empty ones")
    p.add_argument("--zoom", type=parse_range, default=(0.6, 1.8), metavar="LOW-HIGH",
                   help="augmentation zoom range: below 1 zooms out (smaller cars), above 1 zooms in")
    p.add_argument("--head-convs", type=int, default=1, choices=range(1, 5), metavar="{1..4}",
                   help="separable 3x3 convolutions in each head (heat map, box distances)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--backbone-weights", default=config.BACKBONE_WEIGHTS,
                   help="imagenet (offline file under ../shared/weights or $KERAS_HOME/models, else download), none, or a .h5 path")


def recipe_from(args: argparse.Namespace, budget_minutes: float) -> Recipe:
    """The Recipe those arguments describe (a patch as large as the input trains on whole frames)."""
    from training.augment import AugmentConfig
    from training.fit import Recipe

    patch = args.patch_size if args.patch_size != args.input_size else None
    if patch and (patch[0] > args.input_size[0] or patch[1] > args.input_size[1]):
        patch = None
    return Recipe(input_hw=args.input_size, patch_hw=patch, batch_size=args.batch_size, lr=args.lr,
                  budget_minutes=budget_minutes, max_epochs=args.max_epochs, steps_per_epoch=args.steps_per_epoch,
                  positive_oversample=args.positive_oversample, head_convs=args.head_convs, seed=args.seed,
                  augment=AugmentConfig(min_scale=args.zoom[0], max_scale=args.zoom[1]))


def run_command(work: Callable[[], object], verbose: bool = False) -> int:
    """Run one command's work: 0 done, 2 bad data or a missing file, 130 interrupted."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before TensorFlow is imported (lazily, by the work): its C++ start-up chatter is noise here.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        work()
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
