"""Signal helpers of the synthetic scenes: the rfft grid, filters, envelopes and event shapes."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import fft as sp_fft


@functools.lru_cache(maxsize=8)
def grid(sr: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rfft bin frequencies, their log2 relative to 1 kHz with DC clamped, sample times)."""
    f = sp_fft.rfftfreq(n, 1.0 / sr)
    oct_1k = np.log2(np.maximum(f, 10.0) / 1000.0)
    t = np.arange(n) / sr
    for a in (f, oct_1k, t):
        a.setflags(write=False)
    return f, oct_1k, t


def power(spec: np.ndarray, n: int) -> float:
    """Mean square of ``irfft(spec, n)`` from its spectrum (Parseval)."""
    mag2 = spec.real**2 + spec.imag**2
    total = 2.0 * mag2.sum() - mag2[0]
    if n % 2 == 0:
        total -= mag2[-1]
    return float(total) / (n * n)


def highpass(f: np.ndarray, fc: float, order: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(1.0 + (fc / np.maximum(f, 1e-3)) ** (2 * order))


def lowpass(f: np.ndarray, fc: float, order: int) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (f / fc) ** (2 * order))


def peak_db(oct_1k: np.ndarray, hz: float, gain_db: float, width_oct: float) -> np.ndarray:
    """A bell in dB on a log-frequency axis."""
    return gain_db * np.exp(-0.5 * ((oct_1k - math.log2(hz / 1000.0)) / width_oct) ** 2)


def curve(rng: np.random.Generator, n: int, seconds: float, per_second: float) -> np.ndarray:
    """A slow random curve in [-1, 1]: random knots, linearly interpolated."""
    k = int(math.ceil(per_second * seconds)) + 2
    knots = rng.uniform(-1.0, 1.0, k)
    return np.interp(np.linspace(0.0, k - 1.0, n), np.arange(k), knots)


def add_at(out: np.ndarray, start: int, sig: np.ndarray) -> None:
    """out[start:start + len(sig)] += sig, cut at both ends of ``out``."""
    a, b = max(start, 0), min(start + len(sig), len(out))
    if b > a:
        out[a:b] += sig[a - start : b - start]


def rms_normalise(x: np.ndarray) -> np.ndarray:
    rms = math.sqrt(float(np.mean(x * x)))
    return x / rms if rms > 0 else x


def harmonic(rng, n, sr, seconds, f0, n_harm, rolloff_db, jitter, glide) -> np.ndarray:
    """A harmonic tone with slow pitch wander (``jitter``) and a linear glide, RMS 1."""
    t = grid(sr, n)[2]
    inst = f0 * (1.0 + glide * (t / seconds - 0.5) + jitter * curve(rng, n, seconds, 3.0))
    phase = (2.0 * np.pi / sr) * np.cumsum(inst) + rng.uniform(0.0, 2.0 * np.pi)
    fmax = 0.45 * sr / float(inst.max())
    out = np.zeros(n)
    for h in range(1, max(1, int(round(n_harm))) + 1):
        if h > fmax:
            break
        amp = 10.0 ** (-rolloff_db * (h - 1) / 20.0) * rng.uniform(0.4, 1.0)
        out += amp * np.sin(h * phase + rng.uniform(0.0, 2.0 * np.pi))
    return rms_normalise(out)


def sweep(sr: int, inst: np.ndarray, partials: Sequence[tuple[float, float]], phase0: float) -> np.ndarray:
    """Sum of partials (ratio, amplitude) of an instantaneous-frequency track."""
    phase = (2.0 * np.pi / sr) * np.cumsum(inst) + phase0
    out = np.zeros(len(inst))
    top = 0.45 * sr
    for ratio, amp in partials:
        if ratio * float(inst.max()) < top:
            out += amp * np.sin(ratio * phase)
    return out


def damped(rng, sr, hz: float, tau_s: float, noise_s: float) -> np.ndarray:
    """A decaying resonance plus a short noise burst (footstep, slam, clack)."""
    length = max(int(5 * tau_s * sr), 8)
    t = np.arange(length) / sr
    sig = np.sin(2.0 * np.pi * hz * t + rng.uniform(0, 2 * np.pi)) * np.exp(-t / tau_s)
    m = max(int(noise_s * sr), 2)
    sig[:m] += rng.uniform(0.3, 1.0) * rng.standard_normal(m) * np.exp(-np.arange(m) / (m / 4.0))
    return sig / max(float(np.abs(sig).max()), 1e-12)


def event_count(rng, rate: float, seconds: float) -> int:
    return int(rng.poisson(rate * seconds)) if rate > 0 else 0
