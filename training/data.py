"""Dataset loaders: Kaggle "Car Object Detection" CSV, YOLO and COCO layouts.

Every loader returns a :class:`Dataset` (training/samples.py): a list of :class:`Sample`
(image path, boxes in original image pixels, class indices) plus the class names found in the
data. Bad rows (missing image, unparsable numbers, x_max <= x_min, box entirely outside the
image) are skipped, counted and described in ``Dataset.problems`` with the file and row, so a
user gets a clear message instead of a stack trace. Images that cannot be read are skipped the
same way.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from training.samples import DataError, Dataset, Sample, clean_box

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
KAGGLE_IMAGE_DIR = "training_images"
KAGGLE_CSV_GLOB = "train_solution_bounding_boxes*.csv"
DEFAULT_CLASS = "car"


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header, or None if the file is not a readable image."""
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # PIL raises many types for broken files; all mean "unreadable"
        return None


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DataError(f"{what} is not a directory: {path}")


# --------------------------------------------------------------------------- Kaggle CSV


def load_kaggle(root: Path) -> Dataset:
    """``training_images/`` + ``train_solution_bounding_boxes*.csv``; frames without rows are negatives."""
    root = Path(root)
    image_dir = root / KAGGLE_IMAGE_DIR
    _require_dir(image_dir, "image folder")
    csvs = sorted(root.glob(KAGGLE_CSV_GLOB))
    if not csvs:
        raise DataError(f"no annotation CSV matching '{KAGGLE_CSV_GLOB}' in {root}")
    csv_path = csvs[0]
    problems: list[str] = []

    images = _list_images(image_dir)
    if not images:
        raise DataError(f"no images in {image_dir}")
    sizes: dict[str, tuple[int, int] | None] = {}
    by_name = {p.name: p for p in images}

    boxes: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[str]] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise DataError(f"{csv_path.name} is empty")
        fields = [c.strip() for c in reader.fieldnames]
        reader.fieldnames = fields
        id_col = next((c for c in ("image_id", "image", "filename", "file") if c in fields), None)
        missing = [c for c in ("xmin", "ymin", "xmax", "ymax") if c not in fields]
        if id_col is None or missing:
            raise DataError(
                f"{csv_path.name}: expected columns image_id (or image), xmin, ymin, xmax, ymax; got {fields}"
            )
        class_col = next((c for c in ("class", "label", "class_name") if c in fields), None)
        for row_no, row in enumerate(reader, start=2):  # row 1 is the header
            where = f"{csv_path.name} row {row_no}"
            name = (row.get(id_col) or "").strip()
            if name not in by_name:
                problems.append(f"{where}: image '{name}' does not exist in {image_dir.name}/")
                continue
            if name not in sizes:
                sizes[name] = _image_size(by_name[name])
            size = sizes[name]
            if size is None:
                continue  # reported once below, with the image list
            try:
                xmin, ymin, xmax, ymax = (float(row[c]) for c in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                problems.append(f"{where}: unparsable coordinates {[row.get(c) for c in ('xmin', 'ymin', 'xmax', 'ymax')]}")
                continue
            box = clean_box((xmin, ymin, xmax, ymax), size[0], size[1], f"{where} ({name})", problems)
            if box is None:
                continue
            boxes.setdefault(name, []).append(box)
            labels.setdefault(name, []).append((row.get(class_col) or DEFAULT_CLASS).strip() if class_col else DEFAULT_CLASS)

    class_names = sorted({c for v in labels.values() for c in v}) or [DEFAULT_CLASS]
    index = {c: i for i, c in enumerate(class_names)}
    samples = []
    for p in images:
        size = sizes[p.name] if p.name in sizes else _image_size(p)
        if size is None:
            problems.append(f"{p}: unreadable image, skipped")
            continue
        b = boxes.get(p.name, [])
        samples.append(
            Sample(
                path=p,
                width=size[0],
                height=size[1],
                boxes=np.array(b, dtype=np.float32).reshape(-1, 4),
                labels=np.array([index[c] for c in labels.get(p.name, [])], dtype=np.int32),
            )
        )
    return Dataset(root, "kaggle", class_names, samples, problems)


# --------------------------------------------------------------------------- YOLO


def _find_yolo_dirs(root: Path) -> tuple[Path, Path]:
    for img, lab in (("images", "labels"), ("train/images", "train/labels")):
        if (root / img).is_dir():
            return root / img, root / lab
    raise DataError(f"{root}: YOLO layout needs images/ and labels/ folders")


def load_yolo(root: Path) -> Dataset:
    """``images/``, ``labels/<stem>.txt`` (class cx cy w h, normalised), ``classes.txt``.

    A missing label file or an empty one means the image has no objects.
    """
    root = Path(root)
    image_dir, label_dir = _find_yolo_dirs(root)
    problems: list[str] = []
    class_names: list[str] = []
    for candidate in (root / "classes.txt", root / "obj.names", label_dir / "classes.txt"):
        if candidate.is_file():
            class_names = [ln.strip() for ln in candidate.read_text(encoding="utf-8").splitlines() if ln.strip()]
            break
    images = _list_images(image_dir)
    if not images:
        raise DataError(f"no images in {image_dir}")
    samples = []
    max_class = -1
    for p in images:
        size = _image_size(p)
        if size is None:
            problems.append(f"{p}: unreadable image, skipped")
            continue
        w, h = size
        lab_path = label_dir / (p.stem + ".txt")
        bxs, lbs = [], []
        if lab_path.is_file():
            for line_no, line in enumerate(lab_path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"{lab_path.name} line {line_no}"
                parts = line.split()
                try:
                    cls = int(float(parts[0]))
                    cx, cy, bw, bh = (float(v) for v in parts[1:5])
                    if len(parts) < 5:
                        raise ValueError
                except (ValueError, IndexError):
                    problems.append(f"{where}: expected 'class cx cy w h', got '{line.strip()}'")
                    continue
                if cls < 0 or (class_names and cls >= len(class_names)):
                    problems.append(f"{where}: class index {cls} not in classes.txt ({len(class_names)} classes)")
                    continue
                raw = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
                box = clean_box(raw, w, h, f"{where} ({p.name})", problems)
                if box is None:
                    continue
                bxs.append(box)
                lbs.append(cls)
                max_class = max(max_class, cls)
        samples.append(Sample(p, w, h, np.array(bxs, np.float32).reshape(-1, 4), np.array(lbs, np.int32)))
    if not class_names:
        # No classes.txt: name classes by index so the model still trains; say so.
        class_names = [str(i) for i in range(max_class + 1)] or [DEFAULT_CLASS]
        problems.append(f"{root}: no classes.txt, classes named by index")
    return Dataset(root, "yolo", class_names, samples, problems)


# --------------------------------------------------------------------------- COCO


def _find_coco_json(root: Path) -> Path | None:
    for pattern in ("annotations/*.json", "*.json"):
        found = sorted(root.glob(pattern))
        for f in found:
            if f.name.startswith("instances") or f.name.startswith("_annotations") or len(found) == 1:
                return f
        if found:
            return found[0]
    return None


def load_coco(root: Path, json_path: Path | None = None) -> Dataset:
    """COCO detection JSON (``images``, ``annotations`` with bbox x,y,w,h, ``categories``)."""
    root = Path(root)
    json_path = json_path or _find_coco_json(root)
    if json_path is None:
        raise DataError(f"{root}: no COCO annotation JSON found")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{json_path}: cannot read COCO JSON: {e}") from None
    problems: list[str] = []
    cats = sorted(doc.get("categories", []), key=lambda c: c["id"])
    class_names = [c["name"] for c in cats]
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    image_dirs = [d for d in (root / "images", root, json_path.parent, json_path.parent.parent / "images") if d.is_dir()]

    def resolve(file_name: str) -> Path | None:
        for d in image_dirs:
            p = d / file_name
            if p.is_file():
                return p
        return None

    # image id -> (path, (width, height), its boxes, their class indices)
    entries: dict[object, tuple[Path, tuple[int, int], list[np.ndarray], list[int]]] = {}
    for im in doc.get("images", []):
        p = resolve(im["file_name"])
        if p is None:
            problems.append(f"{json_path.name} image id {im.get('id')}: file '{im['file_name']}' does not exist")
            continue
        size = _image_size(p)
        if size is None:
            problems.append(f"{p}: unreadable image, skipped")
            continue
        entries[im["id"]] = (p, size, [], [])
    for k, ann in enumerate(doc.get("annotations", [])):
        where = f"{json_path.name} annotation {ann.get('id', k)}"
        entry = entries.get(ann.get("image_id"))
        if entry is None:
            problems.append(f"{where}: image id {ann.get('image_id')} unknown or unreadable")
            continue
        if ann.get("category_id") not in cat_index:
            problems.append(f"{where}: unknown category_id {ann.get('category_id')}")
            continue
        try:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{where}: bad bbox {ann.get('bbox')}")
            continue
        p, (w, h), bxs, lbs = entry
        box = clean_box((x, y, x + bw, y + bh), w, h, f"{where} ({p.name})", problems)
        if box is None:
            continue
        bxs.append(box)
        lbs.append(cat_index[ann["category_id"]])
    samples = [
        Sample(p, w, h, np.array(b, np.float32).reshape(-1, 4), np.array(lb, np.int32))
        for p, (w, h), b, lb in entries.values()
    ]
    if not samples:
        raise DataError(f"{json_path}: no usable images")
    return Dataset(root, "coco", class_names or [DEFAULT_CLASS], samples, problems)


# --------------------------------------------------------------------------- entry point


def detect_layout(root: Path) -> str:
    root = Path(root)
    if (root / KAGGLE_IMAGE_DIR).is_dir() and list(root.glob(KAGGLE_CSV_GLOB)):
        return "kaggle"
    if (root / "labels").is_dir() or (root / "train" / "labels").is_dir():
        return "yolo"
    if _find_coco_json(root) is not None:
        return "coco"
    raise DataError(
        f"{root}: unknown dataset layout; expected Kaggle (training_images/ + {KAGGLE_CSV_GLOB}), "
        "YOLO (images/, labels/, classes.txt) or COCO (annotations JSON)"
    )


def load_dataset(root: str | Path, layout: str = "auto") -> Dataset:
    """Load any supported layout; raises :class:`DataError` with a readable message."""
    root = Path(root)
    _require_dir(root, "data directory")
    if not any(root.iterdir()):
        raise DataError(f"data directory is empty: {root}")
    if layout == "auto":
        layout = detect_layout(root)
    loader = {"kaggle": load_kaggle, "yolo": load_yolo, "coco": load_coco}.get(layout)
    if loader is None:
        raise DataError(f"unknown layout '{layout}' (kaggle, yolo, coco, auto)")
    ds = loader(root)
    if not ds.samples:
        raise DataError(f"{root}: no usable images")
    if ds.problems:
        log.warning("%d problem(s) in %s; skipped rows/images:", len(ds.problems), root)
        for msg in ds.problems[:20]:
            log.warning("  %s", msg)
        if len(ds.problems) > 20:
            log.warning("  ... and %d more", len(ds.problems) - 20)
    return ds


# --------------------------------------------------------------------------- split


def split_contiguous(
    samples: list[Sample], val_fraction: float = 0.2, gap: int = 2, position: float = 1.0
) -> tuple[list[Sample], list[Sample]]:
    """Deterministic train/validation split by one contiguous block of frames.

    Samples are ordered by (video, frame number). The validation block holds ``val_fraction``
    of the frames and starts at relative ``position`` (1.0 = the last frames, closest to the
    unseen future of the video). ``gap`` frames on each side of the block are dropped so that
    near-duplicate neighbours do not leak across the boundary.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    ordered = sorted(samples, key=lambda s: s.sort_key)
    n = len(ordered)
    n_val = max(1, int(round(n * val_fraction)))
    start = int(round((n - n_val) * min(max(position, 0.0), 1.0)))
    end = start + n_val
    val = ordered[start:end]
    train = ordered[: max(0, start - gap)] + ordered[end + gap :]
    if not train:
        raise DataError(f"not enough images ({n}) for a train/validation split")
    return train, val


def make_blocks(samples: list[Sample], k: int, gap: int) -> list[tuple[list[int], list[int]]]:
    """(train indices, held-out indices) per block, in frame order; gap frames dropped each side."""
    n = len(samples)
    if n < 2 * k:
        raise DataError(f"not enough images ({n}) for {k} cross-validation blocks")
    edges = np.linspace(0, n, k + 1).round().astype(int)
    folds = []
    for b in range(k):
        lo, hi = int(edges[b]), int(edges[b + 1])
        held = list(range(lo, hi))
        train = [i for i in range(n) if i < lo - gap or i >= hi + gap]
        folds.append((train, held))
    return folds
