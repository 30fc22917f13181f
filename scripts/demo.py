"""Send sample frames through the gateway of a running stack, print the
detections as a table and write annotated copies under var/demo/.

    make demo                      # a few frames from DATA_DIR
    make demo IMAGES="a.jpg b.png" # your own images
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import requests
from PIL import Image, ImageDraw

from gateway.auth import default_keys_file
from services.common import config

DATA_DIR = Path(config.DATA_DIR)
GATEWAY = config.GATEWAY_URL
OUT_DIR = Path(config.VAR_DIR) / "demo"
SAMPLES = ["training_images/vid_4_1000.jpg", "training_images/vid_4_10000.jpg", "training_images/vid_4_6240.jpg",
           "testing_images/vid_5_26400.jpg", "testing_images/vid_5_27320.jpg", "testing_images/vid_5_29000.jpg"]


def client_key() -> str:
    if config.DEMO_API_KEY:
        return config.DEMO_API_KEY
    spec = config.API_KEYS or (default_keys_file().read_text() if default_keys_file().exists() else "")
    for entry in spec.replace("\n", ",").split(","):
        key, _, role = entry.strip().rpartition(":")
        if role in ("client", "admin") and key:
            return key
    sys.exit("no API key: set DEMO_API_KEY, or API_KEYS, or start the stack once (it writes var/secrets/api_keys)")


def annotate(path: Path, detections: list[dict], target: Path) -> None:
    image = Image.open(path).convert("RGB")
    draw = ImageDraw.Draw(image)
    for detection in detections:
        box = detection["bbox"]
        corners = (box["x_min"], box["y_min"], box["x_max"], box["y_max"])
        draw.rectangle(corners, outline=(255, 40, 40), width=2)
        draw.text((corners[0] + 2, max(0, corners[1] - 12)), f"{detection['class_name']} {detection['confidence']:.2f}",
                  fill=(255, 255, 0))
    image.save(target, quality=92)


def main(arguments: list[str]) -> int:
    paths = [Path(a) for a in arguments] or [DATA_DIR / s for s in SAMPLES if (DATA_DIR / s).exists()]
    if not paths:
        sys.exit(f"no images given and none found under {DATA_DIR}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    session, key = requests.Session(), client_key()
    print(f"{'image':24} {'status':>6} {'cars':>4} {'best':>5} {'model':>5} {'infer ms':>8} {'total ms':>8}  boxes")
    failures = 0
    for path in paths:
        started = time.perf_counter()
        try:
            with path.open("rb") as handle:
                answer = session.post(f"{GATEWAY}/api/detect", headers={"X-API-Key": key},
                                      files={"image": (path.name, handle)}, data={"user_id": "demo-user"}, timeout=30)
        except requests.ConnectionError:
            sys.exit(f"cannot reach the gateway at {GATEWAY}: start the stack with `make up` (or `make run`)")
        total_ms = (time.perf_counter() - started) * 1000
        if answer.status_code != 201:
            failures += 1
            print(f"{path.name[:24]:24} {answer.status_code:>6}  {answer.json().get('error', answer.text)}")
            continue
        body = answer.json()
        detections = body["detections"]
        best = max((d["confidence"] for d in detections), default=0.0)
        boxes = " ".join(f"[{d['bbox']['x_min']:.0f},{d['bbox']['y_min']:.0f},{d['bbox']['x_max']:.0f},{d['bbox']['y_max']:.0f}]"
                         for d in detections)
        print(f"{path.name[:24]:24} {answer.status_code:>6} {len(detections):>4} {best:>5.2f} {body['model_version']:>5} "
              f"{body['inference_time_ms']:>8.1f} {total_ms:>8.1f}  {boxes}")
        annotate(path, detections, OUT_DIR / f"{path.stem}.annotated.jpg")
    print(f"annotated images: {OUT_DIR}")
    return 1 if failures == len(paths) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
