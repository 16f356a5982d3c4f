"""``python -m evaluate.complexity PATH [--json] [--input-shape T,F,C]``: the complexity table."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

from evaluate.complexity.rules import MAX_BYTES, MAX_MACS

logger = logging.getLogger(__name__)

# Project modules that register the custom layers a saved .keras model needs.
_REGISTERING_MODULES = ("models.frontend", "models.layers", "models.asc", "models.baseline", "augment")


def _register_project_layers() -> None:
    for name in _REGISTERING_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            logger.debug("not registering layers of %s: %s", name, err)


def count_file(path: str, input_shape=None) -> dict:
    """Counts a ``.tflite`` file, or the classifier of a ``.keras`` model.

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
        from evaluate.complexity.tflite import tflite_complexity

        result = tflite_complexity(path)
    elif extension in (".keras", ".h5"):
        import tf_keras

        from evaluate.complexity.keras import keras_complexity

        _register_project_layers()
        try:
            model = tf_keras.models.load_model(path, compile=False)
        except Exception as err:  # any load failure, reported with the file name
            raise ValueError(f"{path}: cannot load the Keras model: {err}") from err
        try:
            classifier = model.get_layer("classifier")
        except ValueError:
            classifier = None
        counted = classifier if isinstance(classifier, tf_keras.Model) else model
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
    return name[:left] + "..." + name[len(name) - (width - 3 - left) :]


def format_table(result: dict) -> str:
    """A plain-text per-layer table with totals and the verdict on the DCASE2022 limits."""
    header = ("name", "type", "output shape", "params", "bytes", "MACs (NeSsi)", "MACs (dense corr.)")
    body = [
        (
            _shorten(r["name"]),
            r["type"],
            r["output_shape"],
            f"{r['params']:,}",
            f"{r['size_bytes']:,}",
            f"{r['macs']:,}",
            f"{r['macs_dense_corrected']:,}",
        )
        for r in result["layers"]
    ]
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    right = (False, False, False, True, True, True, True)

    def line(row):
        cells = [str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(row, widths, right, strict=True)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = f"{result['source']} model: {result.get('path', result.get('model', ''))}"
    lines = [title, line(header), rule]
    lines += [line(row) for row in body]
    lines += [rule, f"parameters: {result['params']:,}"]
    if "trainable_params" in result:
        trainable, frozen = result["trainable_params"], result["non_trainable_params"]
        lines.append(f"  trainable {trainable:,}, non-trainable {frozen:,}")
    kind = "NeSsi, estimated from the float model" if result["source"] == "keras" else "NeSsi"
    lines.append(f"size ({kind}): {result['size_bytes']:,} bytes (limit {MAX_BYTES:,})")
    if result.get("structural_bytes"):
        structural = result["structural_bytes"]
        lines.append(f"  integer shape/axis operands not counted: {structural:,} bytes")
    lines.append(f"MACs per 1-s clip (NeSsi, official): {result['macs']:,} (limit {MAX_MACS:,})")
    lines.append(
        f"MACs with fully connected layers counted by their kernel's input size: {result['macs_dense_corrected']:,}"
    )
    lines.append("within DCASE2022 limits: " + ("yes" if result["within_limits"] else "NO"))
    return "\n".join(lines)


def _parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape must be comma-separated integers, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluate.complexity",
        description="Parameters, int8 bytes and MACs of a .tflite or .keras model by NeSsi's "
        f"rules (the DCASE2022 Task 1 tool), checked against the limits ({MAX_BYTES:,} bytes, "
        f"{MAX_MACS:,} MACs); also the MACs with fully connected layers counted by their "
        "kernel's input size.",
    )
    parser.add_argument("path", help="a .tflite file or a .keras model (its 'classifier' layer is counted)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
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
