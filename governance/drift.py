"""Data drift of image features against the training baseline (population stability index).

The baseline is computed once from the training frames (the training split of
training.data, the same contiguous split as training.train) with the feature
service's own `extract_features`, and cached in `governance/baseline_features.json`:

    python -m governance.drift baseline [DATA_DIR]      # (re)build the cache
    python -m governance.drift check                    # PSI of the stored predictions' features

PSI per feature over the baseline's decile bins: sum((p_prod - p_base) * ln(p_prod / p_base)),
proportions floored at 1e-4. Reading (the usual credit-scoring convention):
< 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift — applied to the PSI in
excess of its sampling noise, so small samples are not called drifted by chance. The noise
floor is the 95th percentile of the PSI of n images drawn from the baseline's own bins
(simulated, fixed seed): for large n it approaches the chi-square figure (k - 1) / n, but
for a handful of images, where most bins are empty and the 1e-4 floor dominates, it is far
above it (two training frames score PSI 6.8-8.3, the (k - 1) / n floor is 4.5).
Below 200 images the result is marked indicative.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from services.common import config, image_features

NUMERIC_FEATURES = image_features.NUMERIC
N_BINS = 10
FLOOR = 1e-4
STABLE, SIGNIFICANT = 0.1, 0.25
MIN_SAMPLE = 200


def baseline_path() -> Path:
    return Path(config.DRIFT_BASELINE_PATH)


def _edges(values: np.ndarray) -> list[float]:
    inner = np.unique(np.quantile(values, np.linspace(0, 1, N_BINS + 1)[1:-1]))
    if len(inner) < 2:  # (nearly) constant feature: a narrow bin around the value
        v = float(values[0]) if len(values) else 0.0
        tiny = 1e-6 * max(1.0, abs(v))
        inner = np.array([v - tiny, v + tiny])
    return [float(x) for x in inner]


def proportions(values: Iterable[float], edges: list[float]) -> list[float]:
    values = np.asarray(list(values), dtype=np.float64)
    bins = np.concatenate([[-np.inf], edges, [np.inf]])
    counts, _ = np.histogram(values, bins=bins)
    total = max(1, counts.sum())
    return [float(c) / total for c in counts]


def psi(expected: list[float], actual: list[float]) -> float:
    score = 0.0
    for p, q in zip(expected, actual):
        p, q = max(p, FLOOR), max(q, FLOOR)
        score += (q - p) * math.log(q / p)
    return score


@lru_cache(maxsize=256)
def noise_floor(expected: tuple[float, ...], n: int, draws: int = 2000, quantile: float = 95.0) -> float:
    """PSI that n undrifted images exceed only 5 % of the time: n draws from the baseline's bins."""
    p = np.asarray(expected, dtype=np.float64)
    rng = np.random.default_rng(n)  # deterministic: the same sample size gives the same floor
    q = rng.multinomial(n, p / p.sum(), size=draws) / n
    base, prod = np.maximum(p, FLOOR), np.maximum(q, FLOOR)
    scores = ((prod - base) * np.log(prod / base)).sum(axis=1)
    return max(float(np.percentile(scores, quantile)), (len(p) - 1) / n)


def build_baseline(data_dir: str | Path) -> dict[str, Any]:
    from services.common.images import check_image
    from services.common.image_features import ANALYSIS_SIDE, extract_features
    from training.data import load_dataset, split_contiguous

    dataset = load_dataset(data_dir)
    train, _ = split_contiguous(dataset.samples)
    rows = []
    for sample in train:
        # Decoded as the feature service decodes a detection's frame (reduced scale).
        rows.append(extract_features(check_image(sample.path.read_bytes(), analysis_side=ANALYSIS_SIDE)))
    features = {}
    for name in NUMERIC_FEATURES:
        values = np.array([float(r[name]) for r in rows], dtype=np.float64)
        edges = _edges(values)
        features[name] = {
            "edges": edges,
            "proportions": proportions(values, edges),
            "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max()),
        }
    return {
        "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": "training split (training.data.split_contiguous defaults) of the Kaggle car-object-detection frames",
        "dataset_fingerprint": dataset.fingerprint(),
        "images": len(rows),
        "extractor": "services/common/image_features.py:extract_features",
        "formats": sorted({str(r["format"]) for r in rows}),
        "features": features,
    }


def load_baseline(path: Path | None = None) -> dict[str, Any] | None:
    path = path or baseline_path()
    return json.loads(path.read_text()) if path.exists() else None


def drift(baseline: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """PSI per feature of production feature rows against the baseline."""
    per_feature: dict[str, dict[str, Any]] = {}
    for name, base in baseline["features"].items():
        values = [float(r[name]) for r in rows if isinstance(r, dict) and isinstance(r.get(name), (int, float))]
        if not values:
            per_feature[name] = {"n": 0, "psi": None, "level": "no data"}
            continue
        actual = proportions(values, base["edges"])
        score = psi(base["proportions"], actual)
        noise = noise_floor(tuple(base["proportions"]), len(values))
        excess = max(0.0, score - noise)
        level = "stable" if excess < STABLE else "moderate" if excess < SIGNIFICANT else "significant"
        per_feature[name] = {"n": len(values), "psi": round(score, 4), "noise_floor": round(noise, 4),
                             "psi_excess": round(excess, 4), "level": level,
                             "baseline_mean": round(base["mean"], 3), "production_mean": round(float(np.mean(values)), 3)}
    scored = [v for v in per_feature.values() if v["psi"] is not None]
    worst = max(scored, key=lambda v: v["psi"], default=None)
    return {"features": per_feature, "n": max((v["n"] for v in per_feature.values()), default=0),
            "max_psi": worst["psi"] if worst else None,
            "drifting": sorted(k for k, v in per_feature.items() if v["level"] == "significant"),
            "enough_data": bool(scored) and min(v["n"] for v in scored) >= MIN_SAMPLE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m governance.drift", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("baseline")
    p.add_argument("data", nargs="?", default=config.DATA_DIR)
    sub.add_parser("check")
    args = parser.parse_args(argv)
    if args.command == "baseline":
        built = build_baseline(args.data)
        baseline_path().write_text(json.dumps(built, indent=2) + "\n")
        print(f"baseline of {built['images']} training frames written to {baseline_path()}")
        return 0
    from datetime import timedelta

    from governance.store import GovernanceStore

    baseline = load_baseline()
    if baseline is None:
        print(f"no baseline at {baseline_path()}: run `python -m governance.drift baseline` first", file=sys.stderr)
        return 2
    since = datetime.now(timezone.utc) - timedelta(days=30)
    rows = [p["features"] for p in GovernanceStore().rows("predictions", since) if isinstance(p.get("features"), dict)]
    print(json.dumps(drift(baseline, rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
