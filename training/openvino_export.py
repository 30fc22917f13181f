"""OpenVINO IR of the network (FP32, and INT8 by NNCF post-training quantisation) and the INT8 gate.

The IR takes the decoded uint8 RGB batch resized to the input size [B, h, w, 3] (by the runtime,
serving_runtime.resize_frame: the SavedModel's bilinear resize; IRs up to version 8 resize in their
graph, `resize_outside` cuts that opening) and does in its graph what the SavedModel does after
resizing: the network, the sigmoid, the 3x3 max-pool peak picking and the distances-to-box conversion.
Outputs, named in the IR: ``heat`` [B, h*w, C] (peak scores, 0 elsewhere) and ``boxes``
[B, h*w, 4] (x1, y1, x2, y2 in input pixels). Top-k, NMS and calibration stay in numpy (serving_runtime), where
they cost little on at most 300 candidates and match the SavedModel's decode.

INT8 ships only if, on the cross-validation blocks, it stays within ``INT8_TOLERANCE`` AP50
and AP50-95 of FP32 (pooled, and the mean of the per-block drops). The same gate is run for
BF16 (the FP32 IR computed in BF16, where the exporting CPU has native BF16); the runtime
serves INT8 if its gate passed, else BF16 on CPUs that have it if that gate passed, else FP32.
The post-processing (sigmoid, peak picking, the distance-to-box arithmetic) is kept out of the
INT8 quantisation: quantised, it cost 0.050 AP50 on v3's blocks instead of 0.012
(docs/performance.md). So are the GroupNorms (docs/experiments/groupnorm_quantisation.py).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("training.openvino_export")

INT8_TOLERANCE = 0.01
CALIBRATION_FRAMES = 64
# Op types left in FP32 by NNCF: the IR's post-processing after the network's two heads.
NOT_QUANTISED = ["MaxPool", "Sigmoid", "Equal", "Select", "Multiply", "Interpolate"]
# ...and the GroupNorms' arithmetic (training.model names those layers *_gn): quantised, NNCF put
# 49 FakeQuantizes on their means and variances (v9's IR), which cost CPU and buy nothing.
NOT_QUANTISED_NAMES = [r".*_gn(_\d+)?/.*"]


def network_function(detector):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    from training.model import cell_centres

    model, (h, w) = detector.model, detector.input_hw

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")])
    def net(image):  # type: ignore[no-untyped-def]
        x = tf.image.resize(tf.cast(image, tf.float32), (h, w), method="bilinear", antialias=False)
        logits, ltrb = model(x, training=False)
        heat = tf.sigmoid(logits)
        heat = heat * tf.cast(tf.equal(heat, tf.nn.max_pool2d(heat, 3, 1, "SAME")), heat.dtype)
        c = cell_centres(h // 8, w // 8)[None]
        boxes = tf.concat([c - ltrb[..., :2], c + ltrb[..., 2:]], axis=-1)
        b = tf.shape(heat)[0]
        # A tuple, not a dict: the converted model keeps tuple order (dict outputs come out sorted).
        return tf.reshape(heat, [b, -1, heat.shape[-1]]), tf.reshape(boxes, [b, -1, 4])

    return net


def resize_in_uint8(ov_model):  # type: ignore[no-untyped-def]
    """The same model with its input resize moved before the uint8 -> float conversion.

    Used on the INT8 IR, whose first FakeQuantize puts the resized frame on 256 levels anyway:
    on v7's IR the outputs were bit-identical on 172 frames of four sizes, and a resize on uint8
    moves a quarter of the bytes. A model without that Parameter -> Convert -> Interpolate
    opening is returned unchanged."""
    import openvino as ov
    import openvino.opset13 as ops

    param = ov_model.get_parameters()[0]
    convert = next(iter(param.output(0).get_target_inputs())).get_node()
    if convert.get_type_name() != "Convert" or len(param.output(0).get_target_inputs()) != 1:
        return ov_model
    consumers = list(convert.output(0).get_target_inputs())
    if len(consumers) != 1 or consumers[0].get_node().get_type_name() != "Interpolate":
        return ov_model
    resize = consumers[0].get_node()
    attrs = resize.get_attributes()
    resized = ops.interpolate(param.output(0), resize.input_value(1), attrs["mode"], attrs["shape_calculation_mode"],
                              axes=resize.input_value(2), coordinate_transformation_mode=attrs["coordinate_transformation_mode"],
                              nearest_mode=attrs["nearest_mode"], antialias=attrs["antialias"], cube_coeff=attrs["cube_coeff"])
    as_float = ops.convert(resized, convert.get_output_element_type(0))
    for target in list(resize.output(0).get_target_inputs()):
        target.replace_source_output(as_float.output(0))
    ov_model.validate_nodes_and_infer_types()
    assert isinstance(ov_model, ov.Model)
    return ov_model


def resize_outside(ov_model):  # type: ignore[no-untyped-def]
    """The same model without its opening resize: it takes the uint8 frame at the input size
    [B, h, w, 3], which the runtime resizes (serving_runtime.resize_frame: the same bilinear
    resize, at a tenth of the Interpolate's CPU). Either opening, Parameter -> Interpolate ->
    Convert (the INT8 IR) or Parameter -> Convert -> Interpolate (FP32), is cut; a model without
    one is returned unchanged."""
    import openvino as ov
    import openvino.opset13 as ops

    param = ov_model.get_parameters()[0]
    chain = []
    node = param
    while len(chain) < 2 and len(node.output(0).get_target_inputs()) == 1:
        node = next(iter(node.output(0).get_target_inputs())).get_node()
        chain.append(node)
        if node.get_type_name() == "Interpolate":
            break
    if not chain or chain[-1].get_type_name() != "Interpolate" or chain[0].get_type_name() not in ("Interpolate", "Convert"):
        return ov_model
    resize = chain[-1]
    sizes = resize.input_value(1).get_node()
    if resize.get_attributes()["shape_calculation_mode"] != "sizes" or sizes.get_type_name() != "Constant":
        return ov_model
    h, w = (int(v) for v in sizes.get_data())
    frame = ops.parameter([-1, h, w, 3], param.get_element_type(), name=param.get_friendly_name())
    frame.output(0).get_tensor().set_names(param.output(0).get_names())
    source = frame.output(0) if len(chain) == 1 else ops.convert(frame, chain[0].get_output_element_type(0)).output(0)
    for target in list(resize.output(0).get_target_inputs()):
        target.replace_source_output(source)
    model = ov.Model(ov_model.outputs, [frame], ov_model.get_friendly_name())
    model.validate_nodes_and_infer_types()
    return model


def rewrite_verified(xml: Path, images: list[np.ndarray], rewrite=resize_in_uint8, atol: float = 1e-4) -> bool:  # type: ignore[no-untyped-def]
    """Rewrite the IR at ``xml`` in place with ``rewrite`` if that changes its graph, once the
    rewritten model has given the same outputs as the stored one on every image (uint8 [H, W, 3]);
    ValueError naming the output and the image size otherwise, and the IR is left as it was.
    Returns whether it was rewritten."""
    import openvino as ov

    def ops(model):  # type: ignore[no-untyped-def]
        return [(op.get_type_name(), str(op.get_output_element_type(0))) for op in model.get_ordered_ops()]

    core = ov.Core()
    stored, candidate = core.read_model(str(xml)), rewrite(core.read_model(str(xml)))
    if ops(stored) == ops(candidate):
        return False
    compiled = [core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": 1}) for m in (stored, candidate)]
    for image in images:
        before, after = (c(image[None]) for c in compiled)
        for out in stored.outputs:
            name = out.get_any_name()
            worst = float(np.abs(before[name] - after[name]).max())
            if worst > atol:
                raise ValueError(f"{xml.name}: rewritten, its {name!r} output differs by {worst:.4g} "
                                 f"(> {atol}) on a {image.shape[1]}x{image.shape[0]} image; kept as stored")
    _save_in_place(candidate, Path(xml))
    return True


def _save_in_place(model, xml: Path) -> None:  # type: ignore[no-untyped-def]
    import openvino as ov

    new = xml.with_name(xml.stem + ".rewritten.xml")
    # Written beside, then moved: OpenVINO maps the .bin it read, so it cannot overwrite it.
    ov.save_model(model, str(new), compress_to_fp16=False)
    os.replace(new, xml)
    os.replace(new.with_suffix(".bin"), xml.with_suffix(".bin"))


def resize_outside_verified(xml: Path, images: list[np.ndarray], threshold: float, min_iou: float = 0.9,
                            score_tolerance: float = 0.05, resize=None) -> bool:  # type: ignore[no-untyped-def]
    """Rewrite the IR at ``xml`` in place with ``resize_outside`` once, on every image, the
    rewritten IR fed the runtime's resize (``resize``: serving_runtime.resize_frame) has given
    the stored IR's detections: each detection scoring at least ``threshold`` (raw) in one has a
    partner in the other within ``min_iou`` and ``score_tolerance``. ValueError naming the image
    otherwise, and the IR is left as it was. Returns whether it was rewritten.

    The outputs cannot be identical: 0.004 % of the resized pixels round the other way (and the
    FP32 IR resized in float, unrounded). An INT8 network moves by as much for any such change:
    on version 8's IR, twenty random pixels one level off moved a score by up to 0.023 and a box
    to IoU 0.957, and this rewrite by 0.022 and 0.963. The tolerances leave room for that and
    catch a wrong resize (a shifted or nearest-neighbour one fails them)."""
    import openvino as ov

    from training.detections import postprocess
    from training.metrics import iou_matrix
    from training.serving_runtime import resize_frame

    resize = resize or resize_frame
    core = ov.Core()
    stored = core.read_model(str(xml))
    candidate = resize_outside(core.read_model(str(xml)))
    if candidate.input(0).get_partial_shape() == stored.input(0).get_partial_shape():
        return False
    h, w = (candidate.input(0).get_partial_shape()[i].get_length() for i in (1, 2))
    before, after = (core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": 1}) for m in (stored, candidate))

    def found(compiled, frame: np.ndarray, wh: np.ndarray, floor: float):  # type: ignore[no-untyped-def]
        out = compiled(frame[None])
        return postprocess(out["heat"][0], out["boxes"][0], wh / np.array([w, h], np.float32), wh, floor)

    for image in images:
        wh = np.array([image.shape[1], image.shape[0]], np.float32)
        resized = resize(image, (w, h))
        old = {floor: found(before, image, wh, floor) for floor in (threshold, threshold - score_tolerance)}
        new = {floor: found(after, resized, wh, floor) for floor in (threshold, threshold - score_tolerance)}
        for (b1, s1, _), (b2, s2, _) in ((old[threshold], new[threshold - score_tolerance]),
                                         (new[threshold], old[threshold - score_tolerance])):
            close = (iou_matrix(b1, b2) >= min_iou) & (np.abs(s1[:, None] - s2[None, :]) <= score_tolerance)
            if not close.any(axis=1).all():
                raise ValueError(f"{Path(xml).name}: with the resize outside it, a detection changed on a "
                                 f"{image.shape[1]}x{image.shape[0]} image (IoU < {min_iou} or score off by "
                                 f"> {score_tolerance}); kept as stored")
    _save_in_place(candidate, Path(xml))
    return True


def calibration_arrays(paths: list[Path], n: int = CALIBRATION_FRAMES) -> list[np.ndarray]:
    """Evenly spaced training frames, decoded as the server decodes them, batch of 1."""
    from training.serving_runtime import decode_image

    pick = np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)
    return [decode_image(Path(paths[i]).read_bytes())[None] for i in sorted(set(pick))]


def export_ir(detector, out_dir: Path, calibration_paths: list[Path], int8: bool = True) -> dict:  # type: ignore[no-untyped-def]
    """Write model_fp32.xml/.bin and (if ``int8``) model_int8.xml/.bin under ``out_dir``."""
    import openvino as ov

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ov_model = ov.convert_model(network_function(detector))
    for i, name in enumerate(("heat", "boxes")):
        ov_model.outputs[i].get_tensor().set_names({name})
    written = {"fp32": "model_fp32.xml"}
    if int8:
        # Calibrated with the resize in the graph, on frames at their own size; then cut (below).
        q = quantise(ov_model, calibration_arrays(calibration_paths))
        ov.save_model(resize_outside(q), str(out_dir / "model_int8.xml"), compress_to_fp16=False)
        written["int8"] = "model_int8.xml"
    ov.save_model(resize_outside(ov_model), str(out_dir / "model_fp32.xml"), compress_to_fp16=False)
    log.info("OpenVINO IR written to %s: %s", out_dir, written)
    return written


def quantise(ov_model, frames: list[np.ndarray]):  # type: ignore[no-untyped-def]
    """NNCF post-training INT8 quantisation of an FP32 IR, calibrated on ``frames`` ([1, H, W, 3] uint8)."""
    import nncf

    return nncf.quantize(ov_model, nncf.Dataset(frames), preset=nncf.QuantizationPreset.MIXED,
                         subset_size=len(frames), fast_bias_correction=True,
                         ignored_scope=nncf.IgnoredScope(types=NOT_QUANTISED, patterns=NOT_QUANTISED_NAMES, validate=False))


def requantise(version_dir: Path, meta: dict, data_dir: str) -> None:
    """The version's INT8 IR quantised again from its FP32 IR with this checkout's scope, on the
    labelled frames it trained on, and the precision gates run again and recorded in ``meta``.
    The FP32 IR must take the frame at the input size (``resize_outside`` first)."""
    import openvino as ov

    from training.data import load_dataset
    from training.serving_runtime import resize_frame

    fp32 = ov.Core().read_model(str(Path(version_dir) / "openvino" / "model_fp32.xml"))
    if not fp32.input(0).get_partial_shape()[1].is_static:
        raise ValueError(f"{version_dir}: its FP32 IR resizes in its graph; cut the resize first (--runtime-resize)")
    ds = load_dataset(data_dir, "auto")
    if ds.fingerprint() != meta.get("dataset", {}).get("fingerprint"):
        raise ValueError(f"{data_dir} is not the dataset the version trained on (fingerprints differ)")
    ordered = sorted(ds.samples, key=lambda s: s.sort_key)
    t0 = time.time()
    wh = (fp32.input(0).get_partial_shape()[2].get_length(), fp32.input(0).get_partial_shape()[1].get_length())
    frames = [resize_frame(frame[0], wh)[None] for frame in calibration_arrays([s.path for s in ordered])]
    _save_in_place(quantise(fp32, frames), Path(version_dir) / "openvino" / "model_int8.xml")
    run_gates(Path(version_dir), meta, ordered, ds.class_names, {"crossval": meta.get("crossval", {})},
              {"fp32": "model_fp32.xml", "int8": "model_int8.xml"}, len(ordered), t0)


def int8_gate(fp32: dict, int8: dict, tolerance: float = INT8_TOLERANCE) -> dict:
    """Pass iff INT8 loses at most ``tolerance`` AP50 and AP50-95 against FP32 (pooled and mean per block).

    ``fp32`` / ``int8``: {"pooled": {"ap50", "ap50_95"}, "blocks": [{"ap50", "ap50_95"}, ...]}.
    """
    drops = {}
    for key in ("ap50", "ap50_95"):
        drops[f"pooled_{key}_drop"] = float(fp32["pooled"][key] - int8["pooled"][key])
        per_block = [float(a[key] - b[key]) for a, b in zip(fp32.get("blocks", []), int8.get("blocks", []))]
        drops[f"mean_block_{key}_drop"] = float(np.mean(per_block)) if per_block else drops[f"pooled_{key}_drop"]
        drops[f"worst_block_{key}_drop"] = float(np.max(per_block)) if per_block else drops[f"pooled_{key}_drop"]
    passed = all(drops[f"{s}_{k}_drop"] <= tolerance for s in ("pooled", "mean_block") for k in ("ap50", "ap50_95"))
    return {"passed": bool(passed), "tolerance": tolerance, "drops": drops, "fp32": fp32, "int8": int8}


def score_on_blocks(detector, samples: list, blocks: list[list[int]], class_names: list[str]) -> dict:  # type: ignore[no-untyped-def]
    """AP50 / AP50-95 per cross-validation block and pooled, for any serving_runtime detector."""
    from training.fit import to_results
    from training.metrics import evaluate

    preds = []
    for i in range(0, len(samples), 8):
        for r in detector.detect([s.path.read_bytes() for s in samples[i : i + 8]]):
            if isinstance(r, Exception):
                raise r
            preds.append(r)
    results = to_results(samples, preds, class_names)
    pooled = evaluate(results, class_names, 0.5)
    per_block = [evaluate([results[i] for i in idx], class_names, 0.5) for idx in blocks]
    return {"pooled": {"ap50": pooled["ap50"], "ap50_95": pooled["ap50_95"]},
            "blocks": [{"block": b, "ap50": m["ap50"], "ap50_95": m["ap50_95"]} for b, m in enumerate(per_block)]}


def add_openvino(detector, version_dir: Path, meta: dict, ordered: list, train_samples: list,  # type: ignore[no-untyped-def]
                 class_names: list[str], crossval: dict | None) -> None:
    """Exporter step: write the IRs into the (temporary) version dir, run the INT8 gate, record it."""
    t0 = time.time()
    written = export_ir(detector, Path(version_dir) / "openvino", [s.path for s in train_samples])
    run_gates(Path(version_dir), meta, ordered, class_names, crossval, written, len(train_samples), t0)
    keep_reports(Path(version_dir), meta)


def run_gates(version_dir: Path, meta: dict, ordered: list, class_names: list[str], crossval: dict | None,
              written: dict, calibration_pool: int, t0: float) -> None:
    """Score FP32, INT8 and (on BF16 CPUs) BF16 on the cross-validation blocks, run the INT8 and
    BF16 gates, and record them with what is served in ``meta["runtime"]``."""
    import json

    import nncf
    import openvino as ov

    from training.data import make_blocks
    from training.serving_runtime import OpenVinoDetector, cpu_has_bf16

    cv = (crossval or {}).get("crossval", {})
    k, gap = int(cv.get("k", 5)), int(cv.get("gap_frames", 2))
    blocks = [held for _, held in make_blocks(ordered, k, gap)] if len(ordered) >= 2 * k else [list(range(len(ordered)))]
    # The runtime reads class names, input size and calibration from the metadata file.
    (Path(version_dir) / "model_metadata.json").write_text(json.dumps(meta, default=str))
    scores = {}
    precisions = ["fp32", "int8"] + (["bf16"] if cpu_has_bf16() else [])
    for precision in precisions:
        det = OpenVinoDetector(version_dir, precision, threads=os.cpu_count() or 1, verify=False)
        scores[precision] = score_on_blocks(det, ordered, blocks, class_names)
        log.info("OpenVINO %s on the cross-validation blocks: %s", precision, scores[precision]["pooled"])
    evaluated_on = (f"the {len(blocks)} cross-validation blocks ({len(ordered)} frames); the shipped model "
                    "trained on them, so this measures what the precision loses, not generalisation")
    gate = int8_gate(scores["fp32"], scores["int8"])
    gate["evaluated_on"] = evaluated_on
    if "bf16" in scores:
        bf16_gate = int8_gate(scores["fp32"], scores["bf16"])
        bf16_gate["evaluated_on"] = evaluated_on
    else:
        bf16_gate = {"passed": False, "reason": "the exporting CPU has no native BF16: not measured"}
    serving = "openvino-int8" if gate["passed"] else "openvino-bf16" if bf16_gate["passed"] else "openvino-fp32"
    meta["runtime"] = {
        "serving": serving,
        "serving_note": ("openvino-bf16: BF16 on CPUs with native BF16 (AVX512_BF16, AMX), FP32 elsewhere"
                         if serving == "openvino-bf16" else ""),
        "bf16_gate": bf16_gate,
        "artifact_of_record": "model.savedmodel",
        "fallback": "tensorflow (SavedModel) when the openvino package is absent; TensorFlow on GPU by configuration",
        "openvino": ov.__version__.split("-")[0],
        "nncf": nncf.__version__,
        "ir": {p: f"openvino/{f}" for p, f in written.items()},
        "int8_calibration_frames": min(CALIBRATION_FRAMES, calibration_pool),
        "int8_gate": gate,
        "export_seconds": round(time.time() - t0, 1),
    }
    print(f"INT8 gate {'passed' if gate['passed'] else 'FAILED'}: {gate['drops']}; BF16 gate "
          f"{'passed' if bf16_gate['passed'] else 'FAILED'}: {bf16_gate.get('drops', bf16_gate.get('reason'))}; "
          f"serving {serving}", flush=True)


def keep_reports(version_dir: Path, meta: dict) -> None:
    """Copy the cross-validation report and plots into the version (hashed and registered with it)
    and point the metadata at the copies, relative to the repository root."""
    import shutil

    from training import REPO_ROOT

    final = version_dir.name.replace(".tmp-", "")  # write_version renames .tmp-<N> to <N>
    refs = [(meta.get("crossval", {}), "report"), (meta.get("crossval", {}), "plot"), (meta.get("calibration", {}), "plot")]
    for record, key in refs:
        src = REPO_ROOT / str(record.get(key, ""))
        if not record.get(key) or not src.is_file():
            continue
        (version_dir / "reports").mkdir(exist_ok=True)
        shutil.copy2(src, version_dir / "reports" / src.name)
        dst = version_dir.parent / final / "reports" / src.name
        record[key] = os.path.relpath(dst, REPO_ROOT) if str(dst).startswith(str(REPO_ROOT)) else str(dst)
