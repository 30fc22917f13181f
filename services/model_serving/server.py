"""gRPC model-serving adapter: the seed's `ModelServing` API over Triton.

It validates the image (so a bad one is INVALID_ARGUMENT, not INTERNAL: size, format
and pixel count here, the pixels themselves where Triton decodes them), asks
Triton for detections through one reused channel, filters them at the
configured confidence, and reports the model version Triton actually used.
Also serves the standard `grpc.health.v1` Health service, kept in step with
Triton's readiness by a background probe.
"""
from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import config, metrics, tls
from services.common.images import ImageRejected, check_image
from services.common.logs import detection_fields, request_id_var, setup_logging
from services.common.pseudonym import HASH_PATTERN, hash_user_id
from services.common.service_token import GRPC_TOKEN_KEY, internal_token, token_matches
from services.model_serving.triton import ModelRejected, ModelUnavailable, TritonDetector
from services.common.integrity import ServingGuard
from services.proto import model_serving_pb2 as pb
from services.proto import model_serving_pb2_grpc as pb_grpc

SERVICE_NAME = "model-serving"
FULL_SERVICE_NAME = "modelserving.ModelServing"
USER_HASH = re.compile(HASH_PATTERN)
HEALTH_PROBE_INTERVAL_S = config.HEALTH_PROBE_INTERVAL_S
# The standard health service stays open, like /health: probes (kubelet, stack.py) carry
# no metadata, and it tells only SERVING or not.
_OPEN_METHOD_PREFIX = "/grpc.health.v1.Health/"

log = setup_logging(SERVICE_NAME)


def _request_id(request: pb.PredictionRequest, context: grpc.ServicerContext) -> str:
    metadata = dict(context.invocation_metadata() or ())
    return request.request_id or metadata.get("x-request-id") or uuid.uuid4().hex


def _subject(request: pb.PredictionRequest) -> dict[str, str]:
    """The log field for the data subject: the gateway sends only the keyed hash; a direct
    caller may send the id (hashed here); a malformed hash is not logged as one."""
    if request.HasField("user_hash"):
        return {"user.hash": request.user_hash} if USER_HASH.fullmatch(request.user_hash) else {}
    return {"user.hash": hash_user_id(request.user_id)} if request.user_id else {}


class ModelServingServicer(pb_grpc.ModelServingServicer):
    def __init__(self, detector: TritonDetector, guard: ServingGuard | None = None) -> None:
        self.detector = detector
        # Registry check (governance/model_registry.py): a version whose files no longer
        # match their registered hash is refused, loudly.
        self.guard = guard or ServingGuard()

    def integrity_refusal(self) -> str | None:
        try:
            version = self.detector.served_version()
        except Exception:
            return None  # Triton not answering: readiness reports that already
        return self.guard.refusal(version)

    def Predict(self, request: pb.PredictionRequest, context: grpc.ServicerContext) -> pb.PredictionResponse:
        request_id = _request_id(request, context)
        token = request_id_var.set(request_id)
        started, response = time.perf_counter(), None
        try:
            response = self._predict(request, request_id, context)
            return response
        finally:
            metrics.observe_grpc_predict(context, response, time.perf_counter() - started)
            request_id_var.reset(token)

    def _predict(self, request: pb.PredictionRequest, request_id: str, context: grpc.ServicerContext) -> pb.PredictionResponse:
        user = _subject(request)
        try:
            # Headers only: Triton decodes the pixels and refuses a corrupt file (ModelRejected below).
            image = check_image(request.image_data, decode=False)
        except ImageRejected as exc:
            log.info("image rejected: %s", exc.message, extra={"event.action": "predict", "event.outcome": "failure", **user})
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        threshold = request.min_confidence if request.min_confidence > 0 else None  # None: the served version's
        try:
            inference = self.detector.detect(image.model_bytes, request_id, threshold)
        except ModelRejected as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the model could not read the image: {exc}")
        except ModelUnavailable as exc:
            log.warning("triton unavailable: %s", exc, extra={"event.action": "predict", "event.outcome": "failure"})
            context.abort(grpc.StatusCode.UNAVAILABLE, "the model server is unavailable; retry later")
        refusal = self.guard.refusal(inference.model_version)
        if refusal:
            log.error("refused: %s", refusal, extra={"event.action": "predict", "event.outcome": "failure"})
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        log.info(
            "predicted %d detections",
            len(inference.detections),
            extra={
                "event.action": "predict",
                "event.outcome": "success",
                "event.duration": int(inference.inference_time_ms * 1e6),
                "model.version": inference.model_version,
                **detection_fields(inference.detections),
                **user,
            },
        )
        return pb.PredictionResponse(
            request_id=request_id,
            detections=[
                pb.Detection(
                    class_name=d.class_name,
                    confidence=d.confidence,
                    bbox=pb.BoundingBox(x_min=d.box[0], y_min=d.box[1], x_max=d.box[2], y_max=d.box[3]),
                )
                for d in inference.detections
            ],
            model_version=inference.model_version,
            inference_time_ms=inference.inference_time_ms,
            model_name=self.detector.model_name,
            image_width=image.width,
            image_height=image.height,
            image_stats=inference.image_stats or {},
        )

    def HealthCheck(self, request: pb.HealthCheckRequest, context: grpc.ServicerContext) -> pb.HealthCheckResponse:
        if not self.detector.is_ready():
            return pb.HealthCheckResponse(status="NOT_SERVING", detail=f"model {self.detector.model_name} is not ready in Triton")
        refusal = self.integrity_refusal()
        if refusal:
            return pb.HealthCheckResponse(status="NOT_SERVING", detail=refusal)
        return pb.HealthCheckResponse(status="SERVING", model_version=self.detector.served_version())


def _follow_triton(detector: TritonDetector, health_servicer: health.HealthServicer, stop: threading.Event,
                   servicer: ModelServingServicer | None = None) -> None:
    """Keep grpc.health.v1 in step with Triton (and the registry check), so probes see what users would."""
    last = None
    while not stop.is_set():
        serving = detector.is_ready() and not (servicer and servicer.integrity_refusal())
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != last:
            for name in ("", FULL_SERVICE_NAME):
                health_servicer.set(name, status)
            log.info("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status), extra={"event.action": "health"})
            last = status
        stop.wait(HEALTH_PROBE_INTERVAL_S)


class TokenInterceptor(grpc.ServerInterceptor):
    """Every ModelServing call needs the service token in `x-internal-token` metadata;
    without it the call ends UNAUTHENTICATED before the servicer sees the request."""

    def __init__(self, token: str) -> None:
        self._token = token

        def deny(_request: bytes, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"missing or wrong {GRPC_TOKEN_KEY} metadata (internal service)")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method.startswith(_OPEN_METHOD_PREFIX):
            return continuation(handler_call_details)
        presented = next((value for key, value in handler_call_details.invocation_metadata or ()
                          if key == GRPC_TOKEN_KEY), None)
        if isinstance(presented, str) and token_matches(presented, self._token):
            return continuation(handler_call_details)
        return self._deny


def build_server(token: str) -> grpc.Server:
    """The adapter's gRPC server: token check, bounded concurrency and message sizes."""
    message_limit = config.MAX_UPLOAD_BYTES + 64 * 1024
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.GRPC_WORKERS),
        interceptors=[TokenInterceptor(token)],
        # Beyond this many RPCs in flight (running or queued for a thread) a call is refused
        # at once with RESOURCE_EXHAUSTED instead of queueing without bound.
        maximum_concurrent_rpcs=config.GRPC_MAX_CONCURRENT_RPCS,
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
            ("grpc.max_metadata_size", 16 * 1024),
        ],
    )


def serve() -> None:
    token = internal_token()  # no token, no start
    detector = TritonDetector(config.TRITON_GRPC_URL, config.TRITON_MODEL_NAME, config.INTERNAL_TIMEOUT_S)
    server = build_server(token)
    servicer = ModelServingServicer(detector)
    pb_grpc.add_ModelServingServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{config.BIND_HOST}:{config.MODEL_SERVING_PORT}"
    credentials = tls.grpc_server_credentials()  # TLS when GRPC_TLS_CERT_FILE/KEY_FILE are set
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    stop = threading.Event()
    threading.Thread(target=_follow_triton, args=(detector, health_servicer, stop, servicer), daemon=True).start()
    server.start()
    metrics.serve_standalone(SERVICE_NAME, config.MODEL_SERVING_METRICS_PORT, config.BIND_HOST)
    log.info("listening on %s, Triton at %s", address, config.TRITON_GRPC_URL, extra={"event.action": "start"})

    def _shutdown(signum: int, _frame: object) -> None:
        stop.set()
        server.stop(grace=5)

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    server.wait_for_termination()


if __name__ == "__main__":
    serve()
