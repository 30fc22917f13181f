"""Triton python-backend model for ``car_detector`` (copied into every version dir as model.py).

Runs the version through ``detector_runtime.py`` beside this file (training/serving_runtime.py):

- ``BACKEND`` ``auto`` (default): OpenVINO on CPU when the ``openvino`` package and the
  version's IR are there; TensorFlow is then never imported (memory). Without OpenVINO it
  falls back to the TensorFlow SavedModel, the artifact of record.
- ``OPENVINO_PRECISION`` ``auto`` serves what the exporter's gates chose (model_metadata.json
  ``runtime``: INT8, else BF16 on CPUs with native BF16, else FP32), or force ``int8`` /
  ``bf16`` / ``fp32``;
  ``OPENVINO_THREADS`` / ``OPENVINO_STREAMS`` per instance; ``OPENVINO_CPU_PINNING`` (false by
  default: two one-thread instances pinned themselves to the same core); ``OPENVINO_MAX_BATCH``,
  the largest batch compiled (larger ones run in parts: each compiled size holds its own memory).
- GPU: ``BACKEND=tensorflow`` with ``DEVICE=gpu`` runs the SavedModel on the GPU through the
  CUDA build of TensorFlow (docker-compose.gpu.yml sets both through the environment
  variables CAR_DETECTOR_BACKEND / CAR_DETECTOR_DEVICE, which override config.pbtxt).
- Before anything is compiled, every file of the version is checked against the SHA-256 of its
  manifest.json: a corrupt or mismatched IR makes the load fail with a message naming the file.
- All requests of a dynamic batch are decoded and inferred together; a request whose image does
  not decode fails alone with "could not decode image: ...".
- Per request: BOXES [b,N,4], SCORES [b,N] (calibrated, descending), LABELS [b,N] with N the
  largest detection count in the request (shorter rows padded with score 0, label b"").
  IMAGE_STATS [b,1]: the image's monitoring statistics as a JSON object (services/common/
  image_features.py), computed from the pixels decoded for the network; b"" when the runtime
  decoded in its graph (TensorFlow).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from types import ModuleType

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (bench, tests): only the helpers are used
    pb_utils = None

HERE = os.path.dirname(os.path.abspath(__file__))


def load_runtime(version_dir: str) -> ModuleType:
    """Import this version's detector_runtime.py under a name of its own (versions may differ)."""
    path = os.path.join(version_dir, "detector_runtime.py")
    name = f"car_detector_runtime_{abs(hash(os.path.abspath(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py path always gets a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def exif_upright(data: bytes) -> bytes:
    """JPEG with an EXIF orientation -> upright lossless BMP (TensorFlow's decoder ignores EXIF)."""
    if not data.startswith(b"\xff\xd8") or b"Exif" not in data[:65536]:
        return data
    try:
        import io

        from PIL import Image, ImageOps

        with Image.open(io.BytesIO(data)) as im:
            if im.getexif().get(0x0112, 1) in (None, 0, 1):
                return data
            upright = ImageOps.exif_transpose(im).convert("RGB")
        buf = io.BytesIO()
        upright.save(buf, format="BMP")
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - let the decoder report the problem
        return data


def _param(config: dict, key: str, default: str) -> str:
    env = os.environ.get(f"CAR_DETECTOR_{key}")
    if env:
        return env
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value not in (None, "") else default


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        self.version = str(args["model_version"])
        version_dir = os.path.join(args["model_repository"], self.version)
        self.log_batches = _param(config, "LOG_BATCHES", "true").lower() in ("1", "true", "yes")
        rt = load_runtime(version_dir)
        backend = _param(config, "BACKEND", "auto").lower()
        if backend == "tensorflow":
            threads = int(_param(config, "TF_INTRA_OP_THREADS", "1"))
        else:
            threads = int(_param(config, "OPENVINO_THREADS", "1"))
        # IntegrityError / ValueError propagate: Triton marks the version unavailable with the message.
        self.detector = rt.load_detector(
            version_dir,
            backend=backend,
            precision=_param(config, "OPENVINO_PRECISION", "auto").lower(),
            threads=threads,
            streams=int(_param(config, "OPENVINO_STREAMS", "1")),
            cpu_pinning=_param(config, "OPENVINO_CPU_PINNING", "false").lower() in ("1", "true", "yes"),
            max_batch=int(_param(config, "OPENVINO_MAX_BATCH", "8")),
            device=_param(config, "DEVICE", "cpu").lower(),
        )
        self.tf_path = self.detector.backend == "tensorflow"
        meta = rt.read_metadata(version_dir)
        self.logger.log_info(
            f"car_detector version {self.version} loaded from {version_dir}: {self.detector.description}; "
            f"operating threshold {meta.get('operating_threshold', '?')} (calibrated scores)"
        )

    @staticmethod
    def _images(request) -> np.ndarray:  # type: ignore[no-untyped-def]
        arr = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
        return arr.reshape(-1)  # [b, 1] -> [b]: one encoded file per batch element

    @staticmethod
    def _response(results: list[dict]):  # type: ignore[no-untyped-def]
        n = max((len(r["scores"]) for r in results), default=0)
        b = np.zeros((len(results), n, 4), np.float32)
        s = np.zeros((len(results), n), np.float32)
        lab = np.full((len(results), n), b"", dtype=object)
        for i, r in enumerate(results):
            k = len(r["scores"])
            b[i, :k] = r["boxes"]
            s[i, :k] = r["scores"]
            lab[i, :k] = [v.encode() if isinstance(v, str) else v for v in r["labels"]]
        # One JSON object per image; b"" where the runtime decoded in its graph (TensorFlow).
        stats = np.array([[json.dumps(r["image_stats"]).encode() if r.get("image_stats") else b""] for r in results],
                         dtype=object)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor("BOXES", b), pb_utils.Tensor("SCORES", s), pb_utils.Tensor("LABELS", lab),
                            pb_utils.Tensor("IMAGE_STATS", stats)]
        )

    def execute(self, requests):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        responses: list = [None] * len(requests)
        files: list[bytes] = []
        spans: list[tuple[int, int, int]] = []
        for i, r in enumerate(requests):
            try:
                arr = self._images(r)
            except Exception as e:  # noqa: BLE001 - a malformed request fails alone
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad IMAGE input: {e}"))
                continue
            data = [bytes(v) for v in arr]
            spans.append((i, len(files), len(files) + len(data)))
            files += [exif_upright(d) for d in data] if self.tf_path else data
        try:
            results = self.detector.detect(files) if files else []
        except Exception as e:  # noqa: BLE001 - the batch failed as a whole: say so to each request
            results = None
            for i, _, _ in spans:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {e}"))
        if results is not None:
            for i, lo, hi in spans:
                bad = [r for r in results[lo:hi] if isinstance(r, Exception)]
                if bad:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"could not decode image: {bad[0]}"))
                else:
                    responses[i] = self._response(results[lo:hi])
        if self.log_batches:
            ids = ",".join(r.request_id() or "-" for r in requests)
            self.logger.log_info(
                f"car_detector v{self.version}: {len(requests)} request(s), {len(files)} image(s), "
                f"{(time.perf_counter() - t0) * 1000:.1f} ms, request ids [{ids}]"
            )
        return responses

    def finalize(self) -> None:
        self.logger.log_info(f"car_detector version {self.version} unloading")
