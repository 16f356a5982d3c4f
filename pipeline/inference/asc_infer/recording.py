"""Recordings as the model sees them: opened lazily, checked, cut into windows that never run past the end.

The rules (the package, ``python -m pipeline.predict`` and the served model share them):

* **Sample rates** from :data:`MIN_SAMPLE_RATE` (1 kHz) to :data:`MAX_SAMPLE_RATE` (384 kHz) are
  accepted; any other rate is refused from the header, before anything is allocated.
* **Windows** of ``window_samples`` every ``hop_samples`` (at the model's rate) start at 0, H, 2H,
  ... A window that would run past the end of the recording is moved back to end at the
  recording's end (it overlaps its neighbour), so no window or part of a window lies past the
  end: ``1 + ceil((samples - window) / hop)`` windows, or one window holding the whole recording
  when it is shorter than a window (that window is then shorter than ``window_samples``).
  The window lies between the model's clip and :data:`MAX_WINDOW_SECONDS` (a shorter window would
  have to be padded), the hop between :data:`MIN_HOP_SECONDS` and :data:`MAX_WINDOW_SECONDS`.
* **Pieces**: the model scores clips of ``clip_samples``; a window is cut into clip-length pieces
  by the same rule (:func:`clip_pieces`). Only a recording shorter than one clip is zero-padded,
  and :attr:`Recording.padding_seconds` says by how much.
* **Weights**: windows (and pieces) may overlap, so a mean over them would count the overlap twice.
  Every sample of the recording counts once instead: each sample's weight is shared equally
  among the windows that cover it (:func:`coverage_weights`). A recording's probabilities are the
  weighted mean of its windows' probabilities. With the default windowing (hop = window) the
  windows weigh the same, except that the moved-back last window and its neighbour share the
  samples they both cover (2.5 s in 1-s windows: weights 1, 0.75, 0.75, over 2.5).
* **Samples**: every sample read must be finite and within :data:`MAX_ABS_SAMPLE` of zero, in
  every channel before the downmix (+1e30 and -1e30 do not cancel); a float recording beyond that
  (e.g. 1e30) is refused, naming the window and the peak.
"""

from __future__ import annotations

import math
import numbers
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .resample import Resampler
from .wavfile import WavError, read_frames, read_info, read_mono

MIN_SAMPLE_RATE = 1_000  # Hz: the lowest input rate accepted
MAX_SAMPLE_RATE = 384_000  # Hz: the highest input rate accepted (the fastest common audio interfaces)
MAX_WINDOW_SECONDS = 600.0  # the longest window or hop: a window is held in memory whole (26.5 M samples at 44.1 kHz)
MAX_ABS_SAMPLE = 2.0  # |sample| above this (+6 dB over full scale) is not audio scaled to [-1, 1]: refused
MIN_HOP_SECONDS = 0.01  # the shortest hop: bounds the number of windows (360,000 per hour)

Item = Union[str, os.PathLike, bytes, bytearray, memoryview]  # noqa: UP007 - a runtime alias


class LoudSamples(ValueError):
    """Samples in a source's range that are not finite or beyond :data:`MAX_ABS_SAMPLE` (before any downmix)."""

    def __init__(self, peak: float, non_finite: int):
        super().__init__(f"peak {peak:.3g}, {non_finite} non-finite")
        self.peak, self.non_finite = peak, non_finite


def check_samples(frames: np.ndarray) -> None:
    """Raise :class:`LoudSamples` when ``frames`` (any shape, all channels) hold NaN, inf or a peak over the limit."""
    finite = np.isfinite(frames)
    bad = int(frames.size - finite.sum())
    peak = float(np.abs(np.where(finite, frames, 0)).max()) if frames.size else 0.0
    if bad or peak > MAX_ABS_SAMPLE:
        raise LoudSamples(peak, bad)


class InputError(ValueError):
    """A recording cannot be read; ``item`` names it, ``reason`` says why."""

    def __init__(self, item: str, reason: str):
        super().__init__(f"{item}: {reason}")
        self.item = item
        self.reason = reason


# --------------------------------------------------------------------------- windows, pieces, weights


def segment_starts(total: int, length: int, hop: int) -> np.ndarray:
    """Starts of the windows of ``length`` every ``hop`` over ``total`` samples, none past the end.

    Args:
      total: samples in the signal (>= 1).
      length: window length (>= 1).
      hop: hop between window starts (>= 1).

    Returns:
      int64 ``[n]``: ``0, hop, 2 hop, ...`` with the last one moved back to ``total - length``;
      ``[0]`` when ``total <= length`` (one window holding the whole signal).
    """
    if total <= length:
        return np.zeros(1, np.int64)
    n = 1 + -(-(total - length) // hop)
    starts = np.arange(n, dtype=np.int64) * hop
    starts[-1] = total - length
    return starts


def coverage_weights(starts: np.ndarray, length: int, total: int) -> np.ndarray:
    """Weights of windows ``[s, s + length)`` such that every covered sample counts once.

    Each sample's weight (1) is shared equally among the windows that cover it; a window's weight
    is the sum of its shares. The weights are normalised to sum 1 (samples no window covers, when
    the hop exceeds the window, count for nothing).

    Args:
      starts: int ``[n]``, increasing window starts.
      length: window length; windows are clipped to ``[0, total)``.
      total: samples in the signal.

    Returns:
      float64 ``[n]``, summing to 1.
    """
    starts = np.asarray(starts, np.int64)
    ends = np.minimum(starts + length, total)
    if len(starts) == 1:
        return np.ones(1)
    bounds = np.unique(np.concatenate([starts, ends]))
    a, b = bounds[:-1], bounds[1:]
    first = np.searchsorted(ends, a, side="right")  # first window whose end lies beyond a
    last = np.searchsorted(starts, a, side="right") - 1  # last window starting at or before a
    count = last - first + 1
    covered = count > 0
    share = np.where(covered, (b - a) / np.maximum(count, 1), 0.0)
    diff = np.zeros(len(starts) + 1)
    np.add.at(diff, first[covered], share[covered])
    np.add.at(diff, last[covered] + 1, -share[covered])
    weights = np.cumsum(diff)[:-1]
    return weights / weights.sum()


def clip_pieces(window: np.ndarray, clip_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut one window into clip-length pieces, none past its end, and weigh them.

    Args:
      window: float32 ``[n]`` waveform at the model's rate (``n >= 1``).
      clip_samples: the model's input length.

    Returns:
      ``(pieces, weights)``: float32 ``[k, clip_samples]`` (starts by :func:`segment_starts` with
      hop = clip; a window shorter than one clip gives one zero-padded piece) and float64 ``[k]``
      (:func:`coverage_weights`, summing to 1).
    """
    window = np.asarray(window, np.float32).reshape(-1)
    n = len(window)
    if n < clip_samples:
        out = np.zeros((1, clip_samples), np.float32)
        out[0, :n] = window
        return out, np.ones(1)
    starts = segment_starts(n, clip_samples, clip_samples)
    pieces = np.stack([window[s : s + clip_samples] for s in starts])
    return pieces, coverage_weights(starts, clip_samples, n)


# --------------------------------------------------------------------------- sources


class WavSource:
    """A WAV file (path or bytes) read lazily: ``sample_rate``, ``frames``, ``channels``, ``read(start, stop)``."""

    def __init__(self, source: Item):
        if isinstance(source, memoryview):
            source = source.tobytes()
        self.source = source if isinstance(source, (bytes, bytearray)) else os.fspath(source)
        if not isinstance(self.source, (bytes, bytearray)):
            check_regular_file(self.source)
        self.info = read_info(self.source)
        self.sample_rate = int(self.info.sample_rate)
        self.frames = int(self.info.frames)
        self.channels = int(self.info.channels)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Mono float32 samples ``[start, stop)`` (mean of the channels), each channel checked first.

        Raises:
          LoudSamples: a channel holds NaN, inf or a peak over :data:`MAX_ABS_SAMPLE`.
        """
        if self.channels == 1:
            mono = read_mono(self.source, self.info, start, max(0, stop - start))
            check_samples(mono)
            return mono
        frames = read_frames(self.source, self.info, start, max(0, stop - start))  # [n, channels]
        check_samples(frames)
        return frames.mean(axis=1, dtype=np.float32)


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_regular_file(path: str | os.PathLike) -> None:
    """Raise ``OSError`` (with ``strerror``) unless ``path`` is a regular file: a FIFO is never opened.

    Opening a FIFO blocks until a writer appears, so a pipe left in a folder of recordings would
    hang a reader forever; the kind of file is checked with ``stat`` first.
    """
    mode = os.stat(path).st_mode  # FileNotFoundError, PermissionError pass through
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "is a folder", str(path))
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise OSError(0, f"not a regular file ({kind})", str(path))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def check_rate(name: str, rate: int) -> None:
    """Raise :class:`InputError` for a sample rate outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(
            name,
            f"sample rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} "
            "Hz (a corrupt header, or not a recording)",
        )


# --------------------------------------------------------------------------- recordings


@dataclass
class Recording:
    """One input, streamed window by window at the model's rate (see the module doc for the rules).

    Attributes:
      name: how errors and outputs name it (the path, or ``<bytes #i>``).
      source: an object with ``sample_rate``, ``frames`` and ``read(start, stop) -> float32 mono``.
      sample_rate: the model's rate (Hz).
      window_samples, hop_samples: the windowing at the model's rate.
      clip_samples: the model's clip (the piece a window is cut into); default ``window_samples``.
      device: the recording device's ID (DCASE2025: ``a``, ``s1``, ...), or None; :func:`asc_infer.predict`
        runs it through that device's model when the package has one.
    """

    name: str
    source: Any
    sample_rate: int
    window_samples: int
    hop_samples: int
    clip_samples: int | None = None
    _resampler: Resampler | None = field(default=None, repr=False)
    _starts: np.ndarray | None = field(default=None, repr=False)
    device: str | None = None

    def __post_init__(self):
        if self.clip_samples is None:
            self.clip_samples = self.window_samples
        check_rate(self.name, int(self.source.sample_rate))
        if self.source.frames <= 0:
            raise InputError(self.name, "holds no audio frames")
        if self.source.sample_rate != self.sample_rate:
            try:
                self._resampler = Resampler(self.source.sample_rate, self.sample_rate)
            except ValueError as exc:
                raise InputError(
                    self.name, f"cannot resample {self.source.sample_rate} Hz to {self.sample_rate} Hz: {exc}"
                ) from exc
        self._starts = segment_starts(self.samples, self.window_samples, self.hop_samples)

    @property
    def seconds(self) -> float:
        """The recording's duration."""
        return self.source.frames / self.source.sample_rate

    @property
    def samples(self) -> int:
        """Its length at the model's rate."""
        if self._resampler is None:
            return int(self.source.frames)
        return int(self._resampler.output_length(self.source.frames))

    @property
    def window_length(self) -> int:
        """Samples in each window: ``window_samples``, or the whole recording when it is shorter."""
        return min(self.window_samples, self.samples)

    @property
    def padding_seconds(self) -> float:
        """Zero padding added to score it: only a recording shorter than one clip is padded."""
        return max(0, self.clip_samples - self.samples) / self.sample_rate

    def __len__(self) -> int:
        """The number of windows: ``1 + ceil((samples - window) / hop)``, or 1 for a short recording."""
        return len(self._starts)

    def start(self, i: int) -> int:
        """The first sample (at the model's rate) of window ``i``."""
        return int(self._starts[i])

    def bounds(self, i: int) -> tuple[float, float]:
        """Window ``i``'s start and end, in seconds."""
        start = self.start(i)
        return start / self.sample_rate, (start + self.window_length) / self.sample_rate

    def weights(self) -> np.ndarray:
        """float64 ``[len(self)]``: each window's share of the recording (every sample counts once; sums to 1)."""
        return coverage_weights(self._starts, self.window_length, self.samples)

    def window(self, i: int) -> np.ndarray:
        """Window ``i``: float32 ``[window_length]``, all of it recorded audio (finite, not over full scale)."""
        start, count = self.start(i), self.window_length
        where = f"window {i} (from {start / self.sample_rate:.2f} s)"
        try:
            if self._resampler is None:
                got = self.source.read(start, start + count)
            else:
                got = self._resampler.window(self.source.read, self.source.frames, start, count)
        except LoudSamples as exc:
            raise InputError(self.name, _loud(where, exc)) from exc
        except (WavError, OSError, ValueError) as exc:
            raise InputError(self.name, _reason(exc)) from exc
        got = np.asarray(got, np.float32).reshape(-1)
        if len(got) != count:
            raise InputError(self.name, f"window {i}: read {len(got)} samples, expected {count}")
        try:  # any source (soundfile's too); after resampling
            check_samples(got)
        except LoudSamples as exc:
            raise InputError(self.name, _loud(where, exc)) from exc
        return got

    def windows(self) -> Iterator[tuple[float, np.ndarray]]:
        """``(start_seconds, window)`` for every window, in order."""
        for i in range(len(self)):
            yield self.start(i) / self.sample_rate, self.window(i)


def _loud(where: str, exc: LoudSamples) -> str:
    if exc.non_finite:
        return f"{where}: {exc.non_finite} non-finite samples (NaN or inf)"
    return (
        f"{where}: samples far beyond full scale (peak {exc.peak:.3g}; at most {MAX_ABS_SAMPLE:g} is accepted, "
        "audio is scaled to [-1, 1])"
    )


def seconds_to_samples(seconds: float | None, default: float, rate: int, what: str) -> int:
    """A window or hop length in samples at ``rate``.

    Raises:
      ValueError: not a real number (``bool`` included), not finite, not positive, shorter than one
        sample or longer than :data:`MAX_WINDOW_SECONDS` (names ``what`` and the value).
    """
    value = default if seconds is None else seconds
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number of seconds, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    if value > MAX_WINDOW_SECONDS:
        raise ValueError(f"{what}={value:g} is longer than {MAX_WINDOW_SECONDS:g} seconds (the longest window or hop)")
    n = round(value * rate)
    if n < 1:
        raise ValueError(f"{what}={value!r} is shorter than one sample at {rate} Hz")
    return n


def make_recording(
    name: str, source: Any, model: Any, *, window_seconds: float | None = None, hop_seconds: float | None = None
) -> Recording:
    """A :class:`Recording` of any source with ``sample_rate``, ``frames`` and ``read(start, stop)`` (mono).

    Args:
      name: how errors name it.
      source: the source (e.g. :class:`WavSource`).
      model: anything with ``sample_rate``, ``window_seconds``, ``hop_seconds`` and optionally
        ``window_samples`` (its clip length).
      window_seconds, hop_seconds: the windowing (default: the model's; the hop defaults to the window).

    Raises:
      ValueError: a bad ``window_seconds`` or ``hop_seconds`` (see :func:`seconds_to_samples`), a
        window shorter than the model's clip or a hop shorter than :data:`MIN_HOP_SECONDS`.
      InputError: the source holds no frames or has a sample rate outside the supported range.
    """
    window = seconds_to_samples(window_seconds, model.window_seconds, model.sample_rate, "window_seconds")
    hop_default = (
        window / model.sample_rate if hop_seconds is None and window_seconds is not None else model.hop_seconds
    )
    hop = seconds_to_samples(hop_seconds, hop_default, model.sample_rate, "hop_seconds")
    clip = int(getattr(model, "window_samples", None) or window)
    if window < clip:
        raise ValueError(
            f"window_seconds={window / model.sample_rate:g} is shorter than the model's clip "
            f"({clip / model.sample_rate:g} s): every window would be zero-padded"
        )
    if hop_seconds is not None and hop < round(MIN_HOP_SECONDS * model.sample_rate):
        raise ValueError(f"hop_seconds={hop_seconds!r} is shorter than {MIN_HOP_SECONDS:g} seconds (the shortest hop)")
    return Recording(name, source, model.sample_rate, window, hop, clip_samples=clip)


def open_wav(item: Item, name: str | None = None) -> WavSource:
    """Read the header of one WAV item; errors become :class:`InputError` naming it."""
    if name is None:
        name = f"<{len(item)} bytes>" if isinstance(item, (bytes, bytearray, memoryview)) else os.fspath(item)
    try:
        return WavSource(item)
    except (WavError, OSError, ValueError) as exc:
        raise InputError(name, _reason(exc)) from exc


def item_list(items: Item | Iterable[Item]) -> list[Item]:
    """``items`` as a list: one path or one bytes-like object stands for itself, not for its characters."""
    if isinstance(items, (str, os.PathLike, bytes, bytearray, memoryview)):
        return [items]
    try:
        return list(items)
    except TypeError:
        raise TypeError(
            f"inputs must be a path, the bytes of a WAV file, or a list of those; got {type(items).__name__}"
        ) from None


def item_name(item: Item, i: int) -> str:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<bytes #{i}>"
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    raise TypeError(
        f"input #{i} is a {type(item).__name__}: expected a path (str or os.PathLike) or the bytes of a "
        "WAV file (bytes, bytearray, memoryview)"
    )


@dataclass
class ModelSpec:
    """The audio settings of a model folder without its interpreters (for :func:`load_inputs`)."""

    sample_rate: int
    window_seconds: float
    hop_seconds: float
    window_samples: int

    @classmethod
    def of_folder(cls, folder: Path) -> ModelSpec:
        import json

        path = Path(folder) / "model.json"
        if not path.is_file():
            raise FileNotFoundError(f"no bundled model ({path} is missing): pass load_inputs(..., model=...)")
        info = json.loads(path.read_text())
        rate = int(info["sample_rate"])
        window = float(info.get("window_seconds", int(info["clip_samples"]) / rate))
        return cls(rate, window, float(info.get("hop_seconds", window)), int(info["clip_samples"]))
