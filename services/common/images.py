"""Image intake shared by the gateway, the feature service and the gRPC adapter.

Every upload is checked here before anything else touches it: size first, then
the header (format and pixel count, so a decompression bomb is refused before a
single pixel is decoded), then a full decode (so a truncated file is refused
instead of half-processed). Unusual but valid images (CMYK, 16-bit, palette,
alpha, EXIF-rotated) are normalised to the RGB picture a person would see.

Decoding is the expensive part, so a request's pixels are decoded once in Python:
the gateway and the gRPC adapter check headers only (`decode=False`) and pass the
file on unchanged; the feature service decodes it (at the reduced scale its
statistics need, `analysis_side`) and the model decodes it in its graph, and each
refuses a truncated or corrupt file with a 400 of its own.
"""
from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.common import config
from services.common.image_features import analysis_factor

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
# Our own budget (below) is checked from the header first, with a clearer message;
# Pillow's bomb guard stays on behind it, never below Pillow's own default.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, config.MAX_IMAGE_PIXELS)
# What a pixel costs relative to 8-bit RGB while it is decoded and turned into RGB:
# alpha needs the 4-byte picture plus the composite, 16/32-bit and float pixels are
# 2-4 bytes each before scaling to 8 bits, CMYK is 4 bytes and converted. The budget
# (MAX_IMAGE_PIXELS) counts width x height x cost, so the worst accepted upload of any
# mode stays far below a worker's 512 MB (docs/reliability.md has the measurements).
HEAVY_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA", "CMYK", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
HEAVY_MODE_COST = 2
# Decodes above this cost take one of DECODE_CONCURRENCY slots per process (decode_slot).
SMALL_IMAGE_COST = 4_000_000
_slots = threading.BoundedSemaphore(config.DECODE_CONCURRENCY)
_slot_holder = threading.local()
# What the model's in-graph decoder reads as-is; anything else is re-encoded.
MODEL_NATIVE = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}


class ImageRejected(ValueError):
    """An upload that is not an acceptable image; `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class CheckedImage:
    rgb: Image.Image | None   # decoded, EXIF orientation applied, RGB (None: headers only); may be scaled down
    model_bytes: bytes        # what to send to the model: the original file when it can read it
    format: str               # format of the upload (JPEG, PNG, ...)
    mode: str                 # colour mode of the upload (RGB, CMYK, I;16, ...)
    byte_size: int
    width: int                # of the upright image at full size, whatever `rgb`'s scale
    height: int


def check_image(data: bytes, max_bytes: int | None = None, max_pixels: int | None = None, *,
                decode: bool = True, analysis_side: int | None = None) -> CheckedImage:
    """Validate and decode an uploaded image, or raise ImageRejected naming the problem.

    decode=False checks the size and the header only, for a caller that passes the file on
    to stages that decode it anyway; an image the model cannot read as it is (CMYK, 16-bit,
    EXIF-rotated, GIF, ...) is still decoded, to re-encode it. analysis_side: a JPEG may be
    decoded scaled down by 2, 4 or 8 (libjpeg's DCT scaling, several times cheaper; every
    byte is still read, so truncation is still caught) as long as its longer side stays
    >= analysis_side; `rgb` is then that smaller picture."""
    max_bytes = config.MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    max_pixels = config.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise ImageRejected("empty upload: the image holds no bytes")
    if len(data) > max_bytes:
        raise ImageRejected(f"image is {len(data)} bytes, above the limit of {max_bytes} bytes", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # formats=: no other Pillow plugin ever parses an upload (PSD, EPS, FITS, ...).
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"image refused by the decompression-bomb guard: {exc}", 413) from None
    except UnidentifiedImageError:
        claimed = _sniff(data)
        if claimed:
            raise ImageRejected(f"corrupt {claimed} image: its header cannot be read") from None
        foreign = next((name for magic, name in _FOREIGN_MAGIC.items() if data.startswith(magic)), None)
        what = f" ({foreign} by its signature)" if foreign else ""
        raise ImageRejected(
            f"not a supported image{what}: expected one of {', '.join(ACCEPTED_FORMATS)}", 415
        ) from None
    except Exception as exc:  # Pillow raises many types for hostile headers
        raise ImageRejected(f"unreadable image header: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    cost = pixel_cost(image)
    if width * height * cost > max_pixels:
        counted = f" in mode {image.mode}, counted {cost}x" if cost > 1 else ""
        raise ImageRejected(
            f"image is {width}x{height} = {width * height} pixels{counted}, above the limit of {max_pixels} pixels", 413
        )
    fmt, mode = image.format, image.mode
    assert fmt is not None  # set by the plugin that opened the file, one of ACCEPTED_FORMATS
    orientation = _orientation(image)
    if orientation in (5, 6, 7, 8):  # a quarter turn: the upright picture is taller than wide
        width, height = height, width
    native = (fmt, mode) in MODEL_NATIVE and orientation in (0, 1)
    if native and not decode:
        return CheckedImage(rgb=None, model_bytes=data, format=fmt, mode=mode, byte_size=len(data),
                            width=width, height=height)
    with decode_slot(width * height * cost):
        rgb = _decode(image, fmt, orientation, analysis_side)
        if native:
            model_bytes = data
        else:
            buffer = io.BytesIO()
            rgb.save(buffer, format="PNG", compress_level=1)
            model_bytes = buffer.getvalue()
    # Header-only callers pass the file on: the pixels are not kept beyond the slot.
    return CheckedImage(rgb=rgb if decode else None, model_bytes=model_bytes, format=fmt, mode=mode,
                        byte_size=len(data), width=width, height=height)


def _decode(image: Image.Image, fmt: str, orientation: int, analysis_side: int | None) -> Image.Image:
    if analysis_side and fmt == "JPEG":
        # Statistics only: libjpeg decodes at 1/2, 1/4 or 1/8 scale (any JPEG mode or orientation).
        scale = analysis_side / max(image.size)
        image.draft(image.mode, (max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    try:
        image.load()
    except Exception as exc:
        raise ImageRejected(f"corrupt or truncated {fmt} image: {exc}") from None
    if analysis_side:
        image = _reduce_for_analysis(image, analysis_side)
    if orientation not in (0, 1):
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # a broken EXIF block should not cost the user the picture
            pass
    return _to_rgb(image)


@contextmanager
def decode_slot(cost: int) -> Iterator[None]:
    """At most DECODE_CONCURRENCY large decodes at a time per process (each gunicorn
    worker runs several threads): a worker's memory is bounded by a few worst-case
    images, not by its thread count. Small images (the usual frames) never wait; a
    thread already holding a slot does not take a second one."""
    if cost <= SMALL_IMAGE_COST or getattr(_slot_holder, "held", False):
        yield
        return
    if not _slots.acquire(timeout=config.INTERNAL_TIMEOUT_S):
        raise ImageRejected("too many large images are being decoded right now; retry shortly", 503)
    _slot_holder.held = True
    try:
        yield
    finally:
        _slot_holder.held = False
        _slots.release()


def header_cost(data: bytes) -> int:
    """Budget pixels (width x height x mode cost) an upload declares; 0 if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        return image.width * image.height * pixel_cost(image)
    except Exception:  # check_image gives the real verdict
        return 0


def pixel_cost(image: Image.Image) -> int:
    """How many budget pixels one pixel of this image counts for (see HEAVY_MODES)."""
    heavy = image.mode in HEAVY_MODES or (image.mode == "P" and "transparency" in image.info)
    return HEAVY_MODE_COST if heavy else 1


def _reduce_for_analysis(image: Image.Image, side: int) -> Image.Image:
    """Scale a decoded picture down for statistics before any conversion copies it at
    full size (PNG and the like cannot be decoded at reduced scale)."""
    factor = analysis_factor(image.size, side)
    if factor == 1:
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    try:
        return image.reduce(factor)
    except (ValueError, NotImplementedError):  # a mode reduce() does not handle: convert later, full size
        return image


# Named in the refusal of a foreign file, from its first bytes only (never parsed).
_FOREIGN_MAGIC = {b"\x00\x00\x01\x00": "ICO", b"\x00\x00\x02\x00": "CUR", b"8BPS": "PSD", b"%PDF": "PDF",
                  b"%!PS": "PostScript", b"PK\x03\x04": "ZIP", b"\x7fELF": "ELF", b"SIMPLE  =": "FITS",
                  b"\xff\x4f\xff\x51": "JPEG 2000", b"\x00\x00\x00\x0cjP  ": "JPEG 2000", b"qoif": "QOI",
                  b"DDS ": "DDS", b"icns": "ICNS"}
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP",
          b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _sniff(data: bytes) -> str | None:
    """The format a file claims by its magic bytes, to tell corrupt from foreign."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright; 0 or absent count as upright)."""
    if image.format == "PNG" and "exif" not in image.info:
        # Pillow would decode the whole PNG looking for an eXIf chunk after the pixels;
        # the PNG specification puts it before them.
        return 1
    try:
        value = image.getexif().get(0x0112, 1)
        return value if isinstance(value, int) and 0 <= value <= 8 else 1
    except Exception:
        return 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """The RGB picture a viewer shows, with as few full-size copies as possible."""
    if image.mode.startswith("I;16"):
        # 16-bit greyscale: the high byte when the picture uses more than 8 bits (8-bit
        # values stored in 16 bits are kept as they are), never clipped to white.
        pixels = np.asarray(image)
        high = pixels.size and int(pixels.max()) > 255
        image = Image.fromarray((pixels >> 8 if high else pixels).astype(np.uint8), mode="L")
        del pixels
    elif image.mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        peak = float(pixels.max()) if pixels.size else 0.0
        scale = 255.0 / 65535.0 if peak > 255 else 1.0
        image = Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8), mode="L")
        del pixels
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas show as white, as in a viewer, rather than as hidden colours:
        # the picture pasted through its own alpha onto white (one RGB copy, no RGBA ones).
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba)
        return rgb
    return image.convert("RGB") if image.mode != "RGB" else image
