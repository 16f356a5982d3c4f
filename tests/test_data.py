"""The TAU22 reader on a fixture written in the exact TAU format, and every bad-input case."""

import struct

import numpy as np
import pytest
import soundfile as sf

from pipeline.data import tau
from pipeline.data.tau import DatasetError
from tests.tau_fixture import tone, write_tau


@pytest.fixture()
def dataset(tmp_path):
    rows = write_tau(tmp_path / "tau")
    return tmp_path / "tau", rows


def test_reader_builds_the_index(dataset):
    root, rows = dataset
    index = tau.read_index(root)
    assert list(index.columns) == list(tau.INDEX_COLUMNS)
    assert len(index) == len(rows["train"]) + len(rows["evaluate"])  # test split == evaluate, not repeated
    assert set(index.split) == {"train", "evaluate"}
    assert (index[index.split == "train"].device.isin(["A", "B", "S1"])).all()
    assert set(index[index.split == "evaluate"].device) == {"A", "S4"}
    row = index[index.filename == "audio/bus-lyon-100-1000-0-s1.wav"].iloc[0]
    assert (row.scene_label, row.label, row.city, row.identifier, row.device) == ("bus", 1, "lyon", "lyon-100", "S1")
    assert (row.sample_rate, row.channels, row.bits, row.encoding, row.frames) == (44100, 1, 24, "pcm", 44100)
    summary = tau.summarise(index)
    assert summary["clips_per_split"] == {"evaluate": 20, "train": 30}
    assert summary["unseen_device_clips"] == {"evaluate": 10, "train": 0}
    assert len(tau.fingerprint(index)) == 16
    assert tau.fingerprint(index) == tau.fingerprint(tau.read_index(root))


def test_test_split_files_not_in_evaluate_are_kept(dataset):
    root, _ = dataset
    sf.write(root / "audio/park-lyon-300-1-0-s5.wav", tone(), 44100, subtype="PCM_24")
    with open(root / "meta.csv", "a") as fh:
        fh.write("audio/park-lyon-300-1-0-s5.wav\tpark\tlyon-300\ts5\n")
    with open(root / "evaluation_setup/fold1_test.csv", "a") as fh:
        fh.write("audio/park-lyon-300-1-0-s5.wav\n")
    index = tau.read_index(root)
    assert index[index.split == "test"].filename.tolist() == ["audio/park-lyon-300-1-0-s5.wav"]


def _problems(root):
    with pytest.raises(DatasetError) as err:
        tau.read_index(root)
    return str(err.value)


def _rewrite(path, fn):
    path.write_text(fn(path.read_text()))


def test_missing_audio_file(dataset):
    root, _ = dataset
    (root / "audio/airport-lyon-100-1000-0-a.wav").unlink()
    msg = _problems(root)
    assert "airport-lyon-100-1000-0-a.wav: missing audio file" in msg


def test_unknown_label(dataset):
    root, _ = dataset
    _rewrite(root / "meta.csv", lambda t: t.replace("\tpark\t", "\tbeach\t", 1))
    msg = _problems(root)
    assert "unknown scene_label 'beach'" in msg and "meta.csv" in msg


def test_unknown_device(dataset):
    root, _ = dataset
    _rewrite(root / "meta.csv", lambda t: t.replace("\ts1\n", "\ts9\n", 1))
    assert "unknown source_label 's9'" in _problems(root)


def test_wrong_delimiter(dataset):
    root, _ = dataset
    _rewrite(root / "meta.csv", lambda t: t.replace("\t", ","))
    msg = _problems(root)
    assert "wrong delimiter" in msg and "meta.csv" in msg


def test_missing_column(dataset):
    root, _ = dataset
    _rewrite(root / "evaluation_setup/fold1_train.csv", lambda t: t.replace("scene_label", "label", 1))
    msg = _problems(root)
    assert "fold1_train.csv: missing column(s) ['scene_label']" in msg


def test_malformed_rows_and_duplicates(dataset):
    root, _ = dataset
    lines = (root / "evaluation_setup/fold1_train.csv").read_text().splitlines()
    lines.append(lines[1])  # duplicate row
    lines.append("audio/extra.wav\tbus\textra-field")  # wrong field count
    (root / "evaluation_setup/fold1_train.csv").write_text("\n".join(lines) + "\n")
    msg = _problems(root)
    assert "duplicate filename" in msg
    assert "expected 2 tab-separated fields, got 3" in msg


def test_split_names_file_absent_from_meta(dataset):
    root, _ = dataset
    with open(root / "evaluation_setup/fold1_evaluate.csv", "a") as fh:
        fh.write("audio/ghost-lyon-1-1-0-a.wav\tbus\n")
    assert "'audio/ghost-lyon-1-1-0-a.wav' is not in meta.csv" in _problems(root)


def test_missing_split_file_and_dir(dataset, tmp_path):
    root, _ = dataset
    (root / "evaluation_setup/fold1_evaluate.csv").unlink()
    assert "fold1_evaluate.csv: missing file" in _problems(root)
    assert "does not exist" in _problems(tmp_path / "nowhere")


def test_all_problems_in_one_error_first_20_listed(dataset):
    root, _ = dataset
    for path in sorted((root / "audio").glob("*.wav"))[:25]:
        path.unlink()
    with pytest.raises(DatasetError) as err:
        tau.read_index(root)
    assert len(err.value.problems) == 25
    assert "... and 5 more problem(s)" in str(err.value)
    assert str(err.value).count("missing audio file") == 20


@pytest.mark.parametrize(
    "case, expected",
    [
        ("random_bytes", "not a RIFF/WAVE file"),
        ("empty", "empty file"),
        ("truncated_header", "truncated header"),
        ("truncated_data", "truncated: header announces"),
        ("8bit", "unsupported PCM bit depth 8"),
    ],
)
def test_bad_wav_files_are_named(dataset, case, expected):
    root, _ = dataset
    path = root / "audio/tram-lyon-200-1000-0-s4.wav"
    good = path.read_bytes()
    if case == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_header":
        path.write_bytes(good[:30])
    elif case == "truncated_data":
        path.write_bytes(good[: len(good) // 2])
    elif case == "8bit":
        sf.write(path, tone(), 44100, subtype="PCM_U8")
    msg = _problems(root)
    assert f"{path}: {expected}" in msg


def test_fallbacks_are_counted(dataset):
    root, _ = dataset
    sf.write(root / "audio/tram-lyon-200-1000-0-s4.wav", tone(channels=2), 44100, subtype="PCM_24")
    sf.write(root / "audio/tram-lyon-200-1000-0-a.wav", tone(rate=48000), 48000, subtype="PCM_24")
    sf.write(root / "audio/bus-lyon-200-1000-0-a.wav", tone(seconds=0.5), 44100, subtype="PCM_16")
    sf.write(root / "audio/bus-lyon-200-1000-0-s4.wav", tone(seconds=1.5), 44100, subtype="FLOAT")
    index = tau.read_index(root)
    counts = tau.fallback_counts(index, 44100, 44100)
    assert counts == {"downmixed": 1, "resampled": 1, "padded": 1, "cropped": 1}


def test_header_parser_reads_extensible_and_float(tmp_path):
    sf.write(tmp_path / "f.wav", tone(), 44100, subtype="FLOAT")
    sf.write(tmp_path / "s.wav", tone(channels=3), 22050, subtype="PCM_32")
    f = tau.read_wav_header(tmp_path / "f.wav")
    s = tau.read_wav_header(tmp_path / "s.wav")
    assert (f.encoding, f.bits, f.channels, f.frames) == ("float", 32, 1, 44100)
    assert (s.encoding, s.bits, s.channels, s.sample_rate, s.frames) == ("pcm", 32, 3, 22050, 44100)
    # a RIFF header with an odd unknown chunk before fmt is still parsed
    raw = (tmp_path / "f.wav").read_bytes()
    patched = raw[:12] + b"junk" + struct.pack("<I", 3) + b"abc\x00" + raw[12:]
    (tmp_path / "j.wav").write_bytes(patched)
    assert tau.read_wav_header(tmp_path / "j.wav").frames == 44100


def test_parse_filename():
    assert tau.parse_filename("audio/airport-barcelona-203-6129-0-a.wav") == ("barcelona", "A")
    with pytest.raises(ValueError, match="does not follow"):
        tau.parse_filename("audio/whatever.wav")
    # the city is the second dash-separated field and the device the last one, upper-cased, whatever the folder
    assert tau.parse_filename("street_traffic-lyon-1162-44650-3-s4.wav") == ("lyon", "S4")
    assert tau.parse_filename("x/y/metro_station-helsinki-7-80-1-b.wav") == ("helsinki", "B")
    with pytest.raises(ValueError, match="does not follow"):
        tau.parse_filename("audio/park-paris-1.wav")  # three fields


def test_line_numbers_are_exact_after_blank_and_bad_lines(dataset):
    root, _ = dataset
    lines = (root / "evaluation_setup/fold1_train.csv").read_text().splitlines()
    # line 2 is the first data row; insert a blank line and a 3-field row before a duplicate
    lines = [lines[0], lines[1], "", "audio/x.wav\tbus\textra", lines[1]] + lines[2:]
    (root / "evaluation_setup/fold1_train.csv").write_text("\n".join(lines) + "\n")
    msg = _problems(root)
    assert "fold1_train.csv: line 4: expected 2 tab-separated fields, got 3" in msg
    assert f"fold1_train.csv: line 5: duplicate filename {lines[1].split(chr(9))[0]!r}" in msg
    assert "empty field" not in msg


def test_test_split_file_is_optional(dataset):
    root, rows = dataset
    (root / "evaluation_setup/fold1_test.csv").unlink()
    index = tau.read_index(root)
    assert set(index.split) == {"train", "evaluate"}
    assert len(index) == len(rows["train"]) + len(rows["evaluate"])
