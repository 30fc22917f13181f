"""The gateway's clients of the internal services: one pooled, keep-alive
connection set per process, a timeout on every call, and the request id on
every hop (HTTP header, gRPC metadata and request field)."""
from __future__ import annotations

import os
import threading
from typing import Any

import grpc
import requests
from requests.adapters import HTTPAdapter

from services.common import config
from services.common.web import ApiError
from services.proto import model_serving_pb2 as pb
from services.proto import model_serving_pb2_grpc as pb_grpc

RETRY_AFTER = {"Retry-After": "5"}


def unavailable(what: str) -> ApiError:
    return ApiError(503, f"{what} is unavailable; retry later", RETRY_AFTER)


class HttpService:
    def __init__(self, name: str, base_url: str) -> None:
        self.name, self.base_url = name, base_url.rstrip("/")
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=32))

    def call(self, method: str, path: str, request_id: str, **kwargs: Any) -> requests.Response:
        headers = {"X-Request-ID": request_id, **kwargs.pop("headers", {})}
        try:
            return self.session.request(method, f"{self.base_url}{path}", headers=headers,
                                        timeout=(2.0, config.INTERNAL_TIMEOUT_S), **kwargs)
        except requests.RequestException:
            raise unavailable(f"the {self.name}") from None


class ModelServingClient:
    """gRPC channels cannot cross fork(): each gunicorn worker opens its own, lazily."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._stub: pb_grpc.ModelServingStub | None = None

    def stub(self) -> pb_grpc.ModelServingStub:
        with self._lock:
            if self._stub is None or self._pid != os.getpid():
                limit = config.MAX_UPLOAD_BYTES + 64 * 1024
                channel = grpc.insecure_channel(self.address, options=[
                    ("grpc.max_send_message_length", limit),
                    ("grpc.max_receive_message_length", limit),
                ])
                self._stub, self._pid = pb_grpc.ModelServingStub(channel), os.getpid()
            return self._stub

    def predict(self, image: bytes, user_id: str, request_id: str) -> pb.PredictionResponse:
        try:
            return self.stub().Predict(
                pb.PredictionRequest(request_id=request_id, image_data=image, user_id=user_id),
                timeout=config.INTERNAL_TIMEOUT_S,
                metadata=(("x-request-id", request_id),),
            )
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise ApiError(400, error.details() or "the model could not read the image") from None
            raise unavailable("the model") from None

    def health(self) -> str:
        return self.stub().HealthCheck(pb.HealthCheckRequest(), timeout=2.0).status
