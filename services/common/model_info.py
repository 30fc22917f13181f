"""What the model repository says about a served version (its model_metadata.json).

The operating threshold and the input size are properties of a model version, chosen
when it was trained and exported (training/export.py writes the file), so the
services read them from there instead of keeping copies: `CONFIDENCE_THRESHOLD` and
`MODEL_INPUT_WIDTH`/`MODEL_INPUT_HEIGHT` override them when set.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from services.common import config

METADATA_FILE = "model_metadata.json"
# Used only when a version carries no threshold at all (a model exported without metadata).
FALLBACK_THRESHOLD = 0.5
# Where a version's metadata keeps its threshold, in order of preference.
THRESHOLD_KEYS = (("operating_threshold",), ("validation_metrics", "threshold"), ("threshold",))

_lock = threading.Lock()
_cache: dict[Path, tuple[float, dict[str, Any] | None]] = {}


def model_dir(model_name: str | None = None) -> Path:
    return Path(config.MODEL_REPOSITORY) / (model_name or config.TRITON_MODEL_NAME)


def newest_version(model_name: str | None = None) -> str | None:
    """The highest numbered version directory that has a metadata file."""
    try:
        versions = [p.name for p in model_dir(model_name).iterdir()
                    if p.name.isdigit() and (p / METADATA_FILE).is_file()]
    except OSError:
        return None
    return max(versions, key=int) if versions else None


def metadata(version: str | None = None, model_name: str | None = None) -> dict[str, Any] | None:
    """A version's model_metadata.json (default: the newest), or None when it cannot be read.
    Re-read only when the file changes."""
    version = version or newest_version(model_name)
    if not version:
        return None
    path = model_dir(model_name) / version / METADATA_FILE
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    with _lock:
        cached = _cache.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
    try:
        loaded = json.loads(path.read_text())
        found = loaded if isinstance(loaded, dict) else None
    except (OSError, ValueError):
        found = None
    with _lock:
        _cache[path] = (stamp, found)
    return found


def _lookup(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def operating_threshold(version: str | None = None, model_name: str | None = None) -> float:
    """CONFIDENCE_THRESHOLD when set, else the version's own operating threshold."""
    override = config.CONFIDENCE_THRESHOLD
    if override is not None:
        return override
    found = metadata(version, model_name) or {}
    for keys in THRESHOLD_KEYS:
        value = _lookup(found, keys)
        if isinstance(value, (int, float)) and 0.0 < value <= 1.0:
            return float(value)
    return FALLBACK_THRESHOLD


def input_size(version: str | None = None, model_name: str | None = None) -> tuple[int, int] | None:
    """(width, height) the model reads: MODEL_INPUT_WIDTH/HEIGHT when set, else the metadata's input_size."""
    width, height = config.MODEL_INPUT_WIDTH, config.MODEL_INPUT_HEIGHT
    if width and height:
        return width, height
    size = (metadata(version, model_name) or {}).get("input_size") or {}
    if isinstance(size, dict) and isinstance(size.get("width"), int) and isinstance(size.get("height"), int):
        return int(size["width"]), int(size["height"])
    return None
