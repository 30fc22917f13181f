"""A new version from an existing one's artefacts with this checkout's runtime files.

    python -m training.repackage FROM [--version N] --reason "..." [--crossval CROSSVAL_JSON] [--rewrite-ir]
        [--runtime-resize] [--requantise] [--triton HOST:PORT]

The weights, the OpenVINO IR (with its quantisation), the reports and every measured figure
(validation, cross-validation, calibration, gates) are the old version's, byte for byte; the
runtime files (model.py, detector_runtime.py, image_features.py) are the current ones. The
metadata records where it came from and why (`repackaged_from`). The version is registered
in the model registry before Triton may serve it, as `make train` does; the old version stays
registered until it is deprecated (`python -m governance.model_registry deprecate`).
No TensorFlow, no training: a minute's work.

``--crossval``: a cross-validation of the same recipe (training.crossval's crossval.json, same
input size and dataset) gives the new version its box scale and its cross-validated figures and
report. The score calibration and the operating threshold stay the old version's: the
SavedModel's graph holds that calibration, so the new run must have chosen the same raw threshold.

``--rewrite-ir``: the INT8 IR also gets this checkout's exporter's lossless graph rewrites
(`training.openvino_export.resize_in_uint8`), applied only once the rewritten IR has given the
stored one's outputs on real frames of four sizes (`rewrite_verified`); otherwise nothing is
written. Every measured figure still holds, since the network answers the same.

``--runtime-resize``: both IRs lose their opening resize and take the frame at the input size,
which the runtime (this checkout's) resizes with OpenCV (`training.openvino_export.resize_outside`);
applied only once the detections at the version's operating threshold have come out the same
(IoU >= 0.9, raw scores within 0.05: the INT8 network's own jitter) on the same real frames
(`resize_outside_verified`). 0.004 % of the resized pixels round the other way, so the outputs are
not bit-identical: evaluate the new version (`training.evaluate --server`) before serving it.

``--requantise``: the INT8 IR is quantised again from the FP32 IR with this checkout's exporter
(`training.openvino_export.requantise`: its ignored scope, 64 of the labelled frames in DATA_DIR,
which must be the version's dataset), and the INT8 and BF16 gates run again on the
cross-validation blocks; the new gates and what is served replace `runtime` in the metadata.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from services.common import config
from training import MODEL_NAME
from training.version_dir import RUNTIME_FILES, write_version_dir

GENERATED = {"model_metadata.json", "manifest.json", *RUNTIME_FILES}
SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints"}
WARMUP_FRAME = Path(config.MODEL_REPOSITORY) / MODEL_NAME / "warmup" / "car_frame.bin"
CHECK_SIZES = ((1280, 720), (512, 288), (320, 180))
OWN_FIELDS = ("model_name", "version", "exported_at", "git_commit", "repackaged_from")


def crossval_fields(path: Path, old: dict) -> dict:
    """The metadata a cross-validation of the same recipe gives a repackaged version (box scale,
    cross-validated figures); ValueError if it measured something else."""
    summary = json.loads(Path(path).read_text())
    cv, old_cv = summary.get("crossval", {}), old.get("crossval", {})
    size = old.get("input_size", {})
    if cv.get("input_size") != [size.get("width"), size.get("height")] or cv.get("dataset_fingerprint") != old.get("dataset", {}).get("fingerprint"):
        raise ValueError(f"{path} cross-validated another input size or dataset than the version")
    if cv.get("threshold") != old_cv.get("threshold"):
        raise ValueError(f"{path} chose the raw threshold {cv.get('threshold')}, the version serves {old_cv.get('threshold')}: "
                         "its precision and recall would not be the served ones")
    if "box_scale" not in summary:
        raise ValueError(f"{path} has no box scale (a cross-validation from before version 7's runtime)")
    fields = {key: summary[key] for key in ("crossval", "box_scale", "operating_precision", "operating_recall")}
    # Its own score map put that raw threshold at another calibrated value; the version serves the old map.
    fields["crossval"] = {**cv, "threshold_calibrated": old.get("operating_threshold")}
    return fields


def check_images() -> list:
    """Frames for rewrite_verified: the warmup frame at its own size and three others, and up to
    12 frames of the labelled data set where it is present."""
    import numpy as np
    from PIL import Image

    from training.serving_runtime import decode_image

    warmup = decode_image(WARMUP_FRAME.read_bytes()[4:])  # after the BYTES element's 4-byte length
    images = [warmup] + [np.asarray(Image.fromarray(warmup).resize(size)) for size in CHECK_SIZES]
    paths = sorted((Path(config.DATA_DIR) / "training_images").glob("*.jpg"))
    pick = np.linspace(0, len(paths) - 1, min(12, len(paths))).round().astype(int) if paths else np.zeros(0, int)
    return images + [decode_image(paths[i].read_bytes()) for i in pick]


def repackage(repository: Path, source_version: int, reason: str, version: int | None = None,
              crossval: Path | None = None, rewrite_ir: bool = False, runtime_resize: bool = False,
              requantise: bool = False) -> Path:
    """Write the new version directory; returns it."""
    source = Path(repository) / MODEL_NAME / str(source_version)
    if not (source / "model_metadata.json").is_file():
        raise FileNotFoundError(f"{source}: no model_metadata.json (not a version directory)")
    old = json.loads((source / "model_metadata.json").read_text())
    metadata = {key: value for key, value in old.items() if key not in OWN_FIELDS}
    metadata["repackaged_from"] = {"version": source_version, "exported_at": old.get("exported_at"),
                                   "git_commit": old.get("git_commit"), "reason": reason}
    if crossval is not None:
        metadata.update(crossval_fields(crossval, old))
        metadata["repackaged_from"]["crossval"] = str(crossval)

    def fill(tmp: Path, meta: dict) -> None:
        for item in source.iterdir():
            if item.name in GENERATED or item.name in SKIPPED_DIRS:
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name, ignore=shutil.ignore_patterns(*SKIPPED_DIRS))
            else:
                shutil.copy2(item, tmp / item.name)
        if crossval is not None:
            from training.openvino_export import keep_reports

            keep_reports(tmp, meta)  # the new run's report and plot replace the old ones
        int8 = tmp / "openvino" / "model_int8.xml"
        if rewrite_ir and int8.is_file():
            from training.openvino_export import resize_in_uint8, rewrite_verified

            if rewrite_verified(int8, check_images(), resize_in_uint8):
                meta["repackaged_from"]["ir_rewrites"] = {int8.name: [resize_in_uint8.__name__]}
        if runtime_resize:
            from training.openvino_export import resize_outside, resize_outside_verified

            threshold = float(meta.get("crossval", {}).get("threshold") or 0.3)
            for xml in sorted((tmp / "openvino").glob("model_*.xml")):
                if resize_outside_verified(xml, check_images(), threshold):
                    meta["repackaged_from"].setdefault("ir_rewrites", {}).setdefault(xml.name, []).append(resize_outside.__name__)
        if requantise:
            from training.openvino_export import NOT_QUANTISED, NOT_QUANTISED_NAMES, requantise as quantise_again

            quantise_again(tmp, meta, config.DATA_DIR)
            meta["repackaged_from"]["requantised"] = {"ignored_types": NOT_QUANTISED, "ignored_names": NOT_QUANTISED_NAMES}

    return write_version_dir(Path(repository), metadata, fill, version=version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=int, metavar="FROM", help="the version whose artefacts are taken")
    parser.add_argument("--version", type=int, default=None, help="number of the new version (default: next free)")
    parser.add_argument("--reason", required=True, help="why (recorded in the metadata and the registry)")
    parser.add_argument("--crossval", type=Path, default=None, metavar="CROSSVAL_JSON",
                        help="box scale and cross-validated figures from this cross-validation of the same recipe")
    parser.add_argument("--rewrite-ir", action="store_true",
                        help="apply the exporter's lossless rewrites to the INT8 IR, once verified on real frames")
    parser.add_argument("--runtime-resize", action="store_true",
                        help="cut the IRs' opening resize (the runtime resizes, at a tenth of the CPU), once the "
                             "detections are verified the same on real frames")
    parser.add_argument("--requantise", action="store_true",
                        help="quantise the INT8 IR again from the FP32 IR with this checkout's scope, on DATA_DIR's "
                             "frames, and rerun the precision gates (the FP32 IR must take the input size)")
    parser.add_argument("--repository", type=Path, default=Path(config.MODEL_REPOSITORY))
    parser.add_argument("--registry", default=None, metavar="PATH", help="model registry JSON (default: the project's)")
    parser.add_argument("--triton", default=None, metavar="HOST:PORT", help="reload the model on this Triton afterwards")
    args = parser.parse_args(argv)
    try:
        vdir = repackage(args.repository, args.source, args.reason, args.version, args.crossval, args.rewrite_ir,
                         args.runtime_resize, args.requantise)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {vdir}", flush=True)
    from training.train import publish

    publish(vdir, args.registry, replace=args.version is not None, triton=args.triton)
    return 0


if __name__ == "__main__":
    sys.exit(main())
