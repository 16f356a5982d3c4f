"""A band-limited polyphase resampler (Kaiser-windowed sinc), NumPy only.

Design. The ratio is reduced to ``up / down = target / gcd, orig / gcd``. Output sample ``n``
lies at input time ``n * down / up`` (output sample 0 on input sample 0, as soxr and librosa
align them); the signal is zero outside ``[0, n_in)`` and the output has
``ceil(n_in * up / down)`` samples. Output block ``m`` (samples ``m*up .. m*up + up - 1``) needs
the input samples ``m*down - pad_left .. m*down - pad_left + frame_len - 1``, so the whole
resampler is one framed matrix product::

    frames[m, j] = x[m*down - pad_left + j]                      [blocks, frame_len]
    y[m*up + p]  = (frames @ matrix)[m, p]                        matrix: [frame_len, up]
    matrix[j, p] = h(p*down/up + pad_left - j)                    (the polyphase taps)
    h(t)         = 2 fc sinc(2 fc t) * kaiser(t / half_width)     (t in input samples)

with the cut-off ``fc = ROLLOFF * min(orig, target) / 2`` (in Hz; divided by ``orig`` above),
``ZERO_CROSSINGS`` zero crossings of the sinc on each side and a Kaiser window of
``KAISER_BETA``. Each column of ``matrix`` is normalised to sum 1 (DC gain exactly 1 on every
phase). The same ``matrix`` is applied by tf.data (``pipeline.data.inputs``) with ``tf.signal.frame``
and ``tf.matmul``. When the reduced ``up`` is below ``MIN_BLOCK`` (64), ``up`` and ``down`` are
both multiplied by ``ceil(MIN_BLOCK / up)`` (22.05 kHz -> 44.1 kHz: 64/32, not 2/1): the same
filter, but a wider matrix product, which BLAS and ``tf.matmul`` run much faster.

Quality (measured by ``tests/test_resample.py`` on 1-s inputs at 48, 22.05 and 16 kHz resampled
to 44.1 kHz, 200 edge samples left out at each end; its docstring has the table): against the
exact sine, every tone up to 0.9 x the lower Nyquist frequency comes out with an SNR of 98 dB or
more (113 dB or more up to 0.5 x Nyquist). Against ``soxr.resample(..., quality="HQ")``: 113 dB
or more up to 0.5 x Nyquist; above that the difference is soxr HQ's own pass-band roll-off (soxr
against the exact sine: 74 dB at 0.8, 62 dB at 0.9 x Nyquist); noise band-limited to 0.8 x
Nyquist: 88.6 dB or more. Stop band: a tone between 22.05 and 24 kHz in a 48 kHz input is
attenuated by 100 dB or more; images of up-sampling lie 111 dB or more below the tone. DC gain
is 1 (every phase's taps sum to 1). Cost: ``frame_len * up`` multiply-adds per block, ``orig /
down`` blocks per second of input; for 48 kHz -> 44.1 kHz: up=147, down=160, frame_len=308,
13.6 M multiply-adds per second of audio.

Limit: ``up`` (the reduced target rate) at most ``MAX_UP`` = 4096 (the matrix has
``frame_len * up`` floats). Every pair of the common rates 8, 11.025, 16, 22.05, 24, 32, 44.1,
48, 88.2, 96 and 192 kHz to 16, 32, 44.1 or 48 kHz is within it (the largest: 11.025 kHz ->
32 kHz, up=1280). Two rates with a small common divisor (e.g. 44.1 kHz -> 44.056 kHz, up=11014)
are refused with a ValueError naming both rates, and so is a ratio whose matrix would hold more than
``MAX_TAPS`` = 4 M taps (an input rate with a large reduced ``down``, e.g. 383,988 Hz -> 44.1 kHz:
3,675/31,999, 122 M taps; the largest common pair, 11.025 kHz -> 32 kHz, needs 0.74 M).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

ROLLOFF = 0.95  # cut-off (-6 dB) as a fraction of the lower Nyquist frequency
ZERO_CROSSINGS = 64  # zero crossings of the windowed sinc on each side of its centre
KAISER_BETA = 10.0  # Kaiser window shape (about 100 dB stop-band for this length)
MAX_UP = 4096  # largest reduced target rate accepted
MAX_TAPS = 4_000_000  # largest polyphase matrix accepted (16 MB of float32): bounds memory and design time
MIN_BLOCK = 64  # a block holds at least this many output samples (a wider, cheaper matrix product)
CHUNK_OUTPUT = 32768  # output samples computed per matrix product (bounds memory on long inputs)

Reader = Callable[[int, int], np.ndarray]


def _check_rate(name: str, rate) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate < 1:
        raise ValueError(f"{name} must be a positive integer (Hz), got {rate!r}")
    return int(rate)


def _design(up: int, down: int) -> tuple[np.ndarray, int]:
    """The polyphase matrix float32 ``[frame_len, up]`` and ``pad_left`` for a reduced ratio."""
    fc = ROLLOFF * min(up, down) / (2.0 * down)  # cut-off in cycles per input sample
    half_width = ZERO_CROSSINGS / (2.0 * fc)  # input samples on each side of the centre
    pad_left = math.ceil(half_width)
    frame_len = down + 2 * pad_left
    j = np.arange(frame_len, dtype=np.float64)[:, None]
    p = np.arange(up, dtype=np.float64)[None, :]
    t = (p * down + (pad_left - j) * up) / up  # [frame_len, up]: time from input sample to output sample
    inside = np.abs(t) <= half_width
    ratio = np.clip(t / half_width, -1.0, 1.0)
    window = np.i0(KAISER_BETA * np.sqrt(1.0 - ratio**2)) / np.i0(KAISER_BETA)
    taps = np.where(inside, 2.0 * fc * np.sinc(2.0 * fc * t) * window, 0.0)
    taps /= taps.sum(axis=0, keepdims=True)  # DC gain 1 on every phase
    return taps.astype(np.float32), pad_left


class Resampler:
    """Resample 1-D float32 signals from ``orig_rate`` to ``target_rate`` (identity when equal).

    Attributes:
      orig_rate, target_rate: the rates (Hz).
      up, down: output and input samples per block: the reduced ratio ``target / gcd``,
        ``orig / gcd``, both multiplied by ``ceil(MIN_BLOCK / up)`` when the reduced ``up`` is
        below ``MIN_BLOCK`` (22.05 kHz -> 44.1 kHz: 64/32 rather than 2/1; the same filter, a
        wider matrix product that BLAS and ``tf.matmul`` run much faster).
      matrix: float32 ``[frame_len, up]``, the polyphase taps (``[[1.0]]`` for the identity).
      pad_left: zeros placed before input sample 0 (the filter's half width, in input samples).
      frame_len: input samples per block (``down + 2 * pad_left``).

    Raises:
      ValueError: a rate is not a positive integer, or ``up`` exceeds ``MAX_UP`` (names both rates).
    """

    def __init__(self, orig_rate: int, target_rate: int):
        self.orig_rate = _check_rate("orig_rate", orig_rate)
        self.target_rate = _check_rate("target_rate", target_rate)
        g = math.gcd(self.orig_rate, self.target_rate)
        up, down = self.target_rate // g, self.orig_rate // g
        if up > MAX_UP:
            raise ValueError(
                f"cannot resample {self.orig_rate} Hz -> {self.target_rate} Hz: the reduced ratio "
                f"{up}/{down} needs {up} filter phases (at most {MAX_UP})"
            )
        self.identity = up == down
        group = 1 if self.identity else -(-MIN_BLOCK // up)  # blocks of >= MIN_BLOCK outputs
        self.up, self.down = up * group, down * group
        if not self.identity:
            fc = ROLLOFF * min(self.up, self.down) / (2.0 * self.down)
            taps = (self.down + 2 * math.ceil(ZERO_CROSSINGS / (2.0 * fc))) * self.up  # the matrix, before building it
            if taps > MAX_TAPS:
                raise ValueError(
                    f"cannot resample {self.orig_rate} Hz -> {self.target_rate} Hz: the reduced ratio "
                    f"{up}/{down} needs a filter of {taps:,} taps (at most {MAX_TAPS:,})"
                )
        if self.identity:
            self.matrix, self.pad_left = np.ones((1, 1), np.float32), 0
        else:
            self.matrix, self.pad_left = _design(self.up, self.down)
        self.frame_len = int(self.matrix.shape[0])
        self._chunk_blocks = max(1, CHUNK_OUTPUT // self.up)

    def __repr__(self) -> str:
        return (
            f"Resampler({self.orig_rate} -> {self.target_rate} Hz, up={self.up}, down={self.down}, "
            f"frame_len={self.frame_len})"
        )

    def output_length(self, n_in: int) -> int:
        """Output samples for ``n_in`` input samples: ``ceil(n_in * target / orig)``."""
        if isinstance(n_in, bool) or not isinstance(n_in, (int, np.integer)) or n_in < 0:
            raise ValueError(f"n_in must be an integer >= 0, got {n_in!r}")
        return -(-int(n_in) * self.up // self.down)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Resample a whole signal.

        Args:
          x: 1-D ``[n_in]`` samples (converted to float32).

        Returns:
          float32 ``[output_length(n_in)]``.
        """
        x = np.asarray(x)
        if x.ndim != 1:
            raise ValueError(f"Resampler expects a 1-D signal, got shape {x.shape}")
        x = x.astype(np.float32, copy=False)
        if self.identity:
            return x.copy()
        return self.window(lambda a, b: x[a:b], len(x), 0, self.output_length(len(x)))

    def window(self, read: Reader, n_in: int, out_start: int, out_count: int) -> np.ndarray:
        """Outputs ``[out_start, out_start + out_count)`` (clipped to the output length), streaming.

        Args:
          read: ``read(start, stop)`` returns the input samples ``x[start:stop]``
            (``0 <= start <= stop <= n_in``); samples outside ``[0, n_in)`` count as zeros.
          n_in: the input length.
          out_start, out_count: the output range wanted (integers >= 0).

        Returns:
          float32 ``[n]``, equal (bit for bit) to ``self(x)[out_start:out_start + out_count]``:
          both compute the same fixed chunks of ``CHUNK_OUTPUT // up`` blocks, so only the input
          of the chunks overlapping the window is read and memory stays bounded.
        """
        for name, value in (("n_in", n_in), ("out_start", out_start), ("out_count", out_count)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        n_out = self.output_length(n_in)
        start, stop = min(int(out_start), n_out), min(int(out_start) + int(out_count), n_out)
        if start >= stop:
            return np.zeros(0, np.float32)
        if self.identity:
            return self._read(read, start, stop)
        total_blocks = -(-n_out // self.up)
        first_chunk = (start // self.up) // self._chunk_blocks
        last_chunk = ((stop - 1) // self.up) // self._chunk_blocks
        parts = []
        for c in range(first_chunk, last_chunk + 1):
            b0 = c * self._chunk_blocks
            b1 = min(b0 + self._chunk_blocks, total_blocks)
            y = self._blocks(read, n_in, b0, b1)  # outputs [b0*up, b1*up)
            lo, hi = max(start, b0 * self.up), min(stop, b1 * self.up)
            parts.append(y[lo - b0 * self.up : hi - b0 * self.up])
        return np.concatenate(parts)

    @staticmethod
    def _read(read: Reader, start: int, stop: int) -> np.ndarray:
        got = np.asarray(read(start, stop), dtype=np.float32).reshape(-1)
        if len(got) != stop - start:
            raise ValueError(f"read({start}, {stop}) returned {len(got)} samples, expected {stop - start}")
        return got

    def _blocks(self, read: Reader, n_in: int, b0: int, b1: int) -> np.ndarray:
        """Output samples of blocks ``[b0, b1)``: float32 ``[(b1 - b0) * up]``."""
        lo = b0 * self.down - self.pad_left  # input index of frames[b0, 0]
        hi = (b1 - 1) * self.down + self.frame_len - self.pad_left
        buf = np.zeros(hi - lo, np.float32)
        a, b = max(lo, 0), min(hi, n_in)
        if a < b:
            buf[a - lo : b - lo] = self._read(read, a, b)
        frames = np.lib.stride_tricks.as_strided(
            buf, shape=(b1 - b0, self.frame_len), strides=(self.down * buf.itemsize, buf.itemsize), writeable=False
        )
        return (np.ascontiguousarray(frames) @ self.matrix).reshape(-1)  # [blocks, up] -> [blocks * up]
