"""The clean acoustic scene of one recording, before any device.

A scene is mixed from kinds of sources every class shares -- a noise bed of class-typical
spectral colour and modulation, engine, fan, mains and motor hums, speech-like babble
(glottal pulses and noise under syllabic envelopes, formant filtered), footsteps, clicks,
door slams, rail clacks, brake squeals, bird calls, passing vehicles, horns, chimes and
music notes, and room reverberation -- with the rates, levels and frequency ranges of
:func:`pipeline.data.synthetic.classes.scene_params`. It is rendered once per recording and
then passed through each device (:mod:`pipeline.data.synthetic.devices`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft as sp_fft

from pipeline.data.synthetic import dsp
from pipeline.data.synthetic.classes import scene_params
from pipeline.data.synthetic.plan import Recording, Stream, stream_rng


def _bed(rng, p, sr, n, seconds) -> np.ndarray:
    """The noise bed: coloured, slowly swelling noise as an rfft spectrum, RMS 1."""
    f, oct_1k, _ = dsp.grid(sr, n)
    env = np.maximum(1.0 + p["bed_mod_depth"] * dsp.curve(rng, n, seconds, p["bed_mod_rate"]), 0.05)
    spec = sp_fft.rfft(rng.standard_normal(n) * env)
    shape_db = p["bed_tilt"] * oct_1k + dsp.peak_db(oct_1k, p["bed_low_hz"], p["bed_low_db"], 1.2)
    shape = 10.0 ** (shape_db / 20.0) * dsp.lowpass(f, p["bed_hicut_hz"], 2) * dsp.highpass(f, 20.0, 2)
    spec *= shape
    return spec / math.sqrt(dsp.power(spec, n))


def _babble(rng, p, sr, n, seconds, talkers: int) -> np.ndarray:
    """Speech-like babble: per talker, glottal pulses and noise under a syllabic envelope."""
    f, oct_1k, t = dsp.grid(sr, n)
    m = int(seconds * 200) + 2  # envelope control rate 200 Hz
    tc = np.linspace(0.0, seconds, m)
    excitation = np.zeros(n)
    noise_env = np.zeros(m)
    for _ in range(talkers):
        syllable_hz = rng.uniform(3.0, 6.5)
        env = np.sin(2 * np.pi * syllable_hz * tc + rng.uniform(0, 2 * np.pi)) + rng.uniform(-0.3, 0.5)
        env = np.maximum(env + 0.3 * dsp.curve(rng, m, seconds, 8.0), 0.0) ** 1.5
        env *= dsp.curve(rng, m, seconds, 1.5) > rng.uniform(-0.9, 0.1)  # pauses between phrases
        env *= rng.uniform(0.3, 1.0)  # distance
        f0 = rng.uniform(85.0, 260.0)
        periods = sr / (f0 * (1.0 + 0.04 * dsp.curve(rng, int(f0 * seconds) + 8, seconds, 4.0)))
        pos = (rng.uniform(0.0, sr / f0) + np.cumsum(periods)).astype(np.int64)
        pos = pos[pos < n]
        excitation[pos] += np.interp(pos / sr, tc, env) * math.sqrt(sr / f0)
        noise_env += env * rng.uniform(0.2, 0.5)
    excitation += rng.standard_normal(n) * np.interp(t, tc, noise_env)
    if not excitation.any():
        return np.zeros(len(f), complex)
    s = p["formant_scale"]
    shape_db = (
        dsp.peak_db(oct_1k, s * rng.uniform(400, 800), 14.0, 0.35)
        + dsp.peak_db(oct_1k, s * rng.uniform(1000, 2000), 10.0, 0.3)
        + dsp.peak_db(oct_1k, s * rng.uniform(2300, 3200), 7.0, 0.25)
        - 6.0 * np.maximum(oct_1k + 1.0, 0.0)
    )  # -6 dB/octave above 500 Hz
    spec = sp_fft.rfft(excitation) * 10.0 ** (shape_db / 20.0) * dsp.highpass(f, 120.0, 2)
    power = dsp.power(spec, n)
    return spec / math.sqrt(power) if power > 0 else spec


def _events(rng, p, sr, n, seconds) -> np.ndarray:
    """Tonal and impulsive sources in the time domain (levels relative to the bed RMS)."""
    out = np.zeros(n)

    def db(key: str) -> float:  # an event's peak amplitude
        return 10.0 ** (p[key] / 20.0) * rng.uniform(0.5, 1.0)

    def start(length: int) -> int:  # events may begin before the clip (cut at its start)
        return int(rng.integers(-length // 2, n))

    if rng.random() < p["hum_prob"]:  # engines, fans, HVAC
        out += 10.0 ** (p["hum_db"] / 20.0) * dsp.harmonic(
            rng,
            n,
            sr,
            seconds,
            p["hum_f0"] * rng.uniform(0.9, 1.1),
            p["hum_harm"],
            3.0,
            p["hum_jitter"],
            p["hum_glide"] * rng.uniform(-1.0, 1.0),
        )
    if rng.random() < p["mains_prob"]:  # electrical hum at the mains frequency and harmonics
        out += 10.0 ** (p["mains_db"] / 20.0) * dsp.harmonic(rng, n, sr, seconds, p["mains_hz"], 4, 2.0, 0.001, 0.0)
    if rng.random() < p["whine_prob"]:  # traction motor / inverter whine
        out += 10.0 ** (p["whine_db"] / 20.0) * dsp.harmonic(
            rng,
            n,
            sr,
            seconds,
            p["whine_hz"] * rng.uniform(0.85, 1.15),
            3,
            8.0,
            0.003,
            p["whine_glide"] * rng.uniform(-1.0, 1.0),
        )

    for _ in range(dsp.event_count(rng, p["steps_rate"], seconds)):  # footsteps
        sig = dsp.damped(rng, sr, rng.uniform(100, 350), rng.uniform(0.008, 0.025), rng.uniform(0.002, 0.005))
        dsp.add_at(out, start(len(sig)), db("steps_db") * sig)
    for _ in range(dsp.event_count(rng, p["clicks_rate"], seconds)):  # clicks, rattles, wheels
        m = max(int(rng.uniform(0.0005, 0.003) * sr), 2)
        sig = rng.standard_normal(m) * np.exp(-np.arange(m) / (m / 4.0))
        dsp.add_at(out, start(m), db("clicks_db") * sig / max(float(np.abs(sig).max()), 1e-12))
    for _ in range(dsp.event_count(rng, p["thumps_rate"], seconds)):  # door slams, bumps
        sig = dsp.damped(rng, sr, rng.uniform(40, 120), rng.uniform(0.03, 0.08), rng.uniform(0.004, 0.01))
        dsp.add_at(out, start(len(sig)), db("thumps_db") * sig)
    for _ in range(dsp.event_count(rng, p["clacks_rate"], seconds)):  # rail joints: clack-clack
        gap = int(rng.uniform(0.08, 0.2) * sr)
        s0 = start(gap)
        amp = db("clacks_db")
        hz = rng.uniform(150, 500)
        for k in range(2):
            sig = dsp.damped(rng, sr, hz, rng.uniform(0.01, 0.03), 0.003)
            ring = dsp.damped(rng, sr, rng.uniform(1000, 3000), rng.uniform(0.004, 0.012), 0.001)
            dsp.add_at(out, s0 + k * gap, amp * sig)
            dsp.add_at(out, s0 + k * gap, 0.4 * amp * ring)

    for _ in range(dsp.event_count(rng, p["squeal_rate"], seconds)):  # brake squeal
        length = int(rng.uniform(0.15, 0.8) * sr)
        tt = np.arange(length) / sr
        hz = p["squeal_hz"] * rng.uniform(0.8, 1.2)
        inst = hz * (1.0 + 0.015 * np.sin(2 * np.pi * rng.uniform(4, 8) * tt) + rng.uniform(-0.1, 0.1) * tt / tt[-1])
        fade = np.minimum(1.0, np.minimum(tt, tt[-1] - tt) / 0.02)
        sig = dsp.sweep(sr, inst, ((1.0, 1.0), (2.0, 0.3)), rng.uniform(0, 2 * np.pi)) * fade
        dsp.add_at(out, start(length), db("squeal_db") * sig)
    for _ in range(dsp.event_count(rng, p["birds_rate"], seconds)):  # bird calls: a few chirps each
        s0 = start(int(0.3 * sr))
        hz = p["birds_hz"] * rng.uniform(0.7, 1.3)
        ratio = rng.uniform(0.5, 1.6)
        amp = db("birds_db")
        for _ in range(int(rng.integers(1, 6))):
            length = int(rng.uniform(0.02, 0.12) * sr)
            tt = np.arange(length) / sr
            inst = hz * (1.0 + (ratio - 1.0) * tt / tt[-1])
            env = np.sin(np.pi * tt / tt[-1]) ** 2
            dsp.add_at(
                out,
                s0,
                amp
                * rng.uniform(0.6, 1.0)
                * env
                * dsp.sweep(sr, inst, ((1.0, 1.0), (2.0, 0.15)), rng.uniform(0, 2 * np.pi)),
            )
            s0 += length + int(rng.uniform(0.03, 0.12) * sr)
    for _ in range(dsp.event_count(rng, p["pass_rate"], seconds)):  # passing vehicle (Doppler drop)
        length = int(rng.uniform(0.5, 1.5) * sr)
        tt = np.arange(length) / sr
        mid = tt[-1] / 2
        drop = 1.0 - 2.0 / (1.0 + np.exp(-(tt - mid) / (mid / 5)))  # +1 -> -1 as it passes
        doppler = 1.0 + 0.05 * rng.uniform(0.5, 1.5) * drop
        inst = rng.uniform(60, 180) * doppler
        env = np.exp(-(((tt - mid) / (mid / 2)) ** 2))
        partials = [(h, 10.0 ** (-4.0 * (h - 1) / 20.0)) for h in range(1, 7)]
        sig = dsp.sweep(sr, inst, partials, rng.uniform(0, 2 * np.pi)) * env
        dsp.add_at(out, start(length), db("pass_db") * sig / max(float(np.abs(sig).max()), 1e-12))
    for _ in range(dsp.event_count(rng, p["horn_rate"], seconds)):  # car horn: two detuned notes
        length = int(rng.uniform(0.2, 0.6) * sr)
        tt = np.arange(length) / sr
        fade = np.minimum(1.0, np.minimum(tt, tt[-1] - tt) / 0.01)
        hz = rng.uniform(350.0, 500.0)
        partials = [(h, 1.0 / h) for h in range(1, 7)]
        sig = (
            dsp.sweep(sr, np.full(length, hz), partials, 0.0) + dsp.sweep(sr, np.full(length, 1.26 * hz), partials, 1.0)
        ) * fade
        dsp.add_at(out, start(length), db("horn_db") * sig / max(float(np.abs(sig).max()), 1e-12))
    for _ in range(dsp.event_count(rng, p["notes_rate"], seconds)):  # music, chimes, bells
        length = int(rng.uniform(0.15, 0.7) * sr)
        tt = np.arange(length) / sr
        hz = p["notes_hz"] * 2.0 ** (int(rng.integers(-7, 8)) / 12.0)
        if rng.random() < p["notes_bell"]:
            partials = ((1.0, 1.0), (2.76, 0.6), (5.40, 0.4), (8.93, 0.25))
            env = np.exp(-tt / rng.uniform(0.2, 0.6))
        else:
            partials = [(h, 1.0 / h) for h in range(1, 6)]
            env = np.exp(-tt / rng.uniform(0.1, 0.5)) * np.minimum(1.0, tt / 0.005)
        sig = dsp.sweep(sr, np.full(length, hz), partials, rng.uniform(0, 2 * np.pi)) * env
        dsp.add_at(out, start(length), db("notes_db") * sig / max(float(np.abs(sig).max()), 1e-12))
    return out


def _reverb(rng, p, sr, n) -> np.ndarray | None:
    """Spectrum of a diffuse exponential reverberation tail (circular: a 1-s clip is cut from
    a longer recording, so tails of earlier sounds are heard at its start)."""
    rt60 = p["rt60"]
    if rt60 < 0.05:
        return None
    f, _, t = dsp.grid(sr, n)
    tail = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)
    tail[0] = 0.0
    spec = sp_fft.rfft(tail) * dsp.lowpass(f, rng.uniform(2000.0, 6000.0), 1)
    mean = float(np.mean(spec.real**2 + spec.imag**2))
    return spec * math.sqrt(10.0 ** (p["wet_db"] / 10.0) / mean)


def render_scene(seed: int, rec: Recording, sr: int, n: int) -> np.ndarray:
    """The clean scene of one recording as an rfft spectrum, RMS at the scene level."""
    p = scene_params(seed, rec)
    rng = stream_rng(seed, Stream.RECORDING, rec.index)
    seconds = n / sr
    spec = _bed(rng, p, sr, n, seconds)
    talkers = int(round(p["talkers"] + rng.uniform(-1.0, 1.0))) if p["talkers"] > 0 else 0
    if talkers > 0:
        spec = spec + 10.0 ** (p["babble_db"] / 20.0) * _babble(rng, p, sr, n, seconds, talkers)
    spec = spec + sp_fft.rfft(_events(rng, p, sr, n, seconds))
    tail = _reverb(rng, p, sr, n)
    if tail is not None:
        spec = spec * (1.0 + tail)
    level = 10.0 ** ((p["level_db"] + rng.uniform(-3.0, 3.0)) / 20.0)
    return spec * (level / math.sqrt(dsp.power(spec, n)))
