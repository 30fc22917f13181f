"""Tiny synthetic datasets in the Kaggle, YOLO and COCO layouts for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 80, 48


def make_image(path: Path, seed: int = 0, boxes: list[tuple[float, float, float, float]] = ()) -> None:
    """Grey road-ish noise with dark rectangles where the boxes are."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((H, W, 3)) * 60 + 100).astype(np.uint8)
    for x1, y1, x2, y2 in boxes:
        arr[int(max(y1, 0)) : int(min(y2, H)), int(max(x1, 0)) : int(min(x2, W))] = (20, 20, 160)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_kaggle(root: Path, frames: list[int], boxes: dict[int, list[tuple]], id_col: str = "image_id",
                extra_rows: list[str] = ()) -> Path:
    img_dir = root / "training_images"
    for f in frames:
        make_image(img_dir / f"vid_4_{f}.jpg", seed=f, boxes=boxes.get(f, []))
    lines = [f"{id_col},xmin,ymin,xmax,ymax"]
    for f, bxs in boxes.items():
        for b in bxs:
            lines.append(f"vid_4_{f}.jpg," + ",".join(str(v) for v in b))
    lines += list(extra_rows)
    (root / "train_solution_bounding_boxes (1).csv").write_text("\n".join(lines) + "\n")
    return root


def make_yolo(root: Path, classes: list[str], items: dict[str, list[tuple[int, float, float, float, float]]]) -> Path:
    """items: image stem -> [(class, cx, cy, w, h) normalised]."""
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for i, (stem, objs) in enumerate(items.items()):
        px = [((cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H) for _, cx, cy, w, h in objs]
        make_image(root / "images" / f"{stem}.jpg", seed=i, boxes=px)
        (root / "labels" / f"{stem}.txt").write_text("".join(f"{c} {cx} {cy} {w} {h}\n" for c, cx, cy, w, h in objs))
    return root


def make_coco(root: Path, classes: list[str], items: dict[str, list[tuple[int, float, float, float, float]]]) -> Path:
    """items: file name -> [(category index, x, y, w, h) pixels]."""
    images, anns = [], []
    for i, (name, objs) in enumerate(items.items(), start=1):
        make_image(root / "images" / name, seed=i, boxes=[(x, y, x + w, y + h) for _, x, y, w, h in objs])
        images.append({"id": i, "file_name": name, "width": W, "height": H})
        for c, x, y, w, h in objs:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c + 1, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    doc = {"images": images, "annotations": anns, "categories": [{"id": k + 1, "name": n} for k, n in enumerate(classes)]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    return root
