"""The serving runtime's image decode: simplejpeg for upright RGB and grey JPEGs, Pillow for
everything else, and the same pixels and the same errors either way."""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common import config
from training import serving_runtime

pytest.importorskip("simplejpeg")
FRAMES = sorted((Path(config.DATA_DIR) / "training_images").glob("*.jpg"))


@pytest.fixture()
def pillow_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], np.ndarray]:
    """decode_image as it runs in an image without simplejpeg."""
    def decode(data: bytes) -> np.ndarray:
        with monkeypatch.context() as m:
            m.setattr(serving_runtime, "simplejpeg", None)
            return serving_runtime.decode_image(data)
    return decode


@pytest.fixture()
def fast_decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the files that took the simplejpeg path."""
    calls: list[int] = []
    real = serving_runtime._decode_jpeg

    def counted(data: bytes) -> np.ndarray:
        calls.append(len(data))
        return real(data)
    monkeypatch.setattr(serving_runtime, "_decode_jpeg", counted)
    yield calls


def _jpeg(image: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", **options)
    return buf.getvalue()


def _frame() -> Image.Image:
    if not FRAMES:
        pytest.skip("no frames in the dataset")
    return Image.open(FRAMES[0])


def test_road_frames_decode_to_pillows_pixels(pillow_only: Callable[[bytes], np.ndarray],
                                              fast_decodes: list[int]) -> None:
    if not FRAMES:
        pytest.skip("no frames in the dataset")
    sample = FRAMES[:: max(1, len(FRAMES) // 40)]
    for path in sample:
        data = path.read_bytes()
        fast, pillow = serving_runtime.decode_image(data), pillow_only(data)
        assert fast.dtype == np.uint8 and fast.shape == pillow.shape == (380, 676, 3), path.name
        assert np.array_equal(fast, pillow), path.name
    assert len(fast_decodes) == len(sample)


@pytest.mark.parametrize("variant, fast", [
    ("grey", True), ("progressive", True), ("no chroma subsampling", True), ("1x1", True),
    ("cmyk", False), ("exif rotated", False), ("png", False),
])
def test_other_encodings_decode_to_pillows_pixels(variant: str, fast: bool, pillow_only: Callable[[bytes], np.ndarray],
                                                  fast_decodes: list[int]) -> None:
    frame = _frame()
    exif = frame.getexif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise: displayed portrait
    png = io.BytesIO()
    frame.save(png, "PNG")
    data = {
        "grey": lambda: _jpeg(frame.convert("L")),
        "progressive": lambda: _jpeg(frame, progressive=True, quality=80),
        "no chroma subsampling": lambda: _jpeg(frame, quality=100, subsampling=0),
        "1x1": lambda: _jpeg(frame.resize((1, 1))),
        "cmyk": lambda: _jpeg(frame.convert("CMYK")),
        "exif rotated": lambda: _jpeg(frame, exif=exif),
        "png": png.getvalue,
    }[variant]()
    decoded, pillow = serving_runtime.decode_image(data), pillow_only(data)
    assert decoded.ndim == 3 and decoded.shape[2] == 3
    assert np.array_equal(decoded, pillow)
    if variant == "exif rotated":
        assert decoded.shape[:2] == (frame.width, frame.height)
    assert bool(fast_decodes) is fast


@pytest.mark.parametrize("damage", ["truncated", "header only", "empty"])
def test_damaged_jpegs_are_decode_errors_on_both_paths(damage: str, pillow_only: Callable[[bytes], np.ndarray]) -> None:
    data = _jpeg(_frame())
    damaged = {"truncated": data[: len(data) // 2], "header only": data[:600], "empty": b""}[damage]
    for decode in (serving_runtime.decode_image, pillow_only):
        with pytest.raises(serving_runtime.DecodeError):
            decode(damaged)
