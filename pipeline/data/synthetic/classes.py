"""The scene classes of the synthetic set: parameter ranges per class and their draw per recording.

Each parameter is a (low, high) range. A location draws a value in its class's range
(triangular, so locations of related classes overlap but cluster at the centre); a segment
moves it by up to +-20 % of the range width; a city shifts the overall level, the bed's
tilt and high cut, the babble level and the voices' formants. Rates are events per second,
levels in dB relative to the noise bed (RMS for continuous sources, peak for events),
"prob" the chance that a recording holds the source at all. Parameters a class does not
name take the value of ``DEFAULT_RANGES``.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.labels import CLASSES
from pipeline.data.synthetic.plan import Recording, Stream, stream_rng

DEFAULT_RANGES = {
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

CLASS_RANGES = {
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

_PARAM_NAMES = tuple(DEFAULT_RANGES)
# [class, param] lower and upper bounds of the class ranges
_LOW, _HIGH = np.array([[[CLASS_RANGES[c].get(k, DEFAULT_RANGES[k])[i] for k in _PARAM_NAMES]
                         for c in CLASSES] for i in (0, 1)])
_NONNEGATIVE = np.array([k.endswith(("_rate", "_prob", "_depth", "_bell"))
                         or k in ("talkers", "rt60") for k in _PARAM_NAMES])


def scene_params(seed: int, rec: Recording) -> dict:
    """The recording's scene parameters: class range -> location -> segment, city shifts."""
    low, high = _LOW[rec.label], _HIGH[rec.label]
    width = high - low
    loc_rng = stream_rng(seed, Stream.LOCATION, rec.location)
    # triangular on [low, high]: locations overlap between classes but cluster at the centre
    value = low + width * loc_rng.random((2, len(_PARAM_NAMES))).mean(axis=0)
    seg_rng = stream_rng(seed, Stream.SEGMENT, rec.segment)
    value = value + width * seg_rng.uniform(-0.2, 0.2, len(_PARAM_NAMES))
    value = np.clip(value, low - 0.1 * width, high + 0.1 * width)
    value[_NONNEGATIVE] = np.maximum(value[_NONNEGATIVE], 0.0)
    p = dict(zip(_PARAM_NAMES, value.tolist()))
    city_rng = stream_rng(seed, Stream.CITY, rec.city)
    p["level_db"] += city_rng.uniform(-2.0, 2.0)
    p["bed_tilt"] += city_rng.uniform(-0.7, 0.7)
    p["bed_hicut_hz"] *= city_rng.uniform(0.85, 1.15)
    p["babble_db"] += city_rng.uniform(-2.0, 2.0)
    p["formant_scale"] = city_rng.uniform(0.94, 1.06)  # voices differ a little between cities
    p["mains_hz"] = 50.0
    return p
