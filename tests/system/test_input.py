"""Bad input gets a clear JSON 4xx and leaves nothing behind; unusual but valid
images work and show the same scene as the original frame."""
from __future__ import annotations

import uuid

import pytest
from PIL import Image

from tests.conftest import KEYS, frame, headers
from tests.images import encode, hostile_uploads, unusual_variants
from tests.system.test_stack import box, detect, iou


def stored_count(stack, http, user: str) -> int:
    answer = http.get(f"{stack.gateway}/api/results/predictions/user/{user}", headers=headers("dpo"))
    assert answer.status_code == 200
    return answer.json()["count"]


@pytest.mark.parametrize("name", list(hostile_uploads(b"\xff\xd8" + b"0" * 1000)))
def test_hostile_upload_is_refused_and_nothing_stored(stack, http, name):
    data, status = hostile_uploads(frame())[name]
    user = f"hostile-{uuid.uuid4().hex[:8]}"
    answer = detect(stack, http, data, user)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] and body["request_id"] == answer.headers["X-Request-ID"]
    assert stored_count(stack, http, user) == 0


def test_upload_above_the_size_limit(stack, http):
    user = f"big-{uuid.uuid4().hex[:8]}"
    answer = detect(stack, http, frame() + b"\0" * (11 * 1024 * 1024), user)
    assert answer.status_code == 413 and answer.json()["error"]
    assert stored_count(stack, http, user) == 0


@pytest.mark.parametrize("form,expected", [
    ({"files": {"user_id": (None, "u")}}, "image"),
    ({"files": {"image": ("f.jpg", b"", "image/jpeg")}, "data": {"user_id": "u"}}, "empty"),
    ({"files": {"image": ("f.jpg", b"x", "image/jpeg")}, "data": {}}, "user_id"),
    ({"files": {"image": ("f.jpg", b"x", "image/jpeg")}, "data": {"user_id": "a\x00b"}}, "control"),
    ({"files": {"image": ("f.jpg", b"x", "image/jpeg")}, "data": {"user_id": "u" * 300}}, "limit"),
])
def test_missing_or_malformed_fields(stack, http, form, expected):
    answer = http.post(f"{stack.gateway}/api/detect", headers={"X-API-Key": KEYS["client"]}, **form)
    assert answer.status_code == 400, answer.text
    assert expected in answer.json()["error"]


def test_duplicated_fields_and_wrong_content_type(stack, http):
    url = f"{stack.gateway}/api/detect"
    duplicated = http.post(url, headers=headers("client"), files=[
        ("image", ("a.jpg", frame(), "image/jpeg")), ("image", ("b.jpg", frame(), "image/jpeg"))],
        data={"user_id": "u"})
    assert duplicated.status_code == 400 and "once" in duplicated.json()["error"]
    as_json = http.post(url, headers=headers("client"), json={"image": "abc", "user_id": "u"})
    assert as_json.status_code == 415
    assert http.get(url, headers=headers("client")).status_code == 405
    bad_id = detect(stack, http, frame(), "u", **{"X-Request-ID": "no spaces allowed"})
    assert bad_id.status_code == 400 and "X-Request-ID" in bad_id.json()["error"]


def test_unusual_valid_images_are_served(stack, http):
    original = detect(stack, http, frame(), "unusual").json()
    reference = [box(d) for d in original["detections"]]
    assert reference
    for name, data in unusual_variants(frame()).items():
        answer = detect(stack, http, data, "unusual")
        assert answer.status_code == 201, (name, answer.text)
        body = answer.json()
        assert (body["image"]["width"], body["image"]["height"]) == (676, 380), name
        # The same scene: the original's main detection is found again.
        assert body["detections"], name
        assert max(iou(reference[0], box(d)) for d in body["detections"]) >= 0.5, (name, body["detections"])


def test_one_pixel_image(stack, http):
    answer = detect(stack, http, encode(Image.new("RGB", (1, 1)), "PNG"), "tiny")
    assert answer.status_code == 201 and answer.json()["image"] == {"width": 1, "height": 1}
