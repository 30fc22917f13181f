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

    python docs/experiments/runtime_decode_resize.py --versions 8,9 [--rounds 10]

compares stored versions instead, each with its own runtime and INT8 IR (v9: v8's network, the
resize cut out of the IR and done by the runtime with OpenCV), and reports how far their
detections are apart (the outputs of v8 and v9 are not bit-identical: training.repackage).
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
    parser.add_argument("--versions", default=None, help="e.g. 8,9: stored versions side by side instead")
    args = parser.parse_args()
    paths = sorted((Path(config.DATA_DIR) / "training_images").glob("*.jpg"))
    files = [p.read_bytes() for p in paths[:: max(1, len(paths) // args.frames)][: args.frames]]
    if args.versions:
        dirs = [MODEL_DIR / v.strip() for v in args.versions.split(",")]
        detectors = {f"v{d.name}": load_runtime(str(d)).OpenVinoDetector(d, "int8", threads=1) for d in dirs}
        cpu = interleaved(detectors, files, args.rounds)
        report(f"versions {args.versions}, {len(files)} frames, batch 4, 1 OpenVINO thread", cpu)
        first, *others = ([r for i in range(0, len(files), 4) for r in det.detect(files[i:i + 4])] for det in detectors.values())
        for name, other in zip(list(detectors)[1:], others):
            print(f"\n{name} against {list(detectors)[0]}: {apart(first, other)}")
        return 0
    versions = sorted(int(p.name) for p in MODEL_DIR.iterdir() if (p / "openvino" / "model_int8.xml").is_file())
    version_dir = MODEL_DIR / str(args.version or versions[-1])
    with tempfile.TemporaryDirectory() as tmp:
        served = load_runtime(str(version_dir))
        variants = {
            "served": served.OpenVinoDetector(version_dir, "int8", threads=1),
            "simplejpeg": serving_runtime.OpenVinoDetector(version_dir, "int8", threads=1),
            "simplejpeg + uint8 resize": serving_runtime.OpenVinoDetector(
                rewritten_copy(version_dir, Path(tmp)), "int8", threads=1, verify=False),
        }
        cpu = interleaved(variants, files, args.rounds)
        outputs = [detector.detect(files[:8]) for detector in variants.values()]
    same = all(np.array_equal(a["boxes"], b["boxes"]) and np.array_equal(a["scores"], b["scores"])
               and a["image_stats"] == b["image_stats"] for other in outputs[1:] for a, b in zip(outputs[0], other))
    report(f"version {version_dir.name}, {len(files)} frames, batch 4, 1 OpenVINO thread, simplejpeg "
           f"{'installed' if serving_runtime.simplejpeg else 'absent'}", cpu)
    print(f"\nsame boxes, scores and statistics: {same}")
    return 0 if same else 1


def interleaved(detectors: dict, files: list[bytes], rounds: int) -> dict[str, list[float]]:
    """CPU ms per image of each detector's ``detect`` in batches of 4, round by round."""
    for detector in detectors.values():  # compile batch sizes 1 and 4, warm caches
        detector.detect(files[:1])
        detector.detect(files[:4])
    cpu: dict[str, list[float]] = {name: [] for name in detectors}
    for _ in range(rounds):
        for name, detector in detectors.items():
            start = time.process_time()
            for i in range(0, len(files), 4):
                detector.detect(files[i:i + 4])
            cpu[name].append((time.process_time() - start) / len(files) * 1000)
    return cpu


def report(title: str, cpu: dict[str, list[float]]) -> None:
    print(f"{title}\n\n| variant | CPU ms per image, each round | median |\n|---|---|---:|")
    for name, values in cpu.items():
        print(f"| {name} | {' / '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} |")


def apart(first: list[dict], other: list[dict], threshold: float = 0.3) -> str:
    """How far two runs' detections (scoring >= threshold in the first) are apart."""
    from training.metrics import iou_matrix

    ious, diffs, missing = [], [], 0
    for a, b in zip(first, other):
        keep = a["scores"] >= threshold
        if not keep.any():
            continue
        if not len(b["boxes"]):
            missing += int(keep.sum())
            continue
        iou = iou_matrix(a["boxes"][keep], b["boxes"])
        ious += iou.max(axis=1).tolist()
        diffs += np.abs(a["scores"][keep] - b["scores"][iou.argmax(axis=1)]).tolist()
        assert a["image_stats"] == b["image_stats"]
    return (f"{len(ious)} detections at >= {threshold}: lowest IoU {min(ious):.3f}, largest score difference "
            f"{max(diffs):.3f}, {missing} without a partner; the same image statistics")


if __name__ == "__main__":
    sys.exit(main())
