"""What the training commands (train, crossval) share: the size argument, and how a
command runs and fails (a data problem is one line on stderr and exit status 2)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from training.samples import DataError


def parse_size(text: str) -> tuple[int, int]:
    """'352x192' (width x height) -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got '{text}'") from None
    if w % 32 or h % 32 or w < 64 or h < 64:
        raise argparse.ArgumentTypeError("width and height must be multiples of 32, at least 64")
    return h, w


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
