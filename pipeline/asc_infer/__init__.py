"""``asc_infer``: run the shipped acoustic scene classifier on your own recordings.

The runtime API of the deployable package, mirroring the DCASE2025 Task 1 inference package::

    import asc_infer
    model = asc_infer.load_model()                       # the model bundled in the package
    probs = asc_infer.predict(model, asc_infer.load_inputs(["memo.wav", "park.wav"]))  # [2, n_classes]

It depends only on NumPy, the standard library, its sibling modules (``wavfile``: a streaming WAV
reader for 8/16/24/32-bit PCM and 32/64-bit float; ``resample``: a band-limited resampler) and a
TFLite interpreter, imported when a model is loaded: ``ai_edge_litert`` (``pip install
asc-infer[litert]``), else ``tflite_runtime``, else ``tensorflow.lite`` (``asc-infer[tf]``).

How a recording becomes probabilities:

1. :func:`load_inputs` reads only the headers. A :class:`Recording` streams its audio window by
   window: mono downmix (the mean of the channels), resampling to the model's rate with
   :meth:`resample.Resampler.window` (only the input samples a window needs are read), windows of
   ``window_seconds`` (default: the model's clip length) every ``hop_seconds`` (default: the window),
   the last window zero-padded; a recording shorter than one window gives one padded window.
2. Each window goes through the float log-mel front end (``frontend.tflite``, waveform
   ``[1, clip_samples]`` in) and the int8 classifier (``model_int8.tflite``, batch 1); the
   classifier's int8/uint8 input and output are (de)quantized with the scales in the interpreter's
   tensor details. A window of another length than the model's clip is scored as the mean over its
   clip-length pieces (the last piece zero-padded).
3. A window's probabilities are the softmax of the classifier's logits (float64); a recording's
   probabilities are the mean over its windows (:func:`predict`). :func:`predict_windows` yields the
   per-window rows.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .resample import Resampler
from .wavfile import WavError, read_info, read_mono

logger = logging.getLogger(__name__)

MODEL_FILES = ("frontend.tflite", "model_int8.tflite", "model.json", "metrics.json", "complexity.json")
Item = Union[str, os.PathLike, bytes]  # noqa: UP007 - a runtime alias


class InputError(ValueError):
    """A recording cannot be read; ``item`` names it, ``reason`` says why."""

    def __init__(self, item: str, reason: str):
        super().__init__(f"{item}: {reason}")
        self.item = item
        self.reason = reason


# --------------------------------------------------------------------------- the model


def _interpreter_class() -> tuple[type, str]:
    """The first TFLite interpreter found: ai_edge_litert, tflite_runtime, tensorflow.lite."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("asc_infer needs a TFLite interpreter: pip install 'asc-infer[litert]' "
                          "(ai-edge-litert) or 'asc-infer[tf]' (tensorflow)") from None
    return tf.lite.Interpreter, "tensorflow.lite"


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def clip_pieces(window: np.ndarray, clip_samples: int) -> np.ndarray:
    """Cut one window into clip-length pieces, the last zero-padded.

    Args:
      window: float32 ``[n]`` waveform at the model's rate.
      clip_samples: the model's input length.

    Returns:
      float32 ``[ceil(n / clip_samples) or 1, clip_samples]``.
    """
    pieces = max(1, math.ceil(len(window) / clip_samples))
    out = np.zeros(pieces * clip_samples, np.float32)
    out[:len(window)] = window
    return out.reshape(pieces, clip_samples)


class Model:
    """A loaded package model: the float front end and the int8 classifier, each in a TFLite interpreter.

    Attributes:
      folder: the model folder (holds :data:`MODEL_FILES`).
      labels: class names, in the order of the probability columns.
      sample_rate: the model's sample rate (Hz).
      window_samples: the model's clip length in samples (the default window).
      window_seconds, hop_seconds: the default windowing of :func:`load_inputs`.
      metrics: the compress stage's metrics on the evaluate split (``metrics.json``).
      complexity: the NeSsi figures and the DCASE limits (``complexity.json``).
      info: the whole ``model.json`` (config name, project version and commit, ...).
      runtime: which interpreter runs it (``ai_edge_litert``, ``tflite_runtime``, ``tensorflow.lite``).
    """

    def __init__(self, folder: Path, num_threads: int | None = None):
        self.folder = Path(folder)
        missing = [n for n in MODEL_FILES if not (self.folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"model folder {self.folder} lacks {', '.join(missing)}")
        self.info = self._json("model.json")
        for key in ("labels", "sample_rate", "clip_samples"):
            if key not in self.info:
                raise ValueError(f"{self.folder / 'model.json'}: missing key {key!r}")
        self.labels: list[str] = list(self.info["labels"])
        self.sample_rate = int(self.info["sample_rate"])
        self.window_samples = int(self.info["clip_samples"])
        self.window_seconds = float(self.info.get("window_seconds", self.window_samples / self.sample_rate))
        self.hop_seconds = float(self.info.get("hop_seconds", self.window_seconds))
        self.metrics: dict = self._json("metrics.json")
        self.complexity: dict = self._json("complexity.json")
        interpreter, self.runtime = _interpreter_class()
        self._frontend = interpreter(model_path=str(self.folder / "frontend.tflite"), num_threads=num_threads)
        self._classifier = interpreter(model_path=str(self.folder / "model_int8.tflite"), num_threads=num_threads)
        for it in (self._frontend, self._classifier):
            it.allocate_tensors()
        self._fin = self._frontend.get_input_details()[0]
        self._fout = self._frontend.get_output_details()[0]
        self._cin = self._classifier.get_input_details()[0]
        self._cout = self._classifier.get_output_details()[0]
        if int(self._fin["shape"][-1]) != self.window_samples:
            raise ValueError(f"{self.folder / 'frontend.tflite'} takes {int(self._fin['shape'][-1])} samples; "
                             f"model.json says clip_samples={self.window_samples}")
        if int(self._cout["shape"][-1]) != len(self.labels):
            raise ValueError(f"{self.folder / 'model_int8.tflite'} has {int(self._cout['shape'][-1])} outputs; "
                             f"model.json lists {len(self.labels)} labels")
        logger.info("asc_infer: loaded %s (%d classes, %d Hz, %d-sample clips) with %s", self.folder,
                    len(self.labels), self.sample_rate, self.window_samples, self.runtime)

    def _json(self, name: str) -> dict:
        path = self.folder / name
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None

    def __repr__(self) -> str:
        return (f"Model({str(self.folder)!r}, labels={len(self.labels)}, sample_rate={self.sample_rate}, "
                f"window_samples={self.window_samples}, runtime={self.runtime!r})")

    def clip_logits(self, clip: np.ndarray) -> np.ndarray:
        """Logits (float32 ``[n_classes]``) of one clip (float32 ``[window_samples]``)."""
        self._frontend.set_tensor(self._fin["index"], np.asarray(clip, np.float32).reshape(self._fin["shape"]))
        self._frontend.invoke()
        logmel = self._frontend.get_tensor(self._fout["index"])
        x = logmel.reshape(self._cin["shape"])
        dtype = self._cin["dtype"]
        if dtype != np.float32:
            scale, zero = self._cin["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        self._classifier.set_tensor(self._cin["index"], x.astype(dtype))
        self._classifier.invoke()
        y = self._classifier.get_tensor(self._cout["index"])
        if self._cout["dtype"] != np.float32:
            scale, zero = self._cout["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, np.float32).reshape(-1)

    def window_probabilities(self, window: np.ndarray) -> np.ndarray:
        """Probabilities (float64 ``[n_classes]``) of one window: softmax of the logits, mean over its pieces."""
        pieces = clip_pieces(window, self.window_samples)
        return np.mean([softmax(self.clip_logits(p)) for p in pieces], axis=0)


def load_model(path: str | os.PathLike | None = None, *, num_threads: int | None = None) -> Model:
    """Load a packaged model.

    Args:
      path: a model folder (holding ``model.json``, ``frontend.tflite``, ``model_int8.tflite``,
        ``metrics.json``, ``complexity.json``) or a package folder holding ``asc_infer/model/``;
        ``None``: the model bundled inside this installed package.
      num_threads: interpreter threads (``None``: the interpreter's default).

    Returns:
      a :class:`Model`.
    """
    folder = Path(path) if path is not None else Path(__file__).resolve().parent / "model"
    if not (folder / "model.json").is_file() and (folder / "asc_infer" / "model" / "model.json").is_file():
        folder = folder / "asc_infer" / "model"
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    return Model(folder, num_threads=num_threads)


# --------------------------------------------------------------------------- the inputs


class WavSource:
    """A WAV file (path or bytes) read lazily: ``sample_rate``, ``frames``, ``channels``, ``read(start, stop)``."""

    def __init__(self, source: Item):
        self.source = source if isinstance(source, (bytes, bytearray)) else os.fspath(source)
        self.info = read_info(self.source)
        self.sample_rate = int(self.info.sample_rate)
        self.frames = int(self.info.frames)
        self.channels = int(self.info.channels)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Mono float32 samples ``[start, stop)`` (mean of the channels)."""
        return read_mono(self.source, self.info, start, max(0, stop - start))


@dataclass
class Recording:
    """One input, streamed window by window at the model's rate.

    Attributes:
      name: how errors and outputs name it (the path, or ``<bytes #i>``).
      source: an object with ``sample_rate``, ``frames`` and ``read(start, stop) -> float32 mono``.
      sample_rate: the model's rate (Hz).
      window_samples, hop_samples: the windowing at the model's rate.
    """

    name: str
    source: Any
    sample_rate: int
    window_samples: int
    hop_samples: int
    _resampler: Resampler | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.source.frames <= 0:
            raise InputError(self.name, "holds no audio frames")
        if self.source.sample_rate != self.sample_rate:
            try:
                self._resampler = Resampler(self.source.sample_rate, self.sample_rate)
            except ValueError as exc:
                raise InputError(self.name, f"cannot resample {self.source.sample_rate} Hz to {self.sample_rate} Hz: "
                                            f"{exc}") from exc

    @property
    def seconds(self) -> float:
        """The recording's duration."""
        return self.source.frames / self.source.sample_rate

    @property
    def samples(self) -> int:
        """Its length at the model's rate."""
        if self._resampler is None:
            return self.source.frames
        return int(self._resampler.output_length(self.source.frames))

    def __len__(self) -> int:
        """The number of windows: ``1 + ceil((samples - window) / hop)``, at least 1."""
        extra = self.samples - self.window_samples
        return 1 + max(0, math.ceil(extra / self.hop_samples))

    def window(self, i: int) -> np.ndarray:
        """Window ``i``: float32 ``[window_samples]``, zero-padded past the end."""
        start = i * self.hop_samples
        count = max(0, min(self.window_samples, self.samples - start))
        out = np.zeros(self.window_samples, np.float32)
        try:
            if count and self._resampler is None:
                got = self.source.read(start, start + count)
            elif count:
                got = self._resampler.window(self.source.read, self.source.frames, start, count)
            else:
                got = np.zeros(0, np.float32)
        except (WavError, OSError, ValueError) as exc:
            raise InputError(self.name, _reason(exc)) from exc
        got = np.asarray(got, np.float32).reshape(-1)
        if len(got) != count:
            raise InputError(self.name, f"window {i}: read {len(got)} samples, expected {count}")
        if not np.isfinite(got).all():
            raise InputError(self.name, f"window {i} (from {start / self.sample_rate:.2f} s): "
                                        f"{int(np.size(got) - np.isfinite(got).sum())} non-finite samples (NaN or inf)")
        out[:count] = got
        return out

    def windows(self) -> Iterator[tuple[float, np.ndarray]]:
        """``(start_seconds, window)`` for every window, in order."""
        for i in range(len(self)):
            yield i * self.hop_samples / self.sample_rate, self.window(i)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _samples(seconds: float | None, default: float, rate: int, what: str) -> int:
    value = default if seconds is None else seconds
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    n = round(value * rate)
    if n < 1:
        raise ValueError(f"{what}={value!r} is shorter than one sample at {rate} Hz")
    return n


def make_recording(name: str, source: Any, model: Model, *, window_seconds: float | None = None,
                   hop_seconds: float | None = None) -> Recording:
    """A :class:`Recording` of any source with ``sample_rate``, ``frames`` and ``read(start, stop)`` (mono).

    Raises:
      ValueError: non-positive ``window_seconds`` or ``hop_seconds``.
      InputError: the source holds no frames.
    """
    window = _samples(window_seconds, model.window_seconds, model.sample_rate, "window_seconds")
    hop = _samples(hop_seconds, window / model.sample_rate if hop_seconds is None and window_seconds is not None
                   else model.hop_seconds, model.sample_rate, "hop_seconds")
    return Recording(name, source, model.sample_rate, window, hop)


def open_wav(item: Item, name: str | None = None) -> WavSource:
    """Read the header of one WAV item; errors become :class:`InputError` naming it."""
    label = name or (f"<{len(item)} bytes>" if isinstance(item, (bytes, bytearray)) else os.fspath(item))
    try:
        return WavSource(item)
    except (WavError, OSError, ValueError) as exc:
        raise InputError(label, _reason(exc)) from exc


def load_inputs(items: Iterable[Item], model: Model | None = None, *, window_seconds: float | None = None,
                hop_seconds: float | None = None) -> list[Recording]:
    """Open recordings lazily (headers only).

    Args:
      items: WAV paths or the bytes of whole WAV files.
      model: the model whose rate and clip length set the windowing; ``None``: the bundled model's
        ``model.json`` (read without loading an interpreter).
      window_seconds: window length (default: the model's clip length).
      hop_seconds: hop between window starts (default: the window length).

    Returns:
      one :class:`Recording` per item, in order.

    Raises:
      InputError: an item cannot be read (names the item and the reason).
      ValueError: a non-positive window or hop.
    """
    spec = model if model is not None else _ModelSpec.bundled()
    out = []
    for i, item in enumerate(items):
        name = f"<bytes #{i}>" if isinstance(item, (bytes, bytearray)) else os.fspath(item)
        out.append(make_recording(name, open_wav(item, name), spec, window_seconds=window_seconds,
                                  hop_seconds=hop_seconds))
    return out


@dataclass
class _ModelSpec:
    """The audio settings of a model folder without its interpreters."""

    sample_rate: int
    window_seconds: float
    hop_seconds: float

    @classmethod
    def bundled(cls) -> _ModelSpec:
        path = Path(__file__).resolve().parent / "model" / "model.json"
        if not path.is_file():
            raise FileNotFoundError(f"no bundled model ({path} is missing): pass load_inputs(..., model=...)")
        info = json.loads(path.read_text())
        rate = int(info["sample_rate"])
        window = float(info.get("window_seconds", int(info["clip_samples"]) / rate))
        return cls(rate, window, float(info.get("hop_seconds", window)))


# --------------------------------------------------------------------------- prediction


def predict_windows(model: Model, recording: Recording,
                    score: Callable[[np.ndarray], np.ndarray] | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Per-window probabilities of one recording.

    Args:
      model: a loaded :class:`Model`.
      recording: from :func:`load_inputs`.
      score: window -> probabilities (default ``model.window_probabilities``).

    Yields:
      ``(start_seconds, probabilities float64 [n_classes])`` per window.
    """
    score = score or model.window_probabilities
    for start, window in recording.windows():
        yield start, score(window)


def predict(model: Model, inputs: Sequence[Recording | Item]) -> np.ndarray:
    """Class probabilities of each input: the mean of its windows' softmax probabilities.

    Args:
      model: a loaded :class:`Model`.
      inputs: :class:`Recording` objects (or paths/bytes, opened with the model's default windowing).

    Returns:
      float64 ``[n_inputs, n_classes]``; columns in ``model.labels`` order; rows sum to 1.
    """
    rows = []
    for item in inputs:
        rec = item if isinstance(item, Recording) else load_inputs([item], model)[0]
        rows.append(np.mean([p for _, p in predict_windows(model, rec)], axis=0))
    return np.asarray(rows, np.float64).reshape(len(rows), len(model.labels))


def complexity(model: Model) -> dict:
    """The stored NeSsi figures: ``params``, ``size_bytes``, ``macs`` (per clip) and ``limits``."""
    return dict(model.complexity)


def check_complexity(model: Model) -> bool:
    """True when the int8 classifier is within the DCASE limits stored in ``complexity.json``.

    ``limits.max_bytes`` bounds ``size_bytes`` (parameters at their stored width) and
    ``limits.max_macs`` bounds ``macs`` per clip.
    """
    c, limits = model.complexity, model.complexity.get("limits", {})
    if "max_bytes" not in limits or "max_macs" not in limits:
        raise ValueError(f"{model.folder / 'complexity.json'} lacks limits.max_bytes/max_macs")
    return int(c["size_bytes"]) <= int(limits["max_bytes"]) and int(c["macs"]) <= int(limits["max_macs"])


__all__ = [
    "InputError",
    "Model",
    "Recording",
    "WavError",
    "WavSource",
    "check_complexity",
    "clip_pieces",
    "complexity",
    "load_inputs",
    "load_model",
    "make_recording",
    "open_wav",
    "predict",
    "predict_windows",
    "softmax",
]
