"""
Tests d'intégration du système complet — the seed's test script, completed.

    python tests/test_system.py      # against a running stack (make run / make up)

runs the seed's five cases against the stack on its configured ports (GATEWAY_PORT,
FEATURE_PORT, RESULTS_PORT, MODEL_SERVING_PORT; defaults 8080, 5001, 5002, 50051) with the
stack's API keys (API_KEYS, else $VAR_DIR/secrets/api_keys). Under pytest (`make test`) the
same functions run against the session's test stack (tests/conftest.py).
"""

import csv
import sys
import uuid
from pathlib import Path

import grpc
import requests

# The seed's command runs this file as a plain script, where Python puts tests/ first on the
# path. Its own checkout goes first, not the editable install: a virtualenv shared between
# checkouts (as the Makefile allows) points that install at whichever checkout ran `make setup`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common import config  # noqa: E402
from services.common.service_token import GRPC_TOKEN_KEY, INTERNAL_TOKEN_HEADER, caller_headers  # noqa: E402
from services.proto import model_serving_pb2 as pb  # noqa: E402  (make proto)
from services.proto import model_serving_pb2_grpc as pb_grpc  # noqa: E402

FRAME_NAME = "vid_4_1000.jpg"  # one labelled car


def feature_url(path):
    return f"http://127.0.0.1:{config.FEATURE_PORT}{path}"


def results_url(path):
    return f"http://127.0.0.1:{config.RESULTS_PORT}{path}"


def gateway_url(path):
    return f"http://127.0.0.1:{config.GATEWAY_PORT}{path}"


def _internal_headers():
    """The feature and results services and the adapter accept only holders of the service
    token ($INTERNAL_TOKEN, or the stack's $VAR_DIR/secrets/internal_token)."""
    return caller_headers()


def _grpc_metadata():
    return [(GRPC_TOKEN_KEY, caller_headers()[INTERNAL_TOKEN_HEADER])]


def _key(role):
    pairs = config.API_KEYS.strip()
    if not pairs:
        pairs = (Path(config.VAR_DIR) / "secrets" / "api_keys").read_text()
    for pair in pairs.strip().split(","):
        key, _, key_role = pair.strip().rpartition(":")
        if key_role == role:
            return {"X-API-Key": key}
    raise AssertionError(f"no {role} key in API_KEYS or var/secrets/api_keys")


def _data_dir():
    return Path(config.DATA_DIR)


def _frame():
    return (_data_dir() / "training_images" / FRAME_NAME).read_bytes()


def _ground_truth():
    with open(_data_dir() / "train_solution_bounding_boxes (1).csv", newline="") as handle:
        return [[float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
                for row in csv.DictReader(handle) if (row.get("image_id") or row.get("image")) == FRAME_NAME]


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0


def _detect_for(user_id):
    answer = requests.post(gateway_url("/api/detect"), headers=_key("client"), timeout=60, data={"user_id": user_id},
                           files={"image": (FRAME_NAME, _frame(), "image/jpeg")})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_feature_service_health():
    """Test du health check du feature service"""
    response = requests.get(feature_url("/health"), timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"


def test_results_service_health():
    """Test du health check du results service"""
    response = requests.get(results_url("/health"), timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"


def test_end_to_end_prediction():
    """Test end-to-end d'une prédiction"""
    # 1. Charger une image de test
    image = _frame()
    truth = _ground_truth()
    assert truth, f"{FRAME_NAME} has a labelled car"
    # 2. Appeler le feature service
    features = requests.post(feature_url("/preprocess?include_image=false"), data=image, timeout=30,
                             headers={"Content-Type": "application/octet-stream", **_internal_headers()})
    assert features.status_code == 200, features.text
    assert (features.json()["features"]["width"], features.json()["features"]["height"]) == (676, 380)
    # 3. Appeler le model serving (gRPC, the seed's proto)
    with grpc.insecure_channel(f"127.0.0.1:{config.MODEL_SERVING_PORT}") as channel:
        stub = pb_grpc.ModelServingStub(channel)
        assert stub.HealthCheck(pb.HealthCheckRequest(), timeout=10, metadata=_grpc_metadata()).status == "SERVING"
        prediction = stub.Predict(pb.PredictionRequest(request_id=f"seed-grpc-{uuid.uuid4().hex}", image_data=image,
                                                       user_id="seed-test-user"), timeout=30, metadata=_grpc_metadata())
    # 4. Vérifier le résultat: the labelled car is found
    boxes = [[d.bbox.x_min, d.bbox.y_min, d.bbox.x_max, d.bbox.y_max] for d in prediction.detections]
    assert prediction.model_version and prediction.inference_time_ms > 0
    assert max(_iou(box, truth[0]) for box in boxes) >= 0.5, boxes
    # 5. Vérifier le stockage dans results service (a detection through the gateway is stored)
    detected = _detect_for(f"seed-e2e-{uuid.uuid4().hex[:8]}")
    stored = requests.get(results_url(f"/predictions/{detected['request_id']}"), headers=_internal_headers(), timeout=10)
    assert stored.status_code == 200, stored.text
    record = stored.json()
    assert record["request_id"] == detected["request_id"] and len(record["detections"]) == len(detected["detections"])
    assert record["model_version"] == detected["model_version"]


def test_rgpd_user_data_access():
    """Test du droit d'accès RGPD"""
    subject = f"seed-access-{uuid.uuid4().hex[:8]}"
    made = [_detect_for(subject)["request_id"] for _ in range(2)]
    access = requests.get(gateway_url(f"/api/results/predictions/user/{subject}"), headers=_key("dpo"), timeout=10)
    assert access.status_code == 200, access.text
    body = access.json()
    assert body["count"] == 2 and sorted(p["request_id"] for p in body["predictions"]) == sorted(made)
    assert subject not in access.text, "the user id is held only as its keyed hash"
    assert any(entry["action"] == "access_export" for entry in body["access_log"])
    assert requests.get(gateway_url(f"/api/results/predictions/user/{subject}"), timeout=10).status_code == 401


def test_rgpd_user_data_deletion():
    """Test du droit à l'oubli RGPD"""
    subject = f"seed-erasure-{uuid.uuid4().hex[:8]}"
    request_id = _detect_for(subject)["request_id"]
    refused = requests.delete(gateway_url(f"/api/results/predictions/user/{subject}"), headers=_key("client"), timeout=10)
    assert refused.status_code == 403
    erased = requests.delete(gateway_url(f"/api/results/predictions/user/{subject}"), headers=_key("dpo"), timeout=10)
    assert erased.status_code == 200 and erased.json()["deleted"] == 1, erased.text
    after = requests.get(gateway_url(f"/api/results/predictions/user/{subject}"), headers=_key("dpo"), timeout=10)
    assert after.json()["count"] == 0
    gone = requests.get(results_url(f"/predictions/{request_id}"), headers=_internal_headers(), timeout=10)
    assert gone.status_code == 404


if "pytest" in sys.modules:  # collected by pytest: the same cases against the session's test stack
    import pytest

    @pytest.fixture(autouse=True)
    def _on_the_test_stack(stack, monkeypatch):
        for name in ("GATEWAY_PORT", "FEATURE_PORT", "RESULTS_PORT", "MODEL_SERVING_PORT", "API_KEYS", "VAR_DIR"):
            monkeypatch.setenv(name, stack.env[name])
        for name in ("INTERNAL_TOKEN", "INTERNAL_TOKEN_FILE"):
            if stack.env.get(name):
                monkeypatch.setenv(name, stack.env[name])


if __name__ == "__main__":
    print(" Exécution des tests...")
    cases = [test_feature_service_health, test_results_service_health, test_end_to_end_prediction,
             test_rgpd_user_data_access, test_rgpd_user_data_deletion]
    failed = 0
    for case in cases:
        try:
            case()
            print(f"  ok    {case.__name__}")
        except Exception as exc:  # noqa: BLE001 - report every case, then fail the run
            failed += 1
            print(f"  FAIL  {case.__name__}: {type(exc).__name__}: {exc}")
    if failed:
        print(f"{len(cases) - failed} passed, {failed} failed")
        sys.exit(1)
    print("✅ Tous les tests sont passés!")
    print(f"{len(cases)} passed, 0 failed")
