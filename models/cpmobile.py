"""The DCASE2024/2025 Task 1 baseline: the simplified CP-Mobile network, in tf_keras.

Reference: F. Schmid, T. Morocutti, S. Masoudian, K. Koutini, G. Widmer, "Distilling the knowledge
of transformers and CNNs with CP-Mobile", DCASE 2023 Workshop; the public baseline code,
CPJKU/dcase2024_task1_baseline ``models/baseline.py`` (identical in dcase2025_task1_baseline
``models/net.py``), with the training script's settings: base channels 32, channel multiplier 1.8,
expansion rate 2.1, blocks per stage (3, 2, 1), strides b2 (1, 1), b3 (1, 2), b4 (2, 1) as
(frequency, time). Published: 61,148 parameters and 29,419,156 MACs (torchinfo, front end excluded)
for a 256 x 65 log-mel input (32 kHz, hop 500).

::

    log-mel [B, T, F, 1]                         (T = 65 frames, F = 256 mel bins: time first, as the project stores it)
      in_c: 2 x (3x3 conv stride 2 -> BN -> ReLU)          [B, 17, 64, 32]
      stage 1: b1, b2, b3 (inverted residual blocks)       [B, 9, 64, 32]   (b3: stride 2 in time)
      stage 2: b4, b5                                      [B, 9, 32, 56]   (b4: stride 2 in frequency)
      stage 3: b6                                          [B, 9, 32, 104]
      head: 1x1 conv to n_classes (no bias) -> BN -> average over time and frequency   [B, 10]

    block: 1x1 expand -> BN -> ReLU -> 3x3 depthwise (stride) -> BN -> ReLU -> 1x1 project -> BN
           (+ shortcut when in == out channels: identity, or 3x3 average pooling with the stride)
           -> ReLU

Faithful to the PyTorch code where it matters for porting weights and counting: no convolution has
a bias; BatchNorm has PyTorch's epsilon 1e-5 and momentum 0.1 (Keras momentum 0.9); strided
convolutions and the pooled shortcut pad one zero on each side explicitly (PyTorch's ``padding=1``;
Keras' ``same`` would pad only after on even sizes), and the shortcut's average counts the padded
zeros (PyTorch's ``count_include_pad=True``).

Parameters: PyTorch counts a BatchNorm's gamma and beta (its running statistics are buffers), so the
published 61,148 equals this model's *trainable* parameters; ``count_params()`` also counts the
moving mean and variance (2,708 more: 63,856).
"""

from __future__ import annotations

import tf_keras

from pipeline.core.checks import check_int, check_real

# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here).
BN = dict(momentum=0.9, epsilon=1e-5)

# The baseline as trained by run_training.py / train_base.py (not get_model()'s defaults).
BASE_CHANNELS = 32
CHANNELS_MULTIPLIER = 1.8
EXPANSION_RATE = 2.1
N_BLOCKS = (3, 2, 1)
# Block -> stride as (time, frequency): the code's (frequency, time) swapped for time-first maps.
STRIDES = {"b2": (1, 1), "b3": (2, 1), "b4": (1, 2)}
PUBLISHED_PARAMS = 61_148
PUBLISHED_MACS = 29_419_156


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """The nearest multiple of ``divisor`` to ``v`` (at least ``min_value``), never 10 % below ``v``
    (the MobileNet rule of the reference code's ``make_divisible``)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def stage_channels(
    base_channels: int = BASE_CHANNELS, channels_multiplier: float = CHANNELS_MULTIPLIER, n_stages: int = 3
) -> list[int]:
    """Channels after ``in_c`` and after each stage: ``[32, 32, 56, 104]`` for the baseline."""
    base = make_divisible(base_channels, 8)
    return [base] + [make_divisible(base * channels_multiplier**k, 8) for k in range(n_stages)]


def _conv_bn(x, filters: int, kernel: int, stride, name: str, *, relu: bool = True, depthwise: bool = False):
    """PyTorch's ``Conv2dNormActivation``: conv (no bias, padding ``(kernel - 1) // 2``) -> BN [-> ReLU]."""
    layers = tf_keras.layers
    strided = tuple(stride) != (1, 1)
    pad = "valid" if strided or kernel == 1 else "same"
    if strided and kernel > 1:
        x = layers.ZeroPadding2D((kernel - 1) // 2, name=f"{name}_pad")(x)  # both sides, as PyTorch
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding=pad, use_bias=False, name=f"{name}_conv")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, padding=pad, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn", **BN)(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _block(x, in_channels: int, out_channels: int, expansion_rate: float, stride, name: str):
    """The inverted residual block (expand, depthwise, project; shortcut when the channels agree)."""
    layers = tf_keras.layers
    exp = make_divisible(in_channels * expansion_rate, 8)
    y = _conv_bn(x, exp, 1, (1, 1), f"{name}_exp")  # [B, t, f, exp]
    y = _conv_bn(y, exp, 3, stride, f"{name}_dw", depthwise=True)  # [B, t/s, f/s, exp]
    y = _conv_bn(y, out_channels, 1, (1, 1), f"{name}_proj", relu=False)  # [B, t/s, f/s, out]
    if in_channels == out_channels:
        shortcut = x
        if tuple(stride) != (1, 1):
            shortcut = layers.ZeroPadding2D(1, name=f"{name}_shortcut_pad")(shortcut)
            shortcut = layers.AveragePooling2D(3, strides=stride, padding="valid", name=f"{name}_shortcut_pool")(
                shortcut
            )  # averages over 9 positions, padded zeros included
        y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu")(y)


def build_cpmobile_classifier(
    n_frames: int = 65,
    n_mels: int = 256,
    n_classes: int = 10,
    *,
    base_channels: int = BASE_CHANNELS,
    channels_multiplier: float = CHANNELS_MULTIPLIER,
    expansion_rate: float = EXPANSION_RATE,
    n_blocks: tuple[int, ...] = N_BLOCKS,
    strides: dict | None = None,
    name: str = "classifier",
) -> tf_keras.Model:
    """The simplified CP-Mobile classifier: log-mel in, logits out.

    Args:
      n_frames: time frames of the input (65 for 1 s at 32 kHz, hop 500).
      n_mels: mel bins of the input (256 in the baseline).
      n_classes: output classes.
      base_channels: channels after the input convolutions (rounded to a multiple of 8).
      channels_multiplier: width growth per stage.
      expansion_rate: expansion of the inverted bottleneck.
      n_blocks: blocks per stage.
      strides: block name (``b1``, ``b2``, ...) -> (time, frequency) stride of its depthwise
        convolution; the baseline's when None.
      name: the model's name.

    Input shape: ``[B, n_frames, n_mels, 1]`` log-mel (time first).
    Output shape: ``[B, n_classes]`` logits (no softmax).

    Returns:
      A functional ``tf_keras.Model`` with 61,148 trainable parameters at the baseline's settings.
    """
    check_int("n_frames", n_frames, 1)
    check_int("n_mels", n_mels, 1)
    check_int("n_classes", n_classes, 1)
    check_int("base_channels", base_channels, 1)
    check_real("channels_multiplier", channels_multiplier, exclusive=True)
    check_real("expansion_rate", expansion_rate, exclusive=True)
    if not n_blocks or any(not isinstance(n, int) or n < 1 for n in n_blocks):
        raise ValueError(f"n_blocks: expected positive integers per stage, got {n_blocks!r}")
    strides = dict(STRIDES if strides is None else strides)
    channels = stage_channels(base_channels, channels_multiplier, len(n_blocks))
    if n_frames < 4 or n_mels < 8:
        raise ValueError(f"CP-Mobile needs at least 4 frames and 8 mel bins, got {n_frames} x {n_mels}")

    inputs = tf_keras.Input(shape=(n_frames, n_mels, 1), name="logmel_input")  # [B, T, F, 1]
    x = _conv_bn(inputs, channels[0] // 4, 3, (2, 2), "in_c0")  # [B, T/2, F/2, 8]
    x = _conv_bn(x, channels[0], 3, (2, 2), "in_c1")  # [B, T/4, F/4, 32]
    block = 0
    for stage, count in enumerate(n_blocks):
        in_ch = channels[stage]
        for _ in range(count):
            block += 1
            x = _block(x, in_ch, channels[stage + 1], expansion_rate, strides.get(f"b{block}", (1, 1)), f"b{block}")
            in_ch = channels[stage + 1]
    x = tf_keras.layers.Conv2D(n_classes, 1, use_bias=False, name="head_conv")(x)  # [B, t, f, 10]
    x = tf_keras.layers.BatchNormalization(name="head_bn", **BN)(x)
    t, f = x.shape[1], x.shape[2]
    # AVERAGE_POOL_2D over the whole map: int8 TFLite runs it exactly (its MEAN lost precision here)
    x = tf_keras.layers.AveragePooling2D((t, f), name="head_pool")(x)  # [B, 1, 1, 10]
    logits = tf_keras.layers.Reshape((n_classes,), name="logits")(x)  # [B, 10]
    return tf_keras.Model(inputs, logits, name=name)


def trainable_params(model: tf_keras.Model) -> int:
    """Trainable parameters: PyTorch's count (BatchNorm running statistics are buffers there)."""
    return int(sum(w.shape.num_elements() for w in model.trainable_weights))
