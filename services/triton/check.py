"""Check a running Triton car_detector with plain tritonclient.grpc.

    .venv/bin/python services/triton/check.py [--server 127.0.0.1:8001] [--threshold 0.3]
        [--latency N] [--draw DIR] IMAGE [IMAGE ...]

Prints the detections above the threshold per image; with --draw writes annotated PNGs;
with --latency N sends N sequential single-image requests (concurrency 1) and prints the
per-image latency percentiles.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from services.common import config, triton_client

MODEL = "car_detector"


def infer(client: grpcclient.InferenceServerClient, files: list[bytes]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    inp = grpcclient.InferInput("IMAGE", [len(files), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[f] for f in files], dtype=object))
    r = client.infer(MODEL, [inp])
    b, s, lab = r.as_numpy("BOXES"), r.as_numpy("SCORES"), r.as_numpy("LABELS")
    return [(b[i], s[i], lab[i]) for i in range(len(files))]


def draw(path: Path, boxes: np.ndarray, scores: np.ndarray, out_dir: Path, threshold: float) -> Path:
    from PIL import Image, ImageDraw

    img = Image.open(path).convert("RGB")
    d = ImageDraw.Draw(img)
    for box, score in zip(boxes, scores):
        if score >= threshold:
            d.rectangle([float(v) for v in box], outline=(255, 40, 40), width=2)
            d.text((float(box[0]) + 2, float(box[1]) - 11), f"{score:.2f}", fill=(255, 255, 0))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (path.stem + ".png")
    img.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--server", default=config.TRITON_GRPC_URL)
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--draw", type=Path, default=None)
    p.add_argument("--latency", type=int, default=0, help="sequential requests for the latency measurement")
    args = p.parse_args(argv)
    client = triton_client.connect(args.server)  # TLS when TRITON_TLS=1
    if not client.is_model_ready(MODEL):
        print(f"{MODEL} is not ready on {args.server}", file=sys.stderr)
        return 1
    for path in args.images:
        boxes, scores, labels = infer(client, [path.read_bytes()])[0]
        keep = scores >= args.threshold
        dets = ", ".join(f"{lab.decode()} {s:.2f} [{' '.join(f'{v:.0f}' for v in b)}]" for b, s, lab in zip(boxes[keep], scores[keep], labels[keep]))
        print(f"{path.name}: {int(keep.sum())} >= {args.threshold} ({len(scores)} returned) {dets}")
        if args.draw:
            draw(path, boxes, scores, args.draw, args.threshold)
    if args.latency:
        data = [p.read_bytes() for p in args.images]
        times = []
        for i in range(args.latency):
            t0 = time.perf_counter()
            infer(client, [data[i % len(data)]])
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        print(
            f"latency over {len(times)} sequential requests: median {statistics.median(times):.1f} ms, "
            f"p90 {times[int(0.9 * (len(times) - 1))]:.1f} ms, p99 {times[int(0.99 * (len(times) - 1))]:.1f} ms, "
            f"mean {statistics.mean(times):.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
