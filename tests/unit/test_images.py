from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.common.images import ImageRejected, check_image
from tests.conftest import frame
from tests.images import encode, hostile_uploads, open_frame, png_bomb, unusual_variants


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
    """The 16-bit frame is the 8-bit grey frame times 257: scaled back, every pixel is
    the original grey (clipping would turn nearly all of it white)."""
    checked = check_image(unusual_variants(frame())["16bit-png"])
    got = np.asarray(checked.rgb.convert("L"), dtype=np.int16)
    want = np.asarray(open_frame(frame()).convert("L"), dtype=np.int16)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1
    assert (got == 255).mean() < 0.5 and got.std() > 10  # a scene, not a white frame


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


# --- decoding once: header-only checks and reduced-scale decoding ---------------------------

def test_a_header_check_decodes_nothing_and_passes_the_file_on():
    data = frame()
    checked = check_image(data, decode=False)
    assert checked.rgb is None and checked.model_bytes is data
    assert (checked.width, checked.height, checked.format) == (676, 380, "JPEG")


def test_a_header_check_leaves_a_truncated_file_to_the_decoders_but_refuses_bombs_and_foreign_files():
    data, _ = hostile_uploads(frame())["truncated-jpeg"]
    assert check_image(data, decode=False).model_bytes is data  # the feature service and the model refuse it
    with pytest.raises(ImageRejected) as bomb:
        check_image(png_bomb(), decode=False)
    assert bomb.value.status == 413
    with pytest.raises(ImageRejected) as foreign:
        check_image(b"%PDF-1.4\n", decode=False)
    assert foreign.value.status == 415


@pytest.mark.parametrize("name", ["exif-rotated-jpeg", "cmyk-jpeg", "16bit-png", "gif"])
def test_a_header_check_still_re_encodes_what_the_model_cannot_read(name):
    checked = check_image(unusual_variants(frame())[name], decode=False)
    reopened = Image.open(io.BytesIO(checked.model_bytes))
    assert reopened.format == "PNG" and reopened.size == (checked.width, checked.height) == (676, 380)


def test_a_quarter_turn_swaps_width_and_height_without_decoding():
    rotated = Image.open(io.BytesIO(frame())).rotate(90, expand=True)  # 380 x 676 as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 676 x 380 upright
    checked = check_image(encode(rotated, "JPEG", exif=exif.tobytes()), decode=False)
    assert (checked.width, checked.height) == (676, 380)


def test_a_jpeg_is_decoded_at_the_scale_the_features_need_and_still_fully_read():
    checked = check_image(frame(), analysis_side=320)
    assert checked.rgb.size == (338, 190) and (checked.width, checked.height) == (676, 380)
    assert check_image(frame()).rgb.size == (676, 380)
    with pytest.raises(ImageRejected, match="truncated"):
        check_image(hostile_uploads(frame())["truncated-jpeg"][0], analysis_side=320)


def test_features_barely_move_between_a_reduced_and_a_full_decode():
    from services.common.image_features import extract_features

    reduced, full = extract_features(check_image(frame(), analysis_side=320)), extract_features(check_image(frame()))
    assert reduced["width"] == full["width"] == 676
    for name in ("brightness", "contrast", "saturation", "colourfulness"):
        assert abs(reduced[name] - full[name]) <= 0.03 * abs(full[name]) + 0.01, (name, reduced[name], full[name])
    assert abs(reduced["sharpness"] - full["sharpness"]) <= 0.05 * full["sharpness"]


def test_feature_cost_stays_flat_for_large_uploads():
    from services.common.image_features import analysis_image

    big = encode(Image.open(io.BytesIO(frame())).resize((6760, 3800)), "JPEG", quality=80)
    drafted = check_image(big, max_pixels=40_000_000, analysis_side=320).rgb
    # libjpeg's largest reduction (1/8, 845x475), then halved to the analysis scale
    assert drafted.size == (423, 238)
    assert analysis_image(drafted).size == (423, 238)
    assert analysis_image(check_image(encode(Image.new("RGB", (6760, 3800)), "PNG"), 10 << 20, 40_000_000).rgb).size \
        == (423, 238)
    # a PNG (no reduced-scale decode) is reduced right after decoding, before any conversion
    rgba = encode(Image.new("RGBA", (3380, 1900), (10, 20, 30, 128)), "PNG")
    assert check_image(rgba, analysis_side=320).rgb.size == (423, 238)


# --- the pixel budget by mode, Pillow's own guard, foreign formats ------------------------

def test_pillows_bomb_guard_stays_on():
    from PIL import Image as PILImage

    import services.common.images  # noqa: F401 - sets the guard at import

    assert PILImage.MAX_IMAGE_PIXELS is not None and PILImage.MAX_IMAGE_PIXELS >= 89_478_485


@pytest.mark.parametrize("mode,fill", [("RGBA", (1, 2, 3, 4)), ("LA", (1, 2)), ("I;16", 300), ("CMYK", (1, 2, 3, 4))])
def test_costly_modes_count_double(mode, fill):
    image = Image.new(mode, (100, 100), fill)
    data = encode(image, "TIFF" if mode == "CMYK" else "PNG")
    assert check_image(data, max_pixels=20_000).width == 100
    with pytest.raises(ImageRejected) as refused:
        check_image(data, max_pixels=19_999)
    assert refused.value.status == 413 and f"mode {mode}" in refused.value.message
    assert check_image(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=10_000).width == 100


def test_a_transparent_palette_counts_double_and_turns_white():
    palette = Image.new("P", (100, 100), 3)
    palette.putpalette([10, 20, 30] * 256)
    data = encode(palette, "PNG", transparency=3)
    with pytest.raises(ImageRejected):
        check_image(data, max_pixels=19_999)
    assert check_image(data, max_pixels=20_000).rgb.getpixel((5, 5)) == (255, 255, 255)


def test_a_foreign_format_is_never_identified():
    import struct

    psd = (b"8BPS" + struct.pack(">H", 1) + b"\0" * 6 + struct.pack(">HIIHH", 3, 64, 64, 8, 3)
           + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + b"\0" * 64 * 64 * 3)
    with pytest.raises(ImageRejected) as refused:
        check_image(psd)
    assert refused.value.status == 415 and "PSD by its signature" in refused.value.message
    assert "unsupported image format" not in refused.value.message


def test_sixteen_bit_greyscale_keeps_its_picture():
    ramp = (np.arange(256, dtype=np.uint16)[None, :] * 257).repeat(4, 0)  # 8-bit values spread to 16 bits
    rgb = check_image(encode(Image.fromarray(ramp), "PNG")).rgb
    assert [rgb.getpixel((x, 0))[0] for x in (0, 1, 128, 255)] == [0, 1, 128, 255]
    small = check_image(encode(Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)), "PNG")).rgb
    assert small.getpixel((0, 0)) == (200, 200, 200)  # 8-bit values stored in 16 bits stay as they are
