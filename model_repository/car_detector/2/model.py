"""Triton python-backend model for ``car_detector`` (copied into every version dir as model.py).

Loads ``model.savedmodel`` from its own version directory and serves its ``serving_default``
signature (encoded images in, boxes/scores/labels out, NMS done in the graph).

- All requests of a dynamic batch go through ONE signature call (real cross-request batching).
- If that call fails to decode an image, each request is retried alone, so a corrupt file
  fails only its own request with "could not decode image: ...".
- JPEGs with an EXIF orientation are turned upright first (boxes in displayed pixels).
- Per request: BOXES [b,N,4], SCORES [b,N], LABELS [b,N] with N the detection count of the
  image (for b > 1 the maximum in the request; shorter rows padded with score 0, label b"").
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def exif_upright(data: bytes) -> bytes:
    """Apply a JPEG's EXIF orientation so boxes are in the pixels a viewer shows.

    TensorFlow's decoder ignores EXIF. Only JPEGs carrying an orientation other than 1 are
    touched (decoded with PIL, transposed, re-encoded as lossless BMP); everything else,
    including undecodable bytes, is passed through unchanged for the graph to handle.
    """
    if not data.startswith(b"\xff\xd8") or b"Exif" not in data[:65536]:
        return data
    try:
        from PIL import Image, ImageOps

        with Image.open(io.BytesIO(data)) as im:
            if im.getexif().get(0x0112, 1) in (None, 0, 1):
                return data
            upright = ImageOps.exif_transpose(im).convert("RGB")
        buf = io.BytesIO()
        upright.save(buf, format="BMP")
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - let TensorFlow report the decode problem
        return data


def _param(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value not in (None, "") else default


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        intra = int(_param(config, "TF_INTRA_OP_THREADS", "2"))
        inter = int(_param(config, "TF_INTER_OP_THREADS", "1"))
        self.log_batches = _param(config, "LOG_BATCHES", "true").lower() in ("1", "true", "yes")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf  # imported here: thread settings must precede TF's runtime start

        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError:  # TF already initialised in this process (only outside Triton)
            self.logger.log_info("TF threads already fixed in this process; parameters ignored")
        self.tf = tf
        version_dir = os.path.join(args["model_repository"], str(args["model_version"]))
        self.version = str(args["model_version"])
        self.saved = tf.saved_model.load(os.path.join(version_dir, "model.savedmodel"))
        self.serve = self.saved.signatures["serving_default"]
        meta_path = os.path.join(version_dir, "model_metadata.json")
        threshold = "?"
        if os.path.isfile(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                threshold = json.load(f).get("operating_threshold", "?")
        self.logger.log_info(
            f"car_detector version {self.version} loaded from {version_dir} "
            f"(TF threads intra={intra} inter={inter}, operating threshold {threshold})"
        )

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _images(request) -> np.ndarray:  # type: ignore[no-untyped-def]
        arr = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
        return arr.reshape(-1)  # [b, 1] -> [b]: one encoded file per batch element

    def _run(self, images: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        out = self.serve(images=self.tf.constant(images, dtype=self.tf.string))
        return (
            out["boxes"].numpy(),
            out["scores"].numpy(),
            out["labels"].numpy(),
            out["num_detections"].numpy(),
        )

    @staticmethod
    def _response(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, counts: np.ndarray):  # type: ignore[no-untyped-def]
        n = int(counts.max()) if len(counts) else 0
        b = boxes[:, :n, :].astype(np.float32)
        s = scores[:, :n].astype(np.float32)
        lab = labels[:, :n].astype(object)
        # Rows past an image's own count are padding: score 0, empty label.
        pad = np.arange(n)[None, :] >= counts[:, None]
        s[pad] = 0.0
        b[pad] = 0.0
        lab[pad] = b""
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("BOXES", b),
                pb_utils.Tensor("SCORES", s),
                pb_utils.Tensor("LABELS", lab),
            ]
        )

    @staticmethod
    def _short(err: Exception) -> str:
        """The informative line of a TF error ("Invalid JPEG data...", "Input is empty.")."""
        msg = getattr(err, "message", None) or str(err)
        noise = ("Graph execution error", "Detected at node", "<stack traces", "[[{{node", "Traceback", "File ")
        for line in msg.splitlines():
            line = line.strip()
            if line and not line.startswith(noise):
                return line[:300]
        return type(err).__name__

    # ------------------------------------------------------------------ execute

    def execute(self, requests):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        per_request: list[np.ndarray | Exception] = []
        for r in requests:
            try:
                per_request.append(self._images(r))
            except Exception as e:  # noqa: BLE001 - a malformed request fails alone
                per_request.append(e)
        good = [i for i, x in enumerate(per_request) if not isinstance(x, Exception)]
        responses: list = [None] * len(requests)
        for i, x in enumerate(per_request):
            if isinstance(x, Exception):
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad IMAGE input: {self._short(x)}"))

        sizes = [len(per_request[i]) for i in good]
        flat = [exif_upright(bytes(v)) for i in good for v in per_request[i]]
        outputs = None
        if flat:
            try:
                outputs = self._run(flat)
            except self.tf.errors.InvalidArgumentError:
                outputs = None  # some image is undecodable: find out which request, below
            except Exception as e:  # noqa: BLE001
                for i in good:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {self._short(e)}"))
                good = []
        if outputs is not None:
            start = 0
            for i, n in zip(good, sizes):
                sl = slice(start, start + n)
                responses[i] = self._response(*(o[sl] for o in outputs))
                start += n
        else:
            for i in good:
                try:
                    responses[i] = self._response(*self._run([exif_upright(bytes(v)) for v in per_request[i]]))
                except self.tf.errors.InvalidArgumentError as e:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"could not decode image: {self._short(e)}")
                    )
                except Exception as e:  # noqa: BLE001
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {self._short(e)}"))
        if self.log_batches:
            ids = ",".join(r.request_id() or "-" for r in requests)
            self.logger.log_info(
                f"car_detector v{self.version}: {len(requests)} request(s), {len(flat)} image(s), "
                f"{(time.perf_counter() - t0) * 1000:.1f} ms, request ids [{ids}]"
            )
        return responses

    def finalize(self) -> None:
        self.logger.log_info(f"car_detector version {self.version} unloading")
