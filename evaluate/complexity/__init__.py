"""Model complexity by the DCASE2022 Task 1 rules: parameters, int8 bytes and MACs per clip.

- :mod:`.rules`: the counting rules (NeSsi's, per TFLite operator) and the limits;
- :mod:`.tflite`: :func:`tflite_complexity` of an int8 ``.tflite`` file (the official count);
- :mod:`.keras`: :func:`keras_complexity` of a float classifier, counted on its float TFLite
  conversion at batch 1 with the same rules (bytes estimated for int8);
- :mod:`.cli`: ``python -m evaluate.complexity PATH [--json] [--input-shape T,F,C]``.

``macs`` is the official figure (NeSsi's rule: a fully connected layer counts the last axis of
its input); ``macs_dense_corrected`` counts it by its kernel's input size. The limit check uses
the official figures. The TensorFlow-dependent parts load on first use.
"""

from evaluate.complexity.rules import MAX_BYTES, MAX_MACS

__all__ = ["MAX_BYTES", "MAX_MACS", "count_file", "format_table", "keras_complexity", "main", "tflite_complexity"]

_LAZY = {
    "keras_complexity": "keras",
    "tflite_complexity": "tflite",
    "count_file": "cli",
    "format_table": "cli",
    "main": "cli",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"evaluate.complexity.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
