"""The whole stack, for real: gateway -> feature service + gRPC adapter -> Triton,
results stored in PostgreSQL and read back, with authentication and roles."""
from __future__ import annotations

import csv
import json
import uuid

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import image_features
from services.common.explain import iou
from services.proto import model_serving_pb2 as pb
from services.proto import model_serving_pb2_grpc as pb_grpc
from tests.conftest import DATA_DIR, adapter_channel, frame, headers


def ground_truth(name: str) -> list[list[float]]:
    with open(DATA_DIR / "train_solution_bounding_boxes (1).csv", newline="") as handle:
        return [[float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
                for row in csv.DictReader(handle) if (row.get("image_id") or row.get("image")) == name]


def box(detection: dict) -> list[float]:
    bbox = detection["bbox"]
    return [bbox["x_min"], bbox["y_min"], bbox["x_max"], bbox["y_max"]]


def detect(stack, http, image: bytes, user_id: str, role: str = "client", **extra_headers: str):
    return http.post(f"{stack.gateway}/api/detect", headers=headers(role, **extra_headers),
                     files={"image": ("frame.jpg", image, "image/jpeg")}, data={"user_id": user_id})


def test_every_health_endpoint(stack, http):
    for port, path in [("GATEWAY_PORT", "/health"), ("GATEWAY_PORT", "/ready"), ("FEATURE_PORT", "/health"),
                       ("FEATURE_PORT", "/ready"), ("RESULTS_PORT", "/health"), ("RESULTS_PORT", "/ready"),
                       ("TRITON_HTTP_PORT", "/v2/health/ready"), ("TRITON_HTTP_PORT", "/v2/models/car_detector/ready")]:
        answer = http.get(stack.url(port, path), timeout=5)
        assert answer.status_code == 200, (port, path, answer.text)
    assert http.get(stack.url("FEATURE_PORT", "/health")).json()["status"] == "healthy"
    assert http.get(stack.url("RESULTS_PORT", "/health")).json()["status"] == "healthy"
    with adapter_channel(stack.adapter) as channel:
        standard = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="modelserving.ModelServing"))
        assert standard.status == health_pb2.HealthCheckResponse.SERVING
        seed = pb_grpc.ModelServingStub(channel).HealthCheck(pb.HealthCheckRequest())
        assert seed.status == "SERVING" and seed.model_version


def test_detect_end_to_end_finds_the_car(stack, http):
    request_id = f"e2e-{uuid.uuid4().hex}"
    answer = detect(stack, http, frame("vid_4_1000.jpg"), "alice", **{"X-Request-ID": request_id})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["request_id"] == request_id == answer.headers["X-Request-ID"]
    assert body["model_version"].isdigit() and body["inference_time_ms"] > 0
    assert body["features"]["width"] == 676 and body["features"]["height"] == 380
    truth = ground_truth("vid_4_1000.jpg")
    assert truth and body["detections"], body
    for car in truth:
        assert max(iou(car, box(d)) for d in body["detections"]) >= 0.5, (car, body["detections"])
    assert all(d["class_name"] == "car" and 0 <= d["confidence"] <= 1 for d in body["detections"])

    stored = http.get(f"{stack.gateway}/api/results/predictions/{request_id}", headers=headers("client"))
    assert stored.status_code == 200, stored.text
    record = stored.json()
    assert record["detections"] == body["detections"] and record["model_version"] == body["model_version"]
    assert "alice" not in stored.text  # only the keyed hash is held


def test_request_id_is_generated_when_absent(stack, http):
    answer = detect(stack, http, frame(), "bob")
    assert answer.status_code == 201
    assert answer.json()["request_id"] == answer.headers["X-Request-ID"] and len(answer.headers["X-Request-ID"]) >= 16


def test_reused_request_id_is_refused(stack, http):
    request_id = f"dup-{uuid.uuid4().hex}"
    assert detect(stack, http, frame(), "carol", **{"X-Request-ID": request_id}).status_code == 201
    again = detect(stack, http, frame(), "carol", **{"X-Request-ID": request_id})
    assert again.status_code == 409 and "already" in again.json()["error"]


def test_authentication_and_roles(stack, http):
    url = f"{stack.gateway}/api/detect"
    files = {"image": ("f.jpg", frame(), "image/jpeg")}
    assert http.post(url, files=files, data={"user_id": "u"}).status_code == 401
    unknown = http.post(url, files=files, data={"user_id": "u"}, headers={"X-API-Key": "nope"})
    assert unknown.status_code == 401 and unknown.json()["error"]
    assert http.post(url, files=files, data={"user_id": "u"}, headers=headers("dpo")).status_code == 403
    assert http.delete(f"{stack.gateway}/api/results/predictions/user/u", headers=headers("client")).status_code == 403
    assert http.get(f"{stack.gateway}/api/results/predictions/user/u").status_code == 401


def test_a_client_cannot_read_another_clients_prediction(stack, http):
    created = detect(stack, http, frame(), "dave").json()
    url = f"{stack.gateway}/api/results/predictions/{created['request_id']}"
    assert http.get(url, headers=headers("client_b")).status_code == 404  # exactly like a missing one
    assert http.get(url, headers=headers("dpo")).status_code == 200
    assert http.get(url, headers=headers("client")).status_code == 200
    user_url = f"{stack.gateway}/api/results/predictions/user/dave"
    assert http.get(user_url, headers=headers("client_b")).json()["count"] == 0
    assert http.get(user_url, headers=headers("client")).json()["count"] >= 1


def test_access_and_erasure_by_user(stack, http):
    user = f"erin-{uuid.uuid4().hex[:8]}"
    created = [detect(stack, http, frame(name), user).json()["request_id"]
               for name in ("vid_4_1000.jpg", "vid_4_10000.jpg")]
    exported = http.get(f"{stack.gateway}/api/results/predictions/user/{user}", headers=headers("dpo"))
    assert exported.status_code == 200
    assert sorted(p["request_id"] for p in exported.json()["predictions"]) == sorted(created)
    erased = http.delete(f"{stack.gateway}/api/results/predictions/user/{user}", headers=headers("dpo"))
    assert erased.status_code == 200 and erased.json()["deleted"] == 2
    after = http.get(f"{stack.gateway}/api/results/predictions/user/{user}", headers=headers("admin")).json()
    assert after["count"] == 0
    assert http.get(f"{stack.gateway}/api/results/predictions/{created[0]}", headers=headers("dpo")).status_code == 404


def test_triton_serves_the_contract_signature(stack):
    client = triton.InferenceServerClient(stack.triton_grpc)
    metadata = client.get_model_metadata("car_detector")
    assert {i.name for i in metadata.inputs} == {"IMAGE"}
    # CONTRACT.md's three outputs, plus the monitoring statistics (docs/api.md) from version 5.
    outputs = {o.name: (o.datatype, list(o.shape)) for o in metadata.outputs}
    assert outputs == {"BOXES": ("FP32", [-1, -1, 4]), "SCORES": ("FP32", [-1, -1]), "LABELS": ("BYTES", [-1, -1]),
                       "IMAGE_STATS": ("BYTES", [-1, 1])}
    images = np.array([[frame("vid_4_1000.jpg")], [frame("vid_4_10000.jpg")]], dtype=np.object_)
    image_input = triton.InferInput("IMAGE", [2, 1], "BYTES")
    image_input.set_data_from_numpy(images)
    result = client.infer("car_detector", [image_input], request_id="triton-direct")  # every output
    boxes, scores, labels = result.as_numpy("BOXES"), result.as_numpy("SCORES"), result.as_numpy("LABELS")
    assert boxes.shape[0] == scores.shape[0] == labels.shape[0] == 2 and boxes.shape[2] == 4
    stats = [json.loads(element[0]) for element in result.as_numpy("IMAGE_STATS")]
    assert [sorted(s) for s in stats] == [sorted(image_features.PIXEL)] * 2 and stats[0] != stats[1]
    for image_scores in scores:
        real = image_scores[image_scores > 0]
        # CONTRACT.md: descending, in [0, 1], kept down to a floor of *at most* 0.05 (the
        # calibrated value of the raw floor may be far lower: callers pick their threshold).
        assert np.all(np.diff(real) <= 1e-6) and np.all(real >= 0) and np.all(real <= 1)
    truth = ground_truth("vid_4_1000.jpg")[0]
    assert max(iou(truth, list(b)) for b in boxes[0]) >= 0.5


def test_adapter_predicts_and_refuses_bad_images(stack):
    with adapter_channel(stack.adapter) as channel:
        stub = pb_grpc.ModelServingStub(channel)
        answer = stub.Predict(pb.PredictionRequest(request_id="grpc-1", image_data=frame(), user_id="nb-user"))
        assert answer.request_id == "grpc-1" and answer.detections and answer.model_version
        assert answer.inference_time_ms > 0
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(pb.PredictionRequest(request_id="grpc-2", image_data=b"not an image", user_id="u"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a supported image" in refused.value.details()
