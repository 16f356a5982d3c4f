"""Tests of pipeline.data.synthetic: the built-in dataset in the TAU22 layout.

Most checks run on a 200-clip set at 16 kHz and 0.5 s (fast); one set is written at the
real format (44.1 kHz, 1 s) at the minimum size, and one 300-clip set at 22.05 kHz checks
that the classes are learnable by a nearest-class-mean classifier but not trivially so.
WAV files are read back with the stdlib ``wave`` module and an independent 24-bit decoder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import wave
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import synthetic

SMALL = dict(n_clips=200, seed=1, sample_rate_hz=16000, clip_seconds=0.5, n_cities=6)
TINY = dict(n_clips=30, seed=3, sample_rate_hz=8000, clip_seconds=0.25, n_cities=3)
FILENAME = re.compile(
    r"^audio/(?P<scene>[a-z_]+)-(?P<city>[a-z]+)-(?P<location>\d+)"
    r"-(?P<segment>\d+)-(?P<sub>\d+)-(?P<device>a|b|c|s[1-6])\.wav$"
)
PEAK = 10.0 ** (-1.0 / 20.0)


# --------------------------------------------------------------------------- helpers


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and "\r" not in text and "," not in text.splitlines()[0]
    lines = text.splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def read_pcm24(path: Path) -> tuple[np.ndarray, int]:
    """Decode a mono 24-bit PCM WAV with the stdlib (independent of the generator's packing)."""
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getcomptype()) == (1, 3, "NONE")
        raw = np.frombuffer(w.readframes(w.getnframes()), np.uint8).reshape(-1, 3).astype(np.int32)
        sr = w.getframerate()
    v = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
    return np.where(v >= 1 << 23, v - (1 << 24), v), sr


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def meta_rows(root: Path) -> list[dict]:
    header, rows = read_tsv(root / "meta.csv")
    return [dict(zip(header, r, strict=True)) for r in rows]


def split_of(root: Path) -> dict[str, str]:
    out = {}
    for split in ("train", "evaluate"):
        _, rows = read_tsv(root / "evaluation_setup" / f"fold1_{split}.csv")
        out.update({r[0]: split for r in rows})
    return out


def band_features(x: np.ndarray, sr: int) -> np.ndarray:
    """Spectral shape (mean log energy in 32 log-spaced bands, level removed) and its spread."""
    n, hop = 1024, 512
    frames = x[np.arange(n)[None, :] + hop * np.arange(1 + (len(x) - n) // hop)[:, None]]
    power = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)) ** 2
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    edges = np.geomspace(50.0, sr / 2.0, 33)
    bands = [power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in itertools.pairwise(edges)]
    bands = np.stack(bands, axis=1)
    log = np.log(bands + 1e-12)
    mean = log.mean(0)
    return np.concatenate([mean - mean.mean(), log.std(0)])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small") / "set"
    return synthetic.generate(root, workers=1, progress=False, **SMALL)


@pytest.fixture(scope="module")
def full_rate(tmp_path_factory) -> Path:
    """The real format (44.1 kHz, 1 s, 24-bit) at the smallest allowed size."""
    return synthetic.generate(
        tmp_path_factory.mktemp("full") / "set", n_clips=synthetic.MIN_CLIPS, seed=7, workers=1, progress=False
    )


# --------------------------------------------------------------------------- layout


def test_generator_tables_cover_the_label_lists():
    """The class and device lists are shared with the reader (``pipeline.core.labels``); what
    can drift is the generator's own tables: every class needs its parameter ranges, every
    device its response, and a misspelt parameter name in a class's ranges would otherwise
    be ignored silently (the class would get the default range)."""
    from pipeline.data.synthetic import classes, devices

    assert len(synthetic.CLASSES) == 10 and synthetic.CLASSES[3] == "metro_station"
    assert set(synthetic.SEEN_DEVICES) | set(synthetic.UNSEEN_DEVICES) == set(synthetic.DEVICES)
    assert not set(synthetic.SEEN_DEVICES) & set(synthetic.UNSEEN_DEVICES)
    assert sorted(classes.CLASS_RANGES) == sorted(synthetic.CLASSES)
    assert sorted(devices.DEVICE_TABLE) == sorted(synthetic.DEVICES)
    for name, ranges in classes.CLASS_RANGES.items():
        unknown = set(ranges) - set(classes.DEFAULT_RANGES)
        assert not unknown, f"{name}: unknown parameters {sorted(unknown)}"
    for name, ranges in [("defaults", classes.DEFAULT_RANGES), *classes.CLASS_RANGES.items()]:
        for key, (low, high) in ranges.items():
            assert low <= high, f"{name}.{key}: ({low}, {high})"


def test_layout_and_csv_headers(small):
    assert sorted(p.name for p in small.iterdir()) == sorted(
        [".complete.json", ".synthetic.json", "audio", "evaluation_setup", "meta.csv", "splits"]
    )
    assert sorted(p.name for p in (small / "evaluation_setup").iterdir()) == [
        "fold1_evaluate.csv",
        "fold1_test.csv",
        "fold1_train.csv",
    ]
    expected = {
        "meta.csv": ["filename", "scene_label", "identifier", "source_label"],
        "evaluation_setup/fold1_train.csv": ["filename", "scene_label"],
        "evaluation_setup/fold1_evaluate.csv": ["filename", "scene_label"],
        "evaluation_setup/fold1_test.csv": ["filename"],
    }
    for name, columns in expected.items():
        header, rows = read_tsv(small / name)
        assert header == columns, name
        assert rows and all(len(r) == len(columns) for r in rows), name
        assert [r[0] for r in rows] == sorted(r[0] for r in rows), f"{name} not sorted"
        assert len({r[0] for r in rows}) == len(rows), f"{name} has duplicates"
    marker = json.loads((small / ".complete.json").read_text())
    assert marker["params"] == {"generator": "pipeline.data.synthetic", "version": synthetic.GENERATOR_VERSION, **SMALL}
    assert marker["counts"]["clips"] == SMALL["n_clips"]


def test_filenames_agree_with_meta_and_exist(small):
    rows = meta_rows(small)
    assert len(rows) == SMALL["n_clips"]
    cities = set(synthetic.CITIES[: SMALL["n_cities"]])
    for row in rows:
        m = FILENAME.match(row["filename"])
        assert m, row["filename"]
        assert m["scene"] == row["scene_label"] and row["scene_label"] in synthetic.CLASSES
        assert f"{m['city']}-{m['location']}" == row["identifier"]
        assert m["device"] == row["source_label"]
        assert m["city"] in cities
        assert int(m["sub"]) < synthetic.SUBS_PER_SEGMENT
        assert (small / row["filename"]).is_file()
    on_disk = sorted(f"audio/{p.name}" for p in (small / "audio").iterdir())
    assert on_disk == sorted(r["filename"] for r in rows)  # nothing extra, no temporary files
    # a location belongs to one scene class, a segment to one location
    scene_of = defaultdict(set)
    for row in rows:
        scene_of[row["identifier"]].add(row["scene_label"])
    assert all(len(s) == 1 for s in scene_of.values())


def test_wav_format_small(small):
    for row in meta_rows(small):
        with wave.open(str(small / row["filename"]), "rb") as w:
            assert w.getnchannels() == 1
            assert w.getsampwidth() == 3
            assert w.getframerate() == 16000
            assert w.getnframes() == 8000
            assert w.getcomptype() == "NONE"


def test_full_rate_minimum_set(full_rate):
    """44.1 kHz, 1 s, 24-bit mono; even at 30 clips every class and device is present."""
    rows = meta_rows(full_rate)
    assert len(rows) == 30
    split = split_of(full_rate)
    for row in rows:
        samples, sr = read_pcm24(full_rate / row["filename"])
        assert sr == 44100 and samples.shape == (44100,)
        assert np.abs(samples).max() <= PEAK * 2**23
        assert np.abs(samples).max() > 2**12  # not silent
    for s in ("train", "evaluate"):
        classes = {r["scene_label"] for r in rows if split[r["filename"]] == s}
        assert classes == set(synthetic.CLASSES)
    assert {r["source_label"] for r in rows if split[r["filename"]] == "evaluate"} == {
        d.lower() for d in synthetic.DEVICES
    }
    assert {r["source_label"] for r in rows if split[r["filename"]] == "train"} == {
        d.lower() for d in synthetic.SEEN_DEVICES
    }


def test_reader_accepts_the_set(small):
    from pipeline.data import tau as data

    index = data.read_index(small)
    assert len(index) == SMALL["n_clips"]  # the test files are the evaluate files
    assert set(index.split) == {"train", "evaluate"}
    assert set(index.bits) == {24} and set(index.sample_rate) == {16000}
    # the reader's view of the labels: every class in both splits, the seen devices in train,
    # all nine in evaluate, label ids in CLASSES order
    for split, devices in (("train", synthetic.SEEN_DEVICES), ("evaluate", synthetic.DEVICES)):
        part = index[index.split == split]
        assert set(part.scene_label) == set(synthetic.CLASSES), split
        assert set(part.device) == set(devices), split
    assert list(index.label) == [synthetic.CLASSES.index(s) for s in index.scene_label]


# --------------------------------------------------------------------------- splits


def test_split_sizes_and_devices(small):
    rows = meta_rows(small)
    split = split_of(small)
    assert set(split) == {r["filename"] for r in rows}
    train = [r for r in rows if split[r["filename"]] == "train"]
    evaluate = [r for r in rows if split[r["filename"]] == "evaluate"]
    assert (len(train), len(evaluate)) == (140, 60)  # 70 % / 30 %
    train_dev = Counter(r["source_label"] for r in train)
    eval_dev = Counter(r["source_label"] for r in evaluate)
    assert train_dev["a"] == 70  # one A clip per train recording: half of the split
    assert set(train_dev) == {"a", "b", "c", "s1", "s2", "s3"}
    assert (
        max(train_dev[d] for d in ("b", "c", "s1", "s2", "s3"))
        - min(train_dev[d] for d in ("b", "c", "s1", "s2", "s3"))
        <= 1
    )
    assert set(eval_dev) == {d.lower() for d in synthetic.DEVICES}
    assert max(eval_dev.values()) - min(eval_dev.values()) <= 1  # nine devices equally


def test_unseen_devices_only_in_evaluate_and_test(small):
    split = split_of(small)
    _, test_rows = read_tsv(small / "evaluation_setup" / "fold1_test.csv")
    test_files = {r[0] for r in test_rows}
    for row in meta_rows(small):
        if row["source_label"] in ("s4", "s5", "s6"):
            assert split[row["filename"]] == "evaluate" and row["filename"] in test_files


def test_test_csv_lists_the_evaluate_files(small):
    _, evaluate = read_tsv(small / "evaluation_setup" / "fold1_evaluate.csv")
    _, test = read_tsv(small / "evaluation_setup" / "fold1_test.csv")
    assert [r[0] for r in test] == [r[0] for r in evaluate]


def test_locations_disjoint_and_classes_in_both_splits(small):
    rows = meta_rows(small)
    split = split_of(small)
    locations = {s: {r["identifier"] for r in rows if split[r["filename"]] == s} for s in ("train", "evaluate")}
    assert locations["train"] and locations["evaluate"]
    assert not locations["train"] & locations["evaluate"]
    for s in ("train", "evaluate"):
        in_split = [r for r in rows if split[r["filename"]] == s]
        assert {r["scene_label"] for r in in_split} == set(synthetic.CLASSES)
        # several locations per class, so the evaluate split is not one place per class
        places = {(r["identifier"], r["scene_label"]) for r in in_split}
        per_class = Counter(scene for _, scene in places)
        assert min(per_class.values()) >= 2


def test_one_recording_is_heard_through_several_devices(small):
    """Clips differing only in the device share the clean scene: their frame energies move
    together (same events), unlike clips of different recordings."""
    groups = defaultdict(list)
    for row in meta_rows(small):
        groups[row["filename"].rsplit("-", 1)[0]].append(row["filename"])
    sizes = Counter(len(v) for v in groups.values())
    assert sizes[2] >= 60 and sizes[3] >= 15  # train: A + one device; evaluate: three devices
    for files in groups.values():
        devices = [f.rsplit("-", 1)[1] for f in files]
        assert len(set(devices)) == len(devices)

    def envelope(f):
        x, _ = read_pcm24(small / f)
        frames = x[: len(x) // 160 * 160].reshape(-1, 160).astype(float)
        return 10 * np.log10(np.mean(frames**2, axis=1) + 1.0)

    pairs = [v[:2] for v in groups.values() if len(v) >= 2][:40]
    same = [np.corrcoef(envelope(a), envelope(b))[0, 1] for a, b in pairs]
    other = [np.corrcoef(envelope(pairs[i][0]), envelope(pairs[i + 1][1]))[0, 1] for i in range(len(pairs) - 1)]
    assert np.median(same) > 0.6
    assert abs(np.median(other)) < 0.3


# --------------------------------------------------------------------------- audio


def test_no_clipping_and_levels_vary(small):
    rms_db = []
    for row in meta_rows(small):
        x, _ = read_pcm24(small / row["filename"])
        assert np.abs(x).max() <= PEAK * 2**23
        rms_db.append(20 * np.log10(np.sqrt(np.mean(x.astype(float) ** 2)) / 2**23))
    assert max(rms_db) < -10.0
    assert np.percentile(rms_db, 90) - np.percentile(rms_db, 10) > 6.0
    assert min(rms_db) > -70.0


def test_devices_have_distinct_band_limits(small):
    """S5 is band-limited to ~5.5 kHz, A and B reach beyond 13 kHz: the 7-8 kHz energy relative to
    1-3 kHz is far lower on S5 (measured about 18 dB) and close between A and B (about 1 dB)."""
    ratio = defaultdict(list)
    for row in meta_rows(small):
        x, sr = read_pcm24(small / row["filename"])
        power = np.abs(np.fft.rfft(x.astype(float))) ** 2
        freqs = np.fft.rfftfreq(len(x), 1.0 / sr)
        ratio[row["source_label"]].append(
            10 * np.log10(power[freqs > 7000].sum() / power[(freqs > 1000) & (freqs < 3000)].sum())
        )
    mean = {d: float(np.mean(v)) for d, v in ratio.items()}
    assert mean["a"] - mean["s5"] > 12.0
    assert abs(mean["a"] - mean["b"]) < 5.0


def test_wav_writer_round_trip(tmp_path):
    """24-bit packing: exact integers back through the stdlib reader and soundfile."""
    sf = pytest.importorskip("soundfile")
    codes = np.array([0, 1, -1, 255, 256, -256, 65535, -65536, 2**23 - 1, -(2**23 - 1), 123456, -7654321])
    path = tmp_path / "x.wav"
    synthetic.write_wav24(path, codes / (2**23 - 1), 22050)
    back, sr = read_pcm24(path)
    assert sr == 22050
    np.testing.assert_array_equal(back, codes)
    data, sr2 = sf.read(path, dtype="int32")
    assert sr2 == 22050 and sf.info(path).subtype == "PCM_24"
    np.testing.assert_array_equal(data >> 8, codes)
    assert [p.name for p in tmp_path.iterdir()] == ["x.wav"]  # no temporary file left


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_any_worker_count(small, tmp_path):
    again = synthetic.generate(tmp_path / "again", workers=2, progress=False, **SMALL)
    assert tree_digest(again) == tree_digest(small)


def test_different_seed_different_audio(small, tmp_path):
    other = synthetic.generate(tmp_path / "other", workers=1, progress=False, **{**SMALL, "seed": 2})
    a, b = tree_digest(small), tree_digest(other)
    assert a["meta.csv"] != b["meta.csv"]
    audio_a = {v for k, v in a.items() if k.startswith("audio/")}
    audio_b = {v for k, v in b.items() if k.startswith("audio/")}
    assert len(audio_a) == len(audio_b) == SMALL["n_clips"] and not audio_a & audio_b


# --------------------------------------------------------------------------- reuse / regeneration


def test_reuse_when_complete(tmp_path, caplog):
    root = synthetic.generate(tmp_path / "d", workers=1, progress=False, **TINY)
    first = tree_digest(root)
    some = next((root / "audio").iterdir())
    stamp = some.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="pipeline.data.synthetic"):
        assert synthetic.generate(root, workers=1, progress=False, **TINY) == root
    assert "reusing" in caplog.text
    assert some.stat().st_mtime_ns == stamp  # not rewritten
    assert tree_digest(root) == first


def test_regenerated_when_marker_missing(tmp_path):
    root = synthetic.generate(tmp_path / "d", workers=1, progress=False, **TINY)
    first = tree_digest(root)
    (root / ".complete.json").unlink()
    (root / "audio" / "leftover-from-a-killed-run.wav").write_bytes(b"half")
    some = sorted((root / "audio").iterdir())[0]
    os.utime(some, ns=(0, 0))
    synthetic.generate(root, workers=1, progress=False, **TINY)
    assert some.stat().st_mtime_ns != 0  # rewritten
    assert not (root / "audio" / "leftover-from-a-killed-run.wav").exists()
    assert tree_digest(root) == first


def test_regenerated_when_parameters_change(tmp_path):
    root = synthetic.generate(tmp_path / "d", workers=1, progress=False, **TINY)
    old_files = {r["filename"] for r in meta_rows(root)}
    synthetic.generate(root, workers=1, progress=False, **{**TINY, "n_clips": 40, "seed": 4})
    rows = meta_rows(root)
    assert len(rows) == 40
    on_disk = sorted(f"audio/{p.name}" for p in (root / "audio").iterdir())
    assert on_disk == sorted(r["filename"] for r in rows)
    assert old_files - {r["filename"] for r in rows}  # the old set is gone, not merged
    assert synthetic.read_completion_record(root)["params"]["seed"] == 4
    synthetic.generate(root, workers=1, progress=False, **{**TINY, "n_clips": 40, "seed": 4, "clip_seconds": 0.5})
    with wave.open(str(root / rows[0]["filename"])) as w:
        assert w.getnframes() == 4000


def test_refuses_a_foreign_directory(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "meta.csv").write_text("precious\n")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        synthetic.generate(foreign, workers=1, progress=False, **TINY)
    assert (foreign / "meta.csv").read_text() == "precious\n"


@pytest.mark.parametrize(
    "key, value",
    [
        ("n_clips", 29),
        ("n_clips", 100.0),
        ("seed", -1),
        ("n_cities", 0),
        ("n_cities", 11),
        ("sample_rate_hz", 4000),
        ("clip_seconds", 0.0),
        ("clip_seconds", float("nan")),
        ("clip_seconds", 0.01),
        ("workers", -1),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, key, value):
    with pytest.raises(ValueError, match=f"^{key}="):
        synthetic.generate(tmp_path / "d", progress=False, **{**TINY, key: value})
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------- learnability


def test_classes_learnable_but_not_trivially(tmp_path):
    """Nearest class mean on band-energy features: train on train, score on evaluate.

    Measured 0.37 for this seed (0.28-0.46, mean 0.38, over seeds 0-7); chance is 0.10. A
    logistic regression on log-mel mean/std features reaches about 0.58 on a 2,000-clip set
    (about 0.65 on seen devices, 0.3-0.55 on the unseen S4-S6).
    """
    root = synthetic.generate(tmp_path / "l", n_clips=300, seed=0, sample_rate_hz=22050, workers=1, progress=False)
    feats, labels = {}, {}
    for split in ("train", "evaluate"):
        _, rows = read_tsv(root / "evaluation_setup" / f"fold1_{split}.csv")
        feats[split] = np.array([band_features(read_pcm24(root / r[0])[0] / 2.0**23, 22050) for r in rows])
        labels[split] = np.array([synthetic.CLASSES.index(r[1]) for r in rows])
    mu, sd = feats["train"].mean(0), feats["train"].std(0) + 1e-9
    z = {s: (f - mu) / sd for s, f in feats.items()}
    centroids = np.stack([z["train"][labels["train"] == c].mean(0) for c in range(10)])
    pred = np.argmin(((z["evaluate"][:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = float(np.mean(pred == labels["evaluate"]))
    assert 0.25 < accuracy < 1.0, accuracy


def test_worker_failure_raises_instead_of_hanging(tmp_path):
    """A script without a __main__ guard makes spawned workers die: report it, do not hang."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pipeline.data import synthetic\n"
        f"synthetic.generate({str(tmp_path / 'd')!r}, n_clips=30, seed=0,"
        " sample_rate_hz=8000, clip_seconds=0.25, workers=2, progress=False)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "worker process died" in proc.stderr and "__main__" in proc.stderr
    assert not (tmp_path / "d" / ".complete.json").exists()
