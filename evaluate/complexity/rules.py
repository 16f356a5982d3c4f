"""The DCASE2022 Task 1 counting rules: int8 bytes and MACs per operator of a TFLite graph.

The challenge limits a system to 128,000 bytes of parameters stored as int8 and 30 million
multiply-accumulate operations (MACs) per 1-second clip, both counted by NeSsi
(https://github.com/AlbertoAncilotto/NeSsi, ``tflite_tools/tflite_model.py``) on the int8
TFLite file. The rules here are NeSsi's, per operator, with the batch dimension (1) included.

**Size** (NeSsi ``_execution_schedule_info(size=True)``): the bytes of every constant input of
every operator (a tensor no operator produces and not a graph input), ``prod(shape) *`` element
size: int8 1, int32 biases 4, float32 4. A constant read by two operators counts twice; scales
and zero points are not tensors. One deviation: integer constants of operators other than the
convolutions and FULLY_CONNECTED (RESHAPE's shape, MEAN's axes, SPACE_TO_BATCH_ND's paddings)
are shape arguments, not parameters, and are reported apart as ``structural_bytes``.

**MACs** (NeSsi ``_macs_for_op``):

* CONV_2D ``prod(out) * k_h * k_w * c_in``; DEPTHWISE_CONV_2D ``prod(out) * k_h * k_w``;
* FULLY_CONNECTED ``rows * in * units`` with ``in`` the *last axis of its input*: for the
  DCASE2022 baseline, whose 2022 converter fed the pooled ``[1, 2, 1, 32]`` tensor straight
  into FULLY_CONNECTED, 32 x 100 = 3,200 (the kernel has 64 inputs). Today's converter puts a
  RESHAPE (Keras ``Flatten``) in between; it is looked through, so the official figure does not
  depend on the converter version. The figure with ``in`` from the kernel (6,400) is reported
  beside it as ``macs_dense_corrected``;
* MAX_POOL_2D, AVERAGE_POOL_2D: ``prod(out) * f_h * f_w``; MEAN: input elements;
* ADD and everything else: 0 (NeSsi's ADD branch calls an undefined ``prod`` and cannot run).

The project also counts, in both figures, what NeSsi has no rule for (none is in the baseline):
MUL of two non-constant tensors (the attention's ``x * a_t * a_f``) at output elements,
REDUCE_MAX at input elements, TRANSPOSE_CONV at ``prod(in[:-1]) * prod(kernel)`` and CONV_3D
at ``prod(out) * prod(kernel[:-1])``. A MUL by a constant (an unfolded batch norm) is free.

**int8 estimate** of a float graph (the Keras side, :mod:`evaluate.complexity.keras`): float
constants count 1 byte per element, except a bias operand at 4 (int32), and a convolution
without a bias gets the 4-byte-per-channel bias the int8 converter always adds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: DCASE2022 Task 1 limits: int8 model size in bytes and MACs per 1-second clip.
MAX_BYTES = 128_000
MAX_MACS = 30_000_000

TYPE_BYTES = {
    "FLOAT32": 4,
    "FLOAT16": 2,
    "FLOAT64": 8,
    "BFLOAT16": 2,
    "COMPLEX64": 8,
    "COMPLEX128": 16,
    "INT32": 4,
    "UINT32": 4,
    "INT64": 8,
    "UINT64": 8,
    "INT16": 2,
    "UINT16": 2,
    "INT8": 1,
    "UINT8": 1,
    "INT4": 1,
    "BOOL": 1,
    "STRING": 1,
}
_INTEGER = {"INT32", "UINT32", "INT64", "UINT64", "INT16"}
_FLOAT = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}

#: Operand positions of weights and bias of the operators that hold parameters.
WEIGHTS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1, "CONV_3D": 1}
BIAS = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3, "CONV_3D": 2}
#: Operators the int8 converter always gives a bias (with or without ``use_bias``).
_ALWAYS_BIASED = {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D"}


@dataclass(eq=False)
class Tensor:
    shape: list[int]
    type: str  # TFLite TensorType name: "INT8", "FLOAT32", ...
    constant: bool
    name: str = ""
    producer: Operator | None = None


@dataclass(eq=False)
class Operator:
    type: str  # TFLite BuiltinOperator name
    inputs: list[Tensor | None]  # None for an absent optional operand
    outputs: list[Tensor]
    filter: tuple[int, int] | None = None  # pooling window of MAX/AVERAGE_POOL_2D
    name: str = ""  # its first output's name (TFLite joins the names of fused ops with ';')


def n_elements(shape) -> int:
    return math.prod(int(d) for d in shape)


def _nessi_input(x: Tensor) -> list[int]:
    """The input NeSsi's FULLY_CONNECTED rule sees: through a RESHAPE that flattens to 2-D."""
    reshape = x.producer
    if reshape is not None and reshape.type == "RESHAPE" and reshape.inputs and len(x.shape) == 2:
        before = reshape.inputs[0]
        if before is not None and len(before.shape) > 2 and before.shape[0] == x.shape[0]:
            return before.shape
    return x.shape


def operator_macs(op: Operator) -> tuple[int, int]:
    """``(official, dense_corrected)`` MACs of one operator; they differ for FULLY_CONNECTED."""
    inputs = op.inputs
    if not inputs or inputs[0] is None or not op.outputs:
        return 0, 0
    out, x = op.outputs[0].shape, inputs[0]
    kernel = inputs[1].shape if len(inputs) > 1 and inputs[1] is not None else []
    if op.type == "FULLY_CONNECTED":
        units, depth = kernel
        corrected = n_elements(x.shape) // depth * depth * units
        return n_elements(out[:-1]) * _nessi_input(x)[-1] * units, corrected
    if op.type == "CONV_2D":
        macs = n_elements(out) * n_elements(kernel[1:])
    elif op.type == "DEPTHWISE_CONV_2D":
        macs = n_elements(out) * kernel[1] * kernel[2]
    elif op.type in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        macs = n_elements(out) * op.filter[0] * op.filter[1]
    elif op.type in ("MEAN", "REDUCE_MAX"):
        macs = n_elements(x.shape)
    elif op.type == "MUL":
        variable = [t for t in inputs if t is not None and not t.constant]
        macs = n_elements(out) if len(variable) >= 2 else 0
    elif op.type == "TRANSPOSE_CONV":  # operands: output shape, weights, input, bias
        macs = n_elements(inputs[2].shape[:-1]) * n_elements(kernel)
    elif op.type == "CONV_3D":
        macs = n_elements(out) * n_elements(kernel[:-1])
    else:
        macs = 0
    return macs, macs


def operator_size(op: Operator, int8_estimate: bool = False) -> tuple[int, int, int]:
    """``(params, bytes, structural_bytes)`` of one operator's constant operands.

    With ``int8_estimate`` the operator is from a float graph and the bytes are those its
    int8 conversion will have (module docstring).
    """
    params = size = structural = 0
    weight_positions = (WEIGHTS.get(op.type), BIAS.get(op.type))
    for position, t in enumerate(op.inputs):
        if t is None or not t.constant:
            continue
        elements = n_elements(t.shape)
        if t.type in _INTEGER and position not in weight_positions:
            structural += elements * TYPE_BYTES[t.type]
            continue
        params += elements
        if int8_estimate and t.type in _FLOAT:
            size += elements * (4 if position == BIAS.get(op.type) else 1)
        else:
            size += elements * TYPE_BYTES.get(t.type, 4)
    bias = BIAS.get(op.type)
    missing_bias = bias is not None and (len(op.inputs) <= bias or op.inputs[bias] is None)
    if int8_estimate and op.type in _ALWAYS_BIASED and missing_bias and op.outputs:
        size += 4 * int(op.outputs[0].shape[-1])
    return params, size, structural


def within_limits(result: dict) -> bool:
    """The DCASE2022 verdict, on the official (NeSsi) size and MACs."""
    return result["size_bytes"] <= MAX_BYTES and result["macs"] <= MAX_MACS
