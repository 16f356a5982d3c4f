"""Impulse responses from WAV files: the measured device responses of :mod:`augment.device_response`.

A folder of WAV files (MicIRP's 66 microphone impulse responses, or the user's measurements) is
read recursively with the project's one WAV reader and resampled with its one resampler; each
response is cut to ``max_samples`` and faded out over its tail. Files that cannot be used are
listed together in one :class:`ImpulseResponseError`, each with its problem.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pipeline.core.errors import ProblemsError
from pipeline.inference.asc_infer import wavfile
from pipeline.inference.asc_infer.resample import Resampler

logger = logging.getLogger("augment.device_response")


class ImpulseResponseError(ProblemsError):
    """Impulse-response files that cannot be used; the message names each file and its problem."""

    def __init__(self, folder, problems: list[str]):
        super().__init__(f"impulse responses in {folder}", problems)


def fade_out(ir: np.ndarray) -> np.ndarray:
    """``ir`` with a half-cosine fade over its last ``min(256, len // 8)`` samples."""
    n = min(256, len(ir) // 8)
    if n == 0:
        return ir
    ramp = 0.5 * (1.0 + np.cos(np.pi * (np.arange(1, n + 1) / n)))  # (1, 0], ends at 0
    out = ir.copy()
    out[-n:] *= ramp
    return out


def read_impulse_response(path, sample_rate: int) -> np.ndarray:
    """One impulse response from a WAV file, float64 ``[n]`` at ``sample_rate``.

    Read with the project's one WAV reader (:mod:`pipeline.inference.asc_infer.wavfile`: PCM 16/24/32-bit,
    float 32/64-bit, scaled to [-1, 1]); empty, non-WAV, truncated and unreadable files (and the
    encodings it refuses, such as 8-bit PCM) are rejected. Resampled to ``sample_rate`` with the
    project's one resampler (:class:`pipeline.inference.asc_infer.resample.Resampler`: output sample 0 on
    input sample 0, so the onset stays in place). Several channels only when identical: different
    channels are different responses, and which one to use is the user's choice.

    Args:
      path: the WAV file.
      sample_rate: the rate of the returned response (Hz).

    Returns:
      float64 ``[n]``.

    Raises:
      ValueError: saying what is wrong (the caller adds the file name).
      OSError: the file cannot be opened.
    """
    path = os.fspath(path)
    try:
        info = wavfile.read_info(path)
        samples = wavfile.read_frames(path, info).astype(np.float64)  # [frames, channels]
    except wavfile.WavError as exc:
        raise ValueError("empty file" if str(exc) == "empty file" else f"unreadable WAV file ({exc})") from None
    if not np.all(np.isfinite(samples)):
        raise ValueError("non-finite samples (NaN or inf)")
    channels = samples.shape[1]
    if channels > 1:
        spread = np.max(np.abs(samples - samples[:, :1]))
        if spread > 1e-6 * max(np.max(np.abs(samples)), 1e-30):
            raise ValueError(
                f"{channels} channels that differ (an impulse response file must be mono, or its "
                f"channels identical); split it into one mono file per channel"
            )
    ir = samples[:, 0]
    if not np.any(ir):
        raise ValueError("silent: every sample is 0")
    if info.sample_rate != sample_rate:
        ir = Resampler(info.sample_rate, sample_rate)(ir).astype(np.float64)
    return ir


def load_impulse_responses(folder, sample_rate: int, max_samples: int):
    """The bank of impulse responses of the WAV files below ``folder``.

    Every ``*.wav`` (any case) below ``folder``, recursively, sorted by path, is read with
    :func:`read_impulse_response` at ``sample_rate``; responses longer than ``max_samples`` are
    cut to their first ``max_samples`` samples with a short half-cosine fade-out. Levels are
    kept as measured.

    Returns:
      ``(bank, names)``: float32 ``[N, L]`` (zero-padded to the longest response, ``L <=
      max_samples``) and the N file paths relative to ``folder``.

    Raises:
      ImpulseResponseError: the folder does not exist, holds no WAV file, or some files cannot
        be used (every bad file listed with its problem).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImpulseResponseError(folder, [f"{folder} does not exist or is not a folder"])
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if not paths:
        raise ImpulseResponseError(folder, [f"no .wav file in {folder} (searched recursively)"])
    problems, irs, trimmed = [], [], 0
    for path in paths:
        try:
            ir = read_impulse_response(path, sample_rate)
        except (ValueError, OSError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        if len(ir) > max_samples:
            ir, trimmed = fade_out(ir[:max_samples]), trimmed + 1
        irs.append(ir)
    if problems:
        raise ImpulseResponseError(folder, problems)
    length = max(len(ir) for ir in irs)
    bank = np.zeros((len(irs), length), np.float32)
    for row, ir in zip(bank, irs, strict=True):
        row[: len(ir)] = ir
    logger.info(
        "device responses: %d impulse responses from %s (%d cut to %d samples)", len(irs), folder, trimmed, max_samples
    )
    return bank, [os.fspath(p.relative_to(folder)) for p in paths]
