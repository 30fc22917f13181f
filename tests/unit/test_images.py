from __future__ import annotations

import io

import pytest
from PIL import Image

from services.common.images import ImageRejected, check_image
from tests.conftest import frame
from tests.images import encode, hostile_uploads, png_bomb, unusual_variants


def test_a_plain_frame_is_passed_to_the_model_unchanged():
    data = frame()
    checked = check_image(data)
    assert checked.model_bytes is data
    assert (checked.width, checked.height, checked.format, checked.mode) == (676, 380, "JPEG", "RGB")


@pytest.mark.parametrize("name", list(unusual_variants(frame())))
def test_unusual_images_become_upright_rgb(name):
    checked = check_image(unusual_variants(frame())[name])
    assert checked.rgb.mode == "RGB" and (checked.width, checked.height) == (676, 380)
    reopened = Image.open(io.BytesIO(checked.model_bytes))
    assert reopened.size == (676, 380) and reopened.format in ("JPEG", "PNG")


def test_exif_rotation_is_applied_before_the_model_sees_the_image():
    checked = check_image(unusual_variants(frame())["exif-rotated-jpeg"])
    assert checked.model_bytes[:4] == b"\x89PNG"  # re-encoded upright


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    checked = check_image(unusual_variants(frame())["16bit-png"])
    values = checked.rgb.convert("L").getextrema()
    assert values[1] < 255 or values[0] > 0  # not a white frame


@pytest.mark.parametrize("name", list(hostile_uploads(frame())))
def test_hostile_uploads_are_rejected_with_a_reason(name):
    data, status = hostile_uploads(frame())[name]
    with pytest.raises(ImageRejected) as rejected:
        check_image(data)
    assert rejected.value.status == status and rejected.value.message


def test_the_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageRejected) as rejected:
        check_image(png_bomb(8000, 6000), max_pixels=40_000_000)
    assert "48000000 pixels" in rejected.value.message and rejected.value.status == 413


def test_the_size_limit():
    with pytest.raises(ImageRejected) as rejected:
        check_image(frame(), max_bytes=1000)
    assert rejected.value.status == 413


def test_one_pixel_and_alpha():
    assert check_image(encode(Image.new("RGBA", (1, 1), (0, 0, 0, 0)), "PNG")).rgb.getpixel((0, 0)) == (255, 255, 255)
