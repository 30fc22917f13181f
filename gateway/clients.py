"""The gateway's clients of the internal services: one pooled, keep-alive
connection set per process, a timeout on every call, a circuit breaker per
dependency, and the request id on every hop (HTTP header, gRPC metadata and
request field).

Failure policy (docs/reliability.md):
- every call has a connect and a read timeout (INTERNAL_TIMEOUT_S);
- after BREAKER_FAILURES consecutive failures of a dependency its breaker opens and
  callers get 503 + Retry-After at once, without waiting on a dead dependency;
- at most one retry, and only when it cannot do harm: the connection was refused
  before anything was sent, or the call is idempotent (reads, erasure, and the
  results POST, which is keyed by its unique request id). Never after a timeout.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlencode

import grpc
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, ProtocolError

from services.common import config, tls
from services.common.resilience import CircuitBreaker, CircuitOpen
from services.common.service_token import GRPC_TOKEN_KEY, INTERNAL_TOKEN_HEADER, internal_token
from services.common.web import ApiError
from services.proto import model_serving_pb2 as pb
from services.proto import model_serving_pb2_grpc as pb_grpc

RETRY_AFTER_S = config.RETRY_AFTER_S
RETRY_PAUSE_S = 0.2
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def unavailable(what: str, retry_after: str | None = None) -> ApiError:
    return ApiError(503, f"{what} is unavailable; retry later", {"Retry-After": retry_after or str(RETRY_AFTER_S)})


class Answer:
    """An internal service's answer: status, headers and the whole body."""

    __slots__ = ("status_code", "headers", "content", "attempts")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes, attempts: int = 1) -> None:
        self.status_code, self.headers, self.content, self.attempts = status_code, headers, content, attempts

    def json(self) -> Any:
        return json.loads(self.content)


class HttpService:
    """urllib3 directly, not requests: on the detection path requests' own layers cost about
    as much CPU as the HTTP exchange itself (docs/performance.md)."""

    def __init__(self, name: str, base_url: str) -> None:
        self.name, self.base_url = name, base_url.rstrip("/")
        self.breaker = CircuitBreaker(name)
        # Internal calls: no proxy or CA bundle from the environment (only TLS_CA_FILE counts);
        # verification is never switched off. No urllib3-level retries or redirects: the one
        # retry below is decided here, knowingly.
        self.pool = urllib3.PoolManager(
            num_pools=4, maxsize=32, retries=False, timeout=urllib3.Timeout(connect=2.0, read=config.INTERNAL_TIMEOUT_S),
            cert_reqs="CERT_REQUIRED", ca_certs=tls.ca_file() or None)
        self.auth_headers = {INTERNAL_TOKEN_HEADER: internal_token()}  # required: no token, no start

    def ensure_available(self) -> None:
        """Raise the 503 now if the breaker is open, before spending work that would be
        thrown away (e.g. an inference whose result could not be stored)."""
        if self.breaker.state == "open":
            raise unavailable(f"the {self.name}", str(max(1, self.breaker.retry_after())))

    def call(self, method: str, path: str, request_id: str, idempotent: bool | None = None, *,
             data: bytes | None = None, json: Any = None, params: Mapping[str, str] | None = None,
             headers: Mapping[str, str] | None = None) -> Answer:
        """One call, with at most one retry; 503 ApiError when the dependency is down.
        A 5xx answer is returned to the caller (and counted as a failure)."""
        sent_headers = {"X-Request-ID": request_id, **self.auth_headers, **(headers or {})}
        if json is not None:
            data = _json_bytes(json)
            sent_headers["Content-Type"] = "application/json"
        url = f"{self.base_url}{path}"
        if params:
            url += ("&" if "?" in path else "?") + urlencode(params)
        idempotent = method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent
        try:
            self.breaker.before_call()
        except CircuitOpen as open_:
            raise unavailable(f"the {self.name}", open_.retry_after) from None
        for attempt in (1, 2):
            try:
                answer = self.pool.request(method, url, body=data, headers=sent_headers, redirect=False)
            except ConnectTimeoutError:  # refused or not connected in time: certainly never sent
                if attempt == 1:
                    time.sleep(RETRY_PAUSE_S)
                    continue
                self.breaker.failure()
                raise unavailable(f"the {self.name}") from None
            except ProtocolError:  # the connection broke mid-call: the server may have acted
                if attempt == 1 and idempotent:
                    time.sleep(RETRY_PAUSE_S)
                    continue
                self.breaker.failure()
                raise unavailable(f"the {self.name}") from None
            except HTTPError:  # read timeout, TLS, anything else: no retry
                self.breaker.failure()
                raise unavailable(f"the {self.name}") from None
            except BaseException:  # a local error says nothing about the dependency
                self.breaker.release()
                raise
            if answer.status >= 500:
                self.breaker.failure()
            else:
                self.breaker.success()
            return Answer(answer.status, answer.headers, answer.data, attempt)
        raise AssertionError("unreachable")


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class _Stored(NamedTuple):
    status_code: int


class ResultsService(HttpService):
    """The results service. `POST /predictions` is idempotent by its (client, request id),
    so it may be retried once; a 409 for the *retry* is checked against the stored
    record: if it is the prediction we sent, the first attempt stored it -> 201."""

    def call(self, method: str, path: str, request_id: str, idempotent: bool | None = None,  # type: ignore[override]
             **kwargs: Any) -> Answer | _Stored:
        if not (method == "POST" and path == "/predictions" and kwargs.get("json") is not None):
            return super().call(method, path, request_id, idempotent, **kwargs)
        sent = kwargs["json"]
        answer = super().call(method, path, request_id, True, **kwargs)
        if answer.status_code == 409 and answer.attempts > 1:
            # Request ids are per client: look in the sender's namespace only.
            stored = super().call("GET", f"/predictions/{sent['request_id']}", request_id,
                                  params={"client_id": sent["client_id"]}, headers=kwargs.get("headers", {}))
            if stored.status_code == 200 and _same_prediction(stored.json(), sent):
                return _Stored(201)
        return answer


def _same_prediction(stored: dict, sent: dict) -> bool:
    return all(stored.get(key) == sent.get(key) for key in ("request_id", "client_id", "model_version", "detections"))


class ModelServingClient:
    """gRPC channels cannot cross fork(): each gunicorn worker opens its own, lazily."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.breaker = CircuitBreaker("model serving")
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._stub: pb_grpc.ModelServingStub | None = None
        self._token = ((GRPC_TOKEN_KEY, internal_token()),)

    def stub(self) -> pb_grpc.ModelServingStub:
        with self._lock:
            if self._stub is None or self._pid != os.getpid():
                limit = config.MAX_UPLOAD_BYTES + 64 * 1024
                channel = tls.grpc_channel(self.address, options=[
                    ("grpc.max_send_message_length", limit),
                    ("grpc.max_receive_message_length", limit),
                    # Reconnect within ~2 s of the adapter coming back (default backoff grows to 120 s).
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.min_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                ])
                self._stub, self._pid = pb_grpc.ModelServingStub(channel), os.getpid()
            return self._stub

    def predict(self, image: bytes, user_hash: str, request_id: str) -> pb.PredictionResponse:
        """The subject goes as its keyed hash (`user_hash`), never in clear.
        No retry: the adapter fails fast when Triton is down, and a retry would only
        double the wait; the breaker turns repeated failures into an immediate 503."""
        try:
            self.breaker.before_call()
        except CircuitOpen as open_:
            raise unavailable("the model", open_.retry_after) from None
        try:
            answer = self.stub().Predict(
                pb.PredictionRequest(request_id=request_id, image_data=image, user_hash=user_hash),
                timeout=config.INTERNAL_TIMEOUT_S,
                metadata=(("x-request-id", request_id), *self._token),
            )
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                self.breaker.success()
                raise ApiError(400, error.details() or "the model could not read the image") from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message" in (error.details() or "").lower():
                self.breaker.success()
                raise ApiError(413, "the image is too large for the model service") from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # the adapter's concurrency bound: busy, not down
                self.breaker.release()
                raise unavailable("the model (busy)", "1") from None
            self.breaker.failure()
            raise unavailable("the model") from None
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.success()
        return answer

    def health(self) -> str:
        try:
            return self.stub().HealthCheck(pb.HealthCheckRequest(), timeout=2.0, metadata=self._token).status
        except grpc.RpcError as error:
            raise RuntimeError(f"model serving unreachable ({error.code().name})") from None
