"""Feature service: image in; model-ready image and monitoring features out.

`POST /preprocess` takes the image as a multipart file field `image`, as a raw
body with an image/* content type, or as the seed's JSON
`{"image": "<base64>", "request_id": "..."}`.
"""
from __future__ import annotations

from pathlib import Path

import base64
import binascii
import io
import time

from flask import Response, g, jsonify, request
from PIL import Image

from services.common import config
from services.common.images import check_image, decode_slot, header_cost
from services.common.model_info import input_size
from services.common.web import ApiError, create_app, json_body
from services.common.image_features import ANALYSIS_SIDE, extract_features

SERVICE_NAME = "feature-service"

app = create_app(SERVICE_NAME, openapi=Path(__file__).with_name("openapi.yaml"), internal=True)
log = app.logger


def _uploaded_bytes() -> bytes:
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            raise ApiError(400, "missing file field 'image' in the multipart form")
        return upload.read()
    if request.mimetype.startswith("image/") or request.mimetype == "application/octet-stream":
        return request.get_data()
    body = json_body()
    encoded = body.get("image")
    if not isinstance(encoded, str) or not encoded:
        raise ApiError(400, "field 'image' must be a non-empty base64 string")
    if len(encoded) > config.MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise ApiError(413, f"image is above the limit of {config.MAX_UPLOAD_BYTES} bytes")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "field 'image' is not valid base64") from None


def _wants_image() -> bool:
    value = request.args.get("include_image", "true").lower()
    if value not in ("1", "true", "yes", "0", "false", "no"):
        raise ApiError(400, "include_image must be true or false")
    return value in ("1", "true", "yes")


@app.post("/preprocess")
def preprocess() -> Response:
    started = time.perf_counter()
    wants_image = _wants_image()
    data = _uploaded_bytes()
    if not wants_image:
        # Features alone need only a reduced-scale decode (a small picture once decoded).
        image = check_image(data, analysis_side=ANALYSIS_SIDE)
        features = extract_features(image)
        body: dict = {"request_id": g.request_id, "features": features}
    else:
        # The model-ready image is the frame resized to the newest version's input_size.
        size = input_size()
        if size is None:
            raise ApiError(503, "the model's input size is unknown: no model_metadata.json under MODEL_REPOSITORY "
                                "and MODEL_INPUT_WIDTH/MODEL_INPUT_HEIGHT unset", {"Retry-After": str(config.RETRY_AFTER_S)})
        # Decoded at the smallest power-of-two scale that still covers the input size (a
        # JPEG by libjpeg, the rest reduced before any RGB copy): a 12 MP upload never lives
        # in a worker as full-size RGB. The slot covers the decode until the resize.
        with decode_slot(header_cost(data)):
            image = check_image(data, analysis_side=max(ANALYSIS_SIDE, *size))
            features = extract_features(image)
            assert image.rgb is not None
            resized = image.rgb.resize(size, Image.Resampling.BILINEAR)
            del image
        body = {"request_id": g.request_id, "features": features}
        buffer = io.BytesIO()
        resized.save(buffer, format="JPEG", quality=95)
        body["preprocessed_image"] = base64.b64encode(buffer.getvalue()).decode()
        body["preprocessed_size"] = {"width": size[0], "height": size[1]}
    body["processing_time_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return jsonify(body)
