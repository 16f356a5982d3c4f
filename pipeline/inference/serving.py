"""The deployable package as an MLflow pyfunc model: log it, register it, get it back, serve it.

The compress stage writes a package folder (``asc_infer/`` = the runtime, numpy + the TFLite
interpreter only, with the model files in ``asc_infer/model/``). :func:`log_package` logs that
folder as the artifact ``package`` of a pyfunc model whose :class:`PackageModel` imports the
runtime from it. The model is logged "from code": this module is the model's code (MLflow copies
it into the model and runs it on load, where :func:`mlflow.models.set_model` picks
:class:`PackageModel`), so it imports nothing of ``pipeline``: a served model needs mlflow,
numpy, pandas and a TFLite interpreter only.

Request format (``mlflow models serve``): a DataFrame with one column ``audio`` holding whole
audio files (WAV; sample rates 1 kHz to 384 kHz, any channel count and length: the runtime
downmixes, resamples, windows and averages). In a JSON request each value is the file's bytes,
base64-encoded (standard alphabet; line breaks allowed)::

    {"dataframe_split": {"columns": ["audio"], "data": [["UklGR..."], ["UklGR..."]]}}

or ``{"dataframe_records": [{"audio": "UklGR..."}, ...]}``. An optional column ``device`` names each
file's recording device (a DCASE device ID: ``a``, ``s1``, ...; case-insensitive): with DCASE2025
device-specific models in the package, that file runs through its device's model; an unknown device, an
empty value or ``null`` uses the general model (``{"columns": ["audio", "device"], "data": [["UklGR...",
"a"]]}``). In process, ``PyFuncModel.predict``
takes the bytes themselves (or the same base64 text). The column's MLflow type is ``any``, not
``binary``: MLflow decodes a ``binary`` column for the whole request before the model sees it, so one
value that is not base64 (a number, ``null``, bad padding) would fail every row; this model decodes
each row itself. A value is never taken as a path on the server.

The answer holds one record per file, in request order: ``scene`` (the predicted class), one
probability column per class (named by class, the weighted mean over the file's windows),
``windows`` (how many windows were scored), ``model`` (the device whose own model scored the file, or
``general``) and ``error``. Files are read and predicted one at a
time, so a bad file spoils only its own row: ``error`` is ``""`` for a predicted row; a failed row
has ``error`` set, ``scene`` ``""``, NaN probabilities (``NaN`` in the JSON answer) and ``windows``
0. The error is the WAV reader's reason (``asc_infer.InputError.reason``: "not a RIFF/WAVE file
(corrupt or wrong format)", "sample rate 10000000 Hz is outside the supported 1000..384000 Hz ...",
"window 0 (from 0.00 s): samples far beyond full scale ...") or, for any other failure of that
file (``MemoryError`` included), the exception's type and text; never a traceback, and absolute
paths are replaced by ``<path>``. The server logs each failed row. A request without an ``audio``
column is refused whole (HTTP 400, "Model is missing inputs ['audio']").

Logging, registering and fetching the package: :mod:`pipeline.inference.registry` (apart, because MLflow
copies this one file into the model as its code).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import io
import logging
import re
import sys
import wave
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

PACKAGE_ARTIFACT = "package"  # the artifact key (and folder) holding the package
AUDIO_COLUMN = "audio"
DEVICE_COLUMN = "device"  # optional: each file's device ID, for DCASE2025 device-specific models
GENERAL = "general"  # the answer's ``model`` for a file scored by the general model
MODEL_NAME = "model"  # the logged model's name inside its run (``runs:/RUN_ID/model``)
MAX_TAG_CHARS = 100_000  # MLflow's limit on a model version tag's value


class PackageError(ValueError):
    """A package folder or a registry URI that cannot be used (the message names the path or URI)."""


class ValueNotAudio(ValueError):
    """A row's value is not an audio file (not bytes, not base64 text); that row's error is the message."""


# --------------------------------------------------------------------------- the runtime of a package


def _runtime(package_dir: Path):
    """Import ``asc_infer`` from a package folder under a name unique to that folder.

    A unique module name keeps two packages (two versions, or the ``pipeline.inference.asc_infer``
    source) apart in one process.
    """
    init = Path(package_dir) / "asc_infer" / "__init__.py"
    if not init.is_file():
        raise PackageError(f"{package_dir} is not a package folder: {init} is missing")
    name = "asc_infer_" + hashlib.sha256(str(init.resolve()).encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _model_dir(package_dir: Path) -> Path:
    return Path(package_dir) / "asc_infer" / "model"


OUTPUT_COLUMNS = ("scene", "windows", "model", "error")  # besides one probability column per class
# an absolute POSIX path (not a relative one like "RIFF/WAVE" or "a/b"), a Windows path, for the row errors
_PATH = re.compile(r"(?<![\w.])/(?:[\w.@+~-]+/)*[\w.@+~-]+|\b[A-Za-z]:\\[^\s'\"]*")


def output_columns(labels) -> list[str]:
    """The answer's columns: ``scene``, one per class (in ``labels`` order), ``windows``, ``model``, ``error``.

    Raises:
      PackageError: a class is named like another column, or two classes share a name.
    """
    labels = [str(c) for c in labels]
    clash = sorted({c for c in labels if c in OUTPUT_COLUMNS or labels.count(c) > 1})
    if clash:
        raise PackageError(
            f"class name(s) {clash} clash with the answer's columns {list(OUTPUT_COLUMNS)} or with each other"
        )
    return ["scene", *labels, "windows", "model", "error"]


def _without_paths(text: str) -> str:
    return _PATH.sub("<path>", text)


def row_error(exc: BaseException, input_error: type | tuple = ()) -> str:
    """What the answer says of a failed row: the reader's reason, or the exception's type and text, no path.

    Args:
      exc: the exception raised while reading or predicting one file.
      input_error: the runtime's ``InputError`` class (its ``reason`` is used as worded).

    Returns:
      One line without a traceback; absolute paths are replaced by ``<path>``.
    """
    if input_error and isinstance(exc, input_error):
        text = str(exc.reason)
    elif isinstance(exc, ValueNotAudio):
        text = str(exc)
    else:
        name = "MemoryError" if isinstance(exc, MemoryError) else type(exc).__name__  # numpy: _ArrayMemoryError
        # an unexpected error may name server files in any form (spaces, relative, UNC): every word holding a
        # path separator goes, which also covers the parts of a path with spaces
        words = ["<path>" if ("/" in w or "\\" in w) else w for w in str(exc).split()]
        text = f"{name}: {' '.join(words)}" if words else name
    return _without_paths(" ".join(text.split())) or type(exc).__name__


def audio_bytes(value) -> bytes:
    """One row's value as the bytes of a file: bytes as they are, text as base64 (how JSON carries them).

    Raises:
      ValueNotAudio: text that is not base64, or a value of another type (the message says which).
    """
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueNotAudio(
                f"not base64-encoded audio ({exc}); in JSON each value of '{AUDIO_COLUMN}' is a "
                "whole WAV file, base64-encoded"
            ) from None
    missing = value is None or (isinstance(value, float) and np.isnan(value))
    shown = "null (no value)" if missing else f"a value of type {type(value).__name__}"
    raise ValueNotAudio(f"holds {shown}, not an audio file (bytes; in JSON a base64-encoded string)")


def device_id(value) -> str | None:
    """A request's ``device`` value as a device ID: None for a missing one (``None``, NaN, blank), else the
    text stripped and in lower case."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    return text or None


def predict_frame(runtime, model, audio: list, devices: list | None = None) -> pd.DataFrame:
    """Probabilities for whole audio files, as the served model answers: each file on its own.

    A file that cannot be read or predicted fails its row only (see the module doc): ``error``
    holds why, its probabilities are NaN, ``scene`` is ``""`` and ``windows`` 0.

    Args:
      runtime: the package's ``asc_infer`` module.
      model: ``runtime.load_model(...)``.
      audio: one item per file: the bytes of a whole WAV file, or that file base64-encoded as text.
      devices: None, or one device ID per file (:func:`device_id`: None, NaN or blank for none): a file
        whose device has its own model in the package runs through it, any other through the general one.

    Returns:
      ``[n]`` rows, in order: ``scene`` (str), one float64 column per class in ``model.labels``
      order, ``windows`` (int64), ``model`` (str: the device ID whose model scored the file, or
      ``general``), ``error`` (str, ``""`` when the row was predicted).

    Raises:
      PackageError: the model's class names clash with the answer's columns.
    """
    columns = output_columns(model.labels)
    n, classes = len(audio), len(model.labels)
    probs = np.full((n, classes), np.nan)
    scenes, windows, errors, used = [""] * n, np.zeros(n, np.int64), [""] * n, [GENERAL] * n
    if devices is not None and len(devices) != n:
        raise ValueError(f"{len(devices)} device value(s) for {n} file(s)")
    input_error = getattr(runtime, "InputError", ())
    for i, value in enumerate(audio):
        try:
            device = None if devices is None else device_id(devices[i])
            scorer = model.for_device(device) if device is not None and hasattr(model, "for_device") else model
            used[i] = getattr(scorer, "device", None) or GENERAL
            recordings = runtime.load_inputs([audio_bytes(value)], scorer)  # reads the header only
            row = np.asarray(runtime.predict(scorer, recordings), dtype=np.float64)  # streams the windows
            if row.shape != (1, classes):
                raise RuntimeError(
                    f"the runtime returned probabilities of shape {row.shape} for 1 file and {classes} classes"
                )
            probs[i], scenes[i], windows[i] = row[0], model.labels[int(row[0].argmax())], len(recordings[0])
        except Exception as exc:
            errors[i] = row_error(exc, input_error)
            if isinstance(exc, ValueNotAudio) or (input_error and isinstance(exc, input_error)):
                logger.warning("row %d: %s", i, errors[i])
            else:
                logger.error("row %d: %s", i, errors[i], exc_info=exc)
        finally:
            recordings = row = None  # a failed row's buffers go now, not with the next row
    frame = pd.DataFrame(probs, columns=list(model.labels))
    frame.insert(0, "scene", pd.Series(scenes, dtype=object))
    frame["windows"] = windows
    frame["model"] = pd.Series(used, dtype=object)
    frame["error"] = pd.Series(errors, dtype=object)
    return frame[columns]


class PackageModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model: whole audio files in, class probabilities per file out (see the module doc)."""

    def load_context(self, context):
        package_dir = Path(context.artifacts[PACKAGE_ARTIFACT])
        self.runtime = _runtime(package_dir)
        self.model = self.runtime.load_model(_model_dir(package_dir))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        """One answer row per file; a bad file fails its row only.

        Args:
          context: unused (the package is loaded by :meth:`load_context`).
          model_input: a DataFrame with a column ``audio`` (bytes of whole files, or base64 text) and
            optionally ``device`` (each file's device ID), or a list of ``audio`` values.
          params: unused.

        Returns:
          The DataFrame of :func:`predict_frame`.

        Raises:
          MlflowException: (a request error, HTTP 400) the input is not a DataFrame with a column
            ``audio`` nor a list.
        """
        if isinstance(model_input, pd.DataFrame):
            if AUDIO_COLUMN not in model_input.columns:
                raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                    f"the input has columns {list(model_input.columns)}: expected a column '{AUDIO_COLUMN}' of "
                    "whole WAV files"
                )
            values = model_input[AUDIO_COLUMN].tolist()
            devices = model_input[DEVICE_COLUMN].tolist() if DEVICE_COLUMN in model_input.columns else None
        elif isinstance(model_input, (list, tuple)):
            values, devices = list(model_input), None
        else:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                f"expected a DataFrame with a column '{AUDIO_COLUMN}' (or a list of files), got "
                f"{type(model_input).__name__}"
            )
        return predict_frame(self.runtime, self.model, values, devices)


# --------------------------------------------------------------------------- example input, signature


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A 16-bit PCM WAV file in memory.

    Args:
      samples: ``[n]`` (mono) or ``[n, channels]`` floats in [-1, 1] (clipped).
      sample_rate: in Hz.
    """
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"samples must be [n] or [n, channels] with n > 0, got shape {data.shape}")
    pcm = np.round(np.clip(data, -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(data.shape[1])
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buf.getvalue()


def example_clips(seconds: float = 0.25, sample_rate: int = 16000) -> list[bytes]:
    """Two short mono WAV files (a 440-Hz tone and seeded noise): the model's input example."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    noise = 0.3 * np.random.default_rng(0).standard_normal(t.size)
    return [wav_bytes(tone, sample_rate), wav_bytes(noise, sample_rate)]


def signature(labels) -> mlflow.models.ModelSignature:
    """The model's signature.

    Input: ``audio`` (MLflow type ``any``: bytes in process, base64 text in JSON; each row is
    decoded by the model, see the module doc) and the optional ``device`` (type ``any``; see
    :func:`device_id`). Output: ``scene`` (string), one double per class, ``windows`` (long), ``model``
    (string), ``error`` (string, ``""`` for a predicted row).

    Raises:
      PackageError: a class is named like another output column.
    """
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    names = output_columns(labels)
    types = {"scene": "string", "windows": "long", "model": "string", "error": "string"}
    outputs = [ColSpec(types.get(name, "double"), name) for name in names]
    # ``device`` is typed ``any`` too: a null or a number is the general model's, not a failed request
    inputs = Schema([ColSpec(AnyType(), AUDIO_COLUMN), ColSpec(AnyType(), DEVICE_COLUMN, required=False)])
    return mlflow.models.ModelSignature(inputs=inputs, outputs=Schema(outputs))


if __name__ != "pipeline.inference.serving":  # run by MLflow as a logged model's code (models from code)
    mlflow.models.set_model(PackageModel())
