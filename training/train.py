"""Train the car detector and export a new Triton model version.

    python -m training.train --data DIR [--init-from VERSION_DIR] [--budget-minutes 30]
                             [--input-size 512x288] [--crossval var/reports/crossval/crossval.json]
                             [--output model_repository] [--version N]

Pipeline: load + validate the data, in-memory image cache, the recipe of training.fit on all
labelled frames (or on a contiguous train split with ``--val-fraction``), then export as
``<output>/car_detector/<N>/``: the SavedModel (artifact of record), the OpenVINO IR (FP32 and
INT8, which ships only if the INT8 gate passes on the cross-validation blocks), model.py,
detector_runtime.py, model_metadata.json (with the cross-validated figures, the score
calibration and the operating threshold of training.crossval) and manifest.json. The new
version is registered in the model registry.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from services.common import config
from training import REPO_ROOT
from training.cli import add_recipe_arguments, recipe_from, run_command
from training.data import load_dataset, split_contiguous
from training.samples import DataError, Dataset, Sample

log = logging.getLogger("training.train")
DEFAULT_CROSSVAL = REPO_ROOT / "var" / "reports" / "crossval" / "crossval.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=config.DATA_DIR, help="dataset folder (env DATA_DIR)")
    p.add_argument("--layout", default="auto", choices=["auto", "kaggle", "yolo", "coco"])
    add_recipe_arguments(p)
    p.add_argument("--init-from", default=config.INIT_FROM, metavar="VERSION_DIR",
                   help="warm start from a previous version's weights (same input size and classes)")
    p.add_argument("--budget-minutes", type=float, default=config.TRAIN_BUDGET_MINUTES,
                   help="wall-clock budget of the training loop (the LR schedule is planned to end with it)")
    p.add_argument("--output", default=config.MODEL_REPOSITORY, help="Triton model repository root")
    p.add_argument("--version", type=int, default=None, help="version number to (re)write; default max+1")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out a contiguous block for a validation report (0 = train on all frames)")
    p.add_argument("--val-position", type=float, default=1.0, help="where that block starts (0 = first, 1 = last frames)")
    p.add_argument("--crossval", default=config.CROSSVAL_REPORT,
                   help="training.crossval's crossval.json: figures, calibration and threshold for the metadata")
    p.add_argument("--load-weights", default="", metavar="PATH",
                   help="skip training: export these weights (the .weights.h5 every run saves under var/train/)")
    p.add_argument("--no-openvino", action="store_true", help="export the SavedModel only (no IR, TensorFlow serves)")
    p.add_argument("--no-export", action="store_true", help="train (and evaluate) only")
    p.add_argument("--triton", default=config.TRITON_RELOAD_GRPC or None, metavar="HOST:PORT",
                   help="after export, ask this running Triton (gRPC) to load the new version")
    p.add_argument("--registry", default=None, metavar="PATH",
                   help="model registry JSON (default $MODEL_REGISTRY_PATH or governance/model_registry.json)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def describe_split(samples: list[Sample]) -> dict:
    if not samples:
        return {"images": 0}
    first, last = samples[0].sort_key, samples[-1].sort_key
    return {
        "images": len(samples),
        "with_objects": sum(1 for s in samples if len(s.boxes)),
        "boxes": int(sum(len(s.boxes) for s in samples)),
        "first": samples[0].path.name,
        "last": samples[-1].path.name,
        "frame_range": [first[1], last[1]] if first[0] == last[0] else None,
    }


def load_crossval(path: str, input_hw: tuple[int, int], fingerprint: str) -> dict | None:
    """The cross-validation summary, if it measured this input size on this dataset."""
    p = Path(path)
    if not path or not p.is_file():
        log.warning("no cross-validation report at %s: no calibration, threshold from validation or 0.5", path)
        return None
    summary = json.loads(p.read_text())
    cv = summary.get("crossval", {})
    if cv.get("input_size") != [input_hw[1], input_hw[0]] or cv.get("dataset_fingerprint") != fingerprint:
        log.warning("%s measured another input size or dataset: not used", path)
        return None
    summary.pop("out_of_fold", None)
    return summary


def train(args: argparse.Namespace) -> Path | None:
    t_start = time.time()
    ds: Dataset = load_dataset(args.data, args.layout)
    log.info("dataset %s (%s): %d images, %d boxes, classes %s, %d problem(s)",
             ds.root, ds.layout, len(ds.samples), ds.num_boxes, ds.class_names, len(ds.problems))
    if ds.num_boxes == 0:
        raise DataError(f"{ds.root}: no usable boxes, nothing to learn")
    ordered = sorted(ds.samples, key=lambda s: s.sort_key)
    if args.val_fraction > 0:
        train_s, val_s = split_contiguous(ordered, args.val_fraction, position=args.val_position)
    else:
        train_s, val_s = ordered, []
    log.info("train %s | validation %s", describe_split(train_s), describe_split(val_s))

    from training.detections import box_factor
    from training.fit import Trainer, cache_for, evaluate_detector
    from training.metrics import clean_nan, format_markdown
    from training.model import resolve_backbone_weights

    recipe = recipe_from(args, args.budget_minutes)
    cache = cache_for(train_s, recipe.input_hw)
    log.info("cached %d training images (%.0f MB)", len(cache.samples), cache.images.nbytes / 1e6)
    weights = None if args.init_from else resolve_backbone_weights(args.backbone_weights)
    trainer = Trainer(ds.class_names, recipe, weights, init_from=args.init_from or None)
    if args.load_weights:
        trainer.model.load_weights(args.load_weights)
        # The run that trained them left its training record beside them (epochs, steps, time).
        record = Path(args.load_weights).with_suffix(".json")
        info = (json.loads(record.read_text()) if record.is_file() else {}) | {"loaded_weights": args.load_weights}
    else:
        info = trainer.fit(cache, list(range(len(cache.samples))))
        # Kept so that a failed export can be redone without training again (--load-weights).
        saved = REPO_ROOT / "var" / "train" / f"last-{os.getpid()}.weights.h5"
        saved.parent.mkdir(parents=True, exist_ok=True)
        trainer.model.save_weights(str(saved))
        saved.with_suffix(".json").write_text(json.dumps({k: v for k, v in info.items() if k != "history"}, default=str))
        log.info("weights saved to %s", saved)
    detector = trainer.export_detector()
    crossval = load_crossval(args.crossval, args.input_size, ds.fingerprint())
    calibration = (crossval or {}).get("calibration")
    detector.set_calibration(calibration)
    val_metrics = None
    if val_s:
        val_metrics = evaluate_detector(detector, val_s, ds.class_names, threshold=(crossval or {}).get("operating_threshold"),
                                        box_factor=box_factor(crossval or {}))
        print(format_markdown(val_metrics, "Validation metrics (held-out block)"), flush=True)
    if args.no_export:
        return None
    threshold = (crossval or {}).get("operating_threshold") or (val_metrics or {}).get("threshold") or 0.5
    metadata = {
        "class_names": ds.class_names,
        "input_size": {"width": args.input_size[1], "height": args.input_size[0]},
        "architecture": "MobileNetV2(alpha=1.0) + FPN(s8/16/32) + CenterNet/TTFNet head at stride 8"
                        + (f" ({recipe.head_convs} convolutions per head)" if recipe.head_convs > 1 else ""),
        "dataset": {"path": str(Path(args.data).resolve()), "layout": ds.layout, "fingerprint": ds.fingerprint(),
                    "images": len(ds.samples), "boxes": ds.num_boxes, "skipped_problems": len(ds.problems),
                    "train": describe_split(train_s), "validation": describe_split(val_s)},
        "recipe": recipe.as_dict() | {"init_from": args.init_from or None, "backbone_weights": weights or "none"},
        "hyperparameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                            if k not in ("verbose", "no_export", "triton", "registry")},
        "backbone_weights": weights or ("warm start: " + args.init_from if args.init_from else "none"),
        "training": info | {"total_seconds": round(time.time() - t_start, 1)},
        "validation_metrics": clean_nan(val_metrics) if val_metrics else None,
        "operating_threshold": threshold,
        "score_floor": 0.05,
        "score_floor_raw": float(detector.score_floor.numpy()),
    }
    if crossval:
        metadata.update({k: crossval[k] for k in ("crossval", "calibration", "box_scale", "operating_precision",
                                                  "operating_recall") if k in crossval})
    add_files = None
    if not args.no_openvino:
        from training.openvino_export import add_openvino

        def add_files(tmp: Path, meta: dict) -> None:
            add_openvino(detector, tmp, meta, ordered, train_s, ds.class_names, crossval)

    from training.export import write_version

    vdir = write_version(detector, Path(args.output), clean_nan(metadata), version=args.version, add_files=add_files)
    print(f"exported {vdir}", flush=True)
    publish(vdir, args.registry, replace=args.version is not None, triton=args.triton)
    return vdir


def publish(vdir: Path, registry_path: str | None, replace: bool, triton: str | None) -> None:
    """Register a written version, then (optionally) have Triton load it.

    Registered before Triton may serve it: the adapter refuses any version whose files do
    not match the registry's hash. Rewriting a version in place (`replace`) supersedes its entry."""
    from governance.model_registry import ModelRegistry

    registry = ModelRegistry(registry_path)
    model_id = registry.register_model(vdir, force=replace)
    print(f"registered {model_id} in the model registry {registry.registry_path}", flush=True)
    if triton:
        reload_triton(triton)


def reload_triton(address: str) -> None:
    """Best effort: a Triton in explicit mode serves the new version after load_model()."""
    from training import MODEL_NAME

    try:
        from services.common import triton_client
        from services.common.service_token import triton_admin_headers

        # The one Triton client (TLS when TRITON_TLS=1); model control is a restricted Triton API (services/triton/run.sh).
        triton_client.connect(address).load_model(MODEL_NAME, headers=triton_admin_headers(grpc=True))
        print(f"Triton at {address} reloaded {MODEL_NAME}", flush=True)
    except Exception as e:  # noqa: BLE001 - the export itself succeeded; just say so
        print(f"warning: could not reload {MODEL_NAME} on Triton at {address}: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: train(args), verbose=args.verbose)

if __name__ == "__main__":
    sys.exit(main())
