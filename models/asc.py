"""The report's network (Xin et al., DCASE2022 Task 1), table-driven.

::

    waveform [B, samples]
      -> LogMel                                   [B, T, M, 1]    (T = 44, M = 256 at the paper's settings)
      -> TimeShift, SpecAugment++ (training only)
      -> classifier (nested model "classifier", log-mel in, logits out: what is counted,
         pruned and quantized):
           BatchNorm over mel bins                [B, T, M, 1]
           4 x block (table ``BLOCKS``):
             SeparableBlock -> BN -> ReLU -> CoordAttention -> AvgPool 2x2 [-> SpecAugment++]
                                                  [B, T/16, M/16, 128]
           mean over frequency, mean + max over time  [B, 128]
           Dropout 0.1 -> Dense 128 ReLU -> Dropout 0.1 -> Dense n_classes   [B, 10]

Layer names are stable and hierarchical (``block2_attention``, ``head_dense1``) so weights,
metrics and pruning reports line up across runs. ``build_classifier(..., augment=False)``
builds the same classifier without augmentation layers; :func:`export_classifier` copies a
trained model's weights into it for pruning, quantization and TFLite export.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from augment.shift import TimeShift
from augment.specaugment import SpecAugmentPP
from augment.tta import TTA
from models.frontend import LogMel
from models.layers import CoordAttention, SeparableBlock
from pipeline.core.config import Params
from pipeline.core.labels import CLASSES

# BatchNorm as PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5), as in the report's
# reference code (SP4ASC); Keras' 0.99 leaves the moving statistics far off after short runs.
BN = dict(momentum=0.9, epsilon=1e-5)

# One row per block: (name, pooling); block i has model.channels[i] filters.
BLOCKS = (
    ("block1", (2, 2)),
    ("block2", (2, 2)),
    ("block3", (2, 2)),
    ("block4", (2, 2)),
)

# Where SpecAugment++ may go (augment.specaugment.positions), in network order.
SPECAUGMENT_POSITIONS = ("input",) + tuple(block for block, _ in BLOCKS)


@tf_keras.saving.register_keras_serializable(package="asc")
class TimeFreqPooling(tf_keras.layers.Layer):
    """Global pooling of the report: mean over frequency, then mean + max over time, summed.

    Input shape: ``[B, T, F, C]``. Output shape: ``[B, C]``.
    Reference: section 2.3 of the report; Bursuc et al. 2021 (SP4ASC).
    """

    def get_prunable_weights(self):
        return []  # no weights (tfmot.sparsity.keras.PrunableLayer protocol)

    def call(self, inputs):
        t, f = inputs.shape[1], inputs.shape[2]
        if t is None or f is None:  # unknown sizes: plain reductions
            x = tf.reduce_mean(inputs, axis=2)  # [B, T, C]
            return tf.reduce_mean(x, axis=1) + tf.reduce_max(x, axis=1)  # [B, C]
        # Pooling ops rather than reduce_mean over a middle axis: int8 TFLite runs AVERAGE_POOL_2D
        # and MAX_POOL_2D exactly, while its int8 MEAN over the frequency axis lost ~8 quantization
        # steps here (TFLite quantization debugger).
        x = tf.nn.avg_pool2d(inputs, ksize=(1, f), strides=(1, f), padding="VALID")  # [B, T, 1, C]
        mean = tf.nn.avg_pool2d(x, ksize=(t, 1), strides=(t, 1), padding="VALID")  # [B, 1, 1, C]
        peak = tf.nn.max_pool2d(x, ksize=(t, 1), strides=(t, 1), padding="VALID")  # [B, 1, 1, C]
        return tf.reshape(mean + peak, [-1, inputs.shape[-1]])  # [B, C]

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], input_shape[-1]])


def frontend(params: Params) -> LogMel:
    a = params.audio
    return LogMel(sample_rate=a.sample_rate_hz, n_fft=a.n_fft, win_length=a.win_length,
                  hop_length=a.hop_length, n_mels=a.n_mels, fmin=a.fmin_hz, fmax=a.fmax_hz,
                  window=a.window, center=a.center, power=a.power, mel_scale=a.mel_scale,
                  log=a.log, log_offset=a.log_offset, name="logmel")


def _time_shift(params: Params, name: str) -> TimeShift:
    """The time shift configured by ``params`` (seed ``params.seed + 7``)."""
    return TimeShift(std_frames=params.augment.time_shift.std_frames, seed=params.seed + 7, name=name)


def _specaugment_layer(params: Params, position: str, frames: int, bins: int, name: str) -> SpecAugmentPP:
    """SpecAugment++ at ``position`` for ``[B, frames, bins, C]`` maps (seed ``params.seed + 11 * (k + 1)``,
    ``k`` the position's index in :data:`SPECAUGMENT_POSITIONS`)."""
    seed = params.seed + 11 * (1 + SPECAUGMENT_POSITIONS.index(position))
    return SpecAugmentPP.from_params(params.augment.specaugment, frames, bins, seed=seed, name=name)


def _specaugment(params: Params, position: str, frames: int, bins: int):
    """The SpecAugment++ layer of ``position``, or None where the config puts none."""
    s = params.augment.specaugment
    if not s.enabled or position not in s.positions:
        return None
    return _specaugment_layer(params, position, frames, bins, name=f"{position}_specaugment")


def build_classifier(params: Params, *, augment: bool = True, fold_bn: bool = False,
                     name: str = "classifier") -> tf_keras.Model:
    """The classifier: log-mel ``[T, M, 1]`` in, logits ``[n_classes]`` out.

    Args:
      params: the parameter tree (audio for the input shape, model, augment).
      augment: include the hidden-space SpecAugment++ layers (identity at inference).
      fold_bn: the export form: each block's BatchNorm folded into its SeparableBlock (depthwise
        kernels scaled, a bias added), so int8 TFLite has no separate per-channel MUL/ADD (whose
        int8 range clipped badly: the quantization debugger measured errors of several steps).
      name: the model's name.
    """
    m = params.model
    frames, bins = params.audio.frames, params.audio.n_mels
    inputs = tf_keras.Input(shape=(frames, bins, 1), name="logmel_input")  # [B, T, M, 1]
    x = tf_keras.layers.BatchNormalization(axis=2, name="input_bn", **BN)(inputs)  # [B, T, M, 1]
    for i, (block, pool) in enumerate(BLOCKS):
        x = SeparableBlock(m.channels[i], use_bias=fold_bn, name=f"{block}_sepconv")(x)  # [B, t, f, C]
        if not fold_bn:
            x = tf_keras.layers.BatchNormalization(name=f"{block}_bn", **BN)(x)
        x = tf_keras.layers.ReLU(name=f"{block}_relu")(x)
        x = CoordAttention(reduction=m.attention_reduction, min_channels=m.attention_min_channels,
                           name=f"{block}_attention")(x)  # [B, t, f, C]
        x = tf_keras.layers.AveragePooling2D(pool, name=f"{block}_pool")(x)  # [B, t/2, f/2, C]
        frames, bins = frames // pool[0], bins // pool[1]
        aug = _specaugment(params, block, frames, bins) if augment else None
        if aug is not None:
            x = aug(x)
    x = TimeFreqPooling(name="head_pool")(x)  # [B, C]
    x = tf_keras.layers.Dropout(m.dropout, seed=params.seed + 1, name="head_dropout1")(x)
    x = tf_keras.layers.Dense(m.hidden_units, activation="relu", name="head_dense1")(x)  # [B, 128]
    x = tf_keras.layers.Dropout(m.dropout, seed=params.seed + 2, name="head_dropout2")(x)
    logits = tf_keras.layers.Dense(len(CLASSES), name="logits")(x)  # [B, 10]
    return tf_keras.Model(inputs, logits, name=name)


def build_model(params: Params) -> tf_keras.Model:
    """The full model: waveform ``[samples]`` in, logits out (``model.name`` selects the network)."""
    if params.model.name == "baseline":
        from models.baseline import build_baseline

        return build_baseline(n_classes=len(CLASSES), sample_rate=params.audio.sample_rate_hz,
                              clip_samples=params.audio.clip_samples)
    wave = tf_keras.Input(shape=(params.audio.clip_samples,), name="waveform")  # [B, samples]
    x = frontend(params)(wave)  # [B, T, M, 1]
    t = params.augment.time_shift
    if t.enabled and t.std_frames > 0:
        x = _time_shift(params, "time_shift")(x)
    aug = _specaugment(params, "input", params.audio.frames, params.audio.n_mels)
    if aug is not None:
        x = aug(x)
    logits = build_classifier(params, augment=True)(x)  # [B, 10]
    return tf_keras.Model(wave, logits, name=f"asc_{params.model.name}")


def get_classifier(model: tf_keras.Model) -> tf_keras.Model:
    """The nested classifier (log-mel in, logits out) of a full model."""
    return model.get_layer("classifier")


def export_classifier(model: tf_keras.Model, params: Params) -> tf_keras.Model:
    """A copy of the trained classifier without augmentation layers (for TFMOT and TFLite)."""
    trained = get_classifier(model)
    if params.model.name == "baseline":
        clone = tf_keras.models.clone_model(trained)
        clone.set_weights(trained.get_weights())
        return clone
    plain = build_classifier(params, augment=False, fold_bn=True)
    for layer in plain.layers:
        if isinstance(layer, SeparableBlock):
            pointwise, dw_time, dw_freq = trained.get_layer(layer.name).get_weights()
            gamma, beta, mean, var = trained.get_layer(layer.name.replace("_sepconv", "_bn")).get_weights()
            bn = trained.get_layer(layer.name.replace("_sepconv", "_bn"))
            scale = gamma / np.sqrt(var + bn.epsilon)  # [C]
            # BN(dw_t(h) + dw_f(h)) = dw_t'(h) + dw_f'(h) + bias, kernels [kh, kw, C, 1] scaled per channel
            layer.set_weights([pointwise, dw_time * scale[None, None, :, None], beta - mean * scale,
                               dw_freq * scale[None, None, :, None]])
            continue
        weights = trained.get_layer(layer.name).get_weights()
        if weights:
            layer.set_weights(weights)
    return plain


def frontend_layer(model: tf_keras.Model) -> LogMel:
    """The model's LogMel layer (whatever its name)."""
    for layer in model.layers:
        if isinstance(layer, LogMel):
            return layer
    raise ValueError(f"model {model.name!r} has no LogMel front end")


def frontend_model(model: tf_keras.Model) -> tf_keras.Model:
    """Waveform ``[samples]`` in, log-mel ``[T, M, 1]`` out: the float front end of ``model``."""
    return tf_keras.Model(model.inputs, frontend_layer(model).output, name="frontend")


def tta_classifier(model: tf_keras.Model, params: Params) -> tf_keras.Model:
    """Log-mel in, logits out, with the input-level augmentations in front of the classifier.

    Test-time augmentation runs on this model (see :mod:`augment.tta`), so the log-mel of a
    clip is computed once and only the cheap augmentations and the classifier run per copy.
    The time shift and input SpecAugment++ are fresh layers configured from ``params`` (identity
    until TTA switches them on), so a model trained without them (the baseline) gets TTA too.
    """
    classifier = get_classifier(model)
    frames, bins = (int(d) for d in classifier.inputs[0].shape[1:3])
    inputs = tf_keras.Input(shape=(frames, bins, 1), name="logmel_input")  # [B, T, M, 1]
    x = _time_shift(params, "tta_time_shift")(inputs)
    x = _specaugment_layer(params, "input", frames, bins, name="tta_input_specaugment")(x)
    return tf_keras.Model(inputs, classifier(x), name="tta_classifier")


def tta_predictor(model: tf_keras.Model, params: Params) -> TTA:
    """Test-time augmentation of a full model as the evaluate stage runs it.

    ``tta_predictor(model, params).probabilities(logmel)`` gives the mean class probabilities
    ``[B, K]`` of a batch of log-mel inputs ``[B, T, M, 1]`` (the output of
    :func:`frontend_model`) over ``params.augment.tta.n_copies`` copies, augmented as
    ``params.augment.tta`` says (on :func:`tta_classifier`), seeded with ``params.seed``.
    """
    return TTA(tta_classifier(model, params), params.augment.tta, seed=params.seed)
