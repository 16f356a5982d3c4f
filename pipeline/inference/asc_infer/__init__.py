"""``asc_infer``: run the shipped acoustic scene classifier on your own recordings.

The runtime API of the deployable package, mirroring the DCASE2025 Task 1 inference package::

    import asc_infer
    model = asc_infer.load_model()                       # the model bundled in the package
    probs = asc_infer.predict(model, asc_infer.load_inputs(["memo.wav", "park.wav"]))  # [2, n_classes]

    # the DCASE2025 form: device IDs pick each device's own model (the general one for the others)
    logits, class_order = asc_infer.predict(["a.wav", "b.wav"], ["a", "s4"])
    asc_infer.get_model_for_device(model, "s1")          # that device's model, or the general one

It depends only on NumPy, the standard library, its sibling modules and a TFLite interpreter:

* ``wavfile``: a streaming WAV reader for 16/24/32-bit PCM and 32/64-bit float (8-bit PCM,
  A-law, mu-law and compressed encodings are refused, naming the encoding);
* ``recording``: inputs, windows, weights and their checks;
* ``resample``: a band-limited resampler.

The interpreter is imported when a model is loaded: ``ai_edge_litert`` (``pip install
asc-infer[litert]``), else ``tflite_runtime``, else ``tensorflow.lite`` (``asc-infer[tf]``).

How a recording becomes probabilities (the rules are in :mod:`asc_infer.recording`):

1. :func:`load_inputs` reads only the headers (a single path or bytes object, or a list of them).
   Sample rates outside 1..384 kHz and files that are not regular files (a FIFO) are refused at
   once. A :class:`Recording` streams its audio window by window: mono downmix (the mean of the
   channels), resampling to the model's rate with :meth:`resample.Resampler.window` (only the input
   samples a window needs are read), windows of ``window_seconds`` (default: the model's clip
   length) every ``hop_seconds`` (default: the window). No window runs past the end: the last one
   is moved back to end at the recording's end; only a recording shorter than one clip is
   zero-padded (``Recording.padding_seconds``). Non-finite samples and samples beyond
   ``MAX_ABS_SAMPLE`` (2.0) are refused, naming the window.
2. Each clip-length piece of a window goes through the float log-mel front end
   (``frontend.tflite``, waveform ``[1, clip_samples]`` in) and the int8 classifier
   (``model_int8.tflite``, batch 1); the classifier's int8/uint8 input and output are
   (de)quantized with the scales in the interpreter's tensor details.
3. A piece's probabilities are the softmax of the classifier's logits (float64). A window's are
   the weighted mean over its pieces, a recording's the weighted mean over its windows, where
   every sample counts once (overlapping windows share the samples they both cover:
   ``Recording.weights()``). :func:`predict` returns the recordings' probabilities;
   :func:`predict_windows` yields the per-window rows.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .recording import (
    MAX_ABS_SAMPLE,
    MAX_SAMPLE_RATE,
    MAX_WINDOW_SECONDS,
    MIN_SAMPLE_RATE,
    InputError,
    Item,
    ModelSpec,
    Recording,
    WavSource,
    clip_pieces,
    coverage_weights,
    item_list,
    item_name,
    make_recording,
    open_wav,
    segment_starts,
)
from .wavfile import WavError, read_mono

logger = logging.getLogger(__name__)

MODEL_FILES = ("frontend.tflite", "model_int8.tflite", "model.json", "metrics.json", "complexity.json")
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
        raise ImportError(
            "asc_infer needs a TFLite interpreter: pip install 'asc-infer[litert]' "
            "(ai-edge-litert) or 'asc-infer[tf]' (tensorflow)"
        ) from None
    return tf.lite.Interpreter, "tensorflow.lite"


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


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
        # DCASE2025 device-specific classifiers (devices.json: ID -> file and figures); {} without any
        self.devices: dict = self._json("devices.json") if (self.folder / "devices.json").is_file() else {}
        self.device: str | None = None  # whose classifier this is: None = the general model
        self._num_threads = num_threads
        self._views: dict[str, Model] = {}
        self._told: set[str] = set()  # devices already reported as having no model of their own
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
            raise ValueError(
                f"{self.folder / 'frontend.tflite'} takes {int(self._fin['shape'][-1])} samples; "
                f"model.json says clip_samples={self.window_samples}"
            )
        if int(self._cout["shape"][-1]) != len(self.labels):
            raise ValueError(
                f"{self.folder / 'model_int8.tflite'} has {int(self._cout['shape'][-1])} outputs; "
                f"model.json lists {len(self.labels)} labels"
            )
        logger.info(
            "asc_infer: loaded %s (%d classes, %d Hz, %d-sample clips) with %s",
            self.folder,
            len(self.labels),
            self.sample_rate,
            self.window_samples,
            self.runtime,
        )

    def for_device(self, device_id: str | None) -> Model:
        """This model with ``device_id``'s own classifier (same front end), or ``self`` (the general model)
        when the package has none for it. IDs are compared in lower case (``"A"`` is ``"a"``)."""
        key = None if device_id is None else str(device_id).strip().lower()
        if key is None or key not in self.devices:
            return self
        if key not in self._views:
            interpreter, _ = _interpreter_class()
            path = self.folder / self.devices[key]["file"]
            if not path.is_file():
                raise FileNotFoundError(f"{self.folder / 'devices.json'} lists {path}, which does not exist")
            it = interpreter(model_path=str(path), num_threads=self._num_threads)
            it.allocate_tensors()
            view = copy.copy(self)
            view._classifier, view.device, view._views = it, key, {}
            view._cin, view._cout = it.get_input_details()[0], it.get_output_details()[0]
            if int(view._cout["shape"][-1]) != len(self.labels):
                raise ValueError(
                    f"{path} has {int(view._cout['shape'][-1])} outputs; model.json lists {len(self.labels)}"
                )
            self._views[key] = view
        return self._views[key]

    def _json(self, name: str) -> dict:
        path = self.folder / name
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None

    def __repr__(self) -> str:
        return (
            f"Model({str(self.folder)!r}, labels={len(self.labels)}, sample_rate={self.sample_rate}, "
            f"window_samples={self.window_samples}, runtime={self.runtime!r})"
        )

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
        """Probabilities (float64 ``[n_classes]``) of one window: softmax of the logits, weighted mean over its
        clip-length pieces (:func:`clip_pieces`: none past the window's end)."""
        pieces, weights = clip_pieces(window, self.window_samples)
        return weights @ np.stack([softmax(self.clip_logits(p)) for p in pieces])


def load_model(
    path: str | os.PathLike | None = None,
    *,
    num_threads: int | None = None,
    model_file_path: str | os.PathLike | None = None,
) -> Model:
    """Load a packaged model.

    Args:
      path: a model folder (holding ``model.json``, ``frontend.tflite``, ``model_int8.tflite``,
        ``metrics.json``, ``complexity.json``) or a package folder holding ``asc_infer/model/``;
        ``None``: the model bundled inside this installed package.
      num_threads: interpreter threads (``None``: the interpreter's default).
      model_file_path: ``path`` under the DCASE2025 API's name.

    Returns:
      a :class:`Model`.
    """
    path = path if path is not None else model_file_path
    folder = Path(path) if path is not None else Path(__file__).resolve().parent / "model"
    if not (folder / "model.json").is_file() and (folder / "asc_infer" / "model" / "model.json").is_file():
        folder = folder / "asc_infer" / "model"
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    return Model(folder, num_threads=num_threads)


# --------------------------------------------------------------------------- the inputs


def load_inputs(
    items: Item | Iterable[Item] | None = None,
    model: Model | Sequence[str] | None = None,
    model_or_none: Model | None = None,
    *,
    device_ids: Sequence[str | None] | None = None,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    file_paths: Item | Iterable[Item] | None = None,
) -> list[Recording]:
    """Open recordings lazily (headers only).

    Also callable as the DCASE2025 API's ``load_inputs(file_paths, device_ids, model)``: a list of
    strings in second place is taken as the device IDs.

    Args:
      items: one WAV path (``str`` or ``os.PathLike``) or the bytes of one whole WAV file
        (``bytes``, ``bytearray``, ``memoryview``), or a list of those.
      model: the model whose rate and clip length set the windowing; ``None``: the bundled model's
        ``model.json`` (read without loading an interpreter).
      model_or_none: the model, in the DCASE2025 argument order.
      device_ids: one device ID (or None) per item, kept on each :class:`Recording` (``device``) for
        :func:`predict`.
      file_paths: ``items`` under the DCASE2025 API's name (``load_inputs(file_paths=..., device_ids=...,
        model=...)``).
      window_seconds: window length (default: the model's clip length); at most
        :data:`MAX_WINDOW_SECONDS`.
      hop_seconds: hop between window starts (default: the window length); at most
        :data:`MAX_WINDOW_SECONDS`.

    Returns:
      one :class:`Recording` per item, in order (a list of one for a single item).

    Raises:
      InputError: an item cannot be read (names the item and the reason): not a regular file,
        not a supported WAV, a sample rate outside ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``.
      ValueError: a bad window or hop (not a number, not positive, over the limit).
      TypeError: an item that is neither a path nor bytes.
    """
    items = items if items is not None else file_paths
    if items is None:
        raise TypeError("load_inputs: give the inputs (items or file_paths)")
    if model is not None and not hasattr(model, "sample_rate"):
        device_ids, model = model, model_or_none  # load_inputs(file_paths, device_ids, model)
    elif model is None and model_or_none is not None:
        model = model_or_none  # load_inputs(file_paths, None, model)
    spec = model if model is not None else ModelSpec.of_folder(Path(__file__).resolve().parent / "model")
    listed = item_list(items)
    devices = _device_list(device_ids, len(listed))
    out = []
    for i, item in enumerate(listed):
        name = item_name(item, i)
        rec = make_recording(name, open_wav(item, name), spec, window_seconds=window_seconds, hop_seconds=hop_seconds)
        rec.device = devices[i]
        out.append(rec)
    return out


def _device_list(device_ids, n: int) -> list[str | None]:
    if device_ids is None:
        return [None] * n
    if isinstance(device_ids, str):
        raise TypeError(f"device_ids: expected one ID per input (a list), got the string {device_ids!r}")
    ids = list(device_ids)
    if len(ids) != n:
        raise ValueError(f"device_ids: {len(ids)} ID(s) for {n} input(s)")
    return [None if d is None else str(d) for d in ids]


TAU_NAME = re.compile(r"^[a-z_]+-[a-z]+-\d+-\d+-\d+-([abc]|s\d+)\.(wav|flac|ogg)$", re.IGNORECASE)


def device_from_filename(name: str | os.PathLike) -> str | None:
    """The device of a file named as TAU names them, ``<scene>-<city>-<location>-<segment>-<index>-<device>``
    (``airport-lisbon-1000-40000-0-s1.wav`` -> ``s1``), or None for any other name (``interview-a.wav``)."""
    m = TAU_NAME.match(os.path.basename(os.fspath(name)))
    return m.group(1).lower() if m else None


def get_model_for_device(model: Model, device_id: str | None) -> Model:
    """The DCASE2025 API: the model that classifies recordings of ``device_id``: the package's own model for
    that device, else the general model (an unknown device, ``"unknown"``, None), which it says (log)."""
    chosen = model.for_device(device_id)
    if device_id is not None and chosen is model and model.devices and str(device_id) not in model._told:
        model._told.add(str(device_id))  # once per device, not once per file
        logger.info("asc_infer: device %r has no model of its own: the general model", device_id)
    return chosen


# --------------------------------------------------------------------------- prediction


def predict_windows(
    model: Model, recording: Recording, score: Callable[[np.ndarray], np.ndarray] | None = None
) -> Iterator[tuple[float, np.ndarray]]:
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


def predict(
    model: Model | Item | Sequence[Item] | None = None,
    inputs: Recording | Item | Sequence[Recording | Item] | Sequence[str | None] | None = None,
    model_file_path: str | os.PathLike | None = None,
    *,
    device_ids: Sequence[str | None] | None = None,
    file_paths: Item | Sequence[Item] | None = None,
    **_ignored,
):
    """Class probabilities of each input: the weighted mean of its windows' probabilities.

    Every sample of a recording counts once (``Recording.weights()``): with the default windowing
    the windows weigh the same, except that a last window moved back to end at the recording's
    end and its neighbour share the samples they both cover. A recording with a device ID (its
    ``device``, or ``device_ids``) runs through that device's own model when the package has one.

    Two call forms:

    * ``predict(model, inputs, device_ids=None)`` -> float64 ``[n_inputs, n_classes]`` probabilities
      (columns in ``model.labels`` order; rows sum to 1);
    * the DCASE2025 API, ``predict(file_paths, device_ids=None, model_file_path=None)`` (positional or
      by those names; other keywords of the official harness, e.g. ``use_cuda``, are accepted and
      ignored) -> ``(logits, class_order)``: float32 ``[n_files, n_classes]`` logits, the log of each
      file's probabilities (for a one-clip file the classifier's logits up to a constant; softmax gives
      the probabilities), and the class names in column order; the packaged model unless
      ``model_file_path``.

    Raises:
      ValueError: ``device_ids`` does not hold one ID per input.
    """
    if file_paths is not None or not hasattr(model, "window_probabilities"):  # the DCASE2025 form
        paths = file_paths if file_paths is not None else model
        if paths is None:
            raise TypeError("predict: give a model and inputs, or file_paths")
        ids = inputs if device_ids is None else device_ids
        loaded = load_model(model_file_path)
        probs = _probabilities(loaded, paths, ids)
        return np.log(np.clip(probs, 1e-30, None)).astype(np.float32), list(loaded.labels)
    return _probabilities(model, inputs, device_ids)


def _probabilities(model: Model, inputs, device_ids) -> np.ndarray:
    items = [inputs] if isinstance(inputs, Recording) else item_list(inputs)
    devices = _device_list(device_ids, len(items))
    rows = []
    for i, item in enumerate(items):
        rec = (
            item
            if isinstance(item, Recording)
            else make_recording(item_name(item, i), open_wav(item, item_name(item, i)), model)
        )
        device = devices[i] if devices[i] is not None else rec.device
        chosen = get_model_for_device(model, device) if device is not None else model
        probs = np.stack([p for _, p in predict_windows(chosen, rec)])
        rows.append(rec.weights() @ probs)
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
    "MAX_ABS_SAMPLE",
    "MAX_SAMPLE_RATE",
    "MAX_WINDOW_SECONDS",
    "MIN_SAMPLE_RATE",
    "InputError",
    "Model",
    "Recording",
    "WavError",
    "WavSource",
    "check_complexity",
    "clip_pieces",
    "complexity",
    "coverage_weights",
    "device_from_filename",
    "get_model_for_device",
    "load_inputs",
    "load_model",
    "make_recording",
    "open_wav",
    "predict",
    "predict_windows",
    "read_mono",
    "segment_starts",
    "softmax",
]
