"""Mono 24-bit PCM WAV output (the format of TAU22), written with the stdlib :mod:`wave`."""

from __future__ import annotations

import os
import sys
import wave

import numpy as np

from pipeline.core.files import atomic_path

_FULL_SCALE = 2**23 - 1


def _wav_bytes(y: np.ndarray) -> bytes:
    """Float samples in [-1, 1] -> 24-bit PCM frames in the byte order ``wave`` expects."""
    q = np.round(np.clip(y, -1.0, 1.0) * _FULL_SCALE).astype("<i4")
    frames = q.view(np.uint8).reshape(-1, 4)[:, :3]  # the low three bytes, little-endian
    if sys.byteorder == "big":  # wave byte-swaps native-order samples on big-endian hosts
        frames = frames[:, ::-1]
    return frames.tobytes()


def write_wav24(path: str | os.PathLike, y: np.ndarray, sr: int) -> None:
    """Write a mono 24-bit PCM WAV file atomically (temporary name, then rename).

    Args:
      path: the destination file.
      y: float samples; values are clipped to [-1, 1] and 1.0 maps to 2**23 - 1.
      sr: the sampling rate in Hz.
    """
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(sr)
        w.writeframes(_wav_bytes(y))
