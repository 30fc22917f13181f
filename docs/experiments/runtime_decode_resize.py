"""The model's CPU per image with the served version's runtime against this checkout's.

    python docs/experiments/runtime_decode_resize.py --version 7 [--rounds 4] [--frames 80]

Three variants of the same network, one OpenVINO thread each, batches of 4 real frames (676 x 380
JPEGs), interleaved round by round in one process; CPU time (`time.process_time`) per image of
`detect`, which is what Triton's python backend runs per request (decode, statistics, network,
post-processing):

- ``served``: the version's own detector_runtime.py (its decode) and its INT8 IR as stored;
- ``simplejpeg``: this checkout's training/serving_runtime.py on the same IR;
- ``simplejpeg + uint8 resize``: the same, on a copy of the IR rewritten by the exporter's
  `resize_in_uint8` (what an export from this checkout writes).

It then checks that the three give the same boxes, scores and statistics. Without simplejpeg
installed the second variant decodes with Pillow, like the first.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from services.common import config  # noqa: E402
from training import serving_runtime  # noqa: E402
from training.openvino_export import rewrite_verified  # noqa: E402
from training.repackage import check_images  # noqa: E402
from training.triton_model import load_runtime  # noqa: E402

MODEL_DIR = REPO / "model_repository" / "car_detector"


def rewritten_copy(version_dir: Path, root: Path) -> Path:
    """The version copied under root, its INT8 IR rewritten as an export from this checkout
    writes it (and checked to answer the same on 16 real frames)."""
    copy = root / version_dir.name
    shutil.copytree(version_dir, copy, ignore=shutil.ignore_patterns("__pycache__"))
    rewrite_verified(copy / "openvino" / "model_int8.xml", check_images())
    return copy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", type=int, default=None, help="one exported before the uint8 resize (7); default: the newest with an INT8 IR")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--frames", type=int, default=80)
    args = parser.parse_args()
    versions = sorted(int(p.name) for p in MODEL_DIR.iterdir() if (p / "openvino" / "model_int8.xml").is_file())
    version_dir = MODEL_DIR / str(args.version or versions[-1])
    paths = sorted((Path(config.DATA_DIR) / "training_images").glob("*.jpg"))
    files = [p.read_bytes() for p in paths[:: max(1, len(paths) // args.frames)][: args.frames]]
    with tempfile.TemporaryDirectory() as tmp:
        served = load_runtime(str(version_dir))
        variants = {
            "served": served.OpenVinoDetector(version_dir, "int8", threads=1),
            "simplejpeg": serving_runtime.OpenVinoDetector(version_dir, "int8", threads=1),
            "simplejpeg + uint8 resize": serving_runtime.OpenVinoDetector(
                rewritten_copy(version_dir, Path(tmp)), "int8", threads=1, verify=False),
        }
        for detector in variants.values():  # compile batch sizes 1 and 4, warm caches
            detector.detect(files[:1])
            detector.detect(files[:4])
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, detector in variants.items():
                start = time.process_time()
                for i in range(0, len(files), 4):
                    detector.detect(files[i:i + 4])
                cpu[name].append((time.process_time() - start) / len(files) * 1000)
        outputs = [detector.detect(files[:8]) for detector in variants.values()]
    same = all(np.array_equal(a["boxes"], b["boxes"]) and np.array_equal(a["scores"], b["scores"])
               and a["image_stats"] == b["image_stats"] for other in outputs[1:] for a, b in zip(outputs[0], other))
    print(f"version {version_dir.name}, {len(files)} frames, batch 4, 1 OpenVINO thread, simplejpeg "
          f"{'installed' if serving_runtime.simplejpeg else 'absent'}\n")
    print("| variant | CPU ms per image, each round | median |\n|---|---|---:|")
    for name, values in cpu.items():
        print(f"| {name} | {' / '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} |")
    print(f"\nsame boxes, scores and statistics: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
