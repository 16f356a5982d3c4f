"""The two building blocks of the report's network: ``SeparableBlock`` and ``CoordAttention``.

Feature maps are channels-last ``[B, T, F, C]`` (batch, time frames, frequency bins, channels).

* ``SeparableBlock`` is equation (2) of the tech report (Xin et al., DCASE2022 Task 1), taken
  from its reference [7] (Bursuc, Puy, Jain 2021, valeoai/SP4ASC): a 1x1 convolution followed
  by two dilated depthwise convolutions, one along time and one along frequency, summed.
* ``CoordAttention`` is the coordinate attention of Hou, Zhou and Feng, "Coordinate attention
  for efficient mobile network design", CVPR 2021.

Both layers are ``tfmot.sparsity.keras.PrunableLayer`` s; ``models.quantize`` holds their
``QuantizeConfig`` s for quantization-aware training.
"""

from __future__ import annotations

import logging

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from pipeline.core.checks import check_bool, check_int

logger = logging.getLogger(__name__)

__all__ = ["SeparableBlock", "CoordAttention", "hard_swish"]


def _check_feature_map(layer_name: str, input_shape) -> tf.TensorShape:
    """Checks that ``input_shape`` is ``[B, T, F, C]`` with a known channel count."""
    shape = tf.TensorShape(input_shape)
    if shape.rank != 4:
        raise ValueError(f"{layer_name} expects a [batch, time, freq, channels] input, got shape {shape}")
    if shape[-1] is None:
        raise ValueError(f"{layer_name} needs a known channel dimension, got shape {shape}")
    return shape


def _build_sublayer(layer: tf_keras.layers.Layer, input_shape) -> None:
    """Builds ``layer`` under its own name scope, so weights are named ``parent/layer/kernel``."""
    with tf.name_scope(layer.name):
        layer.build(input_shape)


def hard_swish(x: tf.Tensor) -> tf.Tensor:
    """h-swish of Howard et al. (MobileNetV3): ``x * relu6(x + 3) / 6``.

    Written in the form the TFLite converter fuses into one ``HARD_SWISH`` operator.
    """
    return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


@tf_keras.saving.register_keras_serializable(package="asc")
class SeparableBlock(tf_keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
    """Separable convolution along channels, time and frequency (report eq. 2).

    ``y = h_{k_t x 1}(g_{1x1}(x)) + h_{1 x k_f}(g_{1x1}(x))`` where ``g`` is a 1x1 convolution
    to ``filters`` channels and the ``h`` are depthwise convolutions along time (kernel
    ``(time_kernel, 1)``, dilation ``(time_dilation, 1)``) and along frequency (kernel
    ``(1, freq_kernel)``, dilation ``(1, freq_dilation)``), "same" zero padding, stride 1.
    None of the three convolutions has a bias, and there is no normalisation or activation
    inside: the model builder puts BatchNormalization -> ReLU after the block.

    Sub-layers (created in ``build``, named for stable weight names): ``pointwise``
    (``Conv2D``), ``depthwise_time`` and ``depthwise_freq`` (``DepthwiseConv2D``). Parameters:
    ``C_in * filters + time_kernel * filters + freq_kernel * filters``.

    Pruning (``tfmot.sparsity.keras.prune_low_magnitude``) prunes the pointwise kernel only:
    like TFMOT's own registry for ``DepthwiseConv2D``, the small depthwise kernels are left
    dense (``get_prunable_weights``).

    Note for TFLite export: the dilated depthwise convolutions convert to single dilated
    ``DEPTHWISE_CONV_2D`` operators only when the batch dimension is static (e.g. 1); with a
    dynamic batch the converter leaves ``SPACE_TO_BATCH_ND``/``BATCH_TO_SPACE_ND`` pairs around
    them, about three times slower on CPU.

    Args:
      filters: number of output channels (positive int).
      time_kernel: depthwise kernel length along time (positive odd int).
      freq_kernel: depthwise kernel length along frequency (positive odd int).
      time_dilation: dilation of the time kernel (positive int).
      freq_dilation: dilation of the frequency kernel (positive int).
      kernel_initializer: initializer of the three kernels (Keras identifier).
      kernel_regularizer: optional regularizer of the three kernels (Keras identifier).
      use_bias: add a per-channel bias (held by ``depthwise_time``, so TFLite fuses it into that
        convolution). Off in training, where a BatchNorm follows; the export for int8 folds that
        BatchNorm into the depthwise kernels and this bias (``models.asc.export_classifier``).
      **kwargs: base ``Layer`` arguments (``name``, ``dtype``, ...).

    Input shape:
      ``[B, T, F, C_in]``.

    Output shape:
      ``[B, T, F, filters]``.

    Reference:
      Y. Xin et al., "Low-complexity acoustic scene classification with mismatch-devices using
      separable convolutions and coordinate attention", DCASE2022 tech report, eq. (2);
      A. Bursuc, G. Puy, H. Jain, "Separable convolutions and test-time augmentations for
      low-complexity and calibrated acoustic scene classification", DCASE2021 (valeoai/SP4ASC).
    """

    def __init__(
        self,
        filters,
        time_kernel=3,
        freq_kernel=3,
        time_dilation=2,
        freq_dilation=2,
        kernel_initializer="he_uniform",
        kernel_regularizer=None,
        use_bias=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.use_bias = check_bool("use_bias", use_bias)
        self.filters = check_int("filters", filters, 1)
        self.time_kernel = check_int("time_kernel", time_kernel, 1, odd=True)
        self.freq_kernel = check_int("freq_kernel", freq_kernel, 1, odd=True)
        self.time_dilation = check_int("time_dilation", time_dilation, 1)
        self.freq_dilation = check_int("freq_dilation", freq_dilation, 1)
        self.kernel_initializer = tf_keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = tf_keras.regularizers.get(kernel_regularizer)

    def _fresh_initializer(self):
        # One initializer object per kernel: reusing an unseeded one makes tf_keras warn.
        return tf_keras.initializers.get(tf_keras.initializers.serialize(self.kernel_initializer))

    def _fresh_regularizer(self):
        if self.kernel_regularizer is None:
            return None
        return tf_keras.regularizers.get(tf_keras.regularizers.serialize(self.kernel_regularizer))

    def build(self, input_shape):
        input_shape = _check_feature_map(type(self).__name__, input_shape)
        self.pointwise = tf_keras.layers.Conv2D(
            self.filters,
            kernel_size=1,
            use_bias=False,
            kernel_initializer=self._fresh_initializer(),
            kernel_regularizer=self._fresh_regularizer(),
            dtype=self.dtype_policy,
            name="pointwise",
        )
        self.depthwise_time = tf_keras.layers.DepthwiseConv2D(
            kernel_size=(self.time_kernel, 1),
            dilation_rate=(self.time_dilation, 1),
            padding="same",
            use_bias=self.use_bias,
            depthwise_initializer=self._fresh_initializer(),
            depthwise_regularizer=self._fresh_regularizer(),
            dtype=self.dtype_policy,
            name="depthwise_time",
        )
        self.depthwise_freq = tf_keras.layers.DepthwiseConv2D(
            kernel_size=(1, self.freq_kernel),
            dilation_rate=(1, self.freq_dilation),
            padding="same",
            use_bias=False,
            depthwise_initializer=self._fresh_initializer(),
            depthwise_regularizer=self._fresh_regularizer(),
            dtype=self.dtype_policy,
            name="depthwise_freq",
        )
        hidden_shape = input_shape[:-1].concatenate([self.filters])
        _build_sublayer(self.pointwise, input_shape)
        _build_sublayer(self.depthwise_time, hidden_shape)
        _build_sublayer(self.depthwise_freq, hidden_shape)
        self.input_spec = tf_keras.layers.InputSpec(ndim=4, axes={-1: input_shape[-1]})
        super().build(input_shape)

    def call(self, inputs):
        hidden = self.pointwise(inputs)  # [B, T, F, filters]
        along_time = self.depthwise_time(hidden)  # [B, T, F, filters]
        along_freq = self.depthwise_freq(hidden)  # [B, T, F, filters]
        return along_time + along_freq  # [B, T, F, filters]

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return input_shape[:-1].concatenate([self.filters])

    def get_prunable_weights(self):
        return [self.pointwise.kernel]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "time_kernel": self.time_kernel,
                "freq_kernel": self.freq_kernel,
                "time_dilation": self.time_dilation,
                "freq_dilation": self.freq_dilation,
                "use_bias": self.use_bias,
                "kernel_initializer": tf_keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": tf_keras.regularizers.serialize(self.kernel_regularizer)
                if self.kernel_regularizer is not None
                else None,
            }
        )
        return config


@tf_keras.saving.register_keras_serializable(package="asc")
class CoordAttention(tf_keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
    """Coordinate attention (Hou et al. 2021) over the time and frequency axes.

    For ``x`` of shape ``[B, T, F, C]`` and ``mip = max(min_channels, C // reduction)``:

    1. ``z_t = mean_F(x)``: ``[B, T, 1, C]``; ``z_f = mean_T(x)``: ``[B, 1, F, C]``.
    2. ``y = h_swish(BN(conv1x1_mip(concat_T+F([z_t, z_f]))))``: ``[B, T+F, 1, mip]``.
    3. Split ``y`` back into ``y_t`` ``[B, T, 1, mip]`` and ``y_f`` ``[B, 1, F, mip]``.
    4. ``a_t = sigmoid(conv1x1_C(y_t))``, ``a_f = sigmoid(conv1x1_C(y_f))`` (separate convs).
    5. Output ``x * a_t * a_f`` (broadcast).

    Implementation choice (TFLite int8 speed): with static T and F the averages are
    ``AveragePooling2D`` layers (TFLite ``AVERAGE_POOL_2D``) rather than ``reduce_mean``
    (``MEAN``), and the frequency part is moved onto the time axis by a reshape (a
    ``[B, 1, F, C]`` tensor has the same memory layout as ``[B, F, 1, C]``), never a
    transpose. The concatenation is kept, in training and in inference, so the shared
    conv -> BN -> h-swish sees exactly the paper's tensor and the BatchNorm statistics are
    those of the concatenation. Measured on one CPU thread, int8 TFLite, T=44, F=256, C=64,
    batch 1: the attention costs 0.39 ms with XNNPACK (1.0 ms without) against 3.1 ms
    (6.4 ms) for a ``reduce_mean`` + transpose version; applying the shared conv/BN/h-swish to
    the two pooled tensors separately (no concat/split) measured the same time, so it buys
    nothing and would change the training-time BatchNorm statistics. With unknown T or F the
    layer falls back to ``reduce_mean`` and dynamic reshapes.

    The inner BatchNorm uses PyTorch's defaults as in the reference implementation
    (momentum 0.1 in PyTorch's sense, i.e. Keras ``momentum=0.9``, ``epsilon=1e-5``). The
    1x1 convolutions have biases and Keras' default initializers.

    Sub-layers (created in ``build``): ``pool_freq``, ``pool_time`` (``AveragePooling2D``,
    static shapes only), ``conv_reduce`` (``Conv2D`` C->mip), ``bn``, ``conv_time`` and
    ``conv_freq`` (``Conv2D`` mip->C, sigmoid). Parameters: ``C*mip + mip`` (conv_reduce) +
    ``4*mip`` (BN, 2 of them non-trainable) + ``2*(mip*C + C)``. ``get_prunable_weights``
    returns the three conv kernels.

    The attributes ``bn_activation``, ``hswish_activation`` and ``product_activation`` are
    identity functions applied after the BatchNorm, after the h-swish and after ``x * a_t``:
    ``models.quantize.CoordAttentionQuantizeConfig`` replaces them with fake-quantizers for
    quantization-aware training, at the tensors that are int8 in the converted model.

    Args:
      reduction: channel reduction ratio of the bottleneck (positive int).
      min_channels: lower bound of the bottleneck width ``mip`` (positive int).
      **kwargs: base ``Layer`` arguments (``name``, ``dtype``, ...).

    Input shape:
      ``[B, T, F, C]``.

    Output shape:
      ``[B, T, F, C]``.

    Reference:
      Q. Hou, D. Zhou, J. Feng, "Coordinate attention for efficient mobile network design",
      CVPR 2021 (github.com/houqb/CoordAttention).
    """

    BN_MOMENTUM = 0.9
    BN_EPSILON = 1e-5

    def __init__(self, reduction=32, min_channels=8, **kwargs):
        super().__init__(**kwargs)
        self.reduction = check_int("reduction", reduction, 1)
        self.min_channels = check_int("min_channels", min_channels, 1)
        # Quantization hooks (identity unless models.quantize replaces them).
        self.bn_activation = tf_keras.activations.linear
        self.hswish_activation = tf_keras.activations.linear
        self.product_activation = tf_keras.activations.linear

    def bottleneck_channels(self, channels: int) -> int:
        """``mip = max(min_channels, channels // reduction)``."""
        return max(self.min_channels, int(channels) // self.reduction)

    def build(self, input_shape):
        input_shape = _check_feature_map(type(self).__name__, input_shape)
        _, time, freq, channels = input_shape.as_list()
        self.mip = self.bottleneck_channels(channels)
        # Averages along one axis: pooling layers when that axis is static.
        self.pool_freq = (
            tf_keras.layers.AveragePooling2D(pool_size=(1, freq), name="pool_freq") if freq is not None else None
        )
        self.pool_time = (
            tf_keras.layers.AveragePooling2D(pool_size=(time, 1), name="pool_time") if time is not None else None
        )
        if time is None or freq is None:
            logger.debug(
                "%s: unknown time or frequency size in %s, pooling with reduce_mean",
                self.name,
                input_shape,
            )
        self.conv_reduce = tf_keras.layers.Conv2D(
            self.mip, kernel_size=1, use_bias=True, dtype=self.dtype_policy, name="conv_reduce"
        )
        self.bn = tf_keras.layers.BatchNormalization(
            axis=-1,
            momentum=self.BN_MOMENTUM,
            epsilon=self.BN_EPSILON,
            dtype=self.dtype_policy,
            name="bn",
        )
        self.conv_time = tf_keras.layers.Conv2D(
            channels,
            kernel_size=1,
            use_bias=True,
            activation="sigmoid",
            dtype=self.dtype_policy,
            name="conv_time",
        )
        self.conv_freq = tf_keras.layers.Conv2D(
            channels,
            kernel_size=1,
            use_bias=True,
            activation="sigmoid",
            dtype=self.dtype_policy,
            name="conv_freq",
        )
        _build_sublayer(self.conv_reduce, [None, None, 1, channels])
        _build_sublayer(self.bn, [None, None, 1, self.mip])
        _build_sublayer(self.conv_time, [None, time, 1, self.mip])
        _build_sublayer(self.conv_freq, [None, 1, freq, self.mip])
        self.input_spec = tf_keras.layers.InputSpec(ndim=4, axes={-1: channels})
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = inputs  # [B, T, F, C]
        static = x.shape
        time = static[1] if static[1] is not None else tf.shape(x)[1]
        freq = static[2] if static[2] is not None else tf.shape(x)[2]
        channels = static[3]

        # Direction-aware average pooling.
        if self.pool_freq is not None:
            z_t = self.pool_freq(x)  # [B, T, 1, C]
        else:
            z_t = tf.reduce_mean(x, axis=2, keepdims=True)  # [B, T, 1, C]
        if self.pool_time is not None:
            z_f = self.pool_time(x)  # [B, 1, F, C]
        else:
            z_f = tf.reduce_mean(x, axis=1, keepdims=True)  # [B, 1, F, C]
        z_f = tf.reshape(z_f, tf.stack([-1, freq, 1, channels]))  # [B, F, 1, C] (same layout)

        # Shared transform of the concatenated descriptors.
        y = tf.concat([z_t, z_f], axis=1)  # [B, T+F, 1, C]
        y = self.conv_reduce(y)  # [B, T+F, 1, mip]
        y = self.bn(y, training=training)  # [B, T+F, 1, mip]
        y = self.bn_activation(y)
        y = self.hswish_activation(hard_swish(y))  # [B, T+F, 1, mip]
        # [B, T, 1, mip], [B, F, 1, mip]
        y_t, y_f = tf.split(y, tf.stack([time, freq]), axis=1, num=2)
        y_f = tf.reshape(y_f, tf.stack([-1, 1, freq, self.mip]))  # [B, 1, F, mip]

        # Attention maps and reweighting.
        a_t = self.conv_time(y_t)  # [B, T, 1, C]
        a_f = self.conv_freq(y_f)  # [B, 1, F, C]
        out = self.product_activation(x * a_t)  # [B, T, F, C]
        return out * a_f  # [B, T, F, C]

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_prunable_weights(self):
        return [self.conv_reduce.kernel, self.conv_time.kernel, self.conv_freq.kernel]

    def get_config(self):
        config = super().get_config()
        config.update({"reduction": self.reduction, "min_channels": self.min_channels})
        return config
