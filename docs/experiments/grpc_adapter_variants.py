"""Does the gRPC adapter's shape cost CPU? Sync vs asyncio gRPC, tritonclient vs raw stubs.

    python docs/experiments/grpc_adapter_variants.py [--rounds 3] [--seconds 15] [--variants sync,aio,raw]

Issue 13 lists "gRPC sync vs asyncio" as a candidate for the adapter's CPU. Each variant is a
bare `ModelServing.Predict` proxy in a process of its own, with nothing of the real adapter's
work (no token check, log line, metrics, image header check or registry guard), so what is
measured is the skeleton a design choice costs:

- ``sync``: grpc's thread-pool server calling Triton with tritonclient's sync client (the
  adapter's shape today);
- ``aio``: a ``grpc.aio`` server calling Triton with ``tritonclient.grpc.aio``;
- ``raw``: the sync server calling Triton through tritonclient's generated stub
  (``GRPCInferenceServiceStub``) with the request built by hand, without tritonclient's
  InferInput/InferResult wrappers.

Every variant makes the same Triton request as services/common/triton_client.py (the four
outputs, the request id) and answers the same PredictionResponse. Four client threads in this
process send bench.py's frames, closed loop; the variants are interleaved round by round, and
each round reports the server process's CPU (utime + stime) per request. Triton must be up on
TRITON_GRPC_URL (`make run`), with `car_detector` loaded. A one-off: its result and the
decision are in docs/performance.md; it has no make target and no test.
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.common import config  # noqa: E402
from services.common.triton_client import INPUT, OUTPUTS, STATS_OUTPUT  # noqa: E402
from services.proto import model_serving_pb2 as pb  # noqa: E402
from services.proto import model_serving_pb2_grpc as pb_grpc  # noqa: E402

ALL_OUTPUTS = (*OUTPUTS, STATS_OUTPUT)
CLIENTS = 4


def _answer(request_id: str, boxes: np.ndarray, scores: np.ndarray, labels: list[str], version: str) -> pb.PredictionResponse:
    return pb.PredictionResponse(request_id=request_id, model_version=version, detections=[
        pb.Detection(class_name=label, confidence=float(score),
                     bbox=pb.BoundingBox(x_min=box[0], y_min=box[1], x_max=box[2], y_max=box[3]))
        for box, score, label in zip(boxes, scores, labels)])


def _from_result(request_id: str, result) -> pb.PredictionResponse:  # type: ignore[no-untyped-def]
    boxes, scores, labels = (result.as_numpy(name) for name in OUTPUTS)
    return _answer(request_id, boxes[0], scores[0], [label.decode() for label in labels[0]],
                   result.get_response().model_version)


def _image_input(data: bytes):  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpcclient

    image = grpcclient.InferInput(INPUT, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return image


def serve_sync(port: int) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(config.TRITON_GRPC_URL)
    outputs = [grpcclient.InferRequestedOutput(name) for name in ALL_OUTPUTS]

    class Proxy(pb_grpc.ModelServingServicer):
        def Predict(self, request, context):  # type: ignore[no-untyped-def]
            result = client.infer(config.TRITON_MODEL_NAME, [_image_input(request.image_data)], outputs=outputs,
                                  request_id=request.request_id, client_timeout=10)
            return _from_result(request.request_id, result)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ModelServingServicer_to_server(Proxy(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_aio(port: int) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient

    async def main() -> None:
        client = aioclient.InferenceServerClient(config.TRITON_GRPC_URL)
        outputs = [grpcclient.InferRequestedOutput(name) for name in ALL_OUTPUTS]

        class Proxy(pb_grpc.ModelServingServicer):
            async def Predict(self, request, context):  # type: ignore[no-untyped-def]
                result = await client.infer(config.TRITON_MODEL_NAME, [_image_input(request.image_data)], outputs=outputs,
                                            request_id=request.request_id, client_timeout=10)
                return _from_result(request.request_id, result)

        server = grpc.aio.server()
        pb_grpc.add_ModelServingServicer_to_server(Proxy(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def serve_raw(port: int) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(config.TRITON_GRPC_URL))
    outputs = [service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in ALL_OUTPUTS]

    class Proxy(pb_grpc.ModelServingServicer):
        def Predict(self, request, context):  # type: ignore[no-untyped-def]
            infer = service_pb2.ModelInferRequest(model_name=config.TRITON_MODEL_NAME, id=request.request_id, outputs=outputs)
            tensor = infer.inputs.add(name=INPUT, datatype="BYTES")
            tensor.shape.extend([1, 1])
            infer.raw_input_contents.append(serialize_byte_tensor(np.array([request.image_data], dtype=np.object_)).item())
            answer = stub.ModelInfer(infer, timeout=10)
            raw = {tensor.name: content for tensor, content in zip(answer.outputs, answer.raw_output_contents)}
            return _answer(request.request_id, np.frombuffer(raw["BOXES"], np.float32).reshape(-1, 4),
                           np.frombuffer(raw["SCORES"], np.float32),
                           [label.decode() for label in deserialize_bytes_tensor(raw["LABELS"])], answer.model_version)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ModelServingServicer_to_server(Proxy(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


SERVERS = {"sync": serve_sync, "aio": serve_aio, "raw": serve_raw}


def load(port: int, images: list[bytes], seconds: float) -> int:
    """Closed loop of CLIENTS threads for `seconds`; returns the requests answered."""
    stub = pb_grpc.ModelServingStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    answered, deadline, lock = [0], time.monotonic() + seconds, threading.Lock()

    failures: list[grpc.RpcError] = []

    def client(first: int) -> None:
        index = first
        while time.monotonic() < deadline:
            try:
                stub.Predict(pb.PredictionRequest(image_data=images[index % len(images)], request_id=f"exp-{first}-{index}"))
            except grpc.RpcError as error:
                failures.append(error)
                return
            index += CLIENTS
            with lock:
                answered[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:  # a variant that fails is not a measurement
        raise SystemExit(f"port {port}: {failures[0].code()}: {failures[0].details()}")
    return answered[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--variants", default="sync,aio,raw")
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        SERVERS[args.serve](args.port)
        return 0
    from loadtest import bench, bench_stack

    variants = [name for name in args.variants.split(",") if name]
    unknown = sorted(set(variants) - set(SERVERS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(SERVERS)}")
    images = bench.frames(16)
    servers = {name: (subprocess.Popen([sys.executable, __file__, "--serve", name, "--port", str(50070 + k)]), 50070 + k)
               for k, name in enumerate(variants)}
    try:
        time.sleep(4)
        for _process, port in servers.values():
            load(port, images, 3)  # warm: channels, Triton's instances
        print(f"{bench_stack.cpu_description()}, {psutil.cpu_count()} cores, {CLIENTS} clients\n")
        print("| round | variant | requests/s | server CPU ms per request |\n|---|---|---:|---:|")
        for round_ in range(args.rounds):
            for name, (process, port) in servers.items():
                server = psutil.Process(process.pid)
                cpu_before, started = sum(server.cpu_times()[:2]), time.monotonic()
                answered = load(port, images, args.seconds)
                cpu = sum(server.cpu_times()[:2]) - cpu_before
                print(f"| {round_} | {name} | {answered / (time.monotonic() - started):.1f} | {1000 * cpu / answered:.2f} |", flush=True)
    finally:
        for process, _port in servers.values():
            process.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
