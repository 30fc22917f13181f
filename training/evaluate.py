"""Evaluate a car_detector version in process (SavedModel) or through a running Triton.

In process, the SavedModel's boxes get the version's box scale as the runtime applies it
(model_metadata.json ``box_scale``, from version 7), so both ways score what is served.

    python -m training.evaluate --data DIR [--version N] [--server 127.0.0.1:8001]
                                [--split validation|all] [--threshold T] [--out DIR]

Metrics: AP50, AP50-95, precision/recall/F1 at the operating threshold (from the version's
metadata unless --threshold is given) per box-size slice. Writes ``report.md``,
``metrics.json`` and ``pr_curve.png`` under ``var/reports/eval/v<N>[-triton]/``.
The validation split is rebuilt from the version's metadata (same fraction and position),
so the numbers are comparable with those recorded at training time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from services.common import config
from training import MODEL_NAME, REPO_ROOT
from training.data import load_dataset, split_contiguous
from training.samples import DataError, Sample
from training.metrics import ImageResult, clean_nan, evaluate, format_markdown, match_detections, pr_curve


def latest_version(repo: Path) -> int:
    versions = [int(p.name) for p in (repo / MODEL_NAME).glob("*") if p.name.isdigit() and (p / "model.savedmodel").is_dir()]
    if not versions:
        raise DataError(f"no exported versions under {repo / MODEL_NAME}")
    return max(versions)


def predict_in_process(version_dir: Path, samples: list[Sample], batch: int = 8) -> tuple[list[dict], float]:
    import tensorflow as tf

    fn = tf.saved_model.load(str(version_dir / "model.savedmodel")).signatures["serving_default"]
    outs, t_total = [], 0.0
    for i in range(0, len(samples), batch):
        data = [s.path.read_bytes() for s in samples[i : i + batch]]
        t0 = time.perf_counter()
        r = fn(images=tf.constant(data))
        t_total += time.perf_counter() - t0
        n = r["num_detections"].numpy()
        for j in range(len(data)):
            k = int(n[j])
            outs.append({"boxes": r["boxes"].numpy()[j, :k], "scores": r["scores"].numpy()[j, :k],
                         "labels": [v.decode() for v in r["labels"].numpy()[j, :k]]})
    return outs, t_total / max(len(samples), 1)


def predict_triton(server: str, version: int | None, samples: list[Sample]) -> tuple[list[dict], float]:
    """One request per image (concurrency 1) so the mean time is the per-image latency."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from services.common import triton_client

    client = triton_client.connect(server)
    try:
        if not client.is_model_ready(MODEL_NAME, str(version) if version else ""):
            raise DataError(f"model {MODEL_NAME} version {version or 'latest'} is not ready on {server}")
    except InferenceServerException as e:
        raise DataError(f"cannot reach Triton at {server}: {e.message()}") from None
    outs, times = [], []
    for s in samples:
        inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[s.path.read_bytes()]], dtype=object))
        t0 = time.perf_counter()
        r = client.infer(MODEL_NAME, [inp], model_version=str(version) if version else "")
        times.append(time.perf_counter() - t0)
        outs.append({"boxes": r.as_numpy("BOXES")[0], "scores": r.as_numpy("SCORES")[0],
                     "labels": [v.decode() for v in r.as_numpy("LABELS")[0]]})
    return outs, float(np.median(times))


def to_results(samples: list[Sample], preds: list[dict], class_names: list[str]) -> list[ImageResult]:
    index = {c: i for i, c in enumerate(class_names)}
    return [
        ImageResult(s.boxes, s.labels, p["boxes"], p["scores"],
                    np.array([index.get(c, -1) for c in p["labels"]], np.int32), s.width, s.height)
        for s, p in zip(samples, preds)
    ]


def plot_pr(results: list[ImageResult], class_names: list[str], threshold: float, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PR curve written", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for c, name in enumerate(class_names):
        s, tp, n = match_detections(results, c, 0.5)
        if n == 0 or len(s) == 0:
            continue
        thr, prec, rec = pr_curve(s, tp, n)
        ax.plot(rec, prec, label=f"{name} (IoU 0.5)")
        at = np.searchsorted(-thr, -threshold, side="right") - 1
        if at >= 0:
            ax.plot(rec[at], prec[at], "o", color="r")
            ax.annotate(f"thr {threshold:.2f}", (rec[at], prec[at]), textcoords="offset points", xytext=(-60, -15))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("Precision-recall")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description="Evaluate a car_detector version")
    p.add_argument("--data", default=config.DATA_DIR)
    p.add_argument("--layout", default="auto", choices=["auto", "kaggle", "yolo", "coco"])
    p.add_argument("--repository", default=config.MODEL_REPOSITORY)
    p.add_argument("--version", type=int, default=None, help="default: the latest exported version")
    p.add_argument("--server", default=None, help="Triton gRPC address, e.g. 127.0.0.1:8001; default in process")
    p.add_argument("--split", default="validation", choices=["validation", "all"])
    p.add_argument("--threshold", type=float, default=None, help="default: the version's operating threshold")
    p.add_argument("--out", default=None, help="report folder (default var/reports/eval/v<N>)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        repo = Path(args.repository)
        version = args.version or latest_version(repo)
        vdir = repo / MODEL_NAME / str(version)
        meta = json.loads((vdir / "model_metadata.json").read_text()) if (vdir / "model_metadata.json").is_file() else {}
        ds = load_dataset(args.data, args.layout)
        samples = ds.samples
        if args.split == "validation":
            hp = meta.get("hyperparameters", {})
            _, samples = split_contiguous(ds.samples, hp.get("val_fraction", 0.2), position=hp.get("val_position", 1.0))
        class_names = meta.get("class_names", ds.class_names)
        threshold = args.threshold if args.threshold is not None else meta.get("operating_threshold")
        if args.server:
            preds, latency = predict_triton(args.server, args.version, samples)
        else:
            if not (vdir / "model.savedmodel").is_dir():
                raise DataError(f"no SavedModel in {vdir}")
            preds, latency = predict_in_process(vdir, samples)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = to_results(samples, preds, class_names)
    if not args.server:
        from training.calibration import scale_results
        from training.detections import box_factor

        results = scale_results(results, box_factor(meta))
    metrics = evaluate(results, class_names, threshold)
    where = f"Triton {args.server}" if args.server else "in process"
    out = Path(args.out) if args.out else REPO_ROOT / "var" / "reports" / "eval" / f"v{version}{'-triton' if args.server else ''}"
    out.mkdir(parents=True, exist_ok=True)
    plotted = plot_pr(results, class_names, metrics["threshold"], out / "pr_curve.png")
    md = (
        f"# car_detector v{version} evaluation ({where})\n\n"
        f"- Data: `{ds.root}` ({args.split} split, {len(samples)} images), fingerprint `{ds.fingerprint()[:16]}`\n"
        f"- {'Median request latency (concurrency 1)' if args.server else 'Mean SavedModel time per image (batch 8)'}: "
        f"{latency * 1000:.1f} ms\n\n" + format_markdown(metrics, "Metrics") + ("\n![PR curve](pr_curve.png)\n" if plotted else "")
    )
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(clean_nan(metrics), indent=2) + "\n", encoding="utf-8")
    print(md)
    print(f"written: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
