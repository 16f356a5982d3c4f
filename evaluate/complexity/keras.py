"""The Keras side: complexity of a float tf_keras classifier, before it is quantised.

The classifier is converted to a float TFLite graph at batch 1 (one clip) and counted with the
TFLite side's rules in their int8-estimate form (:mod:`evaluate.complexity.rules`): it is the
graph the int8 converter quantises (batch norm after a convolution folded, and so on), so the
MACs are those of the int8 file and the bytes estimate it. The converter folds and drops
constants by value (an all-zero bias, a batch norm at its initial statistics), so the float
weights are set to generic values for the conversion and restored afterwards: an untrained
model counts as it will once trained. Parameters (trainable and non-trainable, batch-norm
statistics included) are Keras's own count, which the folded graph no longer shows.

Operators are attributed to layers by name scope (TFLite names an operator after the
TensorFlow ops fused into it, ``model/layer/op``): one row per layer, nested models descended
into (rows ``inner/layer``), a layer with sub-layers one row. TFMOT pruning wrappers, whose
inference call assigns the masked kernel, are stripped for the conversion; rows keep their names.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import tensorflow as tf
import tf_keras

from evaluate.complexity import rules, tflite

logger = logging.getLogger(__name__)

# The TF op that names the layer a fused weight operator belongs to (a convolution fused with
# the batch norm and activation after it is named after all three).
_WEIGHT_OP_NAMES = {
    "CONV_2D": ("Conv2D", "Conv1D", "convolution"),
    "DEPTHWISE_CONV_2D": ("depthwise",),
    "FULLY_CONNECTED": ("MatMul", "Tensordot", "BatchMatMul", "einsum"),
    "TRANSPOSE_CONV": ("conv2d_transpose", "conv1d_transpose", "Conv2DBackpropInput"),
    "CONV_3D": ("Conv3D", "convolution"),
}
_UNATTRIBUTED = "(unattributed)"


def _strip_pruning(model: tf_keras.Model) -> tf_keras.Model:
    """``model`` without TFMOT ``PruneLowMagnitude`` wrappers (sharing its layers), or itself."""

    def wrapped(m):
        return any(
            type(layer).__name__ == "PruneLowMagnitude" or (isinstance(layer, tf_keras.Model) and wrapped(layer))
            for layer in m.layers
        )

    if not wrapped(model):
        return model
    import tensorflow_model_optimization as tfmot

    return tfmot.sparsity.keras.strip_pruning(model)


@contextlib.contextmanager
def _generic_weights(model: tf_keras.Model):
    """Every float weight of ``model`` set to values in [0.5, 1.5] for the block, then restored."""
    variables = [v for v in model.weights if v.dtype.is_floating]
    saved = [v.numpy() for v in variables]
    rng = np.random.default_rng(0)
    try:
        for v in variables:
            v.assign(rng.uniform(0.5, 1.5, tuple(v.shape)).astype(v.dtype.as_numpy_dtype))
        yield
    finally:
        for v, value in zip(variables, saved, strict=True):
            v.assign(value)


def _float_tflite(model: tf_keras.Model, shape: tuple, dtype):
    """``(float TFLite of model at batch 1, its traced graph, the TF op producing its output)``."""
    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec((1,) + shape, dtype))
    output = tf.nest.flatten(concrete.outputs)[0]
    while output.op.type == "Identity" and output.op.inputs:
        output = output.op.inputs[0]
    # With the tf.function as trackable object the converter freezes the concrete function
    # directly instead of saving the whole model as a SavedModel first (several times slower).
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
    try:
        return converter.convert(), concrete.graph, output.op.name
    except Exception as err:  # any converter failure, reported with the model name
        raise ValueError(f"model {model.name!r} cannot be converted to TFLite: {err}") from err


def _traced_shapes(graph, scopes: dict) -> dict[int, list]:
    """Row -> output shape (without batch) of the last op traced in its layer's name scope."""
    shapes = {}
    for op in graph.get_operations():
        if op.type in ("ReadVariableOp", "Const", "VarHandleOp", "NoOp") or not op.outputs:
            continue
        index = _row_of(op.name, scopes)
        if index is not None and op.outputs[0].shape.rank:
            shapes[index] = op.outputs[0].shape.as_list()[1:]
    return shapes


def _keras_shape(layer) -> list | None:
    try:
        shape = layer.output_shape
    except (AttributeError, RuntimeError):
        return None
    if isinstance(shape, list):
        shape = shape[0]
    return list(shape[1:]) if isinstance(shape, tuple) else None


def _layer_rows(counted, shown, scope: str, prefix: str, rows: list, scopes: dict) -> None:
    """A row per leaf layer of ``shown``; ``scopes`` maps ``counted``'s name scopes to rows."""
    pairs = list(zip(counted.layers, shown.layers, strict=False))
    if len(counted.layers) != len(shown.layers):
        pairs = [(layer, layer) for layer in counted.layers]
    for layer, original in pairs:
        if isinstance(layer, tf_keras.layers.InputLayer):
            continue
        if isinstance(layer, tf_keras.Model):
            _layer_rows(layer, original, f"{scope}/{layer.name}", f"{prefix}{original.name}/", rows, scopes)
            continue
        scopes[f"{scope}/{layer.name}"] = len(rows)
        rows.append(
            {
                "name": prefix + original.name,
                "type": type(original).__name__,
                "output_shape": _keras_shape(original),
                "params": int(original.count_params()) if original.built else 0,
                "size_bytes": 0,
                "structural_bytes": 0,
                "macs": 0,
                "macs_dense_corrected": 0,
            }
        )


def _row_of(component: str, scopes: dict) -> int | None:
    parts = component.split("/")
    for k in range(len(parts) - 1, 0, -1):
        index = scopes.get("/".join(parts[:k]))
        if index is not None:
            return index
    return None


def _attribute(op_type: str, names: list[str], scopes: dict, rows: list) -> int | None:
    """The row an operator belongs to: the layer of the TF op that defines it, else the first
    layer with weights among its fused ops, else the first layer named."""
    candidates = [(name, _row_of(name, scopes)) for name in names]
    candidates = [(name, index) for name, index in candidates if index is not None]
    keywords = _WEIGHT_OP_NAMES.get(op_type, ())
    for name, index in candidates:
        if name.rsplit("/", 1)[-1].startswith(keywords):
            return index
    for _, index in candidates:
        if rows[index]["params"]:
            return index
    return candidates[0][1] if candidates else None


def keras_complexity(model, input_shape=None) -> dict:
    """Parameters, estimated int8 bytes and MACs of a tf_keras classifier, layer by layer.

    Args:
      model: a ``tf_keras.Model`` with one input (log-mel in, logits out); nested models are
        descended into (rows named ``outer/inner``), composite layers are one row.
      input_shape: input shape without the batch dimension, e.g. ``(51, 40, 1)``; by default
        the model's own, which must then be fully known.

    Returns:
      A dict with ``params``, ``trainable_params``, ``non_trainable_params`` (Keras's counts),
      ``size_bytes`` (estimate of the NeSsi count on the int8 TFLite file), ``structural_bytes``,
      ``macs`` (per clip, official NeSsi rule), ``macs_dense_corrected``, ``within_limits`` and
      ``layers``: one row per layer with ``name``, ``type``, ``output_shape`` (without batch),
      ``params``, ``size_bytes``, ``structural_bytes``, ``macs`` and ``macs_dense_corrected``.

    Raises:
      ValueError: for a model without exactly one input, an input shape that is not known, or
        a model the TFLite converter cannot convert.
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
    shape = tuple(int(d) for d in shape)
    start = time.perf_counter()
    counted = _strip_pruning(model)
    with _generic_weights(model):
        content, graph, output_op = _float_tflite(counted, shape, model.inputs[0].dtype)
    _, operators, graph_outputs = tflite.read_graph(content)
    logger.debug("converted %r to float TFLite and read it in %.2f s", model.name, time.perf_counter() - start)

    rows: list[dict] = []
    scopes: dict[str, int] = {}
    _layer_rows(counted, model, counted.name, "", rows, scopes)
    traced = _traced_shapes(graph, scopes)
    for op in operators:
        names = [name for name in op.name.split(";") if name]
        if op.outputs and any(op.outputs[0] is t for t in graph_outputs):
            names.append(output_op)  # the output tensor is named after the signature
        index = _attribute(op.type, names, scopes, rows)
        if index is None:
            if not rows or rows[-1]["name"] != _UNATTRIBUTED:
                rows.append(
                    {
                        "name": _UNATTRIBUTED,
                        "type": "",
                        "output_shape": None,
                        "params": 0,
                        "size_bytes": 0,
                        "structural_bytes": 0,
                        "macs": 0,
                        "macs_dense_corrected": 0,
                    }
                )
            index = len(rows) - 1
            logger.warning("operator %s %r is not attributed to a layer", op.type, op.name)
        for key, value in tflite.operator_row(op, int8_estimate=True).items():
            if key in ("size_bytes", "structural_bytes", "macs", "macs_dense_corrected"):
                rows[index][key] += value
    for index, row in enumerate(rows):
        if row["output_shape"] is None or None in row["output_shape"]:
            row["output_shape"] = traced.get(index, row["output_shape"])
        row["output_shape"] = str(row["output_shape"])

    trainable = int(sum(rules.n_elements(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(rules.n_elements(w.shape) for w in model.non_trainable_weights))
    result = {
        "source": "keras",
        "model": model.name,
        "input_shape": list(shape),
        "params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        **tflite.totals(rows),
        "layers": rows,
    }
    result["within_limits"] = rules.within_limits(result)
    return result
