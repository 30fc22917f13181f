"""Occlusion explanations with a fake model whose evidence is known, and the PSI maths."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from governance import drift
from services.common.explain import ExplainError, explain_image, grid_cells, parse_grid

BOX = (200.0, 100.0, 320.0, 180.0)  # the "car" the fake model sees


def road_image() -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(60, 120, size=(240, 480, 3), dtype=np.uint8)
    pixels[100:180, 200:320] = (220, 30, 30)  # a red car
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class FakeModel:
    """Score = share of the car's core (the centre of BOX) still red; batches recorded."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, images):
        self.batches.append(len(images))
        out = []
        for data in images:
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
            core = pixels[120:160, 230:290]
            red = float(((core[..., 0] > 150) & (core[..., 1] < 90)).mean())
            out.append((np.array([BOX, (0, 0, 20, 20)], np.float32), np.array([0.95 * red, 0.06], np.float32),
                        ["car", "car"]))
        return out, "7"


def test_occlusion_finds_the_evidence_inside_the_box():
    model = FakeModel()
    result = explain_image(road_image(), threshold=0.4, grid=(12, 8), infer=model, guard=False)
    body = result.body
    assert body["inferences"] == 1 + 1 + 96 and max(model.batches) <= 16 and sum(model.batches) == 98
    assert body["model_version"] == "7" and len(body["detections"]) == 1  # the 0.06 box is below threshold
    saliency = body["detections"][0]["saliency"]
    assert saliency["max_drop"] > 0.3 and saliency["inside_box_share"] > 0.9
    peak = saliency["peak_cell"]["box"]
    assert peak["x_min"] < 290 and peak["x_max"] > 230 and peak["y_min"] < 160 and peak["y_max"] > 120
    assert len(saliency["grid"]) == 8 and len(saliency["grid"][0]) == 12
    assert "inside its own box" in saliency["reading"]
    image = Image.open(io.BytesIO(result.png))
    assert image.format == "PNG" and image.size == (480, 240)


def test_an_image_smaller_than_the_grid_is_explained_on_a_grid_it_can_fill():
    seen: list[tuple[int, int]] = []

    def sees_a_car_everywhere(images):
        seen.extend(Image.open(io.BytesIO(data)).size for data in images)
        return [(np.array([(0, 0, 3, 1)], np.float32), np.array([0.9], np.float32), ["car"]) for _ in images], "7"

    buffer = io.BytesIO()
    Image.new("RGB", (3, 1), (200, 30, 30)).save(buffer, format="PNG")
    body = explain_image(buffer.getvalue(), threshold=0.05, grid=(12, 8), infer=sees_a_car_everywhere,
                         guard=False).body
    assert body["grid"]["columns"] == 3 and body["grid"]["rows"] == 1
    assert body["inferences"] == 1 + 1 + 3 and seen == [(3, 1)] * 5
    assert len(body["detections"]) == 1 and len(body["detections"][0]["saliency"]["grid"]) == 1


def test_nothing_to_explain_costs_one_inference():
    model = FakeModel()
    result = explain_image(road_image(), threshold=0.99, infer=model, guard=False)
    assert model.batches == [1] and result.body["detections"] == [] and "nothing to explain" in result.body["note"]
    assert result.png.startswith(b"\x89PNG")


def test_grid_bounds():
    assert parse_grid(None) == (12, 8) and parse_grid("4x3") == (4, 3)
    for bad in ("12", "0x4", "100x100", "axb"):
        with pytest.raises(ExplainError):
            parse_grid(bad)
    cells = grid_cells(676, 380, 12, 8)
    assert len(cells) == 96 and cells[0][2:4] == (0, 0) and cells[-1][4:] == (676, 380)


def test_psi_is_zero_on_the_baseline_and_large_on_a_shift():
    rng = np.random.default_rng(1)
    base = rng.normal(100, 10, 2000)
    edges = drift._edges(base)
    expected = drift.proportions(base, edges)
    same = drift.psi(expected, drift.proportions(rng.normal(100, 10, 2000), edges))
    shifted = drift.psi(expected, drift.proportions(rng.normal(130, 10, 2000), edges))
    assert same < 0.05 and shifted > 0.25


def test_drift_report_against_the_committed_baseline():
    baseline = drift.load_baseline()
    assert baseline and baseline["images"] > 500 and set(drift.NUMERIC_FEATURES) <= set(baseline["features"])
    night = [{**{k: v["mean"] for k, v in baseline["features"].items()}, "brightness": 15.0} for _ in range(250)]
    report = drift.drift(baseline, night)
    assert "brightness" in report["drifting"] and report["enough_data"]
    assert report["features"]["width"]["level"] == "stable"


def test_a_small_undrifted_sample_is_not_called_drifted():
    """40 images drawn from the baseline's own distribution: raw PSI is noisy, the excess is not."""
    baseline = drift.load_baseline()
    rng = np.random.default_rng(3)
    sample = [{name: float(rng.normal(f["mean"], max(f["std"], 1e-9))) for name, f in baseline["features"].items()}
              for _ in range(40)]
    report = drift.drift(baseline, sample)
    assert not report["enough_data"]
    assert report["features"]["brightness"]["noise_floor"] >= 0.225  # at least the chi-square figure (k - 1) / n
    assert report["features"]["brightness"]["level"] != "significant"


def test_two_training_frames_are_not_called_drifted_and_forty_night_frames_are():
    """With two images most bins are empty and the PSI of undrifted images is 6.8-8.3, far above
    (k - 1) / n = 4.5: the simulated floor keeps two of the training frames themselves stable,
    and still calls 40 night frames (the brightness of the darkest training frames halved) drifted."""
    baseline = drift.load_baseline()
    edges = baseline["features"]["brightness"]["edges"]
    inside = [{"brightness": (edges[0] + edges[1]) / 2}, {"brightness": (edges[5] + edges[6]) / 2}]
    two = drift.drift(baseline, inside)["features"]["brightness"]
    assert two["psi"] > (len(edges) + 1 - 1) / 2 and two["level"] == "stable", two
    night = drift.drift(baseline, [{"brightness": edges[0] / 2 - i / 10} for i in range(40)])["features"]["brightness"]
    assert night["level"] == "significant" and night["psi_excess"] > 5, night
