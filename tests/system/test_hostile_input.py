"""Hostile input through the real stack is refused cleanly (a JSON 4xx, never a 5xx) and
leaves nothing behind: hostile images (refused by name), unusual valid ones (served), lying
file names and content types, hostile identifiers, JSON bodies and methods. Extends
tests/system/test_input.py (not repeating its cases); the other security properties are in
tests/system/test_security.py."""
from __future__ import annotations

import io
import json
import struct
import uuid
from urllib.parse import quote

import pytest
from PIL import Image

from tests.conftest import frame, headers
from tests.images import encode, open_frame
from tests.system.security_helpers import assert_clean_error, detect, export


# --------------------------------------------------------------------------- hostile images

def png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of each PNG chunk."""
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((pos, data[pos + 4:pos + 8]))
        pos += 12 + length
    return out


def more_hostile_uploads(jpeg: bytes) -> dict[str, tuple[bytes, int, str]]:
    """Cases not in tests/images.py: name -> (bytes, expected status, word the error names)."""
    png = encode(open_frame(jpeg), "PNG")
    idat = next(offset for offset, kind in png_chunks(png) if kind == b"IDAT")
    corrupt_idat = bytearray(png)
    corrupt_idat[idat + 40] ^= 0xFF  # the data (and so its CRC) no longer match
    bad_header_crc = bytearray(png)
    bad_header_crc[8 + 8 + 13] ^= 0xFF  # IHDR's CRC
    jpeg_bomb = bytearray(jpeg)
    sof = jpeg_bomb.index(b"\xff\xc0")
    struct.pack_into(">HH", jpeg_bomb, sof + 5, 60000, 60000)  # SOF0 declares 60000 x 60000
    gif_bomb = bytearray(encode(Image.new("P", (2, 2)), "GIF"))
    struct.pack_into("<HH", gif_bomb, 6, 65535, 65535)  # logical screen 65535 x 65535
    return {
        "truncated-png": (png[: len(png) // 2], 400, "truncated"),
        "corrupt-png-data": (bytes(corrupt_idat), 400, "PNG"),
        "corrupt-png-header-crc": (bytes(bad_header_crc), 400, "PNG"),
        "jpeg-pixel-bomb": (bytes(jpeg_bomb), 413, "pixels"),
        "gif-pixel-bomb": (bytes(gif_bomb), 413, "pixels"),
        "jpeg-html-polyglot": (b"\xff\xd8\xff\xe0" + b"<html><script>alert(1)</script></html>" * 10, 400, "image"),
        "zip": (b"PK\x03\x04" + b"\0" * 200, 415, "supported"),
        "ico": (encode(open_frame(jpeg).resize((32, 32)), "ICO"), 415, "ICO"),
        "tiff-header-only": (b"II*\x00" + b"\0" * 16, 400, "TIFF"),
        "elf-binary": (b"\x7fELF\x02\x01\x01" + b"\0" * 200, 415, "supported"),
    }


def more_unusual_images(jpeg: bytes) -> dict[str, bytes]:
    """Valid images not in tests/images.py; each shows the frame (676 x 380)."""
    rgb = open_frame(jpeg)
    frames = [rgb.convert("P", palette=Image.Palette.ADAPTIVE),
              rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P", palette=Image.Palette.ADAPTIVE)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "animated-gif": animated.getvalue(),
        "tiff": encode(rgb, "TIFF"),
        "tiff-lzw": encode(rgb, "TIFF", compression="tiff_lzw"),
        "grey-alpha-png": encode(rgb.convert("LA"), "PNG"),
        "1-bit-png": encode(rgb.convert("1"), "PNG"),
        "progressive-jpeg": encode(rgb, "JPEG", progressive=True, quality=90),
    }


@pytest.mark.parametrize("name", list(more_hostile_uploads(frame())))
def test_more_hostile_images_are_refused_by_name_and_leave_nothing(stack, http, name):
    data, status, word = more_hostile_uploads(frame())[name]
    user = f"hostile2-{uuid.uuid4().hex[:8]}"
    body = assert_clean_error(detect(stack, http, data, user), status)
    assert word.lower() in body["error"].lower(), body
    assert export(stack, http, user)["count"] == 0


def test_more_unusual_valid_images_are_served(stack, http):
    user = f"unusual2-{uuid.uuid4().hex[:8]}"
    for name, data in more_unusual_images(frame()).items():
        answer = detect(stack, http, data, user, filename=f"{name}.bin", content_type="application/octet-stream")
        assert answer.status_code == 201, (name, answer.text)
        assert answer.json()["image"] == {"width": 676, "height": 380}, name
    assert export(stack, http, user)["count"] == len(more_unusual_images(frame()))


def test_lying_filename_and_content_type_do_not_matter(stack, http):
    """Only the bytes decide: a traversal filename and a wrong declared type are ignored."""
    answer = detect(stack, http, frame(), "liar", filename="../../../etc/passwd", content_type="text/html")
    assert answer.status_code == 201, answer.text


# --------------------------------------------------------------------------- hostile identifiers and fields

ODD_BUT_VALID_USER_IDS = {
    "sql": "x'; DROP TABLE predictions; --",
    "sql-or": "' OR '1'='1",
    "shell": "$(touch /tmp/pwned) `id` | rm -rf / ; &",
    "traversal": "../../../etc/passwd",
    "rtl-mark": "\u202egnp.exe\u200f",
    "unicode": "Ünïcødé 🚗 名前",
    "html": "<script>alert(1)</script>",
    "longest": "u" * 256,
    "percent": "%2e%2e%2f%00",
}


def test_odd_user_ids_are_data_not_code(stack, http):
    """Quotes, shell and traversal characters are stored (as a hash), found again by
    the same id, and erased; they never reach a query or a path as code."""
    for name, user in ODD_BUT_VALID_USER_IDS.items():
        user = f"{user}-{uuid.uuid4().hex[:6]}" if name != "longest" else user
        if name == "longest":
            http.delete(f"{stack.gateway}/api/results/predictions/user/{quote(user, safe='')}", headers=headers("dpo"))
        created = detect(stack, http, frame(), user)
        assert created.status_code == 201, (name, created.text)
        exported = export(stack, http, user)
        assert exported["count"] == 1, (name, exported)
        assert exported["predictions"][0]["request_id"] == created.json()["request_id"]
        assert user not in json.dumps(exported, ensure_ascii=False), name  # only the keyed hash is held
        erased = http.delete(f"{stack.gateway}/api/results/predictions/user/{quote(user, safe='')}",
                             headers=headers("dpo"))
        assert erased.status_code == 200 and erased.json()["deleted"] == 1, (name, erased.text)


@pytest.mark.parametrize("user", ["a\nb", "\x1b[31mred", "tab\there", "   ", "u" * 257, "a\x7fb"])
def test_control_characters_blank_and_overlong_user_ids_are_refused(stack, http, user):
    marker = f"refused-{uuid.uuid4().hex[:8]}"
    body = assert_clean_error(detect(stack, http, frame(), user, **{"X-Request-ID": marker}), 400)
    assert "user_id" in body["error"]
    assert http.get(f"{stack.gateway}/api/results/predictions/{marker}", headers=headers("dpo")).status_code == 404


@pytest.mark.parametrize("request_id", ["x'; DROP TABLE predictions;--", "../../etc/passwd", "a" * 129,
                                        "with space", "semi;colon", "ünï"])
def test_hostile_request_ids_are_refused(stack, http, request_id):
    answer = http.post(f"{stack.gateway}/api/detect", headers={**headers("client"), "X-Request-ID": request_id.encode().decode("latin-1")},
                       files={"image": ("f.jpg", frame(), "image/jpeg")}, data={"user_id": "rid-user"})
    assert_clean_error(answer, 400)


@pytest.mark.parametrize("path", ["..%2F..%2Fhealth", "%00", "a" * 129, "x%27%3B--", "%2e%2e"])
def test_hostile_request_ids_in_paths(stack, http, path):
    answer = http.get(f"{stack.gateway}/api/results/predictions/{path}", headers=headers("dpo"))
    assert_clean_error(answer, (400, 404))


def test_path_traversal_cannot_reach_internal_endpoints(stack, http):
    for path in ("..%2F..%2Fmetrics", "..%2Fready", "%2e%2e/%2e%2e/predictions", "preprocess%2F..%2F..%2Fmetrics"):
        answer = http.post(f"{stack.gateway}/api/features/{path}", headers=headers("client"), data=b"x")
        assert_clean_error(answer, (400, 404))


def test_duplicated_user_id_field_is_refused(stack, http):
    answer = http.post(f"{stack.gateway}/api/detect", headers=headers("client"),
                       files=[("image", ("f.jpg", frame(), "image/jpeg")), ("user_id", (None, "a")), ("user_id", (None, "b"))])
    assert "once" in assert_clean_error(answer, 400)["error"]


def test_image_sent_as_text_field_is_refused(stack, http):
    answer = http.post(f"{stack.gateway}/api/detect", headers=headers("client"),
                       files=[("image", (None, "not a file")), ("user_id", (None, "u"))])
    assert "image" in assert_clean_error(answer, 400)["error"]


WRONG_FEEDBACK_BODIES = [
    ("[]", "application/json"), ('"text"', "application/json"), ("{not json", "application/json"),
    ('{"correct": "yes", "reason": "r"}', "application/json"), ('{"correct": true, "reason": 5}', "application/json"),
    ('{"correct": true, "reason": "' + "r" * 501 + '"}', "application/json"),
    ('{"correct": true, "reason": "r", "comment": ["a"]}', "application/json"),
    ('{"correct": true, "reason": "\\ud800"}', "application/json"),
    ('{"correct": true, "reason": "r", "comment": ' + "[" * 5000 + "]" * 5000 + "}", "application/json"),
    ('{"correct": true, "reason": "r"}', "text/plain"),
    ("correct=true&reason=r", "application/x-www-form-urlencoded"),
]


def test_wrong_json_bodies_through_the_gateway(stack, http):
    created = detect(stack, http, frame(), "feedback-types").json()["request_id"]
    for body, content_type in WRONG_FEEDBACK_BODIES:
        answer = http.post(f"{stack.gateway}/api/results/predictions/{created}/feedback", data=body.encode(),
                           headers={**headers("client"), "Content-Type": content_type})
        assert_clean_error(answer, (400, 415))


def results_record(**overrides) -> dict:
    body = {"request_id": f"sec-{uuid.uuid4().hex}", "user_id": "sec-user",
            "detections": [{"class_name": "car", "confidence": 0.9, "bbox": {"x_min": 1, "y_min": 2, "x_max": 3, "y_max": 4}}],
            "model_version": "1", "inference_time_ms": 1.0}
    body.update(overrides)
    return body


WRONG_RESULTS_FIELDS = {
    "detections-object": {"detections": {"class_name": "car"}},
    "confidence-string": {"detections": [{"class_name": "car", "confidence": "0.9", "bbox": {"x_min": 1, "y_min": 1, "x_max": 2, "y_max": 2}}]},
    "confidence-above-1": {"detections": [{"class_name": "car", "confidence": 2, "bbox": {"x_min": 1, "y_min": 1, "x_max": 2, "y_max": 2}}]},
    "bbox-missing": {"detections": [{"class_name": "car", "confidence": 0.5}]},
    "bbox-infinite": {"detections": [{"class_name": "car", "confidence": 0.5, "bbox": {"x_min": 1e999, "y_min": 1, "x_max": 2, "y_max": 2}}]},
    "time-negative": {"inference_time_ms": -1},
    "time-bool": {"inference_time_ms": True},
    "version-too-long": {"model_version": "v" * 33},
    "user-int": {"user_id": 42},
    "user-null": {"user_id": None},
    "request-id-space": {"request_id": "a b"},
    "request-id-sql": {"request_id": "1' OR '1'='1"},
    "features-list": {"features": [1, 2]},
    "class-name-empty": {"detections": [{"class_name": "", "confidence": 0.5, "bbox": {"x_min": 1, "y_min": 1, "x_max": 2, "y_max": 2}}]},
}


def test_wrong_types_on_the_results_service(stack, http):
    url = stack.url("RESULTS_PORT", "/predictions")
    for name, override in WRONG_RESULTS_FIELDS.items():
        record = results_record(**override)
        answer = http.post(url, data=json.dumps(record), headers={"Content-Type": "application/json"})
        assert_clean_error(answer, 400)
        if isinstance(record.get("request_id"), str) and " " not in record["request_id"] and "'" not in record["request_id"]:
            assert http.get(f"{url}/{record['request_id']}").status_code == 404, name
    nested = '{"request_id": "deep", "detections": ' + "[" * 100000 + "]" * 100000 + "}"
    assert_clean_error(http.post(url, data=nested, headers={"Content-Type": "application/json"}), 400)
    assert_clean_error(http.post(url, data=b"\xff\xfe\x00garbage", headers={"Content-Type": "application/json"}), 400)
    assert_clean_error(http.post(url, data="{}", headers={"Content-Type": "text/plain"}), 415)


def test_reused_request_id_on_the_results_service_changes_nothing(stack, http):
    url = stack.url("RESULTS_PORT", "/predictions")
    record = results_record()
    assert http.post(url, json=record).status_code == 201
    again = http.post(url, json={**record, "model_version": "999", "detections": []})
    assert_clean_error(again, 409)
    stored = http.get(f"{url}/{record['request_id']}").json()
    assert stored["model_version"] == "1" and len(stored["detections"]) == 1


def test_wrong_types_on_the_feature_service(stack, http):
    url = stack.url("FEATURE_PORT", "/preprocess")
    for body in ({"image": 42}, {"image": ""}, {"image": "!!!not base64!!!"}, {"image": ["a"]}, {}):
        assert_clean_error(http.post(url, json=body), 400)
    assert_clean_error(http.post(url, json=[1, 2]), 400)
    assert_clean_error(http.post(url, data=b"", headers={"Content-Type": "application/octet-stream"}), 400)
    assert_clean_error(http.post(url, data=b"x", headers={"Content-Type": "text/csv"}), 415)
    assert_clean_error(http.post(f"{url}?include_image=maybe", data=encode(Image.new("RGB", (4, 4)), "PNG"),
                                 headers={"Content-Type": "image/png"}), 400)


@pytest.mark.parametrize("port,method,path", [
    ("GATEWAY_PORT", "PUT", "/api/detect"), ("GATEWAY_PORT", "PATCH", "/api/detect"),
    ("GATEWAY_PORT", "DELETE", "/api/detect"), ("GATEWAY_PORT", "GET", "/api/features/preprocess"),
    ("GATEWAY_PORT", "POST", "/api/results/predictions/user/someone"), ("GATEWAY_PORT", "POST", "/health"),
    ("FEATURE_PORT", "GET", "/preprocess"), ("FEATURE_PORT", "DELETE", "/preprocess"),
    ("RESULTS_PORT", "PATCH", "/predictions"), ("RESULTS_PORT", "PUT", "/predictions/user/someone"),
    ("RESULTS_PORT", "DELETE", "/predictions/some-id"),
])
def test_methods_not_allowed(stack, http, port, method, path):
    answer = http.request(method, stack.url(port, path), headers=headers("admin"))
    assert_clean_error(answer, 405)
    assert answer.headers.get("Allow"), answer.headers
