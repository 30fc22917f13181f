"""Test images made on the fly from a real frame: unusual-but-valid and hostile ones."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def open_frame(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def unusual_variants(frame: bytes) -> dict[str, bytes]:
    """Valid images a camera or an export tool may produce; each shows the same scene."""
    rgb = open_frame(frame)
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return {
        "grayscale-jpeg": encode(rgb.convert("L"), "JPEG", quality=92),
        "cmyk-jpeg": encode(rgb.convert("CMYK"), "JPEG", quality=92),
        "rgba-png": encode(rgb.convert("RGBA"), "PNG"),
        "palette-png": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "16bit-png": encode(grey16, "PNG"),
        "exif-rotated-jpeg": encode(rgb.rotate(90, expand=True), "JPEG", quality=92, exif=exif.tobytes()),
        "gif": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        "bmp": encode(rgb, "BMP"),
        "webp": encode(rgb, "WEBP", quality=90),
    }


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small, valid PNG whose header declares width x height pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)  # only a few rows: the rest is implied
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def hostile_uploads(frame: bytes) -> dict[str, tuple[bytes, int]]:
    """name -> (bytes, expected HTTP status)."""
    return {
        "empty": (b"", 400),
        "text": (b"hello, this is not an image\n", 415),
        "html": (b"<html><body><script>alert(1)</script></body></html>", 415),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>', 415),
        "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 415),
        "truncated-jpeg": (frame[: len(frame) // 2], 400),
        "corrupt-jpeg": (frame[:600] + bytes(range(256)) * 40 + frame[-2:], 400),
        "png-bomb": (png_bomb(), 413),
    }
