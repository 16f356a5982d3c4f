"""What people really feed ``pipeline.predict`` and the package API: each case of issue #21 (items 1-4, 6-10, 14).

Uses the session fixture ``shipped_workdir`` (prepare, train, compress, register once on the tiny set).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.core.labels import CLASSES
from pipeline.inference import asc_infer, predict
from pipeline.inference.asc_infer import recording


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _probs(row):
    return np.array([float(row[c]) for c in CLASSES])


def _tone(seconds, rate, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 500 * t) + 0.05 * rng.standard_normal(t.size)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def _float_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    sf.write(path, samples, rate, subtype="FLOAT")
    return path


def _run(args, tmp_path, workdir, *extra):
    out = tmp_path / "p.csv"
    code = predict.main(
        [*map(str, args), "--model", str(workdir), "--output", str(out), "--log-level", "WARNING", *extra]
    )
    return code, (_read_csv(out) if out.is_file() else None)


@pytest.fixture(scope="module")
def workdir(shipped_workdir):
    return shipped_workdir[0]


# ---------------------------------------------------------------- 1. no padding scored as audio


def test_a_window_longer_than_the_recording_scores_only_the_recording(workdir, tmp_path, capfd):
    """``--window-seconds 10`` on a 1-s clip: one window of 1 s, not ten pieces of which nine are silence."""
    clip = _float_wav(tmp_path / "one.wav", _tone(1.0, 44100), 44100)
    code, plain = _run([clip], tmp_path, workdir)
    assert code == 0
    out = tmp_path / "ten.csv"
    assert (
        predict.main(
            [
                str(clip),
                "--model",
                str(workdir),
                "--window-seconds",
                "10",
                "--output",
                str(out),
                "--windows-output",
                str(tmp_path / "w.csv"),
                "--log-level",
                "WARNING",
            ]
        )
        == 0
    )
    ten = _read_csv(out)[0]
    np.testing.assert_allclose(_probs(ten), _probs(plain[0]), rtol=0, atol=1e-12)
    assert (int(ten["windows"]), float(ten["padded_seconds"])) == (1, 0.0)
    (w,) = _read_csv(tmp_path / "w.csv")
    assert (float(w["start_s"]), float(w["end_s"]), float(w["weight"])) == (0.0, 1.0, 1.0)


def test_a_hop_never_places_a_window_past_the_end(workdir, tmp_path):
    """``--hop-seconds 5`` on a 10-s file: windows at 0 and 5 s, and the last moved back to 9-10 s (not 10-10 s)."""
    clip = _float_wav(tmp_path / "ten.wav", _tone(10.0, 44100), 44100)
    assert (
        predict.main(
            [
                str(clip),
                "--model",
                str(workdir),
                "--hop-seconds",
                "5",
                "--output",
                str(tmp_path / "p.csv"),
                "--windows-output",
                str(tmp_path / "w.csv"),
                "--log-level",
                "WARNING",
            ]
        )
        == 0
    )
    rows = _read_csv(tmp_path / "w.csv")
    assert [(float(r["start_s"]), float(r["end_s"])) for r in rows] == [(0.0, 1.0), (5.0, 6.0), (9.0, 10.0)]
    assert all(float(r["end_s"]) <= 10.0 for r in rows)


def test_one_extra_sample_does_not_add_a_padded_window(workdir, tmp_path):
    """A 1-s clip at 48 kHz with one more sample (48,001) is two overlapping windows of audio, not clip + padding."""
    x = _tone(1.0, 48000)[:, 0]
    exact = _float_wav(tmp_path / "exact.wav", x, 48000)
    longer = _float_wav(tmp_path / "longer.wav", np.append(x, x[-1]), 48000)
    model = asc_infer.load_model(workdir / "compress" / "package")
    rec = asc_infer.load_inputs(longer, model)[0]
    assert (rec.samples, len(rec), rec.padding_seconds) == (44101, 2, 0.0)
    assert [rec.bounds(i)[1] for i in range(2)] == [1.0, pytest.approx(44101 / 44100)]
    a, b = asc_infer.predict(model, [exact, longer])
    np.testing.assert_allclose(a, b, rtol=0, atol=0.02)
    assert len(rec.window(1)) == 44100 and np.abs(rec.window(1)[-22050:]).max() > 0.1  # audio to its last sample


def test_a_short_recording_is_padded_and_says_how_much(workdir, tmp_path):
    clip = _float_wav(tmp_path / "short.wav", _tone(0.25, 22050), 22050)
    code, rows = _run([clip], tmp_path, workdir)
    assert code == 0
    assert float(rows[0]["padded_seconds"]) == pytest.approx(0.75, abs=1e-4)
    assert int(rows[0]["windows"]) == 1


def test_coverage_weights_count_every_sample_once():
    starts = recording.segment_starts(25, 10, 10)
    assert starts.tolist() == [0, 10, 15]
    np.testing.assert_allclose(recording.coverage_weights(starts, 10, 25), np.array([10, 7.5, 7.5]) / 25)
    starts = recording.segment_starts(10, 4, 2)  # 0, 2, 4, 6: every sample covered 1-2 times
    assert starts.tolist() == [0, 2, 4, 6]
    np.testing.assert_allclose(recording.coverage_weights(starts, 4, 10), np.array([3, 2, 2, 3]) / 10)
    starts = recording.segment_starts(10, 2, 5)  # a hop longer than the window leaves gaps that count for nothing
    assert starts.tolist() == [0, 5, 8]
    np.testing.assert_allclose(recording.coverage_weights(starts, 2, 10), [1 / 3] * 3)
    assert recording.segment_starts(5, 10, 3).tolist() == [0]


# ---------------------------------------------------------------- 2. outputs never destroy anything


def _good_clip(tmp_path):
    return _float_wav(tmp_path / "good.wav", _tone(1.0, 44100), 44100)


def test_an_output_that_is_an_input_is_refused_before_any_work(workdir, tmp_path, capfd):
    clip = _good_clip(tmp_path)
    before = clip.read_bytes()
    alias = tmp_path.parent / f"{tmp_path.name}-alias"
    alias.symlink_to(tmp_path, target_is_directory=True)
    for output in (clip, alias / "good.wav"):
        code = predict.main([str(tmp_path), "--model", str(workdir), "--output", str(output), "--log-level", "WARNING"])
        assert code == 2
        assert f"--output {output} is one of the inputs" in capfd.readouterr().err
    assert clip.read_bytes() == before


def test_outputs_that_are_not_regular_files_are_refused(workdir, tmp_path, capfd):
    clip = _good_clip(tmp_path)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "target.csv")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        (["--output", str(fifo)], "FIFO"),
        (["--output", str(link)], "symbolic link"),
        (["--output", str(folder)], "is a folder"),
        (["--output", str(tmp_path / "a.csv"), "--windows-output", str(tmp_path / "a.csv")], "the same file"),
        (["--output", str(tmp_path / "nope" / "a.csv")], "does not exist"),
    ]
    for extra, expected in cases:
        start = time.monotonic()
        assert predict.main([str(clip), "--model", str(workdir), "--log-level", "WARNING", *extra]) == 2, extra
        assert expected in capfd.readouterr().err, extra
        assert time.monotonic() - start < 5, "refused before the model is loaded"
    assert fifo.exists() and link.is_symlink() and not (tmp_path / "target.csv").exists()


def test_an_output_inside_a_scanned_folder_is_not_an_input_next_time(workdir, tmp_path, capfd):
    clip = _good_clip(tmp_path)
    out = tmp_path / "predictions.csv"
    windows = tmp_path / "windows.csv"
    for _ in range(2):
        code = predict.main(
            [
                str(tmp_path),
                "--model",
                str(workdir),
                "--output",
                str(out),
                "--windows-output",
                str(windows),
                "--log-level",
                "WARNING",
            ]
        )
        assert code == 0, capfd.readouterr().err
        assert [r["file"] for r in _read_csv(out)] == [str(clip)]
    # named explicitly, a CSV is an input like any other file (and is not audio)
    assert (
        predict.main(
            [
                str(out),
                str(clip),
                "--model",
                str(workdir),
                "--output",
                str(tmp_path / "x.csv"),
                "--log-level",
                "WARNING",
            ]
        )
        == 1
    )
    assert f"{out}: not a RIFF/WAVE file" in capfd.readouterr().err


# ---------------------------------------------------------------- 3. a stale package is refused


def _copy_workdir(workdir, tmp_path):
    copy = tmp_path / "work"
    for stage in ("train", "compress"):
        shutil.copytree(workdir / stage, copy / stage, symlinks=True)
    return copy


def test_the_package_records_the_training_run_it_came_from(workdir):
    info = json.loads((workdir / "compress" / "package" / "asc_infer" / "model" / "model.json").read_text())
    marker = json.loads((workdir / "train" / "_SUCCESS.json").read_text())
    assert (info["train_output"], info["train_run_id"]) == (marker["output"], marker["run_id"])


def test_a_package_from_another_training_run_is_refused(workdir, tmp_path, capfd, caplog):
    copy = _copy_workdir(workdir, tmp_path)
    clip = _good_clip(tmp_path)
    assert _run([clip], tmp_path, copy)[0] == 0  # fresh: used
    marker = json.loads((copy / "train" / "_SUCCESS.json").read_text())
    marker.update(output="0" * 64, run_id="retrained")  # what a rerun of --stage train leaves
    (copy / "train" / "_SUCCESS.json").write_text(json.dumps(marker))
    capfd.readouterr()
    assert _run([clip], tmp_path, copy)[0] == 2
    err = capfd.readouterr().err
    assert "was made from another training run" in err and "--stage compress" in err and "retrained" in err
    assert _run([clip], tmp_path, copy, "--engine", "int8")[0] == 0  # explicit: used, with a warning
    assert "using the package because --engine int8 was given" in caplog.text
    assert _run([clip], tmp_path, copy, "--engine", "float")[0] == 0  # the current model


# ---------------------------------------------------------------- 4, 7, 8. bad files are listed, never fatal


def test_far_beyond_full_scale_is_a_bad_file(workdir, tmp_path, capfd):
    loud = _float_wav(tmp_path / "loud.wav", np.full(44100, 1e30, np.float32), 44100)
    x = _tone(1.0, 44100)
    hot = _float_wav(tmp_path / "hot.wav", 1.9 * x / np.abs(x).max(), 44100)  # peak 1.9: accepted
    code, rows = _run([loud, hot], tmp_path, workdir)
    assert code == 1
    assert [r["file"] for r in rows] == [str(hot)]
    err = capfd.readouterr().err
    assert f"{loud}: window 0 (from 0.00 s): samples far beyond full scale (peak 1e+30" in err
    with pytest.raises(asc_infer.InputError, match="far beyond full scale"):
        asc_infer.predict(asc_infer.load_model(workdir / "compress" / "package"), [loud])


def test_a_fifo_in_a_folder_is_listed_not_opened(workdir, tmp_path, capfd):
    _good_clip(tmp_path)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)

    def unblock():  # old code blocked in open(); this lets such a run finish (and fail the assertions)
        time.sleep(20)
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass

    threading.Thread(target=unblock, daemon=True).start()
    start = time.monotonic()
    code, rows = _run([tmp_path, fifo], tmp_path, workdir)
    assert time.monotonic() - start < 15
    assert code == 1 and len(rows) == 1
    err = capfd.readouterr().err
    assert f"{fifo}: not a regular file (a FIFO (named pipe))" in err
    with pytest.raises(asc_infer.InputError, match="FIFO"):
        asc_infer.load_inputs(str(fifo), asc_infer.load_model(workdir / "compress" / "package"))


def _wav_claiming(rate: int, seconds_of_bytes: int = 6000) -> bytes:
    import io

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(seconds_of_bytes, "<i2").tobytes())
    return buf.getvalue()


def test_a_sample_rate_outside_the_range_is_refused_at_once(workdir, tmp_path, capfd):
    odd = tmp_path / "10MHz.wav"
    odd.write_bytes(_wav_claiming(10_000_000))  # a 12 KB file whose header claims 10 MHz
    slow = tmp_path / "500Hz.wav"
    slow.write_bytes(_wav_claiming(500))
    clip = _good_clip(tmp_path)
    start = time.monotonic()
    code, rows = _run([odd, slow, clip], tmp_path, workdir)
    assert time.monotonic() - start < 30
    assert code == 1 and [r["file"] for r in rows] == [str(clip)]
    err = capfd.readouterr().err
    assert f"{odd}: sample rate 10000000 Hz is outside the supported 1000..384000 Hz" in err
    assert f"{slow}: sample rate 500 Hz is outside" in err
    with pytest.raises(asc_infer.InputError, match="10000000 Hz is outside"):
        asc_infer.load_inputs(odd.read_bytes(), asc_infer.load_model(workdir / "compress" / "package"))


def test_a_memory_error_on_one_file_keeps_the_others(workdir, tmp_path, monkeypatch, capfd):
    a = _float_wav(tmp_path / "a.wav", _tone(1.0, 44100), 44100)
    b = _float_wav(tmp_path / "b.wav", _tone(1.0, 44100, seed=1), 44100)
    real = predict.predict_file

    def flaky(engine, path, **kw):
        if Path(path).name == "a.wav":
            raise MemoryError
        return real(engine, path, **kw)

    monkeypatch.setattr(predict, "predict_file", flaky)
    code, rows = _run([a, b], tmp_path, workdir)
    assert code == 1 and [r["file"] for r in rows] == [str(b)]
    assert f"{a}: out of memory" in capfd.readouterr().err


# ---------------------------------------------------------------- 6. every named path is used or listed


def test_named_empty_folders_and_a_folder_named_like_a_file_are_listed(workdir, tmp_path, capfd):
    clip = _good_clip(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    odd = tmp_path / "x.wav"
    odd.mkdir()
    code, rows = _run([clip, empty, odd], tmp_path, workdir)
    assert code == 1 and [r["file"] for r in rows] == [str(clip)]
    err = capfd.readouterr().err
    assert f"{empty}: the folder holds no input file" in err
    assert f"{odd}: the folder holds no input file" in err


def test_expand_inputs_reports_every_path():
    files, problems, skipped = predict.expand_inputs(["/nonexistent/a.wav", "/nonexistent/*.wav"])
    assert files == [] and skipped == 0
    assert problems == [
        ("/nonexistent/a.wav", "no such file or folder"),
        ("/nonexistent/*.wav", "the pattern matches no file"),
    ]


# ---------------------------------------------------------------- 9. window and hop bounds


@pytest.mark.parametrize("value", ["1e6", "1e300", "601"])
def test_huge_windows_and_hops_are_usage_errors(workdir, tmp_path, capfd, value):
    clip = _good_clip(tmp_path)
    for option in ("--window-seconds", "--hop-seconds"):
        assert _run([clip], tmp_path, workdir, option, value)[0] == 2
        assert f"{option} {float(value):g} is longer than 600 seconds" in capfd.readouterr().err
    model = asc_infer.load_model(workdir / "compress" / "package")
    with pytest.raises(ValueError, match="is longer than 600 seconds"):
        asc_infer.load_inputs(clip, model, window_seconds=float(value))


# ---------------------------------------------------------------- 10. the registry store is checked first


def test_an_unreachable_tracking_server_fails_in_seconds(tmp_path, capfd):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    code = predict.main(
        [
            str(tmp_path),
            "--model",
            "models:/asc-scene-classifier/1",
            "--tracking-uri",
            f"http://127.0.0.1:{port}",
            "--output",
            str(tmp_path / "p.csv"),
        ]
    )
    assert code == 2 and time.monotonic() - start < 10
    assert f"--tracking-uri: the MLflow server http://127.0.0.1:{port} did not answer" in capfd.readouterr().err


def test_no_store_is_created_where_there_is_none(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    code = predict.main([str(tmp_path), "--model", "models:/asc-scene-classifier/1", "--output", "p.csv"])
    assert code == 2
    assert "--tracking-uri: no MLflow store at" in capfd.readouterr().err
    assert not (tmp_path / "mlruns").exists()


# ---------------------------------------------------------------- 14. the package API takes what it says


def test_the_package_api_takes_single_items_numpy_numbers_and_memoryview(workdir, tmp_path):
    clip = _good_clip(tmp_path)
    model = asc_infer.load_model(workdir / "compress" / "package")
    want = asc_infer.predict(model, [clip])
    for single in (str(clip), clip, clip.read_bytes(), memoryview(clip.read_bytes()), bytearray(clip.read_bytes())):
        (rec,) = asc_infer.load_inputs(single, model)
        np.testing.assert_allclose(asc_infer.predict(model, rec), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(asc_infer.predict(model, str(clip)), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(asc_infer.predict(model, [memoryview(clip.read_bytes())]), want, rtol=0, atol=1e-12)
    for number in (np.float32(1.0), np.float64(1.0), np.int64(1)):
        assert asc_infer.load_inputs(clip, model, window_seconds=number)[0].window_samples == 44100
    for bad in (True, np.bool_(True), "1"):
        with pytest.raises(ValueError, match="window_seconds must be a number of seconds"):
            asc_infer.load_inputs(clip, model, window_seconds=bad)
    with pytest.raises(TypeError, match="input #0 is a int"):
        asc_infer.load_inputs([3], model)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "PCM_U8"])
def test_the_documented_encodings_are_the_accepted_ones(tmp_path, subtype):
    """The package docstring lists what is read; 8-bit PCM is refused, by name."""
    doc = asc_infer.__doc__
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, _tone(0.1, 16000), 16000, subtype=subtype)
    if subtype == "PCM_U8":
        assert "8-bit PCM" in doc and "refused" in doc.split("8-bit PCM")[1][:120]
        with pytest.raises(asc_infer.InputError, match="unsupported PCM bit depth 8"):
            asc_infer.open_wav(path)
    else:
        assert "16/24/32-bit PCM and 32/64-bit float" in doc
        assert asc_infer.open_wav(path).frames == 1600


# ---------------------------------------------------------------- from the review of the change


def test_a_rate_inside_the_range_that_needs_a_huge_filter_is_refused_at_once(workdir, tmp_path, capfd):
    odd = tmp_path / "odd.wav"
    odd.write_bytes(_wav_claiming(383_988))  # 3,675/31,999 of 44.1 kHz: a 122 M-tap filter
    start = time.monotonic()
    code, _ = _run([odd, _good_clip(tmp_path)], tmp_path, workdir)
    assert code == 1 and time.monotonic() - start < 30
    assert f"{odd}: cannot resample 383988 Hz to 44100 Hz" in capfd.readouterr().err


def test_a_window_shorter_than_the_clip_or_a_tiny_hop_is_refused(workdir, tmp_path, capfd):
    clip = _good_clip(tmp_path)
    assert _run([clip], tmp_path, workdir, "--window-seconds", "0.5")[0] == 2
    assert "--window-seconds 0.5 is shorter than the model's clip (1 s)" in capfd.readouterr().err
    assert _run([clip], tmp_path, workdir, "--hop-seconds", "0.001")[0] == 2
    assert "--hop-seconds 0.001 is shorter than 0.01 seconds" in capfd.readouterr().err
    model = asc_infer.load_model(workdir / "compress" / "package")
    with pytest.raises(ValueError, match="shorter than the model's clip"):
        asc_infer.load_inputs(clip, model, window_seconds=0.5)
    with pytest.raises(ValueError, match="shorter than 0.01 seconds"):
        asc_infer.load_inputs(clip, model, hop_seconds=0.005)


def test_linked_folders_are_followed_once_and_linked_files_scored_once(tmp_path):
    inputs, other = tmp_path / "in", tmp_path / "other"
    inputs.mkdir()
    other.mkdir()
    a = _float_wav(inputs / "a.wav", _tone(1.0, 44100), 44100)
    b = _float_wav(other / "b.wav", _tone(1.0, 44100), 44100)
    (inputs / "linkdir").symlink_to(other, target_is_directory=True)
    (inputs / "loop").symlink_to(inputs, target_is_directory=True)  # a loop ends
    (inputs / "alias.wav").symlink_to(a)
    found, problems, skipped = predict.expand_inputs([str(inputs)])
    assert [os.path.realpath(f) for f in found] == [str(a), str(b)] and problems == [] and skipped == 0


def test_an_earlier_output_with_any_name_is_not_an_input(workdir, tmp_path, capfd):
    clip = _good_clip(tmp_path)
    out = tmp_path / "out.txt"
    for _ in range(2):
        assert (
            predict.main([str(tmp_path), "--model", str(workdir), "--output", str(out), "--log-level", "WARNING"]) == 0
        ), capfd.readouterr().err
        assert [r["file"] for r in _read_csv(out)] == [str(clip)]


def test_windows_output_equal_to_an_input_is_refused(workdir, tmp_path, capfd):
    clip = _good_clip(tmp_path)
    before = clip.read_bytes()
    assert (
        predict.main(
            [
                str(clip),
                "--model",
                str(workdir),
                "--output",
                str(tmp_path / "p.csv"),
                "--windows-output",
                str(clip),
                "--log-level",
                "WARNING",
            ]
        )
        == 2
    )
    assert f"--windows-output {clip} is one of the inputs" in capfd.readouterr().err
    assert clip.read_bytes() == before


def test_the_package_named_directly_and_an_interrupted_retrain_are_checked_too(workdir, tmp_path, capfd):
    copy = _copy_workdir(workdir, tmp_path)
    clip = _good_clip(tmp_path)
    marker = json.loads((copy / "train" / "_SUCCESS.json").read_text())
    (copy / "train" / "_SUCCESS.json").write_text(json.dumps(dict(marker, output="1" * 64)))
    assert _run([clip], tmp_path, copy / "compress" / "package")[0] == 2  # the package folder itself
    assert "was made from another training run" in capfd.readouterr().err
    (copy / "train" / "_SUCCESS.json").unlink()  # a retrain started (the runner clears the marker) ...
    (copy / "train" / "_RUNNING.json").write_text(json.dumps({"key": "k", "run_id": "r"}))  # ... and stopped
    assert _run([clip], tmp_path, copy)[0] == 2
    assert "is being retrained, or its retraining was interrupted" in capfd.readouterr().err
    assert _run([clip], tmp_path, copy, "--engine", "int8")[0] == 0


def test_opposite_channels_beyond_full_scale_do_not_cancel(workdir, tmp_path, capfd):
    x = np.full((44100, 2), 1e30, np.float32)
    x[:, 1] = -1e30  # the mean of the channels is 0
    loud = _float_wav(tmp_path / "stereo.wav", x, 44100)
    code, rows = _run([loud, _good_clip(tmp_path)], tmp_path, workdir)
    assert code == 1 and len(rows) == 1
    assert f"{loud}: window 0 (from 0.00 s): samples far beyond full scale (peak 1e+30" in capfd.readouterr().err
