"""make perf's input data for perf_analyzer (loadtest/perf.py): each frame is one BYTES
element, serialised as Triton does (uint32 little-endian length, then the bytes)."""
from __future__ import annotations

import base64
import struct

from loadtest.perf import concurrency_levels, input_data
from tests.conftest import frame


def test_each_frame_is_one_length_prefixed_bytes_element():
    images = [frame("vid_4_1000.jpg"), frame("vid_4_6280.jpg")]
    steps = input_data(images)["data"]
    assert len(steps) == len(images)
    for step, image in zip(steps, images):
        raw = base64.b64decode(step["IMAGE"]["b64"])
        (length,) = struct.unpack("<I", raw[:4])
        assert length == len(image) and raw[4:] == image


def test_concurrency_sweep_spec():
    assert concurrency_levels("1:8") == [1, 2, 3, 4, 5, 6, 7, 8]
    assert concurrency_levels("1,2,4,8") == [1, 2, 4, 8]


def test_the_sweep_is_plotted_beside_the_bench_client(tmp_path):
    from PIL import Image

    from loadtest.perf import plot_rows

    rows = [{"concurrency": c, "perf_analyzer_images_per_s": 50.0 + c, "perf_analyzer_p95_ms": 20.0 * c,
             "bench_images_per_s": 48.0 + c, "bench_p95_ms": 22.0 * c} for c in range(1, 9)]
    out = tmp_path / "latest.png"
    assert plot_rows(rows, {"model_version": "4", "cpu": "test CPU"}, out)
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size[0] > picture.size[1] > 200
