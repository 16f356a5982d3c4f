"""Model complexity by the DCASE2022 Task 1 rules: parameters, int8 bytes and MACs.

The challenge counts two things per system (DCASE2022 Task 1 description; the baseline's
README, https://github.com/marmoi/dcase2022_task1_baseline): the model size, at most
128,000 bytes with every parameter stored as int8, and the multiply-accumulate operations
(MACs) for one 1-second clip, at most 30 million. The official counter is NeSsi
(https://github.com/AlbertoAncilotto/NeSsi, ``nessi.py`` and ``tflite_tools/tflite_model.py``),
which reads the int8 TFLite file. This module follows it:

**Size** (NeSsi ``TFLiteModel._execution_schedule_info(size=True)``): for every operator, the
bytes of its constant inputs (tensors produced by no operator and not a graph input),
``prod(shape) * element size`` with int8 at 1 byte, int32 biases at 4 bytes, float32 at 4.
Quantisation parameters (scales, zero points) are not tensors and are not counted; batch
normalisation after a convolution is folded into its weights and bias by the converter. A
constant consumed by two operators is counted twice, as NeSsi does. One deviation: integer
(int32/int64) constant operands of operators other than CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED, TRANSPOSE_CONV and CONV_3D (shapes of RESHAPE, axes of MEAN, block shapes
and paddings of SPACE_TO_BATCH_ND, ...) are shape arguments, not parameters, and are reported
apart as ``structural_bytes``. TensorFlow 2.17 lowers the baseline's Flatten to a RESHAPE
with an 8-byte shape operand that the 2022 converter did not emit; without the exclusion the
baseline would count 46,520 bytes instead of its published 46,512. NeSsi's raw figure is
``size_bytes + structural_bytes``.

**MACs** (NeSsi ``TFLiteModel._macs_for_op``), per operator, from the tensor shapes with the
batch dimension included (batch 1, so per clip):

* CONV_2D: ``n * out_h * out_w * out_c * k_h * k_w * in_c`` (kernel ``[out_c, k_h, k_w, in_c]``);
* DEPTHWISE_CONV_2D: ``n * out_h * out_w * c * k_h * k_w`` (kernel ``[1, k_h, k_w, c]``).
  Converted with a dynamic batch, a dilated depthwise convolution runs between
  SPACE_TO_BATCH_ND and BATCH_TO_SPACE_ND on a larger batch, which is counted, so its MACs
  include the rows SPACE_TO_BATCH_ND pads an odd size with (the report's network: 51,947,264
  against 51,910,400 on the Keras side); converted at batch 1 (``to_int8_tflite(...,
  batch_size=1)``) it is one dilated operator and the counts agree exactly;
* FULLY_CONNECTED: ``rows * in * out`` (kernel ``[out, in]``, ``rows = prod(input) / in``).
  NeSsi takes ``in`` from the last input dimension, which undercounts when an old converter
  feeds the 4-D pooled tensor straight into FULLY_CONNECTED: the baseline README's 3,200 MACs
  for ``dense`` (64 x 100 = 6,400) and its total 29,234,920 instead of 29,238,120;
* MAX_POOL_2D, AVERAGE_POOL_2D: output elements times the pooling window;
* MEAN (global or axis pooling): input elements; REDUCE_MAX likewise (not in NeSsi);
* MUL of two non-constant tensors (the attention's ``x * a_t * a_f``, two MULs): output
  elements (not in NeSsi, which counts no MUL; a MUL by a constant is an unfolded batch norm
  or a scale and is not counted, as batch norm is not counted on the Keras side);
* everything else (ADD, activations, QUANTIZE, RESHAPE, ...): 0. NeSsi's ADD branch, which
  would count additions, calls an undefined ``prod`` and cannot run; additions are not MACs.

Tensor shapes are read from the interpreter after ``allocate_tensors()`` (without delegates),
falling back to the flatbuffer shapes: the converter writes wrong static shapes for the
tensors between SPACE_TO_BATCH_ND and BATCH_TO_SPACE_ND (batch 1 instead of 2).

**Keras side** (:func:`keras_complexity`) counts the same quantities on the float classifier,
so that a model can be checked before it is quantised. The model is run once, eagerly, on a
batch of one zero input, and every layer call is counted from its concrete input and output
shapes (batch 1, so per clip):

* Conv1D/2D/3D: ``prod(out spatial) * prod(kernel.shape)``, i.e.
  ``out_h * out_w * out_c * k_h * k_w * in_c / groups``;
* DepthwiseConv2D: ``out_h * out_w * c * multiplier * k_h * k_w`` (dilation changes no count);
* SeparableConv2D: its depthwise plus ``out_h * out_w * c * multiplier * out_c``;
* Dense: ``rows * in * out``;
* MaxPooling/AveragePooling: output elements times the pooling window (NeSsi's rule; the
  baseline's 32,000 and 2,560); global pooling, ``tf.reduce_mean`` and ``tf.reduce_max``:
  input elements;
* Multiply layer and ``x * y`` of two tensors: ``(inputs - 1) * output elements``;
* BatchNormalization, activations, Add, Dropout, reshapes: 0;
* a custom layer without sub-layers (e.g. the head's time-frequency pooling) or a Lambda is
  traced once and its graph counted: ``Mean``/``Max`` reductions at input elements, ``Mul``
  of two non-constant tensors at output elements, ``MatMul`` at ``rows * inner * cols``.

Layers that hold sub-layers (the project's ``SeparableBlock`` and ``CoordAttention``) are run
with every sub-layer call recorded, so their convolutions and pools are counted with the
shapes they really see; what they compute with plain TensorFlow ops is added from the layer
type: for ``CoordAttention`` (Hou et al., CVPR 2021) the two directional average pools (each
counts its input elements, ``T * F * C``, as MEAN and AVERAGE_POOL_2D do) unless they are
pooling sub-layers, the shared 1x1 convolution on the ``T + F`` pooled positions
(``(T + F) * C * mip``), the two 1x1 convolutions back to C (``(T + F) * mip * C`` together)
and the two multiplications ``x * a_t * a_f`` (``2 * T * F * C``) unless they are Multiply
sub-layers. For ``SeparableBlock`` everything is in sub-layers: the 1x1 convolution
``T * F * C_out * C_in`` and the two depthwise convolutions ``2 * T * F * C_out * 3``.

The Keras-side ``size_bytes`` estimates what NeSsi will count on the int8 TFLite file:
convolution kernels at 1 byte per weight plus a 4-byte int32 bias per output channel (the
converter gives every CONV_2D and DEPTHWISE_CONV_2D a bias, with or without ``use_bias``),
Dense kernels at 1 byte plus 4 bytes per unit when it has a bias (the converter drops an
all-zero Dense bias, so an untrained model may count a little less on TFLite),
BatchNormalization 0 when it directly follows a convolution or Dense (folded) and otherwise
2 bytes per channel (the int8 MUL and ADD vectors it becomes), any other weight 1 byte. It
is exact for the baseline (46,512) and the report's network (83,176) in both conversion
modes; with a dynamic batch a dilated convolution *with* a bias or followed by a batch norm
does not fuse them (an extra int8 ADD, and MUL + ADD), which the estimate does not model.
``params`` is Keras's count (trainable plus non-trainable, batch-norm statistics included).

CLI: ``python -m evaluate.complexity PATH [--json] [--input-shape T,F,C]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Iterable


import numpy as np
import tensorflow as tf
import tf_keras

logger = logging.getLogger(__name__)

#: DCASE2022 Task 1 limits: int8 model size in bytes and MACs per 1-second clip.
MAX_BYTES = 128_000
MAX_MACS = 30_000_000

# Project modules that register custom layers needed to load a saved .keras model.
_REGISTERING_MODULES = (
    "models.frontend",
    "models.layers",
    "models.asc",
    "models.baseline",
    "augment",
)


# ---------------------------------------------------------------------------------------------
# Keras side
# ---------------------------------------------------------------------------------------------

_CONV_TYPES = (
    tf_keras.layers.Conv1D,
    tf_keras.layers.Conv2D,
    tf_keras.layers.Conv3D,
)
_DEPTHWISE_TYPES = (tf_keras.layers.DepthwiseConv2D,)
_SEPARABLE_TYPES = (tf_keras.layers.SeparableConv1D, tf_keras.layers.SeparableConv2D)
_TRANSPOSE_CONV_TYPES = (tf_keras.layers.Conv2DTranspose, tf_keras.layers.Conv1DTranspose)
_POOL_TYPES = (
    tf_keras.layers.MaxPooling1D,
    tf_keras.layers.MaxPooling2D,
    tf_keras.layers.MaxPooling3D,
    tf_keras.layers.AveragePooling1D,
    tf_keras.layers.AveragePooling2D,
    tf_keras.layers.AveragePooling3D,
)
_GLOBAL_POOL_TYPES = (
    tf_keras.layers.GlobalMaxPooling1D,
    tf_keras.layers.GlobalMaxPooling2D,
    tf_keras.layers.GlobalMaxPooling3D,
    tf_keras.layers.GlobalAveragePooling1D,
    tf_keras.layers.GlobalAveragePooling2D,
    tf_keras.layers.GlobalAveragePooling3D,
)
_BN_TYPES = (tf_keras.layers.BatchNormalization,)
_DENSE_TYPES = (tf_keras.layers.Dense,)
_TENSOR_TYPES = (tf.Tensor, tf.Variable)
_REDUCE_FUNCTIONS = ("math.reduce_mean", "math.reduce_max", "reduce_mean", "reduce_max")
_MULTIPLY_FUNCTIONS = ("math.multiply", "multiply", "__operators__.mul")

# Producer kinds, for deciding whether a batch norm folds into the layer before it.
_FOLDS_BN = "folds_bn"
_OTHER = "other"


def _n(shape) -> int:
    """Number of elements of a (fully known) shape."""
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) if len(shape) else 1


def _tensors(structure) -> list:
    return [t for t in tf.nest.flatten(structure) if isinstance(t, _TENSOR_TYPES)]


def _shape_str(outputs) -> str:
    shapes = [tuple(int(d) for d in t.shape[1:]) for t in _tensors(outputs)]
    if len(shapes) == 1:
        return str(list(shapes[0]))
    return str([list(s) for s in shapes])


def _leaf_sublayers(layer) -> list:
    """Sub-layers of ``layer`` (recursively) that hold no sub-layers themselves."""
    subs = list(layer._flatten_layers(include_self=False, recursive=True))
    return [s for s in subs if not list(s._flatten_layers(include_self=False, recursive=False))]


def _kind(layer) -> str:
    if isinstance(layer, _CONV_TYPES + _DEPTHWISE_TYPES + _SEPARABLE_TYPES + _DENSE_TYPES):
        return _FOLDS_BN
    return _OTHER


def _leaf_macs(layer, inputs: list, outputs: list, call_args: tuple = ()) -> int:
    """MACs of one call of a leaf layer (batch 1), by the rules in the module docstring."""
    if not inputs or not outputs:
        return 0
    x, y = inputs[0], outputs[0]
    in_shape, out_shape = list(x.shape), list(y.shape)
    if isinstance(layer, _TRANSPOSE_CONV_TYPES):
        return _n(in_shape[:-1]) * _n(layer.kernel.shape)
    if isinstance(layer, _SEPARABLE_TYPES):
        depthwise = _n(out_shape[:-1]) * _n(layer.depthwise_kernel.shape)
        pointwise = _n(out_shape[:-1]) * _n(layer.pointwise_kernel.shape)
        return depthwise + pointwise
    if isinstance(layer, _DEPTHWISE_TYPES):
        return _n(out_shape[:-1]) * _n(layer.depthwise_kernel.shape)
    if isinstance(layer, _CONV_TYPES):
        return _n(out_shape[:-1]) * _n(layer.kernel.shape)
    if isinstance(layer, tf_keras.layers.Dense):
        return _n(out_shape[:-1]) * _n(layer.kernel.shape)
    if isinstance(layer, _POOL_TYPES):
        return _n(out_shape) * _n(layer.pool_size)
    if isinstance(layer, _GLOBAL_POOL_TYPES):
        return _n(in_shape)
    if isinstance(layer, tf_keras.layers.Multiply):
        return (len(inputs) - 1) * _n(out_shape)
    if type(layer).__name__ == "TFOpLambda":
        function = layer.get_config().get("function", "")
        if function in _REDUCE_FUNCTIONS:
            return _n(in_shape)
        if function in _MULTIPLY_FUNCTIONS:
            return _n(out_shape) * max(0, len(_tensors(call_args)) - 1)
    if layer.weights and not isinstance(layer, _BN_TYPES):
        logger.warning("MACs of layer %r (%s) are not counted", layer.name, type(layer).__name__)
    return 0


def _is_builtin(layer) -> bool:
    """A tf_keras layer counted by type (Lambda layers are traced like custom layers)."""
    builtin = type(layer).__module__.startswith("tf_keras.")
    return builtin and not isinstance(layer, tf_keras.layers.Lambda)


def _traced_op_macs(layer, args, kwargs) -> int:
    """MACs of the plain TensorFlow ops of a custom leaf layer (or Lambda), from its graph.

    The call is traced once on the concrete shapes; counted are ``Mean`` and ``Max``
    reductions (input elements, as TFLite MEAN/REDUCE_MAX), ``Mul`` of two non-constant
    tensors (output elements) and ``MatMul`` (``rows * inner * cols``).
    """
    flat = tf.nest.flatten(args)
    positions = [i for i, a in enumerate(flat) if isinstance(a, _TENSOR_TYPES)]
    specs = [tf.TensorSpec(flat[i].shape, flat[i].dtype) for i in positions]

    def call(*tensors):
        values = list(flat)
        for position, tensor in zip(positions, tensors):
            values[position] = tensor
        return layer(*tf.nest.pack_sequence_as(args, values), **kwargs)

    try:
        graph = tf.function(call).get_concrete_function(*specs).graph
    except Exception as err:  # noqa: BLE001 - a layer that cannot be traced is counted as 0
        logger.warning(
            "cannot trace layer %r (%s) to count its MACs: %s",
            layer.name,
            type(layer).__name__,
            err,
        )
        return 0
    macs = 0
    for op in graph.get_operations():
        if op.type in ("Mean", "Max") and op.inputs[0].shape.is_fully_defined():
            macs += _n(op.inputs[0].shape)
        elif op.type in ("AvgPool", "MaxPool") and op.outputs[0].shape.is_fully_defined():
            macs += _n(op.outputs[0].shape) * _n(op.get_attr("ksize"))  # as pooling layers: out x window
        elif op.type == "Mul" and op.outputs[0].shape.is_fully_defined():
            if all(_source_type(t) != "Const" for t in op.inputs):
                macs += _n(op.outputs[0].shape)
        elif op.type in ("MatMul", "BatchMatMulV2") and op.outputs[0].shape.is_fully_defined():
            a = op.inputs[0].shape
            transposed = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
            macs += _n(op.outputs[0].shape) * int(a[-2] if transposed else a[-1])
    return macs


def _source_type(tensor) -> str:
    """Type of the op producing ``tensor``, looking through Identity ops."""
    op = tensor.op
    while op.type == "Identity" and op.inputs:
        op = op.inputs[0].op
    return op.type


def _leaf_size_bytes(layer, folded: bool) -> int:
    """Estimated int8 TFLite bytes (NeSsi convention) of one call of a leaf layer."""
    if isinstance(layer, _BN_TYPES):
        return 0 if folded else 2 * int(layer.moving_mean.shape[0])
    if isinstance(layer, _SEPARABLE_TYPES):
        depthwise, pointwise = layer.depthwise_kernel.shape, layer.pointwise_kernel.shape
        channels = int(depthwise[-2]) * int(depthwise[-1])
        return _n(depthwise) + 4 * channels + _n(pointwise) + 4 * int(pointwise[-1])
    if isinstance(layer, _DEPTHWISE_TYPES):
        kernel = layer.depthwise_kernel.shape
        return _n(kernel) + 4 * int(kernel[-2]) * int(kernel[-1])
    if isinstance(layer, _TRANSPOSE_CONV_TYPES):
        return _n(layer.kernel.shape) + 4 * int(layer.kernel.shape[-2])
    if isinstance(layer, _CONV_TYPES):
        return _n(layer.kernel.shape) + 4 * int(layer.kernel.shape[-1])
    if isinstance(layer, _DENSE_TYPES):
        bias = 4 * int(layer.kernel.shape[-1]) if layer.use_bias else 0
        return _n(layer.kernel.shape) + bias
    return int(sum(_n(w.shape) for w in layer.weights))


class _KerasCounter:
    """Runs a model eagerly on concrete inputs and counts every layer call."""

    def __init__(self):
        self.rows: list[dict] = []
        self._producers: dict[int, str] = {}
        self._alive: list = []  # keeps tensors alive so that their ids stay unique

    def _produced(self, outputs, kind: str) -> None:
        for t in _tensors(outputs):
            self._alive.append(t)
            self._producers[id(t)] = kind

    def _folded(self, inputs: list) -> bool:
        return bool(inputs) and self._producers.get(id(inputs[0])) == _FOLDS_BN

    @staticmethod
    def _call_kwargs(layer, kwargs) -> dict:
        kwargs = dict(kwargs)
        if getattr(layer, "_expects_training_arg", False):
            kwargs["training"] = False
        return kwargs

    def _call(self, layer, args, kwargs):
        return layer(*args, **self._call_kwargs(layer, kwargs))

    def walk(self, model, inputs, prefix: str = ""):
        """Counts ``model`` (functional or Sequential) on ``inputs``; returns its outputs."""
        if not getattr(model, "_is_graph_network", False):
            raise ValueError(
                f"model {model.name!r} is a subclassed model; only functional and Sequential "
                f"models (and layers inside them) can be counted"
            )
        usage = model._tensor_usage_count
        tensor_dict: dict[str, list] = {}
        flat_inputs = tf.nest.flatten(inputs)
        if len(flat_inputs) != len(model.inputs):
            raise ValueError(
                f"model {model.name!r} takes {len(model.inputs)} inputs, got {len(flat_inputs)}"
            )
        for ref, value in zip(model.inputs, flat_inputs):
            tensor_dict[str(id(ref))] = [value] * usage[str(id(ref))]
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.is_input or any(t not in tensor_dict for t in node.flat_input_ids):
                    continue
                args, kwargs = node.map_arguments(tensor_dict)
                layer = node.layer
                if isinstance(layer, tf_keras.Model):
                    sub_inputs = args[0] if args else kwargs.get("inputs")
                    outputs = self.walk(layer, sub_inputs, prefix + layer.name + "/")
                else:
                    outputs = self.count_layer(layer, args, kwargs, prefix)
                for x_id, y in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                    tensor_dict[x_id] = [y] * usage[x_id]
        outputs = [tensor_dict[str(id(x))].pop() for x in model.outputs]
        return tf.nest.pack_sequence_as(model._nested_outputs, outputs)

    def count_layer(self, layer, args, kwargs, prefix: str):
        """Calls one (leaf or composite) layer, appends its row and returns its outputs."""
        inputs = _tensors(args)
        leaves = _leaf_sublayers(layer)
        if leaves:
            records: list[tuple] = []
            with _recording(leaves, records):
                outputs = self._call(layer, args, kwargs)
            macs, size, inner = 0, 0, set()
            for sub, sub_args, sub_inputs, sub_outputs in records:
                macs += _leaf_macs(sub, sub_inputs, _tensors(sub_outputs), sub_args)
                size += _leaf_size_bytes(sub, self._folded(sub_inputs))
                self._produced(sub_outputs, _kind(sub))
                inner.update(id(t) for t in _tensors(sub_outputs))
            macs += _composite_extra_macs(layer, inputs, [r[0] for r in records])
            # A wrapper (e.g. TFMOT's) may return its sub-layer's tensor itself: keep its kind.
            self._produced([t for t in _tensors(outputs) if id(t) not in inner], _OTHER)
        else:
            outputs = self._call(layer, args, kwargs)
            if _is_builtin(layer):
                macs = _leaf_macs(layer, inputs, _tensors(outputs), args)
            else:
                macs = _traced_op_macs(layer, args, self._call_kwargs(layer, kwargs))
            size = _leaf_size_bytes(layer, self._folded(inputs))
            self._produced(outputs, _kind(layer))
        self.rows.append(
            {
                "name": prefix + layer.name,
                "type": type(layer).__name__,
                "output_shape": _shape_str(outputs),
                "params": int(layer.count_params()) if layer.built else 0,
                "size_bytes": int(size),
                "macs": int(macs),
            }
        )
        return outputs


@contextlib.contextmanager
def _recording(sublayers: list, records: list):
    """Records ``(layer, args, input tensors, outputs)`` for every eager call of ``sublayers``.

    Keras's ``Layer.__call__`` runs ``self.call`` in eager mode, so an instance attribute
    ``call`` wraps the layer's own for the duration of the block.
    """
    patched = []
    try:
        for sub in sublayers:
            original = sub.call

            def wrapped(*args, _original=original, _sub=sub, **kwargs):
                outputs = _original(*args, **kwargs)
                records.append((_sub, args, _tensors(args), outputs))
                return outputs

            object.__setattr__(sub, "call", wrapped)
            patched.append(sub)
        yield records
    finally:
        for sub in patched:
            object.__delattr__(sub, "call")


def _composite_extra_macs(layer, inputs: list, called: list) -> int:
    """MACs a composite layer computes with plain TensorFlow ops rather than sub-layers."""
    if type(layer).__name__ != "CoordAttention" or not inputs:
        return 0
    elements = _n(inputs[0].shape)  # batch 1: T * F * C
    extra = 0
    if not any(isinstance(s, _POOL_TYPES + _GLOBAL_POOL_TYPES) for s in called):
        extra += 2 * elements  # mean over F and mean over T, each reads T * F * C
    if not any(isinstance(s, tf_keras.layers.Multiply) for s in called):
        extra += 2 * elements  # x * a_t * a_f
    return extra


def keras_complexity(model, input_shape=None) -> dict:
    """Parameters, estimated int8 bytes and MACs of a tf_keras classifier, layer by layer.

    Args:
      model: a functional or Sequential ``tf_keras.Model`` (log-mel in, logits out); nested
        models are descended into (rows named ``outer/inner``), composite layers are one row.
      input_shape: input shape without the batch dimension, e.g. ``(51, 40, 1)``; by default
        the model's own, which must then be fully known.

    Returns:
      A dict with ``params``, ``trainable_params``, ``non_trainable_params``, ``size_bytes``
      (estimate of the NeSsi count on the int8 TFLite file), ``macs`` (per clip),
      ``within_limits`` and ``layers``: one row per layer call with ``name``, ``type``,
      ``output_shape`` (without batch), ``params``, ``size_bytes`` and ``macs``.

    Raises:
      ValueError: for a subclassed or multi-input model, or an input shape that is not known.
    """
    if not isinstance(model, tf_keras.Model):
        raise ValueError(f"model must be a tf_keras.Model, got {type(model).__name__}")
    n_inputs = len(model.inputs or [])
    if n_inputs != 1:
        raise ValueError(f"model {model.name!r} must have exactly one input, got {n_inputs}")
    model_shape = tuple(model.inputs[0].shape)
    shape = model_shape[1:] if input_shape is None else tuple(input_shape)
    if any(d is None for d in shape) or len(shape) != len(model_shape) - 1:
        raise ValueError(
            f"input_shape must be the full input shape without batch "
            f"(rank {len(model_shape) - 1}), got {input_shape!r} for model input {model_shape}"
        )
    x = tf.zeros((1,) + tuple(int(d) for d in shape), dtype=model.inputs[0].dtype)
    counter = _KerasCounter()
    counter.walk(model, x)
    trainable = int(sum(_n(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(_n(w.shape) for w in model.non_trainable_weights))
    result = {
        "source": "keras",
        "model": model.name,
        "input_shape": [int(d) for d in shape],
        "params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "size_bytes": int(sum(r["size_bytes"] for r in counter.rows)),
        "macs": int(sum(r["macs"] for r in counter.rows)),
        "layers": counter.rows,
    }
    result["within_limits"] = _within_limits(result)
    return result


def _within_limits(result: dict) -> bool:
    return result["size_bytes"] <= MAX_BYTES and result["macs"] <= MAX_MACS


# ---------------------------------------------------------------------------------------------
# TFLite side
# ---------------------------------------------------------------------------------------------

_TYPE_BYTES = {
    "FLOAT32": 4,
    "FLOAT16": 2,
    "FLOAT64": 8,
    "INT32": 4,
    "UINT32": 4,
    "UINT8": 1,
    "INT64": 8,
    "UINT64": 8,
    "STRING": 1,
    "BOOL": 1,
    "INT16": 2,
    "UINT16": 2,
    "COMPLEX64": 8,
    "COMPLEX128": 16,
    "INT8": 1,
    "INT4": 1,  # NeSsi has no INT4; stored one per byte unless packed
    "BFLOAT16": 2,
}
# Operators whose integer constant operands are parameters (biases, output shapes), by position.
_WEIGHT_OPERANDS = {
    "CONV_2D": (1, 2),
    "DEPTHWISE_CONV_2D": (1, 2),
    "FULLY_CONNECTED": (1, 2),
    "TRANSPOSE_CONV": (1, 3),
    "CONV_3D": (1, 2),
}


_NO_DELEGATES = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _read_bytes(path_or_bytes) -> tuple[bytes, str]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), "<bytes>"
    path = os.fspath(path_or_bytes)
    with open(path, "rb") as f:
        return f.read(), path


def _resolved_shapes(model_bytes: bytes, n_tensors: int) -> dict[int, list[int]]:
    """Tensor shapes after ``allocate_tensors()`` (subgraph 0), where the interpreter has them."""
    shapes: dict[int, list[int]] = {}
    try:
        interpreter = tf.lite.Interpreter(
            model_content=model_bytes,
            experimental_op_resolver_type=_NO_DELEGATES,
        )
        interpreter.allocate_tensors()
    except Exception as err:  # noqa: BLE001 - fall back to the flatbuffer shapes
        logger.warning("TFLite interpreter cannot allocate the model (%s); using file shapes", err)
        return shapes
    for i in range(n_tensors):
        try:
            shapes[i] = [int(d) for d in interpreter._get_tensor_details(i, 0)["shape"]]
        except (ValueError, KeyError, TypeError):
            continue
    return shapes


def tflite_complexity(path_or_bytes) -> dict:
    """Parameters, bytes and MACs of a TFLite model by the NeSsi convention (module docstring).

    Args:
      path_or_bytes: path of a ``.tflite`` file, or its contents.

    Returns:
      A dict with ``params`` (elements of the counted constant tensors), ``size_bytes``,
      ``structural_bytes`` (integer shape/axis operands, not counted), ``macs``,
      ``within_limits`` and ``layers``: one row per operator with ``name`` (its output
      tensor), ``type`` (operator), ``output_shape`` (with batch), ``params``, ``size_bytes``
      and ``macs``.

    Raises:
      OSError: if the file cannot be read.
      ValueError: if the contents are not a TFLite flatbuffer.
    """
    model_bytes, where = _read_bytes(path_or_bytes)
    schema = _schema()
    if len(model_bytes) < 8 or not schema.Model.ModelBufferHasIdentifier(model_bytes, 0):
        raise ValueError(f"{where}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    except Exception as err:  # noqa: BLE001 - any decoding failure means a bad file
        raise ValueError(f"{where}: cannot parse the TFLite flatbuffer: {err}") from err
    if not model.subgraphs:
        raise ValueError(f"{where}: the TFLite model has no subgraph")
    if len(model.subgraphs) > 1:
        logger.warning(
            "%s: %d subgraphs; only the main one is counted (as NeSsi does)",
            where,
            len(model.subgraphs),
        )

    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    subgraph = model.subgraphs[0]
    tensors = subgraph.tensors or []
    operators = subgraph.operators or []
    resolved = _resolved_shapes(model_bytes, len(tensors))

    def shape(i: int) -> list[int]:
        if i in resolved:
            return resolved[i]
        s = tensors[i].shape
        return [] if s is None else [int(d) for d in s]

    produced = {o for op in operators for o in _indices(op.outputs) if o >= 0}
    graph_inputs = set(_indices(subgraph.inputs))

    def is_constant(i: int) -> bool:
        return i not in produced and i not in graph_inputs

    rows = []
    structural_total = 0
    for op in operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        op_type = op_names.get(builtin, str(builtin))
        if op_type == "CUSTOM":
            custom = code.customCode
            op_type = "CUSTOM:" + _text(custom)
        inputs, outputs = _indices(op.inputs), _indices(op.outputs)
        params, size, structural = 0, 0, 0
        for position, i in enumerate(inputs):
            if i < 0 or not is_constant(i):
                continue
            type_name = type_names.get(int(tensors[i].type), "FLOAT32")
            elements = _n(shape(i))
            nbytes = elements * _TYPE_BYTES.get(type_name, 4)
            integer = type_name in ("INT32", "INT64", "UINT32", "UINT64", "INT16")
            if integer and position not in _WEIGHT_OPERANDS.get(op_type, ()):
                structural += nbytes
            else:
                params += elements
                size += nbytes
        structural_total += structural
        macs = _tflite_macs(op_type, op, inputs, outputs, shape, is_constant)
        out = outputs[0] if outputs else -1
        rows.append(
            {
                "name": _text(tensors[out].name) if out >= 0 else "",
                "type": op_type,
                "output_shape": str(shape(out)) if out >= 0 else "[]",
                "params": int(params),
                "size_bytes": int(size),
                "macs": int(macs),
            }
        )
    result = {
        "source": "tflite",
        "model": where,
        "params": int(sum(r["params"] for r in rows)),
        "size_bytes": int(sum(r["size_bytes"] for r in rows)),
        "structural_bytes": int(structural_total),
        "macs": int(sum(r["macs"] for r in rows)),
        "layers": rows,
    }
    result["within_limits"] = _within_limits(result)
    return result


def _indices(vector) -> list[int]:
    return [] if vector is None else [int(i) for i in vector]


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _tflite_macs(op_type: str, op, inputs: list, outputs: list, shape, is_constant) -> int:
    """MACs of one TFLite operator (NeSsi's ``_macs_for_op`` with the deviations documented)."""
    if not outputs or not inputs:
        return 0
    out_shape = shape(outputs[0])
    if op_type == "CONV_2D":
        n, o_h, o_w, _ = out_shape
        o_c, k_h, k_w, i_c = shape(inputs[1])
        return n * o_h * o_w * o_c * k_h * k_w * i_c
    if op_type == "DEPTHWISE_CONV_2D":
        n, o_h, o_w, _ = out_shape
        _, k_h, k_w, c = shape(inputs[1])
        return n * c * o_h * o_w * k_h * k_w
    if op_type == "FULLY_CONNECTED":
        out_dim, in_dim = shape(inputs[1])
        rows = _n(shape(inputs[0])) // in_dim
        return rows * in_dim * out_dim
    if op_type in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        options = op.builtinOptions
        return _n(out_shape) * int(options.filterHeight) * int(options.filterWidth)
    if op_type in ("MEAN", "REDUCE_MAX"):
        return _n(shape(inputs[0]))
    if op_type == "MUL":
        variable = [i for i in inputs if i >= 0 and not is_constant(i)]
        return _n(out_shape) if len(variable) >= 2 else 0
    return 0


# ---------------------------------------------------------------------------------------------
# Post-training int8 quantisation
# ---------------------------------------------------------------------------------------------


def to_int8_tflite(
    classifier,
    representative_inputs,
    input_type=tf.int8,
    output_type=tf.int8,
    batch_size: int | None = None,
) -> bytes:
    """Full-integer post-training quantisation of a Keras classifier to a TFLite flatbuffer.

    Args:
      classifier: a ``tf_keras.Model`` (log-mel in, logits out).
      representative_inputs: calibration inputs, an array ``[N, *input_shape]`` or an iterable
        of arrays, each one sample (``input_shape`` or ``[1, *input_shape]``) or a batch;
        fed to the converter one float32 sample at a time.
      input_type: ``tf.int8`` (default), ``tf.uint8`` or ``tf.float32`` model input.
      output_type: likewise for the model output.
      batch_size: None (default) converts the Keras model as it is, with a dynamic batch
        (``TFLiteConverter.from_keras_model``). An integer fixes the batch (1 is the DCASE
        case, one clip per inference): the converter then turns dilated depthwise
        convolutions into single dilated ``DEPTHWISE_CONV_2D`` operators instead of
        ``SPACE_TO_BATCH_ND``/``BATCH_TO_SPACE_ND`` pairs (faster; batch norm and biases
        after them fold; MACs equal to the Keras count), but the file then only runs at that
        batch size. Calibration samples are grouped into batches of that size.

    Returns:
      The ``.tflite`` file contents, weights int8, biases int32, ops ``TFLITE_BUILTINS_INT8``.

    Raises:
      ValueError: if there are no representative inputs, their shape does not fit, or
        ``batch_size`` is not None or a positive integer.
    """
    if not isinstance(classifier, tf_keras.Model):
        raise ValueError(f"classifier must be a tf_keras.Model, got {type(classifier).__name__}")
    bad_batch = isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    if batch_size is not None and bad_batch:
        raise ValueError(f"batch_size must be None or a positive integer, got {batch_size!r}")
    input_tensor = classifier.inputs[0]
    sample_rank = len(input_tensor.shape) - 1
    samples = []
    for item in _iterate_inputs(representative_inputs):
        item = np.asarray(item, dtype=np.float32)
        if item.ndim == sample_rank:
            samples.append(item)
        elif item.ndim == sample_rank + 1:
            samples.extend(item)
        else:
            raise ValueError(
                f"representative_inputs: expected samples of rank {sample_rank} (or batches), "
                f"got an array of shape {item.shape}"
            )
    group = batch_size or 1
    if len(samples) < group:
        raise ValueError(
            f"representative_inputs is empty or smaller than one batch "
            f"({len(samples)} samples, batch {group})"
        )

    def representative_dataset():
        for start in range(0, len(samples) - group + 1, group):
            yield [np.stack(samples[start : start + group])]  # [batch, *input_shape] float32

    if batch_size is None:
        converter = tf.lite.TFLiteConverter.from_keras_model(classifier)
    else:
        shape = [batch_size] + list(input_tensor.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(
                "a fixed batch_size needs a fully known input shape, "
                f"got {tuple(input_tensor.shape)}"
            )
        function = tf.function(lambda x: classifier(x, training=False))
        concrete = function.get_concrete_function(tf.TensorSpec(shape, input_tensor.dtype))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], classifier)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = input_type
    converter.inference_output_type = output_type
    logger.info(
        "converting %r to int8 TFLite (batch %s) with %d representative samples",
        classifier.name,
        batch_size or "dynamic",
        len(samples),
    )
    return bytes(converter.convert())


def _iterate_inputs(representative_inputs) -> Iterable:
    if isinstance(representative_inputs, (np.ndarray, tf.Tensor)):
        return [np.asarray(representative_inputs)]
    return representative_inputs


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _register_project_layers() -> None:
    import importlib

    for name in _REGISTERING_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            logger.debug("not registering layers of %s: %s", name, err)


def count_file(path: str, input_shape=None) -> dict:
    """Counts a ``.tflite`` file, or the classifier of a ``.keras`` model (see module docstring).

    For a ``.keras`` model with a nested model layer named ``"classifier"``, that classifier is
    counted (the front end stays float and outside the int8 graph); otherwise the whole model.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: for an unknown extension or a file that cannot be read as a model.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".tflite":
        result = tflite_complexity(path)
    elif extension in (".keras", ".h5"):
        _register_project_layers()
        try:
            model = tf_keras.models.load_model(path, compile=False)
        except Exception as err:  # noqa: BLE001 - report any load failure with the file name
            raise ValueError(f"{path}: cannot load the Keras model: {err}") from err
        counted = model
        try:
            classifier = model.get_layer("classifier")
        except ValueError:
            classifier = None
        if isinstance(classifier, tf_keras.Model):
            counted = classifier
        result = keras_complexity(counted, input_shape=input_shape)
    else:
        raise ValueError(f"{path}: expected a .tflite or .keras file, got extension {extension!r}")
    result["path"] = path
    result["limits"] = {"max_bytes": MAX_BYTES, "max_macs": MAX_MACS}
    return result


def _shorten(name: str, width: int = 64) -> str:
    """Middle-ellipsised name (TFLite output names join every fused op's name)."""
    if len(name) <= width:
        return name
    left = (width - 3) // 2
    return name[:left] + "..." + name[len(name) - (width - 3 - left):]


def format_table(result: dict) -> str:
    """A plain-text per-layer table with totals and the verdict on the DCASE2022 limits."""
    header = ("name", "type", "output shape", "params", "bytes", "MACs")
    body = [
        (
            _shorten(r["name"]),
            r["type"],
            r["output_shape"],
            f"{r['params']:,}",
            f"{r['size_bytes']:,}",
            f"{r['macs']:,}",
        )
        for r in result["layers"]
    ]
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    right = (False, False, False, True, True, True)

    def line(row):
        cells = [str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(row, widths, right)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = f"{result['source']} model: {result.get('path', result.get('model', ''))}"
    lines = [title, line(header), rule]
    lines += [line(row) for row in body]
    lines.append(rule)
    lines.append(f"parameters: {result['params']:,}")
    if "trainable_params" in result:
        trainable, frozen = result["trainable_params"], result["non_trainable_params"]
        lines.append(f"  trainable {trainable:,}, non-trainable {frozen:,}")
    kind = "estimated int8 TFLite" if result["source"] == "keras" else "NeSsi"
    lines.append(f"size ({kind}): {result['size_bytes']:,} bytes (limit {MAX_BYTES:,})")
    if "structural_bytes" in result:
        structural = result["structural_bytes"]
        lines.append(f"  integer shape/axis operands not counted: {structural:,} bytes")
    lines.append(f"MACs per 1-s clip: {result['macs']:,} (limit {MAX_MACS:,})")
    lines.append("within DCASE2022 limits: " + ("yes" if result["within_limits"] else "NO"))
    return "\n".join(lines)


def _parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input-shape must be comma-separated integers, got {text!r}"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluate.complexity",
        description="Parameters, int8 bytes (NeSsi convention) and MACs of a .tflite or .keras "
        f"model, checked against the DCASE2022 Task 1 limits ({MAX_BYTES:,} bytes, "
        f"{MAX_MACS:,} MACs).",
    )
    parser.add_argument(
        "path", help="a .tflite file or a .keras model (its 'classifier' layer is counted)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.add_argument(
        "--input-shape",
        type=_parse_shape,
        default=None,
        help="classifier input without batch, e.g. 51,40,1 (when the model leaves it open)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = count_file(args.path, input_shape=args.input_shape)
    except (OSError, ValueError) as err:
        sys.stderr.write(f"evaluate.complexity: error: {err}\n")
        return 2
    output = json.dumps(result, indent=2) if args.json else format_table(result)
    sys.stdout.write(output + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
