"""Network: MobileNetV2 backbone + light FPN + CenterNet/TTFNet-style head at stride 8.

Outputs (per image, on the stride-8 grid):
- ``heatmap`` logits [h, w, C]: one Gaussian peak per object centre and class;
- ``ltrb`` [h, w, 4]: distances (input pixels) from the cell centre to the box's left, top,
  right and bottom edges. Regressing the whole box from every cell near the centre (TTFNet)
  gives many more regression samples per object than CenterNet's single cell, which is what
  makes short CPU fine-tunes converge.

Decoding (shared by training-time evaluation and the exported SavedModel, so the numbers we
report are the numbers the served model produces): 3x3 max-pool peak picking, top-k, boxes
from ltrb, per-class NMS with ``tf.image.combined_non_max_suppression`` at IoU 0.6 (peak
picking already removes most duplicates; a looser NMS keeps cars queued in traffic).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import tensorflow as tf

log = logging.getLogger(__name__)

STRIDE = 8
FPN_CHANNELS = 96
# ltrb = softplus(x) * LTRB_SCALE: a unit of the raw output is 16 input pixels (TTFNet's base).
LTRB_SCALE = 16.0
# Prior probability 0.1 for the heatmap bias (CenterNet): stable focal-loss start.
HEATMAP_BIAS_INIT = -2.19
BACKBONE_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# MobileNetV2 layers at strides 8, 16, 32 (expand activations: wide, cheap to tap).
FEATURE_LAYERS = ("block_6_expand_relu", "block_13_expand_relu", "out_relu")
# Backbone layers (strides 2 and 4) left frozen when fine-tuning from pretrained weights.
FROZEN_PREFIXES = ("Conv1", "bn_Conv1", "Conv1_relu", "expanded_conv", "block_1_", "block_2_")


def resolve_backbone_weights(spec: str) -> str | None:
    """Turn the --backbone-weights flag into what Keras accepts.

    ``imagenet`` prefers the offline file (../shared/weights/ beside the checkout, then
    $KERAS_HOME/models/) because this machine cannot download; elsewhere Keras downloads it.
    ``none`` trains from scratch; anything else is a path to an .h5 file.
    """
    if spec.lower() in ("none", "random", "scratch", ""):
        return None
    if spec.lower() == "imagenet":
        from training import REPO_ROOT

        keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
        for candidate in (
            REPO_ROOT.parent / "shared" / "weights" / BACKBONE_WEIGHTS_FILE,
            keras_home / "models" / BACKBONE_WEIGHTS_FILE,
        ):
            if candidate.is_file():
                return str(candidate)
        log.info("offline ImageNet weights not found; Keras will download them")
        return "imagenet"
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {spec}")
    return str(path)


def _conv_bn_relu(x: tf.Tensor, filters: int, name: str, kernel: int = 1) -> tf.Tensor:
    layers = tf.keras.layers
    if kernel == 1:
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    else:
        x = layers.SeparableConv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_sep")(x)
    # GroupNorm, not BatchNorm (as in FCOS heads): it behaves the same in training and in
    # serving, whereas BN moving statistics lag far behind in short CPU fine-tunes and made
    # inference-mode outputs garbage.
    x = layers.GroupNormalization(groups=8, name=f"{name}_gn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _head_tower(x: tf.Tensor, name: str, depth: int) -> tf.Tensor:
    # The first layer keeps its historical name so that weights saved before deeper heads load.
    for i in range(depth):
        x = _conv_bn_relu(x, FPN_CHANNELS, name if i == 0 else f"{name}{i + 1}", kernel=3)
    return x


def build_model(
    input_hw: tuple[int, int], num_classes: int, backbone_weights: str | None = None, any_size: bool = False,
    head_convs: int = 1,
) -> tf.keras.Model:
    """Keras model: float image 0..255 [B, H, W, 3] -> (heatmap logits, ltrb pixels).

    ``head_convs``: separable 3x3 convolutions in each head before its 1x1 output (FCOS uses
    four full ones; at stride 8 each costs about 3 % of the backbone's work).

    ``any_size``: accept any spatial size (multiples of 32) for patch training; the exported
    model is fixed to ``input_hw`` (a SavedModel cannot serialise bilinear upsampling of an
    unknown size), with the same layers and weights.
    """
    h, w = input_hw
    if h % 32 or w % 32:
        raise ValueError(f"input size {w}x{h} must be a multiple of 32")
    layers = tf.keras.layers
    shape = (None, None, 3) if any_size else (h, w, 3)
    inputs = tf.keras.Input(shape, name="image")
    # MobileNetV2 expects [-1, 1]; doing it in the graph keeps the serving path trivial.
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
    backbone = tf.keras.applications.MobileNetV2(
        input_shape=shape, alpha=1.0, include_top=False, weights=backbone_weights
    )
    if backbone_weights is not None:
        # Pretrained backbone: keep its BatchNorm frozen (inference mode, ImageNet statistics),
        # the usual detection fine-tuning practice, and freeze the stride-2/4 blocks, whose
        # generic edge filters need no tuning and whose backward pass is the most expensive.
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization) or layer.name.startswith(FROZEN_PREFIXES):
                layer.trainable = False
    else:
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = 0.9
    feats = tf.keras.Model(backbone.input, [backbone.get_layer(n).output for n in FEATURE_LAYERS], name="backbone")
    c8, c16, c32 = feats(x)

    # Light top-down FPN: 1x1 laterals, nearest upsampling, separable 3x3 smoothing.
    p32 = _conv_bn_relu(c32, FPN_CHANNELS, "lat32")
    p16 = _conv_bn_relu(c16, FPN_CHANNELS, "lat16")
    p16 = layers.Add(name="td16")([p16, layers.UpSampling2D(2, name="up32")(p32)])
    p16 = _conv_bn_relu(p16, FPN_CHANNELS, "smooth16", kernel=3)
    p8 = _conv_bn_relu(c8, FPN_CHANNELS, "lat8")
    p8 = layers.Add(name="td8")([p8, layers.UpSampling2D(2, interpolation="bilinear", name="up16")(p16)])
    p8 = _conv_bn_relu(p8, FPN_CHANNELS, "smooth8", kernel=3)

    hm = _head_tower(p8, "hm_head", head_convs)
    hm = layers.Conv2D(
        num_classes, 1, bias_initializer=tf.keras.initializers.Constant(HEATMAP_BIAS_INIT), name="heatmap"
    )(hm)
    reg = _head_tower(p8, "reg_head", head_convs)
    reg = layers.Conv2D(4, 1, name="ltrb_raw")(reg)
    # softplus, not ReLU: a ReLU here can die (all distances 0, no gradient) early on.
    reg = layers.Activation("softplus", name="ltrb_softplus")(reg)
    reg = layers.Rescaling(LTRB_SCALE, name="ltrb")(reg)
    return tf.keras.Model(inputs, [hm, reg], name="car_centernet")


def network_of_version(version_dir: Path) -> tuple[tf.keras.Model, dict]:
    """An exported version's network (as built by its recipe) with the weights of its SavedModel,
    and the version's metadata.

    The SavedModel's variables are a checkpoint whose root is export.Detector; its ``model``
    child is this network.
    """
    meta = json.loads((version_dir / "model_metadata.json").read_text())
    hw = (int(meta["input_size"]["height"]), int(meta["input_size"]["width"]))
    model = build_model(hw, len(meta["class_names"]), None, head_convs=int(meta.get("recipe", {}).get("head_convs", 1)))
    tf.train.Checkpoint(model=model).read(str(version_dir / "model.savedmodel/variables/variables")).expect_partial()
    return model, meta


def cell_centres(feat_h: int, feat_w: int) -> tf.Tensor:
    """[h, w, 2] (x, y) of each stride-8 cell centre in input pixels."""
    ys = (tf.range(feat_h, dtype=tf.float32) + 0.5) * STRIDE
    xs = (tf.range(feat_w, dtype=tf.float32) + 0.5) * STRIDE
    gx, gy = tf.meshgrid(xs, ys)
    return tf.stack([gx, gy], axis=-1)


def decode(
    heatmap_logits: tf.Tensor,
    ltrb: tf.Tensor,
    scale_xy: tf.Tensor,
    image_wh: tf.Tensor,
    max_detections: int = 100,
    score_floor: float = 0.05,
    iou_threshold: float = 0.6,
    pre_nms_top_k: int = 300,
) -> dict[str, tf.Tensor]:
    """Network outputs -> boxes in original pixels, sorted by score, NMS applied.

    ``scale_xy`` [B, 2] maps input pixels to original pixels; ``image_wh`` [B, 2] clips.
    Returns boxes [B, K, 4] (x1, y1, x2, y2), scores [B, K], classes int32 [B, K],
    num_detections int32 [B] with K = max_detections (padding has score 0).
    """
    heat = tf.sigmoid(heatmap_logits)
    # A cell is a peak if it is the max of its 3x3 neighbourhood (CenterNet's cheap "NMS").
    peaks = tf.cast(tf.equal(heat, tf.nn.max_pool2d(heat, 3, 1, "SAME")), heat.dtype)
    heat = heat * peaks
    shape = tf.shape(heat)
    b, fh, fw, c = shape[0], shape[1], shape[2], shape[3]
    centres = cell_centres(fh, fw)
    x1y1 = centres[None] - ltrb[..., :2]
    x2y2 = centres[None] + ltrb[..., 2:]
    boxes = tf.concat([x1y1, x2y2], axis=-1) * tf.tile(scale_xy, [1, 2])[:, None, None, :]
    boxes = tf.reshape(boxes, [b, -1, 4])
    scores = tf.reshape(heat, [b, -1, c])
    # Keep the k best cells (by their best class) before NMS: NMS cost grows with candidates.
    k = tf.minimum(pre_nms_top_k, fh * fw)
    _, top = tf.math.top_k(tf.reduce_max(scores, axis=-1), k=k)
    boxes = tf.gather(boxes, top, batch_dims=1)
    scores = tf.gather(scores, top, batch_dims=1)
    # combined_nms works on y1, x1, y2, x2 and normalised or pixel coordinates alike.
    yx = tf.stack([boxes[..., 1], boxes[..., 0], boxes[..., 3], boxes[..., 2]], axis=-1)
    nms_boxes, nms_scores, nms_classes, valid = tf.image.combined_non_max_suppression(
        yx[:, :, None, :],
        scores,
        max_output_size_per_class=max_detections,
        max_total_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=score_floor,
        pad_per_class=False,
        clip_boxes=False,
    )
    wh = tf.cast(image_wh, tf.float32)
    x1 = tf.clip_by_value(nms_boxes[..., 1], 0.0, wh[:, 0:1])
    y1 = tf.clip_by_value(nms_boxes[..., 0], 0.0, wh[:, 1:2])
    x2 = tf.clip_by_value(nms_boxes[..., 3], 0.0, wh[:, 0:1])
    y2 = tf.clip_by_value(nms_boxes[..., 2], 0.0, wh[:, 1:2])
    return {
        "boxes": tf.stack([x1, y1, x2, y2], axis=-1),
        "scores": nms_scores,
        "classes": tf.cast(nms_classes, tf.int32),
        "num_detections": tf.cast(valid, tf.int32),
    }
