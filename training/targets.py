"""Training targets for the CenterNet/TTFNet-style head (numpy, per batch).

For each box: an elliptical Gaussian on the class heatmap whose peak (exactly 1.0) sits on
the cell holding the box centre, and a box-regression target on the cells near the centre
(inside the box and where the Gaussian is not negligible), weighted by the Gaussian and by
log(area) so that large boxes do not drown small ones. Boxes are drawn largest first so a
small car in front of a big one owns the cells they share.
"""

from __future__ import annotations

import numpy as np

# TTFNet's alpha/beta: Gaussian sigma = ALPHA * box side / 6.
GAUSS_ALPHA = 0.54
REG_MIN_GAUSS = 0.05


def encode_targets(
    boxes_list: list[np.ndarray],
    labels_list: list[np.ndarray],
    input_hw: tuple[int, int],
    num_classes: int,
    stride: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes in input pixels -> (heatmap [B,h,w,C], reg boxes [B,h,w,4], reg weights [B,h,w])."""
    fh, fw = input_hw[0] // stride, input_hw[1] // stride
    n = len(boxes_list)
    heat = np.zeros((n, fh, fw, num_classes), np.float32)
    reg = np.zeros((n, fh, fw, 4), np.float32)
    reg_w = np.zeros((n, fh, fw), np.float32)
    ys = (np.arange(fh, dtype=np.float32) + 0.5) * stride
    xs = (np.arange(fw, dtype=np.float32) + 0.5) * stride
    for i, (boxes, labels) in enumerate(zip(boxes_list, labels_list)):
        if len(boxes) == 0:
            continue
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for k in np.argsort(-areas):
            x1, y1, x2, y2 = boxes[k]
            c = int(labels[k])
            bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
            cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
            ci = min(max(int(cx // stride), 0), fw - 1)
            cj = min(max(int(cy // stride), 0), fh - 1)
            sx = max(GAUSS_ALPHA * bw / stride / 6.0, 0.3)
            sy = max(GAUSS_ALPHA * bh / stride / 6.0, 0.3)
            gx = np.exp(-((np.arange(fw) - ci) ** 2) / (2 * sx * sx))
            gy = np.exp(-((np.arange(fh) - cj) ** 2) / (2 * sy * sy))
            g = gy[:, None] * gx[None, :]
            heat[i, :, :, c] = np.maximum(heat[i, :, :, c], g)
            heat[i, cj, ci, c] = 1.0
            inside = (xs[None, :] > x1) & (xs[None, :] < x2) & (ys[:, None] > y1) & (ys[:, None] < y2)
            region = inside & (g > REG_MIN_GAUSS)
            region[cj, ci] = True  # the peak cell always regresses its box
            w = g * region
            w = w / w.sum() * np.log(bw * bh + 1.0)
            reg[i][region] = (x1, y1, x2, y2)
            reg_w[i][region] = w[region]
    return heat, reg, reg_w
