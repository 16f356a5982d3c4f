"""Quantization-aware training (TFMOT) support for ``SeparableBlock`` and ``CoordAttention``.

TFMOT's default 8-bit scheme knows only built-in Keras layers; the two custom layers of
``models.layers`` get a ``QuantizeConfig`` each. The layers hold nested Keras sub-layers, so a
config reaches into them: it fake-quantizes the sub-layers' kernels (by replacing the
``kernel`` / ``depthwise_kernel`` attributes during the wrapper's call, as TFMOT does for
``Conv2D``) and fake-quantizes the intermediate tensors that are int8 tensors of the
converted TFLite model (by replacing the sub-layers' ``activation`` functions and the layers'
identity hooks with ``QuantizeAwareActivation`` s). Each quantizer prefixes its range
variables with the sub-layer name, so the wrapper's weights have distinct names.

Fake-quantized tensors (all 8 bit; weights symmetric narrow-range per output channel,
activations asymmetric with moving-average ranges):

* ``SeparableBlock``: pointwise / depthwise_time / depthwise_freq kernels (per channel);
  the pointwise output, both depthwise outputs and the block output (the sum).
* ``CoordAttention``: conv_reduce / conv_time / conv_freq kernels (per channel); the
  BatchNorm output (conv_reduce is not quantized on its own: TFLite folds the BatchNorm into
  it), the h-swish output, the inputs of both sigmoids (their outputs have TFLite's fixed
  1/256 scale), ``x * a_t`` and the output. The pooled descriptors are not fake-quantized:
  TFLite's ``AVERAGE_POOL_2D`` keeps its input's scale.

Typical use::

    annotated = annotate_model(model)
    with tfmot.quantization.keras.quantize_scope(quantize_scope_objects()):
        qat_model = tfmot.quantization.keras.quantize_apply(annotated)

and ``quantize_scope(quantize_scope_objects())`` again to load a saved QAT model. Save QAT
models as a SavedModel directory or legacy ``.h5``: with TFMOT 0.8 and tf_keras 2.17 no QAT
model (custom layers or not) loads back from ``.keras`` (TFMOT's ``QuantizeLayer`` fails with
"expected 5 variables, but received 3").

Converting: ``optimizations=[tf.lite.Optimize.DEFAULT]``, int8 input/output types, and a
``representative_dataset`` with ``supported_ops=[TFLITE_BUILTINS_INT8]`` whenever the model
has a standalone BatchNormalization (see ``OutputQuantizeConfig``). Trace at a static batch
size (e.g. a concrete function with input shape ``[1, T, F, C]``) so the dilated depthwise
convolutions convert without ``SPACE_TO_BATCH_ND``/``BATCH_TO_SPACE_ND``.
"""

from __future__ import annotations

import logging

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from models.layers import CoordAttention, SeparableBlock

logger = logging.getLogger(__name__)

__all__ = [
    "SeparableBlockQuantizeConfig",
    "CoordAttentionQuantizeConfig",
    "OutputQuantizeConfig",
    "quantize_config_for",
    "annotate_model",
    "quantize_scope_objects",
]

_quantizers = tfmot.quantization.keras.quantizers


def _prefixed(prefix: str, name: str) -> str:
    return f"{prefix}_{name}" if prefix else name


class _PrefixedNames:
    """Mixin for TFMOT quantizers: range variables named ``{prefix}_{name}_min/max``."""

    def build(self, tensor_shape, name, layer):
        return super().build(tensor_shape, _prefixed(self.prefix, name), layer)

    def get_config(self):
        return {"prefix": self.prefix, **super().get_config()}

    def __eq__(self, other):
        return super().__eq__(other) and self.prefix == getattr(other, "prefix", None)

    def __ne__(self, other):
        return not self.__eq__(other)


@tf_keras.saving.register_keras_serializable(package="asc")
class PrefixedLastValueQuantizer(_PrefixedNames, _quantizers.LastValueQuantizer):
    """``LastValueQuantizer`` whose range variables are named ``{prefix}_{name}_min/max``."""

    def __init__(self, prefix="", num_bits=8, per_axis=True, symmetric=True, narrow_range=True):
        super().__init__(num_bits=num_bits, per_axis=per_axis, symmetric=symmetric, narrow_range=narrow_range)
        self.prefix = prefix


@tf_keras.saving.register_keras_serializable(package="asc")
class DepthwiseKernelQuantizer(PrefixedLastValueQuantizer):
    """Per-channel 8-bit quantizer for a ``DepthwiseConv2D`` kernel ``[kh, kw, C, M]``.

    TFMOT's per-axis quantizers use the last axis, which for a depthwise kernel is the depth
    multiplier (1). This one quantizes per output channel ``C * M`` (TFLite's quantized
    dimension for ``DEPTHWISE_CONV_2D``) by viewing the kernel as ``[kh, kw, 1, C * M]``.
    """

    def build(self, tensor_shape, name, layer):
        kh, kw, channels, multiplier = tensor_shape
        return super().build([kh, kw, 1, channels * multiplier], name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        shape = inputs.shape  # [kh, kw, C, M]
        flat = tf.reshape(inputs, [shape[0], shape[1], 1, shape[2] * shape[3]])  # [kh, kw, 1, C*M]
        quantized = super().__call__(flat, training, weights, **kwargs)
        return tf.reshape(quantized, shape)  # [kh, kw, C, M]


@tf_keras.saving.register_keras_serializable(package="asc")
class PrefixedMovingAverageQuantizer(_PrefixedNames, _quantizers.MovingAverageQuantizer):
    """``MovingAverageQuantizer`` whose range variables are named ``{prefix}_{name}_min/max``."""

    def __init__(self, prefix="", num_bits=8, per_axis=False, symmetric=False, narrow_range=False):
        super().__init__(num_bits=num_bits, per_axis=per_axis, symmetric=symmetric, narrow_range=narrow_range)
        self.prefix = prefix


@tf_keras.saving.register_keras_serializable(package="asc")
class IdentityQuantizer(_quantizers.Quantizer):
    """Leaves a weight unquantized (float bias, BatchNorm gamma/beta, folded by TFLite).

    ``CoordAttentionQuantizeConfig`` lists every trainable weight in the layer's own order,
    pairing the ones that stay float with this quantizer: ``QuantizeWrapperV2`` orders its
    trainable weights as "weights handed to quantizers first" when it wraps an unbuilt layer
    and in the layer's order otherwise, so a config whose quantized weights are not a prefix
    of the layer's weights breaks legacy ``.h5`` save/load (values land in the wrong
    variables).
    """

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        return inputs

    def get_config(self):
        return {}

    def __eq__(self, other):
        return isinstance(other, IdentityQuantizer)

    def __ne__(self, other):
        return not self.__eq__(other)


def _check_count(config, what: str, values, expected: int) -> None:
    if len(values) != expected:
        raise ValueError(f"{type(config).__name__}: expected {expected} {what}, got {len(values)}")


@tf_keras.saving.register_keras_serializable(package="asc")
class SeparableBlockQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """8-bit ``QuantizeConfig`` for ``models.layers.SeparableBlock`` (see the module doc)."""

    _SUBLAYERS = ("pointwise", "depthwise_time", "depthwise_freq")

    def get_weights_and_quantizers(self, layer):
        return [
            (layer.pointwise.kernel, PrefixedLastValueQuantizer("pointwise")),
            (layer.depthwise_time.depthwise_kernel, DepthwiseKernelQuantizer("depthwise_time")),
            (layer.depthwise_freq.depthwise_kernel, DepthwiseKernelQuantizer("depthwise_freq")),
        ]

    def get_activations_and_quantizers(self, layer):
        return [(getattr(layer, name).activation, PrefixedMovingAverageQuantizer(name)) for name in self._SUBLAYERS]

    def set_quantize_weights(self, layer, quantize_weights):
        _check_count(self, "weights", quantize_weights, 3)
        layer.pointwise.kernel = quantize_weights[0]
        layer.depthwise_time.depthwise_kernel = quantize_weights[1]
        layer.depthwise_freq.depthwise_kernel = quantize_weights[2]

    def set_quantize_activations(self, layer, quantize_activations):
        _check_count(self, "activations", quantize_activations, 3)
        for name, activation in zip(self._SUBLAYERS, quantize_activations, strict=True):
            getattr(layer, name).activation = activation

    def get_output_quantizers(self, layer):
        return [PrefixedMovingAverageQuantizer("")]

    def get_config(self):
        return {}


@tf_keras.saving.register_keras_serializable(package="asc")
class CoordAttentionQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """8-bit ``QuantizeConfig`` for ``models.layers.CoordAttention`` (see the module doc)."""

    # Every trainable weight, in the order CoordAttention.build creates them (see
    # IdentityQuantizer); the kernels sit at _KERNEL_INDICES.
    _KERNEL_INDICES = (0, 4, 6)

    def get_weights_and_quantizers(self, layer):
        return [
            (layer.conv_reduce.kernel, PrefixedLastValueQuantizer("conv_reduce")),
            (layer.conv_reduce.bias, IdentityQuantizer()),
            (layer.bn.gamma, IdentityQuantizer()),
            (layer.bn.beta, IdentityQuantizer()),
            (layer.conv_time.kernel, PrefixedLastValueQuantizer("conv_time")),
            (layer.conv_time.bias, IdentityQuantizer()),
            (layer.conv_freq.kernel, PrefixedLastValueQuantizer("conv_freq")),
            (layer.conv_freq.bias, IdentityQuantizer()),
        ]

    def get_activations_and_quantizers(self, layer):
        return [
            (layer.bn_activation, PrefixedMovingAverageQuantizer("bn")),
            (layer.hswish_activation, PrefixedMovingAverageQuantizer("hswish")),
            # Sigmoid: QuantizeAwareActivation quantizes its input only.
            (layer.conv_time.activation, PrefixedMovingAverageQuantizer("conv_time")),
            (layer.conv_freq.activation, PrefixedMovingAverageQuantizer("conv_freq")),
            (layer.product_activation, PrefixedMovingAverageQuantizer("product")),
        ]

    def set_quantize_weights(self, layer, quantize_weights):
        _check_count(self, "weights", quantize_weights, 8)
        reduce_at, time_at, freq_at = self._KERNEL_INDICES
        layer.conv_reduce.kernel = quantize_weights[reduce_at]
        layer.conv_time.kernel = quantize_weights[time_at]
        layer.conv_freq.kernel = quantize_weights[freq_at]

    def set_quantize_activations(self, layer, quantize_activations):
        _check_count(self, "activations", quantize_activations, 5)
        (
            layer.bn_activation,
            layer.hswish_activation,
            layer.conv_time.activation,
            layer.conv_freq.activation,
            layer.product_activation,
        ) = quantize_activations

    def get_output_quantizers(self, layer):
        return [PrefixedMovingAverageQuantizer("")]

    def get_config(self):
        return {}


@tf_keras.saving.register_keras_serializable(package="asc")
class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Fake-quantizes a layer's output only (8-bit, moving-average range).

    ``annotate_model`` gives it to a ``BatchNormalization`` that TFMOT cannot fold into a
    preceding convolution (TFMOT's default registry rejects a standalone BatchNormalization),
    such as the one after a ``SeparableBlock``. TFLite runs such a BatchNorm as int8
    ``MUL`` + ``ADD``; the ``MUL`` output has no fake-quantizer, so convert the QAT model with
    a ``representative_dataset`` (the converter calibrates that one range) to get a full-int8
    model, otherwise the converter leaves a float MUL/ADD between DEQUANTIZE/QUANTIZE.
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        _check_count(self, "weights", quantize_weights, 0)

    def set_quantize_activations(self, layer, quantize_activations):
        _check_count(self, "activations", quantize_activations, 0)

    def get_output_quantizers(self, layer):
        return [PrefixedMovingAverageQuantizer("")]

    def get_config(self):
        return {}


_CONFIGS = {
    SeparableBlock: SeparableBlockQuantizeConfig,
    CoordAttention: CoordAttentionQuantizeConfig,
}


def quantize_config_for(layer: tf_keras.layers.Layer):
    """The ``QuantizeConfig`` for one of this project's custom layers, or None for others."""
    config_cls = _CONFIGS.get(type(layer))
    return config_cls() if config_cls is not None else None


def annotate_model(model: tf_keras.Model) -> tf_keras.Model:
    """Annotates every layer of a functional or Sequential ``model`` for ``quantize_apply``.

    ``SeparableBlock`` and ``CoordAttention`` get their ``QuantizeConfig``; a
    ``BatchNormalization`` that does not directly follow a ``Conv2D``, ``DepthwiseConv2D`` or
    ``Dense`` (which TFMOT folds) gets ``OutputQuantizeConfig``; every other layer is
    annotated for TFMOT's default 8-bit scheme (``quantize_apply`` raises for layers that
    scheme does not support, e.g. ``Lambda``). Layers are shared with ``model``, not copied,
    as in ``tfmot.quantization.keras.quantize_annotate_model``.
    """
    foldable = (tf_keras.layers.Conv2D, tf_keras.layers.DepthwiseConv2D, tf_keras.layers.Dense)
    standalone_bn = set()
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            inbound = []
            for node in layer.inbound_nodes:
                inbound.extend(tf.nest.flatten(node.inbound_layers))
            if not inbound or not all(isinstance(prev, foldable) for prev in inbound):
                standalone_bn.add(id(layer))

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer
        if type(layer).__name__ == "QuantizeAnnotate":
            return layer
        config = quantize_config_for(layer)
        if config is None and id(layer) in standalone_bn:
            config = OutputQuantizeConfig()
        return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=config)

    return tf_keras.models.clone_model(model, clone_function=annotate)


def quantize_scope_objects() -> dict:
    """Custom objects for ``tfmot.quantization.keras.quantize_scope`` (apply, save, load)."""
    objects = {}
    for cls in (
        SeparableBlock,
        CoordAttention,
        SeparableBlockQuantizeConfig,
        CoordAttentionQuantizeConfig,
        OutputQuantizeConfig,
        IdentityQuantizer,
        PrefixedLastValueQuantizer,
        DepthwiseKernelQuantizer,
        PrefixedMovingAverageQuantizer,
    ):
        objects[cls.__name__] = cls
        objects[tf_keras.saving.get_registered_name(cls)] = cls
    return objects
