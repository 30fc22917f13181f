"""Security as tested properties: hostile input is refused cleanly (never a 5xx,
nothing left behind), authentication on everything but liveness, roles and tenant
isolation, rate limits shared across workers, security headers, size limits, no
internals in error bodies, audited dependencies, and TLS on
a real hop. Extends tests/system/test_input.py (not repeating its cases); the stack-free
checks (key hashing, the secret scan) are under tests/unit/."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest
import requests
from PIL import Image

from tests.conftest import INTERNET_SKIP, KEYS, REPO_ROOT, free_port, frame, gunicorn_command, headers, wait_until
from tests.images import encode, open_frame

VENV_BIN = REPO_ROOT / ".venv" / "bin"
INTERNAL_MARKERS = ("Traceback", 'File "', "/work/", ".py\"", "127.0.0.1", "localhost:", "postgresql",
                    "psycopg2", "sqlalchemy", "OperationalError", "werkzeug", "grpc._channel", "ipv4:")


# --------------------------------------------------------------------------- helpers


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "wb")
    return subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def base_env(var: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLS_", "GRPC_TLS_", "MODEL_SERVING_TLS"))}
    env.update({"PYTHONPATH": str(REPO_ROOT), "VAR_DIR": str(var), "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "4",
                "PSEUDONYM_KEY": "security-test-key", "METRICS_TOKEN": "security-test-metrics", **extra})
    return env


def detect(stack, http, image: bytes, user_id: str, role: str = "client", filename: str = "frame.jpg",
           content_type: str = "image/jpeg", **extra_headers: str) -> requests.Response:
    return http.post(f"{stack.gateway}/api/detect", headers=headers(role, **extra_headers),
                     files={"image": (filename, image, content_type)}, data={"user_id": user_id}, timeout=60)


def export(stack, http, user: str, role: str = "dpo") -> dict:
    answer = http.get(f"{stack.gateway}/api/results/predictions/user/{quote(user, safe='')}", headers=headers(role))
    assert answer.status_code == 200, answer.text
    return answer.json()


def assert_clean_error(answer: requests.Response, status: int | tuple[int, ...] | None = None) -> dict:
    """A JSON error naming the problem: 4xx (or the given status), no internals."""
    expected = (status,) if isinstance(status, int) else status
    assert (answer.status_code in expected) if expected else 400 <= answer.status_code < 500, \
        (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert body.get("request_id") == answer.headers.get("X-Request-ID"), body
    for marker in INTERNAL_MARKERS:
        assert marker not in answer.text, (marker, answer.text[:300])
    return body


def client_id(role: str) -> str:
    return hashlib.sha256(KEYS[role].encode()).hexdigest()[:32]


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


# --------------------------------------------------------------------------- authentication and roles

def _gateway_operations(stack, http) -> list[tuple[str, str, bool]]:
    document = http.get(f"{stack.gateway}/openapi.json").json()
    out = []
    for path, item in document["paths"].items():
        concrete = (path.replace("{request_id}", "some-request-id").replace("{user_id}", "someone"))
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                secured = operation.get("security", document.get("security")) != []
                out.append((method.upper(), concrete, secured))
    return out


def test_authentication_on_everything_but_liveness(stack, http):
    operations = _gateway_operations(stack, http)
    assert len([op for op in operations if op[2]]) >= 7
    for method, path, secured in operations:
        for key in (None, "", "wrong-key", KEYS["client"] + "x", KEYS["client"].upper(), "' OR 1=1 --"):
            hdrs = {} if key is None else {"X-API-Key": key}
            answer = http.request(method, f"{stack.gateway}{path}", headers=hdrs, data=b"")
            if secured:
                assert_clean_error(answer, 401)
                assert answer.headers.get("WWW-Authenticate"), (method, path)
            else:
                assert answer.status_code in (200, 503), (method, path, answer.status_code)
    # /metrics of every service needs its bearer token (the observability engineer's design)
    for port in ("GATEWAY_PORT", "FEATURE_PORT", "RESULTS_PORT"):
        assert http.get(stack.url(port, "/metrics")).status_code == 401
        assert http.get(stack.url(port, "/metrics"), headers={"Authorization": "Bearer nope"}).status_code == 401


def test_roles_are_enforced(stack, http):
    """An allowed role gets exactly the answer the operation gives (here 415 for a detect
    without a body, 200 for an export or an erasure of nobody): a 5xx is not "allowed"."""
    matrix = {  # (method, path) -> (roles allowed, their status)
        ("POST", "/api/detect"): ({"client", "admin"}, 415),
        ("DELETE", "/api/results/predictions/user/role-check"): ({"dpo", "admin"}, 200),
        ("GET", "/api/results/predictions/user/role-check"): ({"client", "dpo", "admin"}, 200),
    }
    for (method, path), (allowed, status) in matrix.items():
        for role in ("client", "dpo", "admin"):
            answer = http.request(method, f"{stack.gateway}{path}", headers=headers(role))
            if role in allowed:
                assert answer.status_code == status, (method, path, role, answer.status_code, answer.text[:200])
                if status == 200:
                    assert answer.json().get("deleted", answer.json().get("count")) == 0, answer.text
            else:
                assert "role" in assert_clean_error(answer, 403)["error"].lower()


def test_a_client_cannot_touch_another_clients_data(stack, http):
    user = f"shared-{uuid.uuid4().hex[:8]}"
    mine = detect(stack, http, frame(), user, role="client").json()["request_id"]
    theirs = detect(stack, http, frame(), user, role="client_b").json()["request_id"]
    base = f"{stack.gateway}/api/results"
    # each client sees only its own part of the same data subject; the dpo sees both
    assert [p["request_id"] for p in export(stack, http, user, "client")["predictions"]] == [mine]
    assert [p["request_id"] for p in export(stack, http, user, "client_b")["predictions"]] == [theirs]
    assert export(stack, http, user, "dpo")["count"] == 2
    # a client cannot widen its scope with a query parameter
    widened = http.get(f"{base}/predictions/user/{user}?client_id={client_id('client')}", headers=headers("client_b"))
    assert [p["request_id"] for p in widened.json()["predictions"]] == [theirs]
    # nor read, nor contest, nor erase the other's
    assert_clean_error(http.get(f"{base}/predictions/{mine}", headers=headers("client_b")), 404)
    contest = http.post(f"{base}/predictions/{mine}/feedback", json={"correct": False, "reason": "not mine"},
                        headers=headers("client_b"))
    assert_clean_error(contest, 404)
    assert_clean_error(http.delete(f"{base}/predictions/user/{user}", headers=headers("client_b")), 403)
    assert export(stack, http, user, "dpo")["count"] == 2
    own = http.post(f"{base}/predictions/{mine}/feedback", json={"correct": True, "reason": "fine"}, headers=headers("client"))
    assert own.status_code == 201, own.text


# --------------------------------------------------------------------------- edges: headers, limits, internals

def test_security_headers_on_every_answer(stack, http):
    from services.common.web import SECURITY_HEADERS

    answers = [
        http.get(f"{stack.gateway}/health"), http.get(f"{stack.gateway}/nope"),
        http.get(f"{stack.gateway}/api/results/predictions/x"),  # 401
        detect(stack, http, frame(), "headers-user"),  # 201
        detect(stack, http, b"not an image", "headers-user"),  # 415
        http.get(stack.url("FEATURE_PORT", "/health")), http.post(stack.url("FEATURE_PORT", "/preprocess"), json={}),
        http.get(stack.url("RESULTS_PORT", "/predictions/none")),
    ]
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers.get(name) == value, (answer.url, answer.status_code, name)
        assert answer.headers.get("X-Request-ID")


def test_oversized_headers_and_request_lines_are_refused(stack):
    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", int(stack.env["GATEWAY_PORT"])), timeout=10) as sock:
            sock.sendall(request)
            return sock.recv(65536)

    big_header = raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    many_headers = raw(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n")
    long_line = raw(b"GET /health?" + b"q" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    for answer in (big_header, many_headers, long_line):
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]
        assert b"Traceback" not in answer
    ok = raw(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")


def test_oversize_body_is_refused_before_reading_it(stack, http):
    big = b"\0" * (12 * 1024 * 1024)
    answer = http.post(stack.url("FEATURE_PORT", "/preprocess"), data=big, headers={"Content-Type": "image/png"})
    assert_clean_error(answer, 413)
    answer = http.post(f"{stack.gateway}/api/features/preprocess", data=big,
                       headers={**headers("client"), "Content-Type": "application/octet-stream"})
    assert_clean_error(answer, 413)


def test_error_bodies_reveal_no_internals(stack, http):
    """Every kind of error the gateway can give (the 503s are in test_reliability)."""
    cases = [
        http.get(f"{stack.gateway}/nope"),
        http.put(f"{stack.gateway}/api/detect", headers=headers("client")),
        http.get(f"{stack.gateway}/api/results/predictions/x", headers={"X-API-Key": "bad"}),
        http.get(f"{stack.gateway}/api/results/predictions/missing-id", headers=headers("dpo")),
        http.get(f"{stack.gateway}/api/results/predictions/bad%20id", headers=headers("dpo")),
        detect(stack, http, b"GIF89a" + b"\0" * 50, "internals"),
        detect(stack, http, frame()[:3000], "internals"),
        http.post(f"{stack.gateway}/api/explain", headers=headers("client"),
                  files={"image": ("x.jpg", frame()[:100], "image/jpeg")}),
        http.post(f"{stack.gateway}/api/explain?grid=999x999", headers=headers("client"),
                  files={"image": ("x.jpg", frame(), "image/jpeg")}),
        http.post(stack.url("RESULTS_PORT", "/predictions"), data="{", headers={"Content-Type": "application/json"}),
        http.get(stack.url("RESULTS_PORT", "/predictions/user/%00")),
    ]
    for answer in cases:
        assert_clean_error(answer)


# --------------------------------------------------------------------------- rate limits across workers

def test_rate_limit_holds_across_gunicorn_workers(stack, tmp_path):
    """A second gateway (2 workers) with its own Redis db and 10 requests a minute:
    out of 90 requests sent at once on fresh connections exactly 10 pass, the others
    get 429 + Retry-After. Per-worker counting would let up to 20 through. (The kernel
    hands each connection to either worker; 30 requests once all went to one.)"""
    import redis

    port, storage = free_port(), stack.redis.db(13)
    redis.Redis.from_url(storage).flushdb()
    env = base_env(tmp_path / "var", **{
        "GUNICORN_WORKERS": "2", "RATE_LIMIT": "10 per minute", "RATELIMIT_STORAGE_URI": storage,
        "API_KEYS": stack.env["API_KEYS"], "PSEUDONYM_KEY": stack.env["PSEUDONYM_KEY"],
        "FEATURE_SERVICE_URL": stack.url("FEATURE_PORT"), "RESULTS_SERVICE_URL": stack.url("RESULTS_PORT"),
        "MODEL_SERVING_ADDR": stack.adapter, "GATEWAY_PORT": str(port)})
    process = spawn(gunicorn_command("gateway.app:app", port), env, tmp_path / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: requests.get(f"{url}/health", timeout=1).status_code == 200, 60), \
            (tmp_path / "gateway.log").read_text()[-2000:]
        master = process.pid
        assert wait_until(lambda: len(Path(f"/proc/{master}/task/{master}/children").read_text().split()) == 2, 60)

        def one(_: int) -> requests.Response:
            return requests.get(f"{url}/api/results/predictions/user/rate-limited", headers={**headers("dpo"), "Connection": "close"},
                                timeout=30)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(one, range(90)))
        statuses = [a.status_code for a in answers]
        assert statuses.count(200) == 10 and statuses.count(429) == 80, statuses
        # Both workers answered some of them: with one worker, or one doing all the work,
        # per-worker counting would also give exactly 10.
        # (the access lines name the route template: the raw user id is never logged)
        served_by = wait_until(lambda: _pids_that_logged(tmp_path / "gateway.log", "/api/results/predictions/user/<path:user_id>", 90), 15)
        assert served_by and len(served_by) == 2, served_by
        limited = next(a for a in answers if a.status_code == 429)
        assert int(limited.headers["Retry-After"]) >= 0
        assert_clean_error(limited, 429)
        # liveness is never limited
        assert all(requests.get(f"{url}/health", timeout=5).status_code == 200 for _ in range(5))
    finally:
        stop(process)


def _pids_that_logged(log: Path, word: str, lines: int) -> set[int] | None:
    """The process ids of the access lines naming `word`, once there are `lines` of them."""
    pids = []
    for line in log.read_text(errors="replace").splitlines():
        if word in line and line.startswith("{"):
            event = json.loads(line)
            if word in event.get("message", ""):
                pids.append(event["process"]["pid"])
    return set(pids) if len(pids) >= lines else None


def test_rate_limits_survive_redis_being_down(tmp_path):
    """Redis unreachable: the gateway neither fails nor stops limiting; each worker falls
    back to counting in memory (logged). No stack needed: the request is refused (400)
    after authentication and rate limiting, before any backend call."""
    port = free_port()
    env = base_env(tmp_path / "var", **{
        "RATE_LIMIT": "5 per minute", "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{free_port()}/0",
        "API_KEYS": f"{KEYS['dpo']}:dpo", "FEATURE_SERVICE_URL": "http://127.0.0.1:9",
        "RESULTS_SERVICE_URL": "http://127.0.0.1:9", "MODEL_SERVING_ADDR": "127.0.0.1:9"})
    process = spawn(gunicorn_command("gateway.app:app", port), env, tmp_path / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: requests.get(f"{url}/health", timeout=1).status_code == 200, 60), \
            (tmp_path / "gateway.log").read_text()[-2000:]
        statuses = [requests.get(f"{url}/api/results/predictions/bad%20id", headers=headers("dpo"), timeout=10).status_code
                    for _ in range(8)]
        assert statuses == [400] * 5 + [429] * 3, statuses
        assert "falling back to in-memory storage" in (tmp_path / "gateway.log").read_text()
    finally:
        stop(process)


# --------------------------------------------------------------------------- dependencies (the secret scan: tests/unit/test_secret_scan.py)


def test_pip_audit_finds_no_known_vulnerability(tmp_path):
    """pip-audit over the pinned requirements.txt. Accepted findings are listed, with the
    reason, in docs/reliability.md; the list below must match it."""
    accepted: dict[str, str] = {}
    audit = shutil.which("pip-audit", path=str(VENV_BIN))
    assert audit, "pip-audit is not installed in .venv (requirements.txt pins it)"
    report = tmp_path / "audit.json"
    run = subprocess.run([audit, "-r", str(REPO_ROOT / "requirements.txt"), "--no-deps", "--disable-pip",
                          "--progress-spinner", "off", "-f", "json", "-o", str(report)],
                         capture_output=True, text=True, timeout=300)
    if not report.exists():
        reason = (run.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"{INTERNET_SKIP}: pip-audit could not reach a vulnerability service: {reason[:200]}")
    dependencies = json.loads(report.read_text())["dependencies"]
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        pytest.skip(f"{INTERNET_SKIP}: the vulnerability service (PyPI JSON API) is unreachable from here: every "
                    f"package was skipped, e.g. {dependencies[0].get('skip_reason', '')[:120]}")
    vulnerable = [f"{d['name']} {d['version']}: {v['id']} (fix: {v.get('fix_versions')})"
                  for d in audited for v in d.get("vulns", []) if v["id"] not in accepted]
    assert not vulnerable, "\n".join(vulnerable)


# --------------------------------------------------------------------------- TLS on real hops

@pytest.fixture(scope="module")
def dev_certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "make_dev_certs.sh"), str(folder)], check=True,
                   capture_output=True)
    return folder


def test_tls_hop_to_a_feature_service(dev_certs, tmp_path, monkeypatch):
    """A feature service with TLS (gunicorn certfile/keyfile from TLS_CERT_FILE/TLS_KEY_FILE),
    called by the gateway's own client verifying against TLS_CA_FILE."""
    port = free_port()
    env = base_env(tmp_path / "var", TLS_CERT_FILE=str(dev_certs / "server.pem"), TLS_KEY_FILE=str(dev_certs / "server.key"))
    process = spawn(gunicorn_command("services.feature_service.app:app", port), env, tmp_path / "feature.log")
    url = f"https://127.0.0.1:{port}"
    ca = str(dev_certs / "ca.pem")
    try:
        assert wait_until(lambda: requests.get(f"{url}/health", verify=ca, timeout=1).status_code == 200, 60), \
            (tmp_path / "feature.log").read_text()[-2000:]
        with pytest.raises(requests.exceptions.SSLError):  # an unknown CA is refused
            requests.get(f"{url}/health", timeout=5)
        with pytest.raises(requests.exceptions.ConnectionError):  # no plaintext on the TLS port
            requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
        monkeypatch.setenv("TLS_CA_FILE", ca)
        from gateway.clients import HttpService

        service = HttpService("feature service", url)
        answer = service.call("POST", "/preprocess?include_image=false", "tls-test",
                              data=encode(Image.new("RGB", (8, 8), "red"), "PNG"), headers={"Content-Type": "image/png"})
        assert answer.status_code == 200 and answer.json()["features"]["width"] == 8
        assert answer.headers["X-Request-ID"] == "tls-test"
    finally:
        stop(process)


def test_tls_hop_to_the_grpc_adapter(dev_certs, tmp_path, monkeypatch):
    """The adapter with gRPC server credentials, called by the gateway's client with
    MODEL_SERVING_TLS=1 and the CA. (No Triton needed: a bad image is refused first.)"""
    port = free_port()
    env = base_env(tmp_path / "var", GRPC_TLS_CERT_FILE=str(dev_certs / "server.pem"),
                   GRPC_TLS_KEY_FILE=str(dev_certs / "server.key"), MODEL_SERVING_PORT=str(port),
                   MODEL_SERVING_METRICS_PORT=str(free_port()), TRITON_GRPC_URL="127.0.0.1:9", HEALTH_PROBE_INTERVAL_S="30")
    process = spawn([sys.executable, "-m", "services.model_serving.server"], env, tmp_path / "adapter.log")
    try:
        credentials = grpc.ssl_channel_credentials((dev_certs / "ca.pem").read_bytes())

        def serving() -> bool:
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                grpc.channel_ready_future(channel).result(timeout=1)
            return True

        assert wait_until(serving, 60), (tmp_path / "adapter.log").read_text()[-2000:]
        monkeypatch.setenv("MODEL_SERVING_TLS", "1")
        monkeypatch.setenv("TLS_CA_FILE", str(dev_certs / "ca.pem"))
        from gateway.clients import ModelServingClient
        from services.common.web import ApiError

        with pytest.raises(ApiError) as refused:
            ModelServingClient(f"127.0.0.1:{port}").predict(b"not an image", "tls-user", "tls-grpc")
        assert refused.value.status == 400 and "not a supported image" in refused.value.message
        # a plaintext client cannot talk to it
        from services.proto import model_serving_pb2 as pb
        from services.proto import model_serving_pb2_grpc as pb_grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as plain:
                pb_grpc.ModelServingStub(channel).Predict(pb.PredictionRequest(image_data=b"x"), timeout=3)
        assert plain.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        stop(process)


# --------------------------------------------------------------------------- optional service-to-service token

def test_internal_token_guards_an_internal_service_when_configured(tmp_path, monkeypatch):
    """With INTERNAL_TOKEN set, the results service answers 401 to any caller without it
    (probes, documentation and /metrics excepted) and the gateway's client sends it."""
    port = free_port()
    env = base_env(tmp_path / "var", INTERNAL_TOKEN="internal-token-for-this-test-0123456789")
    env.pop("DATABASE_URL", None)  # its own SQLite file
    process = spawn(gunicorn_command("services.results_service.app:app", port), env, tmp_path / "results.log")
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: requests.get(f"{url}/ready", timeout=1).status_code == 200, 60), \
            (tmp_path / "results.log").read_text()[-2000:]
        for hdrs in ({}, {"X-Internal-Token": "wrong"}, {"X-Internal-Token": ""}):
            assert_clean_error(requests.get(f"{url}/predictions/some-id", headers=hdrs), 401)
            assert_clean_error(requests.delete(f"{url}/predictions/user/someone", headers=hdrs), 401)
        assert requests.get(f"{url}/health").status_code == 200
        assert requests.get(f"{url}/openapi.json").status_code == 200
        monkeypatch.setenv("INTERNAL_TOKEN", env["INTERNAL_TOKEN"])
        from gateway.clients import HttpService

        assert HttpService("results service", url).call("GET", "/predictions/some-id", "tok-test").status_code == 404
    finally:
        stop(process)
