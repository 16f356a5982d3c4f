"""The report's network (Xin et al., DCASE2022 Task 1), table-driven.

::

    waveform [B, samples]
      -> [DeviceResponse] (training only, augment.device_response)   [B, samples]
      -> LogMel                                   [B, T, M, 1]    (T = 44, M = 256 at the paper's settings)
      -> TimeShift, [FreqMixStyle], SpecAugment++ (training only)
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

import logging

import numpy as np
import tensorflow as tf
import tf_keras

from augment.device_response import DeviceResponse
from augment.freq_mixstyle import FreqMixStyle
from augment.shift import TimeShift
from augment.specaugment import SpecAugmentPP, max_widths
from augment.tta import TTA, TTA_MODES
from models.frontend import LogMel
from models.layers import CoordAttention, SeparableBlock
from pipeline.core.checks import check_choice
from pipeline.core.config import Params
from pipeline.core.labels import CLASSES
from pipeline.core.seeds import stream_seed

logger = logging.getLogger(__name__)

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
    return LogMel(
        sample_rate=a.sample_rate_hz,
        n_fft=a.n_fft,
        win_length=a.win_length,
        hop_length=a.hop_length,
        n_mels=a.n_mels,
        fmin=a.fmin_hz,
        fmax=a.fmax_hz,
        window=a.window,
        center=a.center,
        power=a.power,
        mel_scale=a.mel_scale,
        mel_norm=a.mel_norm,
        log=a.log,
        log_offset=a.log_offset,
        name="logmel",
    )


def _time_shift(params: Params, name: str) -> TimeShift:
    """The time shift configured by ``params`` (random stream ``time_shift``)."""
    return TimeShift(
        std_frames=params.augment.time_shift.std_frames, seed=stream_seed(params.seed, "time_shift"), name=name
    )


def _specaugment_layer(params: Params, position: str, frames: int, bins: int, name: str) -> SpecAugmentPP:
    """SpecAugment++ at ``position`` for ``[B, frames, bins, C]`` maps (random stream ``specaugment``,
    ``k = 1 +`` the position's index in :data:`SPECAUGMENT_POSITIONS`); its widths are logged."""
    seed = stream_seed(params.seed, "specaugment", 1 + SPECAUGMENT_POSITIONS.index(position))
    layer = SpecAugmentPP.from_params(params.augment.specaugment, frames, bins, seed=seed, name=name)
    _specaugment_log(params, position, frames, bins, layer.max_time_width, layer.max_freq_width)
    return layer


def _specaugment_log(params: Params, position: str, frames: int, bins: int, time_width: int, freq_width: int) -> None:
    """One info line: the SpecAugment++ widths at ``position``, and which were raised from 0 to 1."""
    s = params.augment.specaugment
    notes = [
        f"{axis} round({fraction:g} x {size}) = 0, raised to 1"
        for axis, fraction, size, width in (
            ("time", s.time_width_fraction, frames, time_width),
            ("freq", s.freq_width_fraction, bins, freq_width),
        )
        if round(fraction * size) == 0 and width == 1
    ]
    logger.info(
        "SpecAugment++ at %s ([B, %d, %d, C]): %d time mask(s) up to %d frame(s), %d freq mask(s) up to %d bin(s)%s",
        position,
        frames,
        bins,
        s.n_time_masks,
        time_width,
        s.n_freq_masks,
        freq_width,
        f" ({'; '.join(notes)})" if notes else "",
    )


def _specaugment_shapes(params: Params) -> dict[str, tuple[int, int]]:
    """``(frames, bins)`` of the feature maps at each position of :data:`SPECAUGMENT_POSITIONS`."""
    frames, bins = params.audio.frames, params.audio.n_mels
    shapes = {"input": (frames, bins)}
    for block, pool in BLOCKS:
        frames, bins = frames // pool[0], bins // pool[1]
        shapes[block] = (frames, bins)
    return shapes


def specaugment_widths(params: Params) -> dict[str, tuple[int, int]]:
    """The SpecAugment++ maximum widths the network built from ``params`` uses, per position.

    ``{position: (max_time_width_frames, max_freq_width_bins)}`` for each configured position
    (``augment.specaugment.positions``, in network order), as
    :func:`augment.specaugment.max_widths` computes them from the feature-map size there: the
    configured fraction, rounded, raised to 1 where it rounds to 0 (for example block 4 of the
    report's network sees 2 frames, and ``round(0.1 * 2) = 0``). Empty when SpecAugment++ is
    disabled or the network is not the report's (the baseline has no masks). Each width is logged
    (``logger.info``); the train stage can record them as MLflow params.
    """
    s = params.augment.specaugment
    if not s.enabled or params.model.name == "baseline":
        return {}
    widths = {}
    for position, (frames, bins) in _specaugment_shapes(params).items():
        if position in s.positions:
            widths[position] = max_widths(s, frames, bins)
            _specaugment_log(params, position, frames, bins, *widths[position])
    return widths


def _specaugment(params: Params, position: str, frames: int, bins: int):
    """The SpecAugment++ layer of ``position``, or None where the config puts none."""
    s = params.augment.specaugment
    if not s.enabled or position not in s.positions:
        return None
    return _specaugment_layer(params, position, frames, bins, name=f"{position}_specaugment")


def build_classifier(
    params: Params, *, augment: bool = True, fold_bn: bool = False, name: str = "classifier"
) -> tf_keras.Model:
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
        x = CoordAttention(
            reduction=m.attention_reduction, min_channels=m.attention_min_channels, name=f"{block}_attention"
        )(x)  # [B, t, f, C]
        x = tf_keras.layers.AveragePooling2D(pool, name=f"{block}_pool")(x)  # [B, t/2, f/2, C]
        frames, bins = frames // pool[0], bins // pool[1]
        aug = _specaugment(params, block, frames, bins) if augment else None
        if aug is not None:
            x = aug(x)
    x = TimeFreqPooling(name="head_pool")(x)  # [B, C]
    x = tf_keras.layers.Dropout(m.dropout, seed=stream_seed(params.seed, "head_dropout1"), name="head_dropout1")(x)
    x = tf_keras.layers.Dense(m.hidden_units, activation="relu", name="head_dense1")(x)  # [B, 128]
    x = tf_keras.layers.Dropout(m.dropout, seed=stream_seed(params.seed, "head_dropout2"), name="head_dropout2")(x)
    logits = tf_keras.layers.Dense(len(CLASSES), name="logits")(x)  # [B, 10]
    return tf_keras.Model(inputs, logits, name=name)


def build_model(params: Params) -> tf_keras.Model:
    """The full model: waveform ``[samples]`` in, logits out (``model.name`` selects the network)."""
    if params.model.name == "baseline":
        from models.baseline import build_baseline

        return build_baseline(
            n_classes=len(CLASSES), sample_rate=params.audio.sample_rate_hz, clip_samples=params.audio.clip_samples
        )
    wave = tf_keras.Input(shape=(params.audio.clip_samples,), name="waveform")  # [B, samples]
    x = wave
    d = params.augment.device_response
    if d.enabled:
        # On the waveform, before the front end: a device filters the sound pressure, and its
        # impulse response (up to max_ir_samples, longer than an STFT hop) and soft clipping do not
        # reduce to a per-frame operation on the log-mel. Random stream device_response (+ offset).
        x = DeviceResponse.from_params(
            d,
            sample_rate=params.audio.sample_rate_hz,
            seed=stream_seed(params.seed, "device_response") + d.seed_offset,
            name="device_response",
        )(x)
    x = frontend(params)(x)  # [B, T, M, 1]
    t = params.augment.time_shift
    if t.enabled and t.std_frames > 0:
        x = _time_shift(params, "time_shift")(x)
    if params.augment.freq_mixstyle.enabled:
        # After the time shift (a circular shift leaves each bin's statistics over time unchanged,
        # so the two commute) and before SpecAugment++: zeroed or partner-filled stripes would skew
        # the per-bin mean and std that Freq-MixStyle normalises by (a frequency stripe leaves a
        # bin with no spread at all), and the masks then cut the restyled clip as they would a
        # real one. On the log-mel before the classifier's input BatchNorm, as in CP-JKU's code.
        x = FreqMixStyle.from_params(
            params.augment.freq_mixstyle, seed=stream_seed(params.seed, "freq_mixstyle"), name="freq_mixstyle"
        )(x)  # [B, T, M, 1]
    aug = _specaugment(params, "input", params.audio.frames, params.audio.n_mels)
    if aug is not None:
        x = aug(x)
    logits = _classifier(params)(x)  # [B, 10]
    return tf_keras.Model(wave, logits, name=f"asc_{params.model.name}")


def _classifier(params: Params) -> tf_keras.Model:
    """The classifier ``model.name`` selects (log-mel in, logits out): the report's, or CP-Mobile."""
    if params.model.name == "cpmobile":
        from models.cpmobile import build_cpmobile_classifier

        m = params.model
        return build_cpmobile_classifier(
            params.audio.frames,
            params.audio.n_mels,
            len(CLASSES),
            base_channels=m.base_channels,
            channels_multiplier=m.channels_multiplier,
            expansion_rate=m.expansion_rate,
        )
    return build_classifier(params, augment=True)


def get_classifier(model: tf_keras.Model) -> tf_keras.Model:
    """The nested classifier (log-mel in, logits out) of a full model."""
    return model.get_layer("classifier")


def export_classifier(model: tf_keras.Model, params: Params) -> tf_keras.Model:
    """A copy of the trained classifier without augmentation layers (for TFMOT and TFLite)."""
    trained = get_classifier(model)
    if params.model.name in ("baseline", "cpmobile"):  # no augmentation layers inside: a plain copy
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
            layer.set_weights(
                [
                    pointwise,
                    dw_time * scale[None, None, :, None],
                    beta - mean * scale,
                    dw_freq * scale[None, None, :, None],
                ]
            )
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
    """Waveform ``[samples]`` in, log-mel ``[T, M, 1]`` out: the float front end of ``model``.

    Always the clean front end: when the model augments its waveforms before the LogMel layer
    (``DeviceResponse``), the front end is a copy of that LogMel layer (it has no weights) applied
    to the waveform input directly, so it holds no augmentation layer (nor its impulse-response
    bank) whatever ``training`` says, and converts to TFLite as it is.
    """
    layer = frontend_layer(model)
    if not any(isinstance(other, DeviceResponse) for other in model.layers):
        return tf_keras.Model(model.inputs, layer.output, name="frontend")
    clean = LogMel.from_config(layer.get_config())
    return tf_keras.Model(model.inputs, clean(model.inputs[0]), name="frontend")


def _specaugment_input_centre(classifier: tf_keras.Model, bins: int):
    """The moving mean per mel bin of the classifier's input BatchNorm as ``[1, 1, bins, 1]``, or None.

    Zero-filled input stripes are placed at this level by :func:`tta_classifier` ("masks" mode):
    SP4ASC zero-fills after its input BatchNorm, where 0 is the per-bin mean, while the project's
    input masks act on the raw log-mel before ``input_bn``, where 0 is a level of arbitrary
    loudness (several standard deviations above the mean in the upper bins).
    """
    try:
        bn = classifier.get_layer("input_bn")
    except ValueError:
        return None
    if not isinstance(bn, tf_keras.layers.BatchNormalization) or list(bn.axis) != [2]:
        return None
    mean = np.asarray(bn.moving_mean.numpy(), np.float32)
    return tf.constant(mean.reshape(1, 1, bins, 1)) if mean.shape == (bins,) else None


def tta_classifier(model: tf_keras.Model, params: Params, mode: str = "shift") -> tf_keras.Model:
    """Log-mel in, logits out, with the input-level augmentations of TTA ``mode`` in front of the classifier.

    Test-time augmentation runs on this model (see :mod:`augment.tta`), so the log-mel of a
    clip is computed once and only the cheap augmentations and the classifier run per copy.

    * ``mode="shift"``: a fresh time shift configured from ``params`` (identity until TTA switches
      it on), so a model trained without one (the baseline) gets shift TTA too.
    * ``mode="masks"``: a fresh input SpecAugment++ configured from ``params`` where the training
      config puts one (``augment.specaugment`` enabled with ``input`` in its positions), in front
      of the trained classifier, whose hidden SpecAugment++ layers are the training ones (their
      widths and counts). TTA fills the stripes as ``augment.tta.mask_fill`` says (zero by
      default, :class:`augment.TTA`); at the input the masking is done on the log-mel minus the
      input BatchNorm's moving mean per bin and the mean is added back, so zero-filled input
      stripes hold the training mean of each bin, as SP4ASC's zeros after its input BatchNorm do
      (a raw zero is a loud level there: on a briefly trained model of the default config and 300
      synthetic clips it cut the masks mode's macro accuracy from 34% to 17%); mixture masking and
      cutting are unchanged by the centring.
    """
    mode = check_choice("mode", mode, tuple(TTA_MODES))
    classifier = get_classifier(model)
    frames, bins = (int(d) for d in classifier.inputs[0].shape[1:3])
    inputs = tf_keras.Input(shape=(frames, bins, 1), name="logmel_input")  # [B, T, M, 1]
    x = inputs
    s = params.augment.specaugment
    if mode == "shift":
        x = _time_shift(params, "tta_time_shift")(x)  # [B, T, M, 1]
    elif s.enabled and "input" in s.positions:
        masks = _specaugment_layer(params, "input", frames, bins, name="tta_input_specaugment")
        centre = _specaugment_input_centre(classifier, bins)  # [1, 1, M, 1] or None
        x = masks(x) if centre is None else masks(x - centre) + centre  # [B, T, M, 1]
    return tf_keras.Model(inputs, classifier(x), name=f"tta_classifier_{mode}")


def tta_predictor(model: tf_keras.Model, params: Params, mode: str | None = None) -> TTA:
    """Test-time augmentation of a full model in one mode, as the evaluate stage runs it.

    ``tta_predictor(model, params, mode).probabilities(logmel)`` gives the mean class
    probabilities ``[B, K]`` of a batch of log-mel inputs ``[B, T, M, 1]`` (the output of
    :func:`frontend_model`) over ``params.augment.tta.n_copies`` copies, augmented as TTA ``mode``
    says ("shift" or "masks", see :mod:`augment.tta`; None = the first of
    ``params.augment.tta.modes``) on :func:`tta_classifier`, seeded with ``params.seed``. Each clip
    costs ``n_copies`` times the classifier's MACs (the front end runs once).
    """
    mode = params.augment.tta.modes[0] if mode is None else mode
    return TTA(tta_classifier(model, params, mode), params.augment.tta, seed=params.seed, mode=mode)
