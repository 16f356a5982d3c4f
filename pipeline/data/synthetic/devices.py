"""The nine recording devices of the synthetic set and how each one records a clean scene.

A: high-quality binaural in-ear microphones (nearly flat). B, C: phones. S1-S6: simulated
devices; the unseen S4-S6 lie further from the training devices than those do from each
other, so (as on TAU22) accuracy drops on them. Cut-offs in Hz (Butterworth-like
magnitudes of orders 4 and 8), tilt in dB/octave about 1 kHz, resonances (Hz, dB, width in
octaves), noise floor in dBFS with its tilt, gain in dB, automatic-gain-control knee in
multiples of the clip RMS (0 = none), electrical buzz (Hz, dBFS). Each device's response is
fixed; only the placement (+-1 dB), the self-noise and the buzz phase vary per clip.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft

from pipeline.data.synthetic import dsp

PEAK_DBFS = -1.0  # no sample above this level
_PEAK = 10.0 ** ((PEAK_DBFS - 0.1) / 20.0)  # 0.1 dB margin for rounding


@dataclass(frozen=True)
class Device:
    """One device's fixed response (units in the module docstring)."""

    low_cut_hz: float
    high_cut_hz: float
    tilt_db: float
    resonances: tuple
    noise_dbfs: float
    noise_tilt_db: float
    gain_db: float
    knee: float = 0.0
    buzz_hz: float = 0.0
    buzz_dbfs: float = -120.0


DEVICE_TABLE = {
    "A": Device(20.0, 20000.0, 0.0, ((2800.0, 2.0, 1.0),), -88.0, 0.0, 0.0),
    "B": Device(110.0, 13000.0, 1.0, ((2300.0, 4.0, 0.7), (6500.0, -3.0, 0.5)), -74.0, -3.0, -2.0),
    "C": Device(150.0, 11000.0, -1.0, ((1100.0, 3.0, 0.8), (4200.0, 5.0, 0.4)), -70.0, 0.0, 3.0, knee=5.0),
    "S1": Device(200.0, 8000.0, 1.5, ((950.0, 5.0, 0.5),), -66.0, -3.0, -4.0, knee=4.0),
    "S2": Device(
        80.0, 10500.0, -1.5, ((350.0, 3.0, 1.0), (5200.0, -5.0, 0.7)), -69.0, -6.0, 1.0, buzz_hz=50.0, buzz_dbfs=-66.0
    ),
    "S3": Device(250.0, 7500.0, 0.5, ((2000.0, 6.0, 0.3),), -67.0, 0.0, -1.0, knee=5.0),
    "S4": Device(250.0, 9000.0, -2.0, ((700.0, 6.0, 0.5), (3500.0, 5.0, 0.4)), -64.0, -3.0, 2.0, knee=3.0),
    "S5": Device(
        220.0, 5500.0, 3.0, ((1500.0, 7.0, 0.35),), -62.0, 3.0, -3.0, knee=4.0, buzz_hz=217.0, buzz_dbfs=-62.0
    ),
    "S6": Device(60.0, 14000.0, -3.0, ((500.0, -6.0, 0.8), (8000.0, 8.0, 0.4)), -60.0, -3.0, 0.0),
}


@functools.lru_cache(maxsize=32)
def _device_response(device: str, sr: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(magnitude response, noise-floor spectrum scale) of a device on the rfft grid."""
    d = DEVICE_TABLE[device]
    f, oct_1k, _ = dsp.grid(sr, n)
    band = dsp.highpass(f, d.low_cut_hz, 4) * dsp.lowpass(f, d.high_cut_hz, 8)
    in_band = np.log2(np.clip(f, d.low_cut_hz, d.high_cut_hz) / 1000.0)  # tilt only within the band
    gain_db = d.tilt_db * in_band + sum(dsp.peak_db(oct_1k, hz, g, w) for hz, g, w in d.resonances)
    h = 10.0 ** ((gain_db + d.gain_db) / 20.0) * band
    h[0] = 0.0
    # Self-noise, band-limited like the signal. Complex white noise with unit-variance parts
    # has E|X_k|^2 = 2, so a spectrum scaled by s_k has time-domain mean square about
    # 4 sum(s_k^2) / n^2: s is set so that the full-band noise sits at noise_dbfs.
    shape = 10.0 ** (d.noise_tilt_db * in_band / 20.0) * dsp.highpass(f, 20.0, 2)
    shape[0] = 0.0
    scale = 10.0 ** (d.noise_dbfs / 20.0) * n / (2.0 * math.sqrt(float(np.sum(shape**2))))
    noise = shape * band * scale
    h.setflags(write=False)
    noise.setflags(write=False)
    return h, noise


def _compress(y: np.ndarray, sr: int, knee: float, ratio: float = 4.0) -> np.ndarray:
    """Slow automatic gain control: above ``knee`` x the clip RMS, 10 ms frame levels are
    reduced by ``ratio`` (gain interpolated between frames, so no waveshaping harmonics)."""
    hop = max(int(0.01 * sr), 1)
    m = len(y) // hop
    if m < 2:
        return y
    level = np.sqrt(np.mean(y[: m * hop].reshape(m, hop) ** 2, axis=1) + 1e-20)
    threshold = knee * math.sqrt(float(np.mean(y * y)))
    gain = np.minimum(1.0, (threshold / level) ** (1.0 - 1.0 / ratio))
    gain = np.minimum(gain, np.concatenate([gain[1:], gain[-1:]]))  # attack one frame early
    centres = (np.arange(m) + 0.5) * hop
    return y * np.interp(np.arange(len(y)), centres, gain)


def render_device(scene: np.ndarray, device: str, rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    """One device's recording of a clean scene spectrum: float samples, peak <= -1 dBFS."""
    d = DEVICE_TABLE[device]
    h, noise = _device_response(device, sr, n)
    k = len(h)
    spec = scene * (h * 10.0 ** (rng.uniform(-1.0, 1.0) / 20.0))  # placement: +-1 dB
    spec = spec + (rng.standard_normal(k) + 1j * rng.standard_normal(k)) * noise
    y = sp_fft.irfft(spec, n)
    if d.knee > 0:  # automatic gain control of cheap devices
        y = _compress(y, sr, d.knee)
    if d.buzz_hz > 0:  # electrical interference
        t = dsp.grid(sr, n)[2]
        phase = 2.0 * np.pi * d.buzz_hz * t + rng.uniform(0, 2 * np.pi)
        amp = 10.0 ** (d.buzz_dbfs / 20.0)
        for harmonic in (1, 2, 3):
            if harmonic * d.buzz_hz < 0.45 * sr:
                y = y + amp / harmonic * np.sin(harmonic * phase)
    peak = float(np.abs(y).max())
    if peak > _PEAK:
        y = y * (_PEAK / peak)
    return y
