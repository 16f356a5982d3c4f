"""The built-in synthetic dataset, in the on-disk layout of TAU Urban Acoustic Scenes 2022 Mobile.

The real development set is 230,350 one-second clips of ten scene classes recorded in ten
European cities by three real devices (A, B, C) and simulated from device A through the
impulse responses of six more (S1-S6). This module writes a deterministic stand-in with
the same files and CSVs, so that :mod:`pipeline.data` reads both the same way::

    <root>/meta.csv                             filename  scene_label  identifier  source_label
    <root>/evaluation_setup/fold1_train.csv     filename  scene_label
    <root>/evaluation_setup/fold1_evaluate.csv  filename  scene_label
    <root>/evaluation_setup/fold1_test.csv      filename       (the evaluate files, no labels)
    <root>/audio/<scene>-<city>-<location>-<segment>-<sub>-<device>.wav
    <root>/.complete.json                       written last: generator version and parameters

Split (after TAU22 fold1): recording locations (``identifier`` = ``<city>-<location>``) are
disjoint between train (about 70 % of the clips) and evaluate (30 %). Train holds devices A,
B, C, S1, S2, S3 with A on about half of its clips; evaluate holds all nine devices about
equally, so S4, S5 and S6 are unseen in training. As in TAU, one scene recording is heard
through several devices: a clean scene is rendered once per (location, segment, sub-clip)
and then passed through each device's transfer function.

The scenes are mixed from kinds of sources every class shares -- a noise bed of
class-typical spectral colour and modulation, engine, fan, mains and motor hums, speech-like
babble (glottal pulses and noise under syllabic envelopes, formant filtered), footsteps,
clicks, door slams, rail clacks, brake squeals, bird calls, passing vehicles, horns,
chimes and music notes, and room reverberation -- with per-class rates, levels and
frequency ranges that overlap between related classes (metro / metro_station / tram share
hums and squeals; street_pedestrian / public_square / shopping_mall share babble and
footsteps). Every location draws its own parameters inside the class ranges, every segment
varies around its location, every city shifts a few of them, and overall levels vary, so
a classifier has to generalise across locations and devices. Devices differ in band
limits, EQ tilt, resonances, noise floor, gain, compression and, for two of them, an
electrical buzz; each device's response is fixed.

Output is 24-bit mono PCM WAV (written with the stdlib :mod:`wave` module), peaks at or
below -1 dBFS. Generation is deterministic: each recording's random stream is seeded from
(seed, recording index) and each clip's from (seed, clip index), so the bytes do not
depend on the number of worker processes.

Example::

    from pipeline import synthetic
    root = synthetic.generate("work/data/synthetic", n_clips=2000, seed=42)
"""

from __future__ import annotations

import functools
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
import wave
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import fft as sp_fft

logger = logging.getLogger(__name__)

GENERATOR = "pipeline.synthetic"
GENERATOR_VERSION = 1

from pipeline.core.labels import CLASSES, DEVICES, SEEN_DEVICES as TRAIN_DEVICES, UNSEEN_DEVICES  # noqa: F401

CITIES = ("barcelona", "helsinki", "lisbon", "london", "lyon", "milan", "paris", "prague",
          "stockholm", "vienna")

MIN_CLIPS = 30  # ten train recordings (A + one other device) and ten evaluate clips
TRAIN_FRACTION = 0.7
SUBS_PER_SEGMENT = 4  # one-second sub-clips cut from one recorded segment
SEGMENTS_PER_LOCATION = 3
MIN_LOCATIONS = 4  # per class and split, when there are enough recordings
PEAK_DBFS = -1.0  # no sample above this level

MARKER = ".complete.json"  # written last; its absence means "not usable"
OWNER = ".synthetic.json"  # written first; only a directory holding it may be wiped
META_FILE = "meta.csv"
SPLIT_FILES = {
    "train": "evaluation_setup/fold1_train.csv",
    "evaluate": "evaluation_setup/fold1_evaluate.csv",
    "test": "evaluation_setup/fold1_test.csv",
}

# Random-stream tags: SeedSequence([seed, tag, index]) keeps every stream independent.
_PLAN, _CITY, _LOCATION, _SEGMENT, _RECORDING, _CLIP = range(6)
_FULL_SCALE = 2 ** 23 - 1
_PEAK = 10.0 ** ((PEAK_DBFS - 0.1) / 20.0)  # 0.1 dB margin for rounding

# --------------------------------------------------------------------------- scene classes
#
# Each parameter is a (low, high) range. A location draws a value uniformly in its class's
# range; a segment moves it by up to +-20 % of the range width. Rates are events per second,
# levels in dB relative to the noise bed (RMS for continuous sources, peak for events),
# "prob" the chance that a recording holds the source at all.

_DEFAULTS = {
    "level_db": (-36.0, -24.0),  # overall clip RMS in dBFS before the device
    "bed_tilt": (-5.0, -3.0),  # dB per octave about 1 kHz
    "bed_low_hz": (50.0, 200.0), "bed_low_db": (0.0, 6.0),  # low-frequency bump
    "bed_hicut_hz": (5000.0, 12000.0),
    "bed_mod_depth": (0.05, 0.3), "bed_mod_rate": (0.3, 1.5),  # slow swells (knots per s)
    "hum_prob": (0.0, 0.0), "hum_db": (-14.0, -6.0), "hum_f0": (40.0, 120.0),
    "hum_harm": (3.0, 6.0), "hum_jitter": (0.003, 0.02), "hum_glide": (-0.05, 0.05),
    "mains_prob": (0.0, 0.0), "mains_db": (-24.0, -12.0),
    "whine_prob": (0.0, 0.0), "whine_db": (-16.0, -6.0), "whine_hz": (300.0, 1500.0),
    "whine_glide": (-0.3, 0.3),
    "talkers": (0.0, 0.0), "babble_db": (-12.0, -4.0),
    "steps_rate": (0.0, 0.0), "steps_db": (6.0, 16.0),
    "clicks_rate": (0.0, 0.0), "clicks_db": (6.0, 16.0),
    "thumps_rate": (0.0, 0.0), "thumps_db": (8.0, 18.0),
    "clacks_rate": (0.0, 0.0), "clacks_db": (8.0, 18.0),
    "squeal_rate": (0.0, 0.0), "squeal_db": (0.0, 10.0), "squeal_hz": (1800.0, 5000.0),
    "birds_rate": (0.0, 0.0), "birds_db": (4.0, 16.0), "birds_hz": (2500.0, 6500.0),
    "pass_rate": (0.0, 0.0), "pass_db": (0.0, 8.0),
    "horn_rate": (0.0, 0.0), "horn_db": (4.0, 12.0),
    "notes_rate": (0.0, 0.0), "notes_db": (-2.0, 8.0), "notes_hz": (300.0, 900.0),
    "notes_bell": (0.0, 0.0),  # chance that a note is a bell (inharmonic partials)
    "rt60": (0.0, 0.0), "wet_db": (-10.0, -4.0),
}

_CLASS_RANGES = {
    "airport": {
        "level_db": (-36.0, -26.0), "bed_tilt": (-4.0, -3.0), "bed_low_hz": (100.0, 300.0),
        "bed_low_db": (2.0, 6.0), "bed_hicut_hz": (7000.0, 13000.0), "bed_mod_depth": (0.05, 0.15),
        "hum_prob": (0.4, 0.8), "hum_f0": (90.0, 180.0), "hum_db": (-18.0, -8.0),
        "mains_prob": (0.0, 0.3), "talkers": (2.0, 8.0), "babble_db": (-8.0, 0.0),
        "steps_rate": (1.0, 4.0), "steps_db": (4.0, 12.0), "clicks_rate": (1.0, 8.0),
        "thumps_rate": (0.05, 0.4), "notes_rate": (0.0, 0.4), "notes_hz": (400.0, 1000.0),
        "notes_bell": (0.3, 0.8), "pass_rate": (0.0, 0.2), "rt60": (1.0, 2.2),
        "wet_db": (-6.0, 0.0),
    },
    "bus": {
        "level_db": (-32.0, -20.0), "bed_tilt": (-8.0, -6.0), "bed_low_hz": (40.0, 100.0),
        "bed_low_db": (8.0, 14.0), "bed_hicut_hz": (3000.0, 6000.0), "bed_mod_depth": (0.1, 0.3),
        "hum_prob": (0.8, 1.0), "hum_f0": (25.0, 60.0), "hum_db": (-8.0, 2.0),
        "hum_harm": (5.0, 8.0),
        "hum_jitter": (0.01, 0.03), "hum_glide": (-0.2, 0.2), "mains_prob": (0.0, 0.2),
        "whine_prob": (0.0, 0.2), "talkers": (0.0, 4.0), "babble_db": (-14.0, -4.0),
        "clicks_rate": (1.0, 5.0), "thumps_rate": (0.2, 0.8), "steps_rate": (0.0, 0.5),
        "squeal_rate": (0.0, 0.15), "squeal_hz": (1500.0, 3500.0), "notes_rate": (0.0, 0.1),
        "notes_hz": (500.0, 1000.0), "notes_bell": (0.5, 1.0), "rt60": (0.15, 0.4),
        "wet_db": (-10.0, -4.0),
    },
    "metro": {
        "level_db": (-28.0, -18.0), "bed_tilt": (-6.0, -4.5), "bed_low_hz": (60.0, 150.0),
        "bed_low_db": (4.0, 10.0), "bed_hicut_hz": (4000.0, 9000.0), "bed_mod_depth": (0.1, 0.4),
        "hum_prob": (0.4, 0.8), "hum_f0": (40.0, 100.0), "hum_db": (-12.0, -4.0),
        "mains_prob": (0.4, 0.8), "mains_db": (-20.0, -8.0), "whine_prob": (0.7, 1.0),
        "whine_hz": (400.0, 2000.0), "whine_db": (-14.0, -4.0), "whine_glide": (-0.4, 0.4),
        "talkers": (0.0, 4.0), "babble_db": (-16.0, -6.0), "clacks_rate": (0.5, 2.5),
        "clicks_rate": (0.5, 3.0), "squeal_rate": (0.05, 0.4), "squeal_hz": (2000.0, 5000.0),
        "rt60": (0.3, 0.7), "wet_db": (-8.0, -3.0),
    },
    "metro_station": {
        "level_db": (-34.0, -22.0), "bed_tilt": (-5.0, -3.5), "bed_low_hz": (60.0, 200.0),
        "bed_low_db": (2.0, 7.0), "bed_hicut_hz": (5000.0, 11000.0), "bed_mod_depth": (0.1, 0.4),
        "hum_prob": (0.2, 0.6), "hum_f0": (60.0, 150.0), "hum_db": (-18.0, -8.0),
        "mains_prob": (0.3, 0.7), "whine_prob": (0.2, 0.5), "whine_db": (-18.0, -8.0),
        "whine_hz": (300.0, 1500.0), "talkers": (2.0, 7.0), "babble_db": (-10.0, -2.0),
        "steps_rate": (1.0, 4.0), "thumps_rate": (0.1, 0.4), "clacks_rate": (0.0, 0.6),
        "squeal_rate": (0.0, 0.2), "notes_rate": (0.0, 0.3), "notes_hz": (400.0, 900.0),
        "notes_bell": (0.3, 0.8), "rt60": (1.2, 2.5), "wet_db": (-5.0, 0.0),
    },
    "park": {
        "level_db": (-42.0, -30.0), "bed_tilt": (-3.0, -1.5), "bed_low_hz": (30.0, 80.0),
        "bed_low_db": (6.0, 12.0), "bed_hicut_hz": (3000.0, 8000.0), "bed_mod_depth": (0.3, 0.7),
        "bed_mod_rate": (0.5, 2.0), "hum_prob": (0.0, 0.3), "hum_f0": (40.0, 100.0),
        "hum_db": (-20.0, -10.0), "talkers": (0.0, 3.0), "babble_db": (-20.0, -8.0),
        "steps_rate": (0.0, 1.5), "steps_db": (2.0, 10.0), "birds_rate": (1.0, 4.0),
        "birds_db": (6.0, 18.0), "pass_rate": (0.0, 0.2), "thumps_rate": (0.0, 0.1),
    },
    "public_square": {
        "level_db": (-38.0, -26.0), "bed_tilt": (-4.5, -3.0), "bed_low_hz": (60.0, 200.0),
        "bed_low_db": (2.0, 5.0), "bed_hicut_hz": (5000.0, 12000.0), "bed_mod_depth": (0.1, 0.35),
        "hum_prob": (0.1, 0.5), "hum_f0": (30.0, 90.0), "hum_db": (-18.0, -8.0),
        "talkers": (2.0, 8.0), "babble_db": (-10.0, -2.0), "steps_rate": (0.5, 3.0),
        "clicks_rate": (0.2, 2.0), "birds_rate": (0.0, 0.8), "birds_db": (2.0, 12.0),
        "pass_rate": (0.05, 0.5), "pass_db": (-4.0, 4.0), "horn_rate": (0.0, 0.05),
        "notes_rate": (0.0, 0.3), "rt60": (0.2, 0.6), "wet_db": (-12.0, -6.0),
    },
    "shopping_mall": {
        "level_db": (-36.0, -26.0), "bed_tilt": (-4.5, -3.5), "bed_low_hz": (100.0, 300.0),
        "bed_low_db": (1.0, 4.0), "bed_hicut_hz": (5000.0, 11000.0), "bed_mod_depth": (0.05, 0.2),
        "hum_prob": (0.3, 0.7), "hum_f0": (80.0, 200.0), "hum_db": (-18.0, -8.0),
        "mains_prob": (0.1, 0.4), "talkers": (5.0, 12.0), "babble_db": (-4.0, 3.0),
        "steps_rate": (1.0, 4.0), "clicks_rate": (0.5, 3.0), "thumps_rate": (0.0, 0.3),
        "notes_rate": (1.5, 5.0), "notes_db": (-4.0, 6.0), "notes_hz": (200.0, 900.0),
        "notes_bell": (0.0, 0.2), "rt60": (0.8, 1.8), "wet_db": (-6.0, -1.0),
    },
    "street_pedestrian": {
        "level_db": (-36.0, -24.0), "bed_tilt": (-5.0, -3.5), "bed_low_hz": (50.0, 150.0),
        "bed_low_db": (3.0, 8.0), "bed_hicut_hz": (5000.0, 11000.0), "bed_mod_depth": (0.15, 0.4),
        "hum_prob": (0.2, 0.6), "hum_f0": (30.0, 90.0), "hum_db": (-16.0, -6.0),
        "talkers": (1.0, 6.0), "babble_db": (-10.0, -2.0), "steps_rate": (2.0, 6.0),
        "steps_db": (8.0, 16.0), "clicks_rate": (0.2, 1.5), "birds_rate": (0.0, 0.5),
        "pass_rate": (0.1, 0.8), "pass_db": (-2.0, 6.0), "horn_rate": (0.0, 0.05),
        "notes_rate": (0.0, 0.1), "rt60": (0.1, 0.5), "wet_db": (-12.0, -5.0),
    },
    "street_traffic": {
        "level_db": (-30.0, -18.0), "bed_tilt": (-6.5, -5.0), "bed_low_hz": (40.0, 120.0),
        "bed_low_db": (5.0, 10.0), "bed_hicut_hz": (4000.0, 9000.0), "bed_mod_depth": (0.4, 0.8),
        "bed_mod_rate": (0.3, 1.0), "hum_prob": (0.6, 1.0), "hum_f0": (25.0, 80.0),
        "hum_db": (-12.0, -2.0), "hum_harm": (4.0, 7.0), "hum_glide": (-0.2, 0.2),
        "talkers": (0.0, 2.0), "babble_db": (-18.0, -8.0), "steps_rate": (0.0, 1.0),
        "pass_rate": (0.8, 2.0), "pass_db": (4.0, 12.0), "squeal_rate": (0.0, 0.05),
        "horn_rate": (0.02, 0.2), "birds_rate": (0.0, 0.2), "thumps_rate": (0.0, 0.3),
        "rt60": (0.0, 0.3), "wet_db": (-14.0, -8.0),
    },
    "tram": {
        "level_db": (-32.0, -20.0), "bed_tilt": (-6.0, -4.0), "bed_low_hz": (50.0, 150.0),
        "bed_low_db": (4.0, 9.0), "bed_hicut_hz": (4000.0, 10000.0), "bed_mod_depth": (0.1, 0.35),
        "hum_prob": (0.3, 0.7), "hum_f0": (40.0, 100.0), "hum_db": (-14.0, -6.0),
        "mains_prob": (0.5, 0.9), "mains_db": (-18.0, -6.0), "whine_prob": (0.5, 0.9),
        "whine_hz": (250.0, 1200.0), "whine_db": (-14.0, -4.0), "talkers": (0.0, 5.0),
        "babble_db": (-14.0, -4.0), "clacks_rate": (0.3, 1.5), "clicks_rate": (0.5, 2.0),
        "squeal_rate": (0.05, 0.3), "squeal_hz": (1500.0, 4500.0), "notes_rate": (0.0, 0.15),
        "notes_hz": (700.0, 1600.0), "notes_bell": (0.7, 1.0), "rt60": (0.2, 0.6),
        "wet_db": (-9.0, -4.0),
    },
}

_PARAM_NAMES = tuple(_DEFAULTS)
# [class, param] lower and upper bounds of the class ranges
_LOW, _HIGH = np.array([[[_CLASS_RANGES[c].get(k, _DEFAULTS[k])[i] for k in _PARAM_NAMES]
                         for c in CLASSES] for i in (0, 1)])
_NONNEGATIVE = np.array([k.endswith(("_rate", "_prob", "_depth", "_bell"))
                         or k in ("talkers", "rt60") for k in _PARAM_NAMES])

# --------------------------------------------------------------------------- devices
#
# A: high-quality binaural in-ear microphones (nearly flat). B, C: phones. S1-S6: simulated
# devices; the unseen S4-S6 lie further from the training devices than those do from each
# other, so (as on TAU22) accuracy drops on them. Cut-offs in Hz (Butterworth-like
# magnitudes of orders 4 and 8), tilt in dB/octave about 1 kHz, resonances (Hz, dB, width in
# octaves), noise floor in dBFS with its tilt, gain in dB, automatic-gain-control knee in
# multiples of the clip RMS (0 = none), electrical buzz (Hz, dBFS).


@dataclass(frozen=True)
class _Device:
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


_DEVICE_TABLE = {
    "A": _Device(20.0, 20000.0, 0.0, ((2800.0, 2.0, 1.0),), -88.0, 0.0, 0.0),
    "B": _Device(110.0, 13000.0, 1.0, ((2300.0, 4.0, 0.7), (6500.0, -3.0, 0.5)), -74.0, -3.0, -2.0),
    "C": _Device(150.0, 11000.0, -1.0, ((1100.0, 3.0, 0.8), (4200.0, 5.0, 0.4)), -70.0, 0.0, 3.0,
                 knee=5.0),
    "S1": _Device(200.0, 8000.0, 1.5, ((950.0, 5.0, 0.5),), -66.0, -3.0, -4.0, knee=4.0),
    "S2": _Device(80.0, 10500.0, -1.5, ((350.0, 3.0, 1.0), (5200.0, -5.0, 0.7)), -69.0, -6.0, 1.0,
                  buzz_hz=50.0, buzz_dbfs=-66.0),
    "S3": _Device(250.0, 7500.0, 0.5, ((2000.0, 6.0, 0.3),), -67.0, 0.0, -1.0, knee=5.0),
    "S4": _Device(250.0, 9000.0, -2.0, ((700.0, 6.0, 0.5), (3500.0, 5.0, 0.4)), -64.0, -3.0, 2.0,
                  knee=3.0),
    "S5": _Device(220.0, 5500.0, 3.0, ((1500.0, 7.0, 0.35),), -62.0, 3.0, -3.0, knee=4.0,
                  buzz_hz=217.0, buzz_dbfs=-62.0),
    "S6": _Device(60.0, 14000.0, -3.0, ((500.0, -6.0, 0.8), (8000.0, 8.0, 0.4)), -60.0, -3.0, 0.0),
}


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Recording:
    """One clean one-second scene and the clips (one per device) rendered from it."""

    index: int
    label: int
    city: int
    identifier: str  # <city>-<location number>
    location: int  # global location index (random stream)
    segment: int  # global segment index (random stream)
    split: str
    clips: tuple  # ((clip index, device, relative filename), ...)


def _seq(seed: int, tag: int, index: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, tag, index])


def _split_sizes(n_clips: int) -> tuple[int, int]:
    n_eval = max(len(CLASSES), int(round(n_clips * (1.0 - TRAIN_FRACTION))))
    return n_clips - n_eval, n_eval


def _plan(n_clips: int, seed: int, n_cities: int) -> list[_Recording]:
    """Which recordings exist, their class, location, segment and devices (deterministic)."""
    rng = np.random.default_rng(_seq(seed, _PLAN))
    n_train, n_eval = _split_sizes(n_clips)
    n_classes = len(CLASSES)

    # Train: every recording on device A plus one of the other five (cycled), so A holds
    # about half the train clips; an odd count leaves the last recording on A alone.
    n_rec_train = (n_train + 1) // 2
    others = TRAIN_DEVICES[1:]
    other_seq = np.concatenate([rng.permutation(len(others))
                                for _ in range(-(-n_rec_train // len(others)))])
    train_devices = []
    for r in range(n_rec_train):
        devs = ("A",) if (r == n_rec_train - 1 and n_train % 2) else ("A", others[other_seq[r]])
        train_devices.append(devs)

    # Evaluate: each recording on three devices (on one for tiny sets), the nine devices
    # taken in turn from successive random permutations, so they are equally frequent.
    per_rec = 3 if n_eval >= 3 * n_classes else 1
    n_rec_eval = -(-n_eval // per_rec)
    dev_seq = np.concatenate([rng.permutation(len(DEVICES))
                              for _ in range(-(-n_rec_eval * per_rec // len(DEVICES)))])
    eval_devices = []
    for r in range(n_rec_eval):
        take = min(per_rec, n_eval - r * per_rec)
        eval_devices.append(tuple(DEVICES[d] for d in dev_seq[r * per_rec:r * per_rec + take]))

    # Classes balanced within each split; recordings of one class grouped into locations of
    # up to SEGMENTS_PER_LOCATION segments of up to SUBS_PER_SEGMENT sub-clips.
    rows = []  # (split, label, devices)
    for split, devices in (("train", train_devices), ("evaluate", eval_devices)):
        labels = rng.permutation(np.arange(len(devices)) % n_classes)
        rows.extend((split, int(lab), devs) for lab, devs in zip(labels, devices))

    cities = CITIES[:n_cities]
    per_location = SUBS_PER_SEGMENT * SEGMENTS_PER_LOCATION
    locations = []  # (city index, [[row indices of one segment], ...])
    for split in ("train", "evaluate"):
        for label in range(n_classes):
            members = [i for i, r in enumerate(rows) if r[0] == split and r[1] == label]
            # small sets still spread a class over several locations (at least four)
            n_loc = max(-(-len(members) // per_location), min(len(members), MIN_LOCATIONS))
            offset = int(rng.integers(n_cities))
            for k, loc_members in enumerate(np.array_split(np.array(members), n_loc)):
                n_seg = -(-len(loc_members) // SUBS_PER_SEGMENT)
                segments = [list(s) for s in np.array_split(loc_members, n_seg)]
                locations.append(((offset + k) % n_cities, segments))

    # Location numbers unique within a city, segment numbers unique overall (TAU-like).
    per_city = np.bincount([c for c, _ in locations], minlength=n_cities)
    numbers = {c: iter(sorted(rng.choice(np.arange(100, 100 + max(900, 10 * int(per_city[c]))),
                                         size=int(per_city[c]), replace=False)))
               for c in range(n_cities)}
    n_segments = sum(len(segs) for _, segs in locations)
    seg_numbers = 1000 + rng.choice(max(9000, 10 * n_segments), size=n_segments, replace=False)

    recordings = []
    seg_index = 0
    clip_index = 0
    for loc_index, (city, segments) in enumerate(locations):
        identifier = f"{cities[city]}-{int(next(numbers[city]))}"
        for segment in segments:
            for sub, row in enumerate(segment):
                split, label, devs = rows[row]
                stem = f"{CLASSES[label]}-{identifier}-{int(seg_numbers[seg_index])}-{sub}"
                clips = []
                for dev in devs:
                    clips.append((clip_index, dev, f"audio/{stem}-{dev.lower()}.wav"))
                    clip_index += 1
                recordings.append(_Recording(len(recordings), label, city, identifier, loc_index,
                                             seg_index, split, tuple(clips)))
            seg_index += 1
    assert clip_index == n_clips, (clip_index, n_clips)
    return recordings


# --------------------------------------------------------------------------- scene parameters


def _scene_params(seed: int, rec: _Recording) -> dict:
    """The recording's scene parameters: class range -> location -> segment, city shifts."""
    low, high = _LOW[rec.label], _HIGH[rec.label]
    width = high - low
    loc_rng = np.random.default_rng(_seq(seed, _LOCATION, rec.location))
    # triangular on [low, high]: locations overlap between classes but cluster at the centre
    value = low + width * loc_rng.random((2, len(_PARAM_NAMES))).mean(axis=0)
    seg_rng = np.random.default_rng(_seq(seed, _SEGMENT, rec.segment))
    value = value + width * seg_rng.uniform(-0.2, 0.2, len(_PARAM_NAMES))
    value = np.clip(value, low - 0.1 * width, high + 0.1 * width)
    value[_NONNEGATIVE] = np.maximum(value[_NONNEGATIVE], 0.0)
    p = dict(zip(_PARAM_NAMES, value.tolist()))
    city_rng = np.random.default_rng(_seq(seed, _CITY, rec.city))
    p["level_db"] += city_rng.uniform(-2.0, 2.0)
    p["bed_tilt"] += city_rng.uniform(-0.7, 0.7)
    p["bed_hicut_hz"] *= city_rng.uniform(0.85, 1.15)
    p["babble_db"] += city_rng.uniform(-2.0, 2.0)
    p["formant_scale"] = city_rng.uniform(0.94, 1.06)  # voices differ a little between cities
    p["mains_hz"] = 50.0
    return p


# --------------------------------------------------------------------------- DSP helpers


@functools.lru_cache(maxsize=8)
def _grid(sr: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rfft bin frequencies, their log2 relative to 1 kHz with DC clamped, sample times)."""
    f = sp_fft.rfftfreq(n, 1.0 / sr)
    oct_1k = np.log2(np.maximum(f, 10.0) / 1000.0)
    t = np.arange(n) / sr
    for a in (f, oct_1k, t):
        a.setflags(write=False)
    return f, oct_1k, t


def _power(spec: np.ndarray, n: int) -> float:
    """Mean square of ``irfft(spec, n)`` from its spectrum (Parseval)."""
    mag2 = spec.real ** 2 + spec.imag ** 2
    total = 2.0 * mag2.sum() - mag2[0]
    if n % 2 == 0:
        total -= mag2[-1]
    return float(total) / (n * n)


def _highpass(f: np.ndarray, fc: float, order: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(1.0 + (fc / np.maximum(f, 1e-3)) ** (2 * order))


def _lowpass(f: np.ndarray, fc: float, order: int) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (f / fc) ** (2 * order))


def _peak_db(oct_1k: np.ndarray, hz: float, gain_db: float, width_oct: float) -> np.ndarray:
    """A bell in dB on a log-frequency axis."""
    return gain_db * np.exp(-0.5 * ((oct_1k - math.log2(hz / 1000.0)) / width_oct) ** 2)


def _curve(rng: np.random.Generator, n: int, seconds: float, per_second: float) -> np.ndarray:
    """A slow random curve in [-1, 1]: random knots, linearly interpolated."""
    k = int(math.ceil(per_second * seconds)) + 2
    knots = rng.uniform(-1.0, 1.0, k)
    return np.interp(np.linspace(0.0, k - 1.0, n), np.arange(k), knots)


def _add(out: np.ndarray, start: int, sig: np.ndarray) -> None:
    """out[start:start + len(sig)] += sig, cut at both ends of ``out``."""
    a, b = max(start, 0), min(start + len(sig), len(out))
    if b > a:
        out[a:b] += sig[a - start:b - start]


def _rms_normalise(x: np.ndarray) -> np.ndarray:
    rms = math.sqrt(float(np.mean(x * x)))
    return x / rms if rms > 0 else x


def _harmonic(rng, n, sr, seconds, f0, n_harm, rolloff_db, jitter, glide) -> np.ndarray:
    """A harmonic tone with slow pitch wander (``jitter``) and a linear glide, RMS 1."""
    t = _grid(sr, n)[2]
    inst = f0 * (1.0 + glide * (t / seconds - 0.5) + jitter * _curve(rng, n, seconds, 3.0))
    phase = (2.0 * np.pi / sr) * np.cumsum(inst) + rng.uniform(0.0, 2.0 * np.pi)
    fmax = 0.45 * sr / float(inst.max())
    out = np.zeros(n)
    for h in range(1, max(1, int(round(n_harm))) + 1):
        if h > fmax:
            break
        amp = 10.0 ** (-rolloff_db * (h - 1) / 20.0) * rng.uniform(0.4, 1.0)
        out += amp * np.sin(h * phase + rng.uniform(0.0, 2.0 * np.pi))
    return _rms_normalise(out)


def _sweep(sr: int, inst: np.ndarray, partials: Sequence[tuple[float, float]],
           phase0: float) -> np.ndarray:
    """Sum of partials (ratio, amplitude) of an instantaneous-frequency track."""
    phase = (2.0 * np.pi / sr) * np.cumsum(inst) + phase0
    out = np.zeros(len(inst))
    top = 0.45 * sr
    for ratio, amp in partials:
        if ratio * float(inst.max()) < top:
            out += amp * np.sin(ratio * phase)
    return out


def _damped(rng, sr, hz: float, tau_s: float, noise_s: float) -> np.ndarray:
    """A decaying resonance plus a short noise burst (footstep, slam, clack)."""
    length = max(int(5 * tau_s * sr), 8)
    t = np.arange(length) / sr
    sig = np.sin(2.0 * np.pi * hz * t + rng.uniform(0, 2 * np.pi)) * np.exp(-t / tau_s)
    m = max(int(noise_s * sr), 2)
    sig[:m] += rng.uniform(0.3, 1.0) * rng.standard_normal(m) * np.exp(-np.arange(m) / (m / 4.0))
    return sig / max(float(np.abs(sig).max()), 1e-12)


def _count(rng, rate: float, seconds: float) -> int:
    return int(rng.poisson(rate * seconds)) if rate > 0 else 0


# --------------------------------------------------------------------------- scene


def _bed(rng, p, sr, n, seconds) -> np.ndarray:
    f, oct_1k, _ = _grid(sr, n)
    env = np.maximum(1.0 + p["bed_mod_depth"] * _curve(rng, n, seconds, p["bed_mod_rate"]), 0.05)
    spec = sp_fft.rfft(rng.standard_normal(n) * env)
    shape_db = p["bed_tilt"] * oct_1k + _peak_db(oct_1k, p["bed_low_hz"], p["bed_low_db"], 1.2)
    shape = 10.0 ** (shape_db / 20.0) * _lowpass(f, p["bed_hicut_hz"], 2) * _highpass(f, 20.0, 2)
    spec *= shape
    return spec / math.sqrt(_power(spec, n))


def _babble(rng, p, sr, n, seconds, talkers: int) -> np.ndarray:
    """Speech-like babble: per talker, glottal pulses and noise under a syllabic envelope."""
    f, oct_1k, t = _grid(sr, n)
    m = int(seconds * 200) + 2  # envelope control rate 200 Hz
    tc = np.linspace(0.0, seconds, m)
    excitation = np.zeros(n)
    noise_env = np.zeros(m)
    for _ in range(talkers):
        syllable_hz = rng.uniform(3.0, 6.5)
        env = (np.sin(2 * np.pi * syllable_hz * tc + rng.uniform(0, 2 * np.pi))
               + rng.uniform(-0.3, 0.5))
        env = np.maximum(env + 0.3 * _curve(rng, m, seconds, 8.0), 0.0) ** 1.5
        env *= (_curve(rng, m, seconds, 1.5) > rng.uniform(-0.9, 0.1))  # pauses between phrases
        env *= rng.uniform(0.3, 1.0)  # distance
        f0 = rng.uniform(85.0, 260.0)
        periods = sr / (f0 * (1.0 + 0.04 * _curve(rng, int(f0 * seconds) + 8, seconds, 4.0)))
        pos = (rng.uniform(0.0, sr / f0) + np.cumsum(periods)).astype(np.int64)
        pos = pos[pos < n]
        excitation[pos] += np.interp(pos / sr, tc, env) * math.sqrt(sr / f0)
        noise_env += env * rng.uniform(0.2, 0.5)
    excitation += rng.standard_normal(n) * np.interp(t, tc, noise_env)
    if not excitation.any():
        return np.zeros(len(f), complex)
    s = p["formant_scale"]
    shape_db = (_peak_db(oct_1k, s * rng.uniform(400, 800), 14.0, 0.35)
                + _peak_db(oct_1k, s * rng.uniform(1000, 2000), 10.0, 0.3)
                + _peak_db(oct_1k, s * rng.uniform(2300, 3200), 7.0, 0.25)
                - 6.0 * np.maximum(oct_1k + 1.0, 0.0))  # -6 dB/octave above 500 Hz
    spec = sp_fft.rfft(excitation) * 10.0 ** (shape_db / 20.0) * _highpass(f, 120.0, 2)
    power = _power(spec, n)
    return spec / math.sqrt(power) if power > 0 else spec


def _events(rng, p, sr, n, seconds) -> np.ndarray:
    """Tonal and impulsive sources in the time domain (levels relative to the bed RMS)."""
    out = np.zeros(n)

    def db(key: str) -> float:  # an event's peak amplitude
        return 10.0 ** (p[key] / 20.0) * rng.uniform(0.5, 1.0)

    def start(length: int) -> int:  # events may begin before the clip (cut at its start)
        return int(rng.integers(-length // 2, n))

    if rng.random() < p["hum_prob"]:  # engines, fans, HVAC
        out += 10.0 ** (p["hum_db"] / 20.0) * _harmonic(
            rng, n, sr, seconds, p["hum_f0"] * rng.uniform(0.9, 1.1), p["hum_harm"], 3.0,
            p["hum_jitter"], p["hum_glide"] * rng.uniform(-1.0, 1.0))
    if rng.random() < p["mains_prob"]:  # electrical hum at the mains frequency and harmonics
        out += 10.0 ** (p["mains_db"] / 20.0) * _harmonic(
            rng, n, sr, seconds, p["mains_hz"], 4, 2.0, 0.001, 0.0)
    if rng.random() < p["whine_prob"]:  # traction motor / inverter whine
        out += 10.0 ** (p["whine_db"] / 20.0) * _harmonic(
            rng, n, sr, seconds, p["whine_hz"] * rng.uniform(0.85, 1.15), 3, 8.0, 0.003,
            p["whine_glide"] * rng.uniform(-1.0, 1.0))

    for _ in range(_count(rng, p["steps_rate"], seconds)):  # footsteps
        sig = _damped(rng, sr, rng.uniform(100, 350), rng.uniform(0.008, 0.025),
                      rng.uniform(0.002, 0.005))
        _add(out, start(len(sig)), db("steps_db") * sig)
    for _ in range(_count(rng, p["clicks_rate"], seconds)):  # clicks, rattles, wheels
        m = max(int(rng.uniform(0.0005, 0.003) * sr), 2)
        sig = rng.standard_normal(m) * np.exp(-np.arange(m) / (m / 4.0))
        _add(out, start(m), db("clicks_db") * sig / max(float(np.abs(sig).max()), 1e-12))
    for _ in range(_count(rng, p["thumps_rate"], seconds)):  # door slams, bumps
        sig = _damped(rng, sr, rng.uniform(40, 120), rng.uniform(0.03, 0.08),
                      rng.uniform(0.004, 0.01))
        _add(out, start(len(sig)), db("thumps_db") * sig)
    for _ in range(_count(rng, p["clacks_rate"], seconds)):  # rail joints: clack-clack
        gap = int(rng.uniform(0.08, 0.2) * sr)
        s0 = start(gap)
        amp = db("clacks_db")
        hz = rng.uniform(150, 500)
        for k in range(2):
            sig = _damped(rng, sr, hz, rng.uniform(0.01, 0.03), 0.003)
            ring = _damped(rng, sr, rng.uniform(1000, 3000), rng.uniform(0.004, 0.012), 0.001)
            _add(out, s0 + k * gap, amp * sig)
            _add(out, s0 + k * gap, 0.4 * amp * ring)

    for _ in range(_count(rng, p["squeal_rate"], seconds)):  # brake squeal
        length = int(rng.uniform(0.15, 0.8) * sr)
        tt = np.arange(length) / sr
        hz = p["squeal_hz"] * rng.uniform(0.8, 1.2)
        inst = hz * (1.0 + 0.015 * np.sin(2 * np.pi * rng.uniform(4, 8) * tt)
                     + rng.uniform(-0.1, 0.1) * tt / tt[-1])
        fade = np.minimum(1.0, np.minimum(tt, tt[-1] - tt) / 0.02)
        sig = _sweep(sr, inst, ((1.0, 1.0), (2.0, 0.3)), rng.uniform(0, 2 * np.pi)) * fade
        _add(out, start(length), db("squeal_db") * sig)
    for _ in range(_count(rng, p["birds_rate"], seconds)):  # bird calls: a few chirps each
        s0 = start(int(0.3 * sr))
        hz = p["birds_hz"] * rng.uniform(0.7, 1.3)
        ratio = rng.uniform(0.5, 1.6)
        amp = db("birds_db")
        for _ in range(int(rng.integers(1, 6))):
            length = int(rng.uniform(0.02, 0.12) * sr)
            tt = np.arange(length) / sr
            inst = hz * (1.0 + (ratio - 1.0) * tt / tt[-1])
            env = np.sin(np.pi * tt / tt[-1]) ** 2
            _add(out, s0, amp * rng.uniform(0.6, 1.0) * env
                 * _sweep(sr, inst, ((1.0, 1.0), (2.0, 0.15)), rng.uniform(0, 2 * np.pi)))
            s0 += length + int(rng.uniform(0.03, 0.12) * sr)
    for _ in range(_count(rng, p["pass_rate"], seconds)):  # passing vehicle (Doppler drop)
        length = int(rng.uniform(0.5, 1.5) * sr)
        tt = np.arange(length) / sr
        mid = tt[-1] / 2
        drop = 1.0 - 2.0 / (1.0 + np.exp(-(tt - mid) / (mid / 5)))  # +1 -> -1 as it passes
        doppler = 1.0 + 0.05 * rng.uniform(0.5, 1.5) * drop
        inst = rng.uniform(60, 180) * doppler
        env = np.exp(-(((tt - mid) / (mid / 2)) ** 2))
        partials = [(h, 10.0 ** (-4.0 * (h - 1) / 20.0)) for h in range(1, 7)]
        sig = _sweep(sr, inst, partials, rng.uniform(0, 2 * np.pi)) * env
        _add(out, start(length), db("pass_db") * sig / max(float(np.abs(sig).max()), 1e-12))
    for _ in range(_count(rng, p["horn_rate"], seconds)):  # car horn: two detuned notes
        length = int(rng.uniform(0.2, 0.6) * sr)
        tt = np.arange(length) / sr
        fade = np.minimum(1.0, np.minimum(tt, tt[-1] - tt) / 0.01)
        hz = rng.uniform(350.0, 500.0)
        partials = [(h, 1.0 / h) for h in range(1, 7)]
        sig = (_sweep(sr, np.full(length, hz), partials, 0.0)
               + _sweep(sr, np.full(length, 1.26 * hz), partials, 1.0)) * fade
        _add(out, start(length), db("horn_db") * sig / max(float(np.abs(sig).max()), 1e-12))
    for _ in range(_count(rng, p["notes_rate"], seconds)):  # music, chimes, bells
        length = int(rng.uniform(0.15, 0.7) * sr)
        tt = np.arange(length) / sr
        hz = p["notes_hz"] * 2.0 ** (int(rng.integers(-7, 8)) / 12.0)
        if rng.random() < p["notes_bell"]:
            partials = ((1.0, 1.0), (2.76, 0.6), (5.40, 0.4), (8.93, 0.25))
            env = np.exp(-tt / rng.uniform(0.2, 0.6))
        else:
            partials = [(h, 1.0 / h) for h in range(1, 6)]
            env = np.exp(-tt / rng.uniform(0.1, 0.5)) * np.minimum(1.0, tt / 0.005)
        sig = _sweep(sr, np.full(length, hz), partials, rng.uniform(0, 2 * np.pi)) * env
        _add(out, start(length), db("notes_db") * sig / max(float(np.abs(sig).max()), 1e-12))
    return out


def _reverb(rng, p, sr, n) -> np.ndarray | None:
    """Spectrum of a diffuse exponential reverberation tail (circular: a 1-s clip is cut from
    a longer recording, so tails of earlier sounds are heard at its start)."""
    rt60 = p["rt60"]
    if rt60 < 0.05:
        return None
    f, _, t = _grid(sr, n)
    tail = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)
    tail[0] = 0.0
    spec = sp_fft.rfft(tail) * _lowpass(f, rng.uniform(2000.0, 6000.0), 1)
    mean = float(np.mean(spec.real ** 2 + spec.imag ** 2))
    return spec * math.sqrt(10.0 ** (p["wet_db"] / 10.0) / mean)


def _render_scene(seed: int, rec: _Recording, sr: int, n: int) -> np.ndarray:
    """The clean scene of one recording as an rfft spectrum, RMS at the scene level."""
    p = _scene_params(seed, rec)
    rng = np.random.default_rng(_seq(seed, _RECORDING, rec.index))
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
    return spec * (level / math.sqrt(_power(spec, n)))


# --------------------------------------------------------------------------- devices


@functools.lru_cache(maxsize=32)
def _device_response(device: str, sr: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(magnitude response, noise-floor spectrum scale) of a device on the rfft grid."""
    d = _DEVICE_TABLE[device]
    f, oct_1k, _ = _grid(sr, n)
    band = _highpass(f, d.low_cut_hz, 4) * _lowpass(f, d.high_cut_hz, 8)
    in_band = np.log2(np.clip(f, d.low_cut_hz, d.high_cut_hz) / 1000.0)  # tilt only within the band
    gain_db = d.tilt_db * in_band + sum(_peak_db(oct_1k, hz, g, w) for hz, g, w in d.resonances)
    h = 10.0 ** ((gain_db + d.gain_db) / 20.0) * band
    h[0] = 0.0
    # Self-noise, band-limited like the signal. Complex white noise with unit-variance parts
    # has E|X_k|^2 = 2, so a spectrum scaled by s_k has time-domain mean square about
    # 4 sum(s_k^2) / n^2: s is set so that the full-band noise sits at noise_dbfs.
    shape = 10.0 ** (d.noise_tilt_db * in_band / 20.0) * _highpass(f, 20.0, 2)
    shape[0] = 0.0
    scale = 10.0 ** (d.noise_dbfs / 20.0) * n / (2.0 * math.sqrt(float(np.sum(shape ** 2))))
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
    level = np.sqrt(np.mean(y[:m * hop].reshape(m, hop) ** 2, axis=1) + 1e-20)
    threshold = knee * math.sqrt(float(np.mean(y * y)))
    gain = np.minimum(1.0, (threshold / level) ** (1.0 - 1.0 / ratio))
    gain = np.minimum(gain, np.concatenate([gain[1:], gain[-1:]]))  # attack one frame early
    centres = (np.arange(m) + 0.5) * hop
    return y * np.interp(np.arange(len(y)), centres, gain)


def _render_device(scene: np.ndarray, device: str, rng: np.random.Generator, sr: int,
                   n: int) -> np.ndarray:
    """One device's recording of a clean scene spectrum: float samples, peak <= -1 dBFS."""
    d = _DEVICE_TABLE[device]
    h, noise = _device_response(device, sr, n)
    k = len(h)
    spec = scene * (h * 10.0 ** (rng.uniform(-1.0, 1.0) / 20.0))  # placement: +-1 dB
    spec = spec + (rng.standard_normal(k) + 1j * rng.standard_normal(k)) * noise
    y = sp_fft.irfft(spec, n)
    if d.knee > 0:  # automatic gain control of cheap devices
        y = _compress(y, sr, d.knee)
    if d.buzz_hz > 0:  # electrical interference
        t = _grid(sr, n)[2]
        phase = 2.0 * np.pi * d.buzz_hz * t + rng.uniform(0, 2 * np.pi)
        amp = 10.0 ** (d.buzz_dbfs / 20.0)
        for harmonic in (1, 2, 3):
            if harmonic * d.buzz_hz < 0.45 * sr:
                y = y + amp / harmonic * np.sin(harmonic * phase)
    peak = float(np.abs(y).max())
    if peak > _PEAK:
        y = y * (_PEAK / peak)
    return y


# --------------------------------------------------------------------------- files


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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(3)
            w.setframerate(sr)
            w.writeframes(_wav_bytes(y))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass(frozen=True)
class _Job:
    root: str
    seed: int
    sample_rate_hz: int
    n_samples: int


def _render_recordings(job: _Job, recordings: Sequence[_Recording]) -> int:
    """Worker: render and write every clip of ``recordings``; returns the clip count."""
    root = Path(job.root)
    sr, n = job.sample_rate_hz, job.n_samples
    done = 0
    for rec in recordings:
        scene = _render_scene(job.seed, rec, sr, n)
        for clip_index, device, filename in rec.clips:
            rng = np.random.default_rng(_seq(job.seed, _CLIP, clip_index))
            write_wav24(root / filename, _render_device(scene, device, rng, sr, n), sr)
            done += 1
    return done


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _tsv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "".join("\t".join(r) + "\n" for r in [tuple(header), *rows])


# --------------------------------------------------------------------------- public API


def _check(n_clips, seed, sample_rate_hz, clip_seconds, n_cities, workers) -> int:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(n_clips) or n_clips < MIN_CLIPS:
        raise ValueError(f"n_clips={n_clips!r}: need an integer >= {MIN_CLIPS} (every class and "
                         "device in both splits)")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed={seed!r}: need a non-negative integer")
    if not is_int(sample_rate_hz) or not 8000 <= sample_rate_hz <= 192000:
        raise ValueError(f"sample_rate_hz={sample_rate_hz!r}: need an integer in [8000, 192000]")
    if not isinstance(clip_seconds, (int, float)) or isinstance(clip_seconds, bool) \
            or not math.isfinite(clip_seconds) or clip_seconds <= 0:
        raise ValueError(f"clip_seconds={clip_seconds!r}: need a positive number")
    n_samples = int(round(sample_rate_hz * clip_seconds))
    if n_samples < 256:
        raise ValueError(f"clip_seconds={clip_seconds!r}: {n_samples} samples at "
                         f"{sample_rate_hz} Hz; need at least 256")
    if not is_int(n_cities) or not 1 <= n_cities <= len(CITIES):
        raise ValueError(f"n_cities={n_cities!r}: need an integer in [1, {len(CITIES)}]")
    if not is_int(workers) or workers < 0:
        raise ValueError(f"workers={workers!r}: need an integer >= 0 (0 = all cores)")
    return n_samples


def _marker_params(n_clips, seed, sample_rate_hz, clip_seconds, n_cities) -> dict:
    return {"generator": GENERATOR, "version": GENERATOR_VERSION, "n_clips": int(n_clips),
            "seed": int(seed), "sample_rate_hz": int(sample_rate_hz),
            "clip_seconds": float(clip_seconds), "n_cities": int(n_cities)}


def read_marker(root: str | os.PathLike) -> dict | None:
    """The completion marker of a generated set, or None when absent or unreadable."""
    try:
        return json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, params: dict) -> bool:
    marker = read_marker(root)
    if marker is None or marker.get("params") != params:
        return False
    if not all((root / f).is_file() for f in (META_FILE, *SPLIT_FILES.values())):
        return False
    audio = root / "audio"
    if not audio.is_dir():
        return False
    n_wav = sum(1 for e in os.scandir(audio)
                if e.name.endswith(".wav") and not e.name.startswith("."))
    return n_wav == params["n_clips"]


def _reset(root: Path) -> None:
    """Empty a directory this module owns (or create it); refuse to touch anything else."""
    if root.exists():
        if not root.is_dir():
            raise NotADirectoryError(f"synthetic dataset root {root} exists and is not a directory")
        entries = list(root.iterdir())
        if entries and not (root / OWNER).is_file():
            raise FileExistsError(
                f"synthetic dataset root {root} is not empty and was not written by {GENERATOR} "
                f"(no {OWNER}); refusing to overwrite it -- choose another directory")
        if (root / MARKER).exists():
            (root / MARKER).unlink()  # first: a half-emptied directory must not look complete
        for entry in entries:
            if entry.name in (OWNER, MARKER):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(root / OWNER, json.dumps({"generator": GENERATOR}) + "\n")


def generate(root: str | os.PathLike, *, n_clips: int, seed: int, sample_rate_hz: int = 44100,
             clip_seconds: float = 1.0, n_cities: int = 6, workers: int = 0,
             progress: bool = True) -> Path:
    """Write the synthetic dataset under ``root`` (or reuse it when already complete).

    Args:
      root: the dataset directory. Created if missing; if it exists it must be empty or a
        directory this function wrote before (it is then emptied and rewritten unless its
        completion marker matches the parameters).
      n_clips: clips in the whole set (train + evaluate), at least ``MIN_CLIPS``.
      seed: non-negative integer; the bytes written depend only on the parameters.
      sample_rate_hz: sampling rate of the WAV files.
      clip_seconds: length of every clip.
      n_cities: how many of ``CITIES`` the locations are spread over (1-10).
      workers: generator processes; 0 = ``os.cpu_count()``, 1 = in this process.
      progress: show a tqdm progress bar.

    With ``workers`` > 1 the clips are rendered in "spawn" worker processes, so a script that
    calls this at import time needs the usual ``if __name__ == "__main__":`` guard.

    Returns:
      ``Path(root)``.

    Raises:
      ValueError: a parameter is out of range (the message names it).
      FileExistsError: ``root`` holds other files than a set written by this module.
    """
    n_samples = _check(n_clips, seed, sample_rate_hz, clip_seconds, n_cities, workers)
    root = Path(root)
    params = _marker_params(n_clips, seed, sample_rate_hz, clip_seconds, n_cities)
    if _is_complete(root, params):
        logger.info("reusing the synthetic dataset at %s (%d clips, seed %d)", root, n_clips, seed)
        return root
    if (root / MARKER).exists():
        logger.info("synthetic dataset at %s has other parameters; regenerating", root)

    started = time.perf_counter()
    recordings = _plan(n_clips, seed, n_cities)
    _reset(root)
    (root / "audio").mkdir()
    (root / "evaluation_setup").mkdir()
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(16, len(recordings) // (4 * workers)))
    chunks = [recordings[i:i + chunk] for i in range(0, len(recordings), chunk)]
    workers = min(workers, len(chunks))
    logger.info("generating %d synthetic clips (%d recordings) in %s with %d worker(s)",
                n_clips, len(recordings), root, workers)

    from tqdm.auto import tqdm

    job = _Job(str(root), int(seed), int(sample_rate_hz), n_samples)
    with tqdm(total=n_clips, unit="clip", desc="synthetic dataset", disable=not progress) as bar:
        if workers == 1:
            for part in chunks:
                bar.update(_render_recordings(job, part))
        else:
            # "spawn" is safe with threads (TensorFlow) in the parent; an executor (unlike
            # multiprocessing.Pool) fails instead of hanging when a worker process dies
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = [pool.submit(_render_recordings, job, part) for part in chunks]
                try:
                    for future in as_completed(futures):
                        bar.update(future.result())
                except BrokenProcessPool as err:
                    raise RuntimeError(
                        f"a synthetic-dataset worker process died while writing {root}; nothing "
                        "was marked complete. If generate() runs from a script, call it under "
                        "'if __name__ == \"__main__\":' (worker processes re-import the "
                        "script)") from err
                finally:
                    for future in futures:
                        future.cancel()

    rows = sorted((filename, CLASSES[rec.label], rec.identifier, device.lower(), rec.split)
                  for rec in recordings for _, device, filename in rec.clips)
    meta_columns = ("filename", "scene_label", "identifier", "source_label")
    _write_text_atomic(root / META_FILE, _tsv(meta_columns, [r[:4] for r in rows]))
    train = [r[:2] for r in rows if r[4] == "train"]
    evaluate = [r[:2] for r in rows if r[4] == "evaluate"]
    _write_text_atomic(root / SPLIT_FILES["train"], _tsv(("filename", "scene_label"), train))
    _write_text_atomic(root / SPLIT_FILES["evaluate"], _tsv(("filename", "scene_label"), evaluate))
    _write_text_atomic(root / SPLIT_FILES["test"], _tsv(("filename",), [r[:1] for r in evaluate]))

    counts = {"clips": n_clips, "recordings": len(recordings), "train": len(train),
              "evaluate": len(evaluate),
              "devices": {d: sum(1 for r in rows if r[3] == d.lower()) for d in DEVICES},
              "locations": len({r[2] for r in rows})}
    _write_text_atomic(root / MARKER,
                       json.dumps({"params": params, "counts": counts}, indent=2) + "\n")
    logger.info("wrote %d synthetic clips to %s in %.1f s", n_clips, root,
                time.perf_counter() - started)
    return root
