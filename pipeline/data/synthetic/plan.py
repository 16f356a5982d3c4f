"""Which recordings the synthetic set holds: split, class, city, location, segment and devices.

The plan is drawn from its own random stream, so it depends only on (n_clips, seed,
n_cities). Every other random stream of the generator is :func:`stream_rng` of the seed, a
:class:`Stream` tag and an index, which keeps the streams independent of each other and of
the number of worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.labels import CLASSES, DEVICES, SEEN_DEVICES

CITIES = ("barcelona", "helsinki", "lisbon", "london", "lyon", "milan", "paris", "prague", "stockholm", "vienna")

MIN_CLIPS = 30  # ten train recordings (A + one other device) and ten evaluate clips
TRAIN_FRACTION = 0.7
SUBS_PER_SEGMENT = 4  # one-second sub-clips cut from one recorded segment
SEGMENTS_PER_LOCATION = 3
MIN_LOCATIONS = 4  # per class and split, when there are enough recordings


class Stream:
    """Random-stream tags: ``SeedSequence([seed, tag, index])`` keeps every stream independent."""

    PLAN, CITY, LOCATION, SEGMENT, RECORDING, CLIP = range(6)


def stream_rng(seed: int, tag: int, index: int = 0) -> np.random.Generator:
    """The random generator of one stream (``tag`` from :class:`Stream`, ``index`` within it)."""
    return np.random.default_rng(np.random.SeedSequence([seed, tag, index]))


@dataclass(frozen=True)
class Recording:
    """One clean one-second scene and the clips (one per device) rendered from it."""

    index: int
    label: int
    city: int
    identifier: str  # <city>-<location number>
    location: int  # global location index (random stream)
    segment: int  # global segment index (random stream)
    split: str
    clips: tuple  # ((clip index, device, relative filename), ...)


def split_sizes(n_clips: int) -> tuple[int, int]:
    n_eval = max(len(CLASSES), int(round(n_clips * (1.0 - TRAIN_FRACTION))))
    return n_clips - n_eval, n_eval


def plan_recordings(n_clips: int, seed: int, n_cities: int) -> list[Recording]:
    """Which recordings exist, their class, location, segment and devices (deterministic)."""
    rng = stream_rng(seed, Stream.PLAN)
    n_train, n_eval = split_sizes(n_clips)
    n_classes = len(CLASSES)

    # Train: every recording on device A plus one of the other five (cycled), so A holds
    # about half the train clips; an odd count leaves the last recording on A alone.
    n_rec_train = (n_train + 1) // 2
    others = SEEN_DEVICES[1:]
    other_seq = np.concatenate([rng.permutation(len(others)) for _ in range(-(-n_rec_train // len(others)))])
    train_devices = []
    for r in range(n_rec_train):
        devs = ("A",) if (r == n_rec_train - 1 and n_train % 2) else ("A", others[other_seq[r]])
        train_devices.append(devs)

    # Evaluate: each recording on three devices (on one for tiny sets), the nine devices
    # taken in turn from successive random permutations, so they are equally frequent.
    per_rec = 3 if n_eval >= 3 * n_classes else 1
    n_rec_eval = -(-n_eval // per_rec)
    dev_seq = np.concatenate([rng.permutation(len(DEVICES)) for _ in range(-(-n_rec_eval * per_rec // len(DEVICES)))])
    eval_devices = []
    for r in range(n_rec_eval):
        take = min(per_rec, n_eval - r * per_rec)
        eval_devices.append(tuple(DEVICES[d] for d in dev_seq[r * per_rec : r * per_rec + take]))

    # Classes balanced within each split; recordings of one class grouped into locations of
    # up to SEGMENTS_PER_LOCATION segments of up to SUBS_PER_SEGMENT sub-clips.
    rows = []  # (split, label, devices)
    for split, devices in (("train", train_devices), ("evaluate", eval_devices)):
        labels = rng.permutation(np.arange(len(devices)) % n_classes)
        rows.extend((split, int(lab), devs) for lab, devs in zip(labels, devices, strict=True))

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
    numbers = {
        c: iter(
            sorted(
                rng.choice(np.arange(100, 100 + max(900, 10 * int(per_city[c]))), size=int(per_city[c]), replace=False)
            )
        )
        for c in range(n_cities)
    }
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
                recordings.append(
                    Recording(len(recordings), label, city, identifier, loc_index, seg_index, split, tuple(clips))
                )
            seg_index += 1
    assert clip_index == n_clips, (clip_index, n_clips)
    return recordings
