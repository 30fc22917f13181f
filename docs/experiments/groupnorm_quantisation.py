"""The served INT8 IR against the same FP32 IR quantised with the GroupNorms left in FP32.

    python docs/experiments/groupnorm_quantisation.py [--version 9] [--rounds 6]

NNCF's default scope puts FakeQuantizes inside the GroupNorms' decomposed arithmetic (their means,
variances and epsilon add). This quantises the version's FP32 IR again, as the exporter does
(same preset, frames, bias correction and ignored types) but with the GroupNorm layers
(`*_gn`) in the ignored scope too (the exporter's NOT_QUANTISED_NAMES), then:

- runs the INT8 gate of both INT8 IRs against the FP32 one on the cross-validation blocks
  (training.openvino_export.score_on_blocks and int8_gate, as at export);
- times `detect` of both, one OpenVINO thread, batches of 4, 80 real frames, interleaved rounds.

The version's FP32 IR must take the frame at the input size (from version 9).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from services.common import config  # noqa: E402
from training.data import load_dataset, make_blocks  # noqa: E402
from training.openvino_export import (  # noqa: E402
    NOT_QUANTISED, NOT_QUANTISED_NAMES, calibration_arrays, int8_gate, score_on_blocks,
)
from training.serving_runtime import OpenVinoDetector, resize_frame  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    import nncf
    import openvino as ov

    served = REPO / "model_repository" / "car_detector" / str(args.version)
    ds = load_dataset(config.DATA_DIR, "auto")
    ordered = sorted(ds.samples, key=lambda s: s.sort_key)
    with tempfile.TemporaryDirectory() as tmp:
        requantised = Path(tmp) / served.name
        shutil.copytree(served, requantised, ignore=shutil.ignore_patterns("__pycache__"))
        fp32 = ov.Core().read_model(str(served / "openvino" / "model_fp32.xml"))
        width, height = (fp32.input(0).get_partial_shape()[i].get_length() for i in (2, 1))
        data = [resize_frame(frame[0], (width, height))[None] for frame in calibration_arrays([s.path for s in ordered])]
        q = nncf.quantize(fp32, nncf.Dataset(data), preset=nncf.QuantizationPreset.MIXED, subset_size=len(data),
                          fast_bias_correction=True,
                          ignored_scope=nncf.IgnoredScope(types=NOT_QUANTISED, patterns=NOT_QUANTISED_NAMES, validate=False))
        ov.save_model(q, str(requantised / "openvino" / "model_int8.xml"), compress_to_fp16=False)
        irs = {"served INT8": served, "INT8, GroupNorms in FP32": requantised}
        counts = {name: sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(
            str(d / "openvino" / "model_int8.xml")).get_ordered_ops()) for name, d in irs.items()}
        blocks = [held for _, held in make_blocks(ordered, 5, 2)]
        reference = score_on_blocks(OpenVinoDetector(served, "fp32", threads=2, verify=False), ordered, blocks, ds.class_names)
        print(f"FP32: pooled AP50 {reference['pooled']['ap50']:.4f}, AP50-95 {reference['pooled']['ap50_95']:.4f}\n")
        print("| INT8 IR | FakeQuantizes | pooled AP50 | pooled AP50-95 | gate | drops (pooled AP50, AP50-95) |\n|---|---:|---:|---:|---|---|")
        for name, d in irs.items():
            scores = score_on_blocks(OpenVinoDetector(d, "int8", threads=2, verify=False), ordered, blocks, ds.class_names)
            gate = int8_gate(reference, scores)
            print(f"| {name} | {counts[name]} | {scores['pooled']['ap50']:.4f} | {scores['pooled']['ap50_95']:.4f} | "
                  f"{'passed' if gate['passed'] else 'FAILED'} | {gate['drops']['pooled_ap50_drop']:.4f}, "
                  f"{gate['drops']['pooled_ap50_95_drop']:.4f} |")
        files = [s.path.read_bytes() for s in ordered[:: max(1, len(ordered) // 80)][:80]]
        detectors = {name: OpenVinoDetector(d, "int8", threads=1, verify=False) for name, d in irs.items()}
        for detector in detectors.values():
            detector.detect(files[:1])
            detector.detect(files[:4])
        cpu: dict[str, list[float]] = {name: [] for name in detectors}
        for _ in range(args.rounds):
            for name, detector in detectors.items():
                start = time.process_time()
                for i in range(0, len(files), 4):
                    detector.detect(files[i:i + 4])
                cpu[name].append((time.process_time() - start) / len(files) * 1000)
    print(f"\n| INT8 IR | CPU ms per image of detect ({len(files)} frames, batch 4, 1 thread), each round | median |\n|---|---|---:|")
    for name, values in cpu.items():
        print(f"| {name} | {' / '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
