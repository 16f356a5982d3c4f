"""The TFLite side: reads a ``.tflite`` flatbuffer and counts it operator by operator.

The graph is read with TensorFlow's generated flatbuffer schema; tensor shapes come from the
interpreter after ``allocate_tensors()`` (without delegates), falling back to the file's: the
converter writes wrong static shapes between SPACE_TO_BATCH_ND and BATCH_TO_SPACE_ND (batch 1
instead of 2) in a graph converted with a dynamic batch. Only the main subgraph is counted, as
NeSsi does. The rules are in :mod:`evaluate.complexity.rules`.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from evaluate.complexity import rules
from evaluate.complexity.rules import Operator, Tensor

logger = logging.getLogger(__name__)

_NO_DELEGATES = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _indices(vector) -> list[int]:
    return [] if vector is None else [int(i) for i in vector]


def _read_bytes(path_or_bytes) -> tuple[bytes, str]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), "<bytes>"
    path = os.fspath(path_or_bytes)
    with open(path, "rb") as f:
        return f.read(), path


def _resolved_shapes(model_bytes: bytes) -> dict[int, list[int]]:
    """Tensor shapes of subgraph 0 after ``allocate_tensors()``, where the interpreter has them."""
    try:
        interpreter = tf.lite.Interpreter(model_content=model_bytes, experimental_op_resolver_type=_NO_DELEGATES)
        interpreter.allocate_tensors()
    except Exception as err:
        logger.warning("TFLite interpreter cannot allocate the model (%s); using file shapes", err)
        return {}
    return {int(d["index"]): [int(s) for s in d["shape"]] for d in interpreter.get_tensor_details()}


def read_graph(path_or_bytes) -> tuple[str, list[Operator], list[Tensor]]:
    """``(where, operators in execution order, graph outputs)`` of a TFLite model's main subgraph.

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
    except Exception as err:  # any decoding failure means a bad file
        raise ValueError(f"{where}: cannot parse the TFLite flatbuffer: {err}") from err
    if not model.subgraphs:
        raise ValueError(f"{where}: the TFLite model has no subgraph")
    if len(model.subgraphs) > 1:
        logger.warning("%s: %d subgraphs; only the main one is counted (as NeSsi does)", where, len(model.subgraphs))
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    subgraph = model.subgraphs[0]
    resolved = _resolved_shapes(model_bytes)
    produced = {o for op in subgraph.operators or [] for o in _indices(op.outputs) if o >= 0}
    graph_inputs = set(_indices(subgraph.inputs))
    tensors = []
    for i, t in enumerate(subgraph.tensors or []):
        shape = resolved.get(i, [] if t.shape is None else [int(d) for d in t.shape])
        constant = i not in produced and i not in graph_inputs
        tensors.append(
            Tensor(shape=shape, type=type_names.get(int(t.type), "FLOAT32"), constant=constant, name=_text(t.name))
        )
    operators = []
    for op in subgraph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        op_type = op_names.get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)), "?")
        if op_type == "CUSTOM":
            op_type = "CUSTOM:" + _text(code.customCode)
        outputs = [tensors[i] for i in _indices(op.outputs) if i >= 0]
        inputs = [tensors[i] if i >= 0 else None for i in _indices(op.inputs)]
        options, window = op.builtinOptions, None
        if op_type in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            window = (int(options.filterHeight), int(options.filterWidth))
        operator = Operator(
            type=op_type, inputs=inputs, outputs=outputs, filter=window, name=outputs[0].name if outputs else ""
        )
        for t in outputs:
            t.producer = operator
        operators.append(operator)
    return where, operators, [tensors[i] for i in _indices(subgraph.outputs)]


def operator_row(op: Operator, int8_estimate: bool = False) -> dict:
    """One table row: the operator's ``type``, ``output_shape``, ``params``, bytes and MACs."""
    params, size, structural = rules.operator_size(op, int8_estimate)
    macs, corrected = rules.operator_macs(op)
    return {
        "name": op.name,
        "type": op.type,
        "output_shape": str(op.outputs[0].shape) if op.outputs else "[]",
        "params": int(params),
        "size_bytes": int(size),
        "structural_bytes": int(structural),
        "macs": int(macs),
        "macs_dense_corrected": int(corrected),
    }


def totals(rows: list[dict]) -> dict:
    """Summed ``size_bytes``, ``structural_bytes``, ``macs`` and ``macs_dense_corrected``."""
    keys = ("size_bytes", "structural_bytes", "macs", "macs_dense_corrected")
    return {k: int(sum(r[k] for r in rows)) for k in keys}


def tflite_complexity(path_or_bytes) -> dict:
    """Parameters, bytes and MACs of a TFLite model by the NeSsi convention (:mod:`.rules`).

    Args:
      path_or_bytes: path of a ``.tflite`` file, or its contents.

    Returns:
      A dict with ``params`` (elements of the counted constant tensors), ``size_bytes``,
      ``structural_bytes`` (integer shape/axis operands, not counted), ``macs`` (official,
      NeSsi), ``macs_dense_corrected`` (fully connected layers by their kernel's input size),
      ``within_limits`` (on the official figures) and ``layers``: one row per operator with
      ``name`` (its output tensor), ``type`` (operator), ``output_shape`` (with batch),
      ``params``, ``size_bytes``, ``structural_bytes``, ``macs`` and ``macs_dense_corrected``.

    Raises:
      OSError: if the file cannot be read.
      ValueError: if the contents are not a TFLite flatbuffer.
    """
    where, operators, _ = read_graph(path_or_bytes)
    rows = [operator_row(op) for op in operators]
    result = {
        "source": "tflite",
        "model": where,
        "params": int(sum(r["params"] for r in rows)),
        **totals(rows),
        "layers": rows,
    }
    result["within_limits"] = rules.within_limits(result)
    return result
