"""services/common/multipart.py parses what Werkzeug's own parser parses, into the same
objects, with the same limits: checked body by body against Werkzeug itself."""
from __future__ import annotations

import io

import flask
import pytest
from flask import Flask, jsonify, request

from services.common.multipart import ServiceRequest

IMAGE = bytes(range(256)) * 400  # binary, with CR, LF and "-" bytes inside
BOUNDARY = "b0undary"
# Over the parsers' 64 KiB read size: Werkzeug applies the limit to each read, files included.
FIELD_LIMIT = 70_000


def _app(request_class: type[flask.Request]) -> Flask:
    app = Flask("multipart-test")
    app.request_class = request_class
    app.config.update(MAX_FORM_PARTS=6, MAX_FORM_MEMORY_SIZE=FIELD_LIMIT, MAX_CONTENT_LENGTH=len(IMAGE) * 3)

    @app.post("/")
    def echo() -> flask.Response:
        return jsonify(form=request.form.to_dict(flat=False),
                       files={name: [(f.filename, f.mimetype, f.read().hex()) for f in request.files.getlist(name)]
                              for name in request.files})

    return app


def _raw(*parts: bytes, end: bool = True) -> bytes:
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + BOUNDARY.encode() + b"--\r\n" if end else b"")


FIELD = b'Content-Disposition: form-data; name="user_id"\r\n\r\nsubject-1'
FILE = b'Content-Disposition: form-data; name="image"; filename="f.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + IMAGE
BODIES = {
    "field and file": _raw(FIELD, FILE),
    "repeated field": _raw(FIELD, FIELD.replace(b"subject-1", b"subject-2"), FILE),
    "utf-8 field": _raw(b'Content-Disposition: form-data; name="n"\r\n\r\n' + "Zoë".encode()),
    "latin-1 field": _raw(b'Content-Disposition: form-data; name="n"\r\nContent-Type: text/plain; charset=iso-8859-1'
                          b'\r\n\r\n' + "Zoë".encode("latin-1")),
    "empty file": _raw(b'Content-Disposition: form-data; name="image"; filename="e.png"\r\n\r\n'),
    "no end boundary": _raw(FIELD, FILE, end=False),
    "not multipart at all": b"just some bytes",
    "too many parts": _raw(*[FIELD] * 7),
    "field over the memory limit": _raw(b'Content-Disposition: form-data; name="n"\r\n\r\n' + b"x" * (FIELD_LIMIT + 1)),
}


@pytest.mark.parametrize("name", BODIES)
def test_parses_like_werkzeug(name: str) -> None:
    def answer(request_class: type[flask.Request]) -> tuple[int, object]:
        response = _app(request_class).test_client().post(
            "/", data=BODIES[name], content_type=f"multipart/form-data; boundary={BOUNDARY}")
        return response.status_code, response.get_json(silent=True)

    ours, werkzeugs = answer(ServiceRequest), answer(flask.Request)
    assert ours == werkzeugs
    if name == "field and file":  # and the reference itself saw the parts
        assert ours[1] == {"form": {"user_id": ["subject-1"]}, "files": {"image": [["f.jpg", "image/jpeg", IMAGE.hex()]]}}
    if name in ("too many parts", "field over the memory limit"):
        assert ours[0] == 413


def test_a_missing_boundary_is_an_empty_form() -> None:
    response = _app(ServiceRequest).test_client().post("/", data=BODIES["field and file"],
                                                       content_type="multipart/form-data")
    assert response.status_code == 200 and response.get_json() == {"form": {}, "files": {}}


def test_large_uploads_arrive_whole_across_read_chunks() -> None:
    big = IMAGE * 2  # over the parser's 64 KiB read size, so parts span several reads
    response = _app(ServiceRequest).test_client().post(
        "/", data={"image": (io.BytesIO(big), "big.bin")}, content_type="multipart/form-data")
    assert response.get_json()["files"]["image"][0][2] == big.hex()
