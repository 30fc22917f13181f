"""Runtime of one car_detector version: copied into the version directory as detector_runtime.py.

Self-contained (numpy, Pillow, optionally simplejpeg and OpenCV, and OpenVINO or TensorFlow), so the
Triton python backend's model.py, the bench and the tests all run the same code on the same
files.

- ``verify_manifest`` (``version_manifest.py`` beside this file): every file of the version
  must match the SHA-256 in its manifest.json (written last by the exporter, registered with
  the rest); a corrupt, swapped or unlisted OpenVINO IR is refused before it is compiled.
- ``OpenVinoDetector``: upright RGB or grey JPEGs decoded by simplejpeg where installed, every
  other file by Pillow (EXIF applied); a batch decodes on the instance's threads; resized to the
  input size by OpenCV (the SavedModel's bilinear resize; in the graph of IRs up to version 8);
  uint8 batch into the IR, which runs the network, picks heat-map peaks and turns distances into boxes; top-k, per-class NMS, the score
  calibration and the box scale run in numpy (``detections.py`` beside this file) on at most 300
  candidates per image. No TensorFlow import. From the
  same pixels it computes the monitoring statistics (``image_features.py`` beside this file).
- ``TensorFlowDetector``: the SavedModel's serving signature (decoding, resizing, NMS and the
  same calibration in its graph, the box scale after it); the fallback without OpenVINO, and the GPU path. It decodes
  in its graph, so it returns no statistics (callers then ask the feature service).
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

try:
    import simplejpeg
except ImportError:  # an image without it decodes every format with Pillow
    simplejpeg = None
try:
    import cv2
except ImportError:  # an image without it resizes in numpy: the same pixels, at forty times the CPU
    cv2 = None  # type: ignore[assignment]

OPENVINO_DIR = "openvino"
IR_FILES = {"fp32": "model_fp32.xml", "int8": "model_int8.xml"}


class DecodeError(ValueError):
    """The bytes of one request are not an image this runtime can read."""


def _sibling(file_name: str) -> ModuleType | None:
    """The module `file_name` beside this file (a version directory, or training/), imported
    under a name of its own (versions may differ); None when there is none."""
    beside = Path(__file__).with_name(file_name)
    if not beside.exists():
        return None
    name = f"car_detector_{beside.stem}_{abs(hash(str(beside.resolve())))}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, beside)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


_manifest: ModuleType = _sibling("version_manifest.py")  # type: ignore[assignment]  # copied beside it, always
IntegrityError, MANIFEST, verify_manifest = _manifest.IntegrityError, _manifest.MANIFEST, _manifest.verify_manifest
_detections: ModuleType = _sibling("detections.py")  # type: ignore[assignment]  # copied beside it from version 7
box_factor, postprocess, raw_floor, scale_boxes = (_detections.box_factor, _detections.postprocess, _detections.raw_floor,
                                                   _detections.scale_boxes)


def _pixel_statistics() -> Callable[[np.ndarray], dict] | None:
    """`pixel_statistics_of_full` of the image_features.py beside this file (a version
    directory), else of the project (training, tests); None for a version exported before it."""
    beside = _sibling("image_features.py")
    if beside is not None:
        return beside.pixel_statistics_of_full  # type: ignore[no-any-return]
    if Path(__file__).name == "serving_runtime.py":  # the project's own copy (training/)
        from services.common.image_features import pixel_statistics_of_full

        return pixel_statistics_of_full
    return None


def decode_image(data: bytes) -> np.ndarray:
    """Encoded file -> uint8 RGB [H, W, 3] in displayed orientation (EXIF applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:  # reads the header only
            im: Image.Image = opened
            upright = im.format != "JPEG" or im.getexif().get(0x0112, 1) in (None, 0, 1)
            if simplejpeg is not None and im.format == "JPEG" and upright and im.mode in ("RGB", "L"):
                return _decode_jpeg(data)
            if not upright:
                im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grey: keep the high byte, as TensorFlow's uint8 conversion does.
                grey = (np.clip(np.asarray(im, np.int64), 0, 65535) >> 8).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DecodeError(str(e) or type(e).__name__) from None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DecodeError("empty image")
    return arr


def _decode_jpeg(data: bytes) -> np.ndarray:
    """libjpeg-turbo straight into a numpy array: the same pixels as Pillow's decode (same
    library, same DCT and upsampling), at about half its CPU for a road frame, because Pillow
    copies the decoded image twice on its way to numpy."""
    try:  # strict: a warning (a truncated file) is an error, as it is for Pillow
        rgb: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as e:
        raise DecodeError(str(e) or "unreadable JPEG") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise DecodeError("empty image")
    return rgb


def resize_frame(rgb: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3], bilinear with half-pixel centres computed in float and
    rounded: what the IRs up to version 8 do in their graph (OpenVINO's Interpolate, linear_onnx),
    to the last level but for 0.004 % of the pixels (values at .5 that round the other way).
    OpenCV does it at a tenth of that Interpolate's CPU."""
    if rgb.shape[1] == wh[0] and rgb.shape[0] == wh[1]:
        return rgb
    if cv2 is not None:
        resized = cv2.resize(rgb.astype(np.float32), wh, interpolation=cv2.INTER_LINEAR)
        return np.rint(resized).astype(np.uint8)  # type: ignore[no-any-return]
    out = rgb.astype(np.float32)
    for axis, size in ((0, wh[1]), (1, wh[0])):
        src = np.clip((np.arange(size, dtype=np.float32) + 0.5) * (out.shape[axis] / size) - 0.5, 0, out.shape[axis] - 1)
        low = np.floor(src).astype(np.int64)
        high = np.minimum(low + 1, out.shape[axis] - 1)
        frac = (src - low).reshape([-1 if a == axis else 1 for a in range(3)])
        out = np.take(out, low, axis) * (1 - frac) + np.take(out, high, axis) * frac
    return np.rint(out).astype(np.uint8)  # type: ignore[no-any-return]


def read_metadata(version_dir: Path) -> dict:
    path = Path(version_dir) / "model_metadata.json"
    return json.loads(path.read_text()) if path.is_file() else {}


PRECISIONS = ("fp32", "bf16", "int8")
BATCH_SIZES = (1, 2, 4, 8)  # compiled with a static batch dimension; a batch is padded up to one


def cpu_has_bf16() -> bool:
    """Native BF16 on this CPU (AVX512_BF16 or AMX): without it OpenVINO would emulate."""
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def served_precision(meta: dict) -> str:
    """What ``auto`` serves: INT8 when the exporter's INT8 gate passed; else BF16 when its
    BF16 gate passed and this CPU computes BF16 natively; else FP32."""
    runtime = meta.get("runtime", {})
    if runtime.get("serving") == "openvino-int8":
        return "int8"
    if runtime.get("bf16_gate", {}).get("passed") and cpu_has_bf16():
        return "bf16"
    return "fp32"


class OpenVinoDetector:
    """The version's OpenVINO IR on CPU. ``precision``: int8, bf16 (the FP32 IR computed in
    BF16), fp32 or auto (``served_precision``).

    The IR's batch dimension is dynamic; compiled with a static one it costs about 30% less
    CPU per image (docs/performance.md), so one compiled model per size in BATCH_SIZES is
    made when first needed (they share the weights file), and a batch is padded up to one."""

    backend = "openvino"

    def __init__(self, version_dir: str | Path, precision: str = "auto", threads: int = 1, streams: int = 1,
                 verify: bool = True, cpu_pinning: bool | None = None, max_batch: int = BATCH_SIZES[-1]) -> None:
        import threading

        import openvino as ov

        self.version_dir = Path(version_dir)
        self.meta = read_metadata(self.version_dir)
        if precision == "auto":
            precision = served_precision(self.meta)
        if precision not in PRECISIONS:
            raise ValueError(f"unknown OpenVINO precision {precision!r} ({', '.join(PRECISIONS)} or auto)")
        self.precision = precision
        xml = f"{OPENVINO_DIR}/{IR_FILES['int8' if precision == 'int8' else 'fp32']}"
        if verify:
            verify_manifest(self.version_dir, required=[xml, xml[:-4] + ".bin"])
        elif not (self.version_dir / xml).is_file():
            raise IntegrityError(f"{self.version_dir}: {xml} missing")
        self._xml = self.version_dir / xml
        self._core = ov.Core()
        self._config = {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": int(streams),
                        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        if cpu_pinning is not None:  # None: OpenVINO's default (pinned); Triton's stub unpins (config.pbtxt)
            self._config["ENABLE_CPU_PINNING"] = bool(cpu_pinning)
        self._compiled: dict[int, object] = {}  # larger batches than max_batch run in parts (memory)
        self._sizes = tuple(b for b in BATCH_SIZES if b <= max(1, max_batch))
        self._lock = threading.Lock()
        self._requests: dict[int, object] = {}
        size = self.meta.get("input_size", {})
        self.input_wh = (int(size.get("width", 512)), int(size.get("height", 288)))
        # IRs up to version 8 resize in their graph and take any frame size; later ones take the
        # input size, and the frame is resized here (resize_frame).
        self.resizes_in_graph = True
        self._compiled_for(1)  # a corrupt or mismatched IR fails here, at load
        self.class_names = list(self.meta.get("class_names", ["car"]))
        self.calibration = self.meta.get("calibration")
        self.floor = raw_floor(self.calibration, float(self.meta.get("score_floor", 0.05)))
        self.box_factor = box_factor(self.meta)
        self.pixel_statistics = _pixel_statistics()
        self._pool = ThreadPoolExecutor(int(threads), thread_name_prefix="decode") if int(threads) > 1 else None
        self.description = f"OpenVINO {ov.__version__} {precision.upper()} on CPU, {threads} thread(s), {streams} stream(s)"

    def _compiled_for(self, batch: int):  # type: ignore[no-untyped-def]
        with self._lock:
            if batch not in self._compiled:
                try:
                    model = self._core.read_model(str(self._xml))
                    self.resizes_in_graph = not model.input(0).get_partial_shape()[1].is_static
                    w, h = (-1, -1) if self.resizes_in_graph else self.input_wh
                    model.reshape({0: [batch, h, w, 3]})
                    self._compiled[batch] = self._core.compile_model(model, "CPU", self._config)
                except RuntimeError as e:
                    raise IntegrityError(f"{self.version_dir}: OpenVINO refused {self._xml.name}: "
                                         f"{str(e).splitlines()[0][:300]}") from None
            return self._compiled[batch]

    def _request(self, batch: int):  # type: ignore[no-untyped-def]
        if batch not in self._requests:
            self._requests[batch] = self._compiled_for(batch).create_infer_request()  # type: ignore[attr-defined]
        return self._requests[batch]

    def with_new_request(self) -> OpenVinoDetector:
        """A view sharing the compiled models with infer requests of its own (one per client thread)."""
        clone = object.__new__(OpenVinoDetector)
        clone.__dict__.update(self.__dict__)
        clone._requests = {}
        return clone

    def infer_arrays(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Decoded uint8 RGB images -> per image (boxes, scores, class ids)."""
        results: list = [None] * len(images)
        frames = images if self.resizes_in_graph else [resize_frame(im, self.input_wh) for im in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            groups.setdefault(frame.shape[:2], []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self._sizes[-1]):
                chunk = idx[start:start + self._sizes[-1]]
                size = next(b for b in self._sizes if b >= len(chunk))
                batch = np.stack([frames[i] for i in chunk] + [frames[chunk[-1]]] * (size - len(chunk)))
                request = self._request(size)
                out = request.infer({0: batch})
                compiled = self._compiled[size]
                heat, boxes = out[compiled.output("heat")], out[compiled.output("boxes")]  # type: ignore[attr-defined]
                for j, i in enumerate(chunk):
                    h, w = images[i].shape[:2]
                    scale = np.array([w / self.input_wh[0], h / self.input_wh[1]], np.float32)
                    results[i] = postprocess(heat[j], boxes[j], scale, np.array([w, h], np.float32), self.floor,
                                             self.calibration, self.box_factor)
        return results

    def _prepare(self, data: bytes) -> tuple[np.ndarray, dict | None] | DecodeError:
        """One file -> (uint8 RGB, monitoring statistics) or its DecodeError."""
        try:  # Pillow and numpy release the GIL: the files of a batch decode in parallel
            rgb = decode_image(data)
        except DecodeError as e:
            return e
        return rgb, self.pixel_statistics(rgb) if self.pixel_statistics else None

    def detect(self, files: list[bytes]) -> list[dict | Exception]:
        """Encoded files -> per file {boxes, scores, labels, image_stats} or its DecodeError."""
        pool = self._pool if len(files) > 1 else None
        prepared = list(pool.map(self._prepare, files)) if pool else [self._prepare(d) for d in files]
        good = [i for i, p in enumerate(prepared) if not isinstance(p, Exception)]
        outs = self.infer_arrays([prepared[i][0] for i in good]) if good else []  # type: ignore[index]
        results: list = list(prepared)
        for i, (b, s, c) in zip(good, outs):
            results[i] = {"boxes": b, "scores": s, "labels": [self.class_names[k] for k in c],
                          "image_stats": prepared[i][1]}  # type: ignore[index]
        return results


# boxes, scores, labels, num_detections of the SavedModel's signature
SavedModelOutputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class TensorFlowDetector:
    """The SavedModel (artifact of record): CPU fallback without OpenVINO, or a GPU if TF sees one."""

    backend = "tensorflow"

    def __init__(self, version_dir: str | Path, intra: int = 1, inter: int = 1, device: str = "cpu",
                 verify: bool = True) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.version_dir = Path(version_dir)
        if verify and (self.version_dir / MANIFEST).is_file():
            verify_manifest(self.version_dir)
        if device == "cpu":
            os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError:  # TF already initialised in this process (only outside Triton)
            pass
        self.tf = tf
        self.meta = read_metadata(self.version_dir)
        self.box_factor = box_factor(self.meta)
        self.serve = tf.saved_model.load(str(self.version_dir / "model.savedmodel")).signatures["serving_default"]
        gpus = tf.config.list_logical_devices("GPU")
        self.description = f"TensorFlow {tf.__version__} SavedModel on {'GPU' if gpus and device != 'cpu' else 'CPU'}, intra {intra}"

    def run(self, files: list[bytes]) -> SavedModelOutputs:
        out = self.serve(images=self.tf.constant(files, dtype=self.tf.string))
        return out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy(), out["num_detections"].numpy()

    def detect(self, files: list[bytes]) -> list[dict | Exception]:
        groups: list[tuple[list[int], SavedModelOutputs | DecodeError]]
        try:
            groups = [(list(range(len(files))), self.run(files))]
        except self.tf.errors.InvalidArgumentError:
            groups = []  # some file is undecodable: run them one by one to find which
            for i, data in enumerate(files):
                try:
                    groups.append(([i], self.run([data])))
                except self.tf.errors.InvalidArgumentError as e:
                    groups.append(([i], DecodeError(short_tf_error(e))))
        results: list = [None] * len(files)
        for idx, out in groups:
            if isinstance(out, Exception):
                results[idx[0]] = out
                continue
            boxes, scores, labels, counts = out
            for j, i in enumerate(idx):
                n = int(counts[j])
                # The graph clipped to the pixels it decoded (no EXIF turn): the file's stored size.
                wh = _stored_size(files[i]) if self.box_factor != 1.0 else (0, 0)
                results[i] = {"boxes": scale_boxes(boxes[j, :n], self.box_factor, wh), "scores": scores[j, :n],
                              "labels": [v.decode() for v in labels[j, :n]]}
        return results


def _stored_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


def short_tf_error(err: Exception) -> str:
    """The informative line of a TF error ("Invalid JPEG data...", "Input is empty.")."""
    msg = getattr(err, "message", None) or str(err)
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[{{node", "Traceback", "File ")
    for line in msg.splitlines():
        line = line.strip()
        if line and not line.startswith(noise):
            return line[:300]
    return type(err).__name__


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def load_detector(version_dir: str | Path, backend: str = "auto", precision: str = "auto", threads: int = 1,
                  streams: int = 1, device: str = "cpu", **openvino: Any):  # type: ignore[no-untyped-def]
    """``backend``: openvino, tensorflow, or auto (OpenVINO when installed and the IR exists);
    ``openvino``: OpenVinoDetector's other options (cpu_pinning, max_batch)."""
    version_dir = Path(version_dir)
    has_ir = (version_dir / OPENVINO_DIR).is_dir()
    if backend == "openvino" or (backend == "auto" and has_ir and openvino_available()):
        return OpenVinoDetector(version_dir, precision, threads, streams, **openvino)
    if backend not in ("auto", "tensorflow"):
        raise ValueError(f"unknown backend {backend!r} (openvino, tensorflow or auto)")
    return TensorFlowDetector(version_dir, intra=threads, device=device)
