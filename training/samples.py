"""What the dataset loaders (training/data.py) return: a :class:`Dataset` of :class:`Sample`,
the frame order the contiguous split relies on, and the box validation every layout shares."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Boxes thinner than this (after clipping to the image) carry no usable signal.
MIN_BOX_SIZE = 1.0


class DataError(Exception):
    """A dataset problem that stops loading (missing folder, no images, unknown layout)."""


@dataclass
class Sample:
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # float32 [n, 4] x_min, y_min, x_max, y_max in original pixels
    labels: np.ndarray  # int32 [n] indices into Dataset.class_names

    @property
    def sort_key(self) -> tuple[str, int, str]:
        return frame_sort_key(self.path.name)


@dataclass
class Dataset:
    root: Path
    layout: str
    class_names: list[str]
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(s.boxes) for s in self.samples))

    def fingerprint(self) -> str:
        """sha256 over the sorted file list, the image sizes and the annotations.

        It identifies what a model was trained on without hashing gigabytes of pixels.
        """
        h = hashlib.sha256()
        h.update(json.dumps(self.class_names).encode())
        for s in sorted(self.samples, key=lambda s: s.path.name):
            h.update(f"{s.path.name}|{s.width}x{s.height}|".encode())
            h.update(np.round(s.boxes, 2).astype(np.float64).tobytes())
            h.update(s.labels.astype(np.int64).tobytes())
        return h.hexdigest()


_FRAME_RE = re.compile(r"^(.*?)(\d+)$")


def frame_sort_key(name: str) -> tuple[str, int, str]:
    """(video prefix, frame number, name): ``vid_4_1000.jpg`` sorts as ('vid_4_', 1000).

    Files without a trailing number sort by name within their prefix, so any layout gets a
    deterministic order for the contiguous split.
    """
    stem = Path(name).stem
    m = _FRAME_RE.match(stem)
    if m:
        return (m.group(1), int(m.group(2)), name)
    return (stem, -1, name)


def clean_box(
    box: tuple[float, float, float, float], width: int, height: int, where: str, problems: list[str]
) -> np.ndarray | None:
    """Validate one box against its image: reject inverted or outside boxes, clip the rest."""
    x1, y1, x2, y2 = box
    if not all(np.isfinite(v) for v in box):
        problems.append(f"{where}: non-finite coordinate {box}")
        return None
    if x2 <= x1 or y2 <= y1:
        problems.append(f"{where}: x_max <= x_min or y_max <= y_min {tuple(round(v, 1) for v in box)}")
        return None
    cx1, cy1 = max(0.0, x1), max(0.0, y1)
    cx2, cy2 = min(float(width), x2), min(float(height), y2)
    if cx2 - cx1 < MIN_BOX_SIZE or cy2 - cy1 < MIN_BOX_SIZE:
        problems.append(f"{where}: box {tuple(round(v, 1) for v in box)} lies outside the {width}x{height} image")
        return None
    return np.array([cx1, cy1, cx2, cy2], dtype=np.float32)
