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
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.common import config

# Our own pixel limit is checked from the header; Pillow's bomb guard would only
# fire at a different, fixed size and with a less helpful message.
Image.MAX_IMAGE_PIXELS = None

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
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
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        claimed = _sniff(data)
        if claimed:
            raise ImageRejected(f"corrupt {claimed} image: its header cannot be read") from None
        raise ImageRejected(
            f"not a supported image: expected one of {', '.join(ACCEPTED_FORMATS)}", 415
        ) from None
    except Exception as exc:  # Pillow raises many types for hostile headers
        raise ImageRejected(f"unreadable image header: {exc}") from None
    if image.format not in ACCEPTED_FORMATS:
        raise ImageRejected(
            f"unsupported image format {image.format}: expected one of {', '.join(ACCEPTED_FORMATS)}", 415
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} pixels", 413
        )
    fmt, mode = image.format, image.mode
    orientation = _orientation(image)
    if orientation in (5, 6, 7, 8):  # a quarter turn: the upright picture is taller than wide
        width, height = height, width
    native = (fmt, mode) in MODEL_NATIVE and orientation in (0, 1)
    if native and not decode:
        return CheckedImage(rgb=None, model_bytes=data, format=fmt, mode=mode, byte_size=len(data),
                            width=width, height=height)
    if analysis_side and native and fmt == "JPEG":
        scale = analysis_side / max(image.size)
        image.draft(image.mode, (max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    try:
        image.load()
    except Exception as exc:
        raise ImageRejected(f"corrupt or truncated {fmt} image: {exc}") from None
    oriented = image
    if orientation not in (0, 1):
        try:
            oriented = ImageOps.exif_transpose(image)
        except Exception:  # a broken EXIF block should not cost the user the picture
            oriented = image
    rgb = _to_rgb(oriented)
    if native:
        model_bytes = data
    else:
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG", compress_level=1)
        model_bytes = buffer.getvalue()
    return CheckedImage(rgb=rgb, model_bytes=model_bytes, format=fmt, mode=mode, byte_size=len(data),
                        width=width, height=height)


_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP",
          b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _sniff(data: bytes) -> str | None:
    """The format a file claims by its magic bytes, to tell corrupt from foreign."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright; 0 or absent count as upright)."""
    try:
        value = image.getexif().get(0x0112, 1)
        return value if isinstance(value, int) and 0 <= value <= 8 else 1
    except Exception:
        return 1


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float greyscale: scale to 8 bits instead of clipping to white.
        pixels = np.asarray(image, dtype=np.float32)
        peak = float(pixels.max()) if pixels.size else 0.0
        scale = 255.0 / 65535.0 if peak > 255 else 1.0
        image = Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas show as white, as in a viewer, rather than as hidden colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image
