"""The explanation engine's bounds: image size, total deadline, one at a time per process."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from services.common import explain
from services.common.explain import ExplainError, explain_image, explanation_slot
from services.common.images import ImageRejected


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 40, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def sees_one_car(delay_s: float = 0.0):
    calls: list[int] = []

    def infer(images):
        calls.append(len(images))
        time.sleep(delay_s)
        return [(np.array([(1, 1, 20, 20)], np.float32), np.array([0.9], np.float32), ["car"]) for _ in images], "7"

    return infer, calls


def test_an_image_above_the_explanation_pixel_budget_is_refused_before_any_inference(monkeypatch):
    monkeypatch.setenv("EXPLAIN_MAX_PIXELS", "10000")
    infer, calls = sees_one_car()
    with pytest.raises(ImageRejected) as refused:
        explain_image(jpeg(200, 60), threshold=0.5, infer=infer, guard=False)
    assert refused.value.status == 413 and "10000" in refused.value.message and calls == []
    assert explain_image(jpeg(100, 60), threshold=0.5, grid=(4, 3), infer=infer, guard=False).body["detections"]


def test_the_deadline_bounds_the_whole_explanation(monkeypatch):
    monkeypatch.setenv("EXPLAIN_DEADLINE_S", "0.3")
    infer, calls = sees_one_car(delay_s=0.1)
    with pytest.raises(ExplainError) as late:
        explain_image(jpeg(120, 80), threshold=0.5, grid=(12, 8), infer=infer, guard=False)
    assert late.value.status == 503 and late.value.public and "0.3 s" in late.value.message
    # Counted in calls, not seconds (a loaded machine stretches every sleep): the 13 batches
    # the explanation needed take 1.3 s, so the deadline stopped it before the last of them.
    assert 1 <= len(calls) < 13, calls


def test_the_deadline_is_the_remaining_time_given_to_each_triton_call(monkeypatch):
    seen: list[float | None] = []

    class Model:
        def infer(self, images, request_id="", timeout_s=None):
            seen.append(timeout_s)
            from services.common.triton_client import BatchResult, ImageResult

            return BatchResult([ImageResult(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])
                                for _ in images], "7")

    monkeypatch.setenv("EXPLAIN_DEADLINE_S", "5")
    explain_image(jpeg(40, 30), threshold=0.5, infer=explain.TritonInfer(Model()), guard=False)
    assert len(seen) == 1 and seen[0] is not None and 4.0 < seen[0] <= 5.0


def test_one_explanation_at_a_time_per_process(monkeypatch):
    monkeypatch.setattr(explain, "_slots", None)
    monkeypatch.setenv("EXPLAIN_CONCURRENCY", "1")
    inside, release = threading.Event(), threading.Event()

    def hold():
        with explanation_slot():
            inside.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    with pytest.raises(ExplainError) as busy, explanation_slot():
        pass
    assert busy.value.status == 429 and busy.value.retry_after_s
    release.set()
    holder.join(5)
    with explanation_slot():  # free again
        pass
