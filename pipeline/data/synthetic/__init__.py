"""The built-in synthetic dataset, in the on-disk layout of TAU Urban Acoustic Scenes 2022 Mobile.

The real development set is 230,350 one-second clips of ten scene classes recorded in ten
European cities by three real devices (A, B, C) and simulated from device A through the
impulse responses of six more (S1-S6). This package writes a deterministic stand-in with
the same files and CSVs, so that :mod:`pipeline.data.tau` reads both the same way::

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

    from pipeline.data import synthetic
    root = synthetic.generate("work/data/synthetic", n_clips=2000, seed=42)

Modules, by concern: :mod:`~pipeline.data.synthetic.plan` (which recordings exist, random
streams), :mod:`~pipeline.data.synthetic.classes` (class parameter ranges and their draw),
:mod:`~pipeline.data.synthetic.dsp` (signal helpers), :mod:`~pipeline.data.synthetic.scenes` (the
clean scene of a recording), :mod:`~pipeline.data.synthetic.devices` (device responses),
:mod:`~pipeline.data.synthetic.wav` (24-bit WAV output), :mod:`~pipeline.data.synthetic.layout`
(CSVs, ownership file, completion record) and :mod:`~pipeline.data.synthetic.build`
(``generate``: arguments, reuse, worker processes).
"""

from pipeline.core.labels import CLASSES, DEVICES, SEEN_DEVICES, SPLIT_FILES, UNSEEN_DEVICES
from pipeline.data.synthetic.build import generate
from pipeline.data.synthetic.devices import PEAK_DBFS
from pipeline.data.synthetic.layout import (
    GENERATOR,
    GENERATOR_VERSION,
    MARKER,
    META_FILE,
    OWNER,
    read_completion_record,
)
from pipeline.data.synthetic.plan import (
    CITIES,
    MIN_CLIPS,
    MIN_LOCATIONS,
    SEGMENTS_PER_LOCATION,
    SUBS_PER_SEGMENT,
    TRAIN_FRACTION,
)
from pipeline.data.synthetic.wav import write_wav24

__all__ = [
    "CITIES",
    "CLASSES",
    "DEVICES",
    "GENERATOR",
    "GENERATOR_VERSION",
    "MARKER",
    "META_FILE",
    "MIN_CLIPS",
    "MIN_LOCATIONS",
    "OWNER",
    "PEAK_DBFS",
    "SEEN_DEVICES",
    "SEGMENTS_PER_LOCATION",
    "SPLIT_FILES",
    "SUBS_PER_SEGMENT",
    "TRAIN_FRACTION",
    "UNSEEN_DEVICES",
    "generate",
    "read_completion_record",
    "write_wav24",
]
