"""Hostile and careless input (issue #16): every case ends with a clear message, the right exit status, no debris."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from pipeline.core import config, lock
from pipeline.data import tau
from pipeline.data.tau import DatasetError
from tests.conftest import tiny_overrides
from tests.tau_fixture import tone, write_tau

# ----------------------------------------------------------------------------- config: finite floats, exit 2


@pytest.mark.parametrize(
    "key", ["train.learning_rate", "audio.fmin_hz", "model.dropout", "train.weight_decay", "audio.clip_seconds"]
)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_config_values_are_refused_naming_the_key(key, value):
    with pytest.raises(config.ConfigError, match=rf"{key}: expected a finite number"):
        config.load(None, [f"{key}={value}"])


def test_nan_clip_seconds_exits_2_from_the_cli(tmp_path, capsys):
    from pipeline.running import cli as run

    code = run.main(["--stage", "prepare", "--workdir", str(tmp_path / "w"), "--set", "audio.clip_seconds=.nan"])
    assert code == 2
    err = capsys.readouterr().err
    assert "audio.clip_seconds" in err and "finite" in err
    assert not (tmp_path / "w").exists()  # refused before any work


# ----------------------------------------------------------------------------- the workdir lock

_HOLDER = textwrap.dedent("""
    import sys, time
    from pipeline.core import lock
    with lock.workdir_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def _hold(workdir):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    holder = _hold(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(lock.WorkdirLocked) as info, lock.workdir_lock(tmp_path, wait_seconds=0.6, poll_seconds=0.1):
            pass
        assert time.monotonic() - start < 5
        message = str(info.value)
        assert f"PID {holder.pid}" in message and os.uname().nodename in message and str(tmp_path) in message
        assert "--wait-lock" in message
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: the next run takes it over (and says so)
    with lock.workdir_lock(tmp_path) as path:
        assert f'"pid": {os.getpid()}' in path.read_text()
    assert path.read_text() == ""  # released: the file stays, empty


def test_waiting_for_the_holder_succeeds_when_it_ends(tmp_path):
    holder = _hold(tmp_path)
    try:
        killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
        start = time.monotonic()
        with lock.workdir_lock(tmp_path, wait_seconds=30, poll_seconds=0.1) as path:
            waited = time.monotonic() - start
            assert holder.wait(timeout=5) == -signal.SIGTERM  # the lock came only when the holder ended
            assert f'"pid": {os.getpid()}' in path.read_text()  # and it is ours now
        assert 0.5 <= waited < 20, waited  # it waited for the holder (killed after 1 s) instead of refusing
        assert killer.wait(timeout=5) == 0
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_named(tmp_path, caplog):
    (tmp_path / lock.LOCK_NAME).write_text('{"pid": 999999, "host": "gone-host", "since": "2026-01-01T00:00:00Z"}\n')
    with caplog.at_level("WARNING"), lock.workdir_lock(tmp_path):
        pass
    assert "stale lock left by PID 999999 on host gone-host" in caplog.text


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with lock.workdir_lock(tmp_path):
        with lock.workdir_lock(tmp_path):
            pass
        # still held by this process, as far as other processes are concerned
        other = subprocess.run(
            [sys.executable, "-c", _HOLDER.replace("time.sleep(60)", ""), str(tmp_path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 1 and f"in use by PID {os.getpid()}" in other.stderr


# ----------------------------------------------------------------------------- environment errors: fast, named


def test_preflight_names_the_option_and_the_path(tmp_path):
    from pipeline.running import preflight

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(preflight.EnvironmentProblem, match=rf"--workdir: {blocker} exists and is not a folder"):
        preflight.check_workdir(blocker)
    with pytest.raises(preflight.EnvironmentProblem, match="--workdir: cannot create the folder"):
        preflight.check_workdir(blocker / "sub")
    not_db = tmp_path / "notes.db"
    not_db.write_text("hello, not a database")
    with pytest.raises(preflight.EnvironmentProblem, match=rf"tracking.uri: {not_db} is not an SQLite database"):
        preflight.check_tracking(f"sqlite:///{not_db}", str(tmp_path / "art"))
    with pytest.raises(preflight.EnvironmentProblem, match="tracking.uri: .* is a folder"):
        preflight.check_tracking(f"sqlite:///{tmp_path}", str(tmp_path / "art"))
    with pytest.raises(preflight.EnvironmentProblem, match="tracking.artifact_root: .* exists and is not a folder"):
        preflight.check_tracking(f"sqlite:///{tmp_path}/ok.db", str(blocker))
    with pytest.raises(preflight.EnvironmentProblem, match="unsupported scheme 'ftp'"):
        preflight.check_tracking("ftp://host/store", str(tmp_path / "art"))
    preflight.check_tracking(f"sqlite:///{tmp_path}/ok.db", str(tmp_path / "art"))  # fine: nothing raised


def test_an_unreachable_tracking_server_fails_in_seconds(tmp_path):
    from pipeline.running import preflight
    from pipeline.scaling.launch import free_ports

    (port,) = free_ports(1)  # a port nobody listens on
    start = time.monotonic()
    with pytest.raises(preflight.EnvironmentProblem, match=rf"tracking.uri: the MLflow server http://127.0.0.1:{port}"):
        preflight.check_tracking(f"http://127.0.0.1:{port}", str(tmp_path / "art"), timeout=2)
    assert time.monotonic() - start < 10


def test_sigterm_unwinds_like_ctrl_c_and_removes_temporary_files(tmp_path):
    from pipeline.core import files
    from pipeline.running import preflight

    target = tmp_path / "out.bin"
    with pytest.raises(preflight.Terminated), preflight.terminate_as_interrupt(), files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
    assert preflight.received_signal() == signal.SIGTERM  # remembered, for an error TF raises in its place
    with preflight.terminate_as_interrupt():
        assert preflight.received_signal() is None  # each block starts afresh


def test_an_error_after_sigterm_exits_as_terminated(monkeypatch, capsys, tmp_path):
    """TF may swallow Terminated inside a collective and raise its own error: the CLI still exits 143."""
    from pipeline.running import cli, preflight, runner

    def fails_after_sigterm(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except preflight.Terminated:
            raise RuntimeError("MISMATCH of original and normalized active exception types") from None

    monkeypatch.setattr(runner, "run_stages", fails_after_sigterm)
    args = ["--stage", "train", "--workdir", str(tmp_path / "w"), "--set", f"tracking.uri=sqlite:///{tmp_path}/m.db"]
    assert cli.main(args) == 143
    assert capsys.readouterr().err.startswith("terminated by signal SIGTERM (the stage then failed with RuntimeError)")


# ----------------------------------------------------------------------------- the dataset: paths, splits, samples


@pytest.fixture()
def tau_root(tmp_path):
    write_tau(tmp_path / "tau")
    return tmp_path / "tau"


def _problems(root, **kwargs) -> str:
    with pytest.raises(DatasetError) as err:
        tau.inspect(root, **kwargs)
    return str(err.value)


def _append(path, line):
    with open(path, "a") as fh:
        fh.write(line + "\n")


def _line_count(path) -> int:
    return len(path.read_text().splitlines())


def test_paths_that_leave_the_root_are_refused_by_line_and_never_opened(tau_root, monkeypatch):
    import soundfile as sf

    from pipeline.inference.asc_infer import wavfile

    sibling = tau_root.parent / "secret.wav"  # a valid WAV beside the root: it would be read if followed
    sf.write(sibling, tone(), 44100, subtype="PCM_24")
    (tau_root / "audio" / "link-lyon-1-1-0-a.wav").symlink_to(sibling)
    meta = tau_root / "meta.csv"
    for name in ("../secret.wav", str(sibling), "audio/link-lyon-1-1-0-a.wav", "/etc/passwd"):
        _append(meta, f"{name}\tpark\tlyon-1\ta")
    opened = []
    real_read_info = wavfile.read_info
    monkeypatch.setattr(wavfile, "read_info", lambda p: opened.append(str(p)) or real_read_info(p))
    message = _problems(tau_root)
    n = _line_count(meta)
    assert f"meta.csv: line {n - 3}: filename '../secret.wav' contains '..'" in message
    assert f"meta.csv: line {n - 2}: filename {str(sibling)!r} is an absolute path" in message
    assert f"meta.csv: line {n - 1}: filename 'audio/link-lyon-1-1-0-a.wav' leaves the dataset root" in message
    assert f"meta.csv: line {n}: filename '/etc/passwd' is an absolute path" in message
    assert "exist" not in message.split("is an absolute path")[-1].split("\n")[0]  # no word on the target
    assert not [p for p in opened if "secret" in p or "passwd" in p or "link-lyon" in p]


def test_a_dangling_symlink_nobody_lists_is_harmless(tau_root):
    from pipeline.core.config import load
    from pipeline.running.stages.prepare import dataset_facts

    (tau_root / "audio" / "stray.wav").symlink_to(tau_root / "nowhere.wav")
    tau.inspect(tau_root)
    dataset_facts(load(None, [f"data.source={tau_root}"]))  # the reuse key does not trip over it


def test_reuse_key_covers_every_named_file_wherever_it_is(tau_root):
    import soundfile as sf

    from pipeline.core.config import load
    from pipeline.running.stages.prepare import dataset_facts

    params = load(None, [f"data.source={tau_root}"])
    (tau_root / "more").mkdir()
    sf.write(tau_root / "more" / "park-lyon-100-9-0-a.wav", tone(seed=99), 44100, subtype="PCM_24")
    _append(tau_root / "meta.csv", "more/park-lyon-100-9-0-a.wav\tpark\tlyon-100\ta")
    before = dataset_facts(params)
    sf.write(tau_root / "more" / "park-lyon-100-9-0-a.wav", tone(seed=98, seconds=0.5), 44100, subtype="PCM_24")
    assert dataset_facts(params) != before


def test_empty_split_fails_in_prepare(tau_root):
    setup = tau_root / "evaluation_setup" / "fold1_evaluate.csv"
    setup.write_text("filename\tscene_label\n")
    assert "empty_split: the evaluate split has no clips" in _problems(tau_root)


def test_split_design_errors_and_warnings(tau_root, caplog):
    meta = tau_root / "meta.csv"
    text = meta.read_text()
    # evaluate clips at a training location; a label and a device that contradict the filename
    text = text.replace("lyon-200\t", "lyon-100\t", 3)
    text = text.replace("audio/bus-lyon-100-1000-0-a.wav\tbus", "audio/bus-lyon-100-1000-0-a.wav\ttram")
    text = text.replace(
        "audio/metro-lyon-100-1000-0-b.wav\tmetro\tlyon-100\tb", "audio/metro-lyon-100-1000-0-b.wav\tmetro\tlyon-100\tc"
    )
    meta.write_text(text)
    for split in ("train", "evaluate"):
        path = tau_root / "evaluation_setup" / f"fold1_{split}.csv"
        path.write_text(
            path.read_text().replace("audio/bus-lyon-100-1000-0-a.wav\tbus", "audio/bus-lyon-100-1000-0-a.wav\ttram")
        )
    message = _problems(tau_root)
    assert "label_contradicts_filename: 'audio/bus-lyon-100-1000-0-a.wav' has scene_label 'tram'" in message
    assert "device_contradicts_filename: 'audio/metro-lyon-100-1000-0-b.wav' has source_label 'c'" in message
    assert "location_overlap" not in message  # a warning, logged, not an error


def test_location_overlap_and_unseen_devices_in_training_are_warnings_or_errors_when_strict(tau_root):
    meta = tau_root / "meta.csv"
    meta.write_text(meta.read_text().replace("lyon-200\t", "lyon-100\t"))
    _, found = tau.inspect(tau_root)
    assert found.counts()["location_overlap"] == 1
    assert (
        "20 evaluate clip(s) were recorded at 1 training location(s) (lyon-100)"
        in found.warnings["location_overlap"][0]
    )
    message = _problems(tau_root, strict=True)
    assert "location_overlap (an error with data.strict_checks)" in message


def test_no_unseen_devices_and_one_class_training(tmp_path):
    root = tmp_path / "tau"
    write_tau(root, devices_train=("a", "s4"), devices_eval=("a",))
    _, found = tau.inspect(root)
    assert found.counts()["unseen_devices_in_training"] == 1
    assert found.counts()["no_unseen_devices_in_evaluate"] == 1
    train = root / "evaluation_setup" / "fold1_train.csv"
    train.write_text(
        "\n".join(line for line in train.read_text().splitlines() if line.startswith("filename") or "\tairport" in line)
        + "\n"
    )
    message = _problems(root)
    assert "one_class_training: every training clip is 'airport'" in message


def _wav_bytes(samples, rate=44100, float32=False):
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype="FLOAT" if float32 else "PCM_24", format="WAV")
    return buf.getvalue()


def test_the_audio_scan_finds_duplicates_non_finite_silent_clipped_and_loud_clips(tau_root):
    import numpy as np

    audio = tau_root / "audio"
    # the same samples in train and evaluate
    (audio / "airport-lyon-200-1000-0-a.wav").write_bytes((audio / "airport-lyon-100-1000-0-a.wav").read_bytes())
    bad = np.zeros(44100, np.float32)
    (audio / "bus-lyon-200-1000-0-a.wav").write_bytes(_wav_bytes(bad))  # silent
    loud = tone().copy()
    loud[:1000] = 1e30
    (audio / "metro-lyon-200-1000-0-a.wav").write_bytes(_wav_bytes(loud, float32=True))
    clipped = np.clip(tone() * 4, -1, 1)
    (audio / "park-lyon-200-1000-0-a.wav").write_bytes(_wav_bytes(clipped))
    nan = tone().copy()
    nan[7] = np.nan
    (audio / "tram-lyon-200-1000-0-a.wav").write_bytes(_wav_bytes(nan, float32=True))

    message = _problems(tau_root, scan_audio=True)
    assert (
        "duplicate_across_splits: 'audio/airport-lyon-200-1000-0-a.wav' (evaluate) has the same samples as "
        "'audio/airport-lyon-100-1000-0-a.wav' (train)"
    ) in message
    assert f"non_finite_samples: {audio / 'tram-lyon-200-1000-0-a.wav'}: 1 NaN or inf sample(s)" in message
    (audio / "tram-lyon-200-1000-0-a.wav").write_bytes(_wav_bytes(tone(seed=77)))
    (audio / "airport-lyon-200-1000-0-a.wav").write_bytes(_wav_bytes(tone(seed=78)))
    _, found = tau.inspect(tau_root, scan_audio=True)
    counts = found.counts()
    assert (counts["silent_clip"], counts["clipped_clip"], counts["over_full_scale"]) == (1, 1, 1)
    assert "peak 1e+30" in found.warnings["over_full_scale"][0]
    assert len(found.scan) == 50 and found.scan.digest.nunique() == 50


def test_messages_name_the_cause(tau_root, caplog):
    meta = tau_root / "meta.csv"
    original = meta.read_text()
    meta.write_text("\ufeff" + original)  # Excel's "CSV UTF-8"
    with caplog.at_level("WARNING"):
        tau.inspect(tau_root)
    assert "byte-order mark" in caplog.text
    meta.write_text(original.replace("source_label", "source_label\textra", 1))
    assert "unexpected column(s) ['extra']" in _problems(tau_root)
    meta.write_text(original)
    train = tau_root / "evaluation_setup" / "fold1_train.csv"
    _append(train, "audio/" + "x" * 2_000_000 + ".wav\tpark")
    message = _problems(tau_root)
    assert "(2,000,010 characters)" in message and len(message) < 20_000
    train.write_text("\n".join(train.read_text().splitlines()[:-1]) + "\n")
    (tau_root / "audio" / "bus-lyon-100-1000-0-b.wav").unlink()
    (tau_root / "audio" / "bus-lyon-100-1000-0-b.wav").mkdir()
    assert "bus-lyon-100-1000-0-b.wav: is a directory, not a WAV file" in _problems(tau_root)


def test_csv_and_audio_problems_come_in_one_report(tau_root):
    meta = tau_root / "meta.csv"
    meta.write_text(
        meta.read_text().replace("audio/park-lyon-100-1000-0-a.wav\tpark", "audio/park-lyon-100-1000-0-a.wav\tbeach")
    )
    (tau_root / "audio" / "tram-lyon-200-1000-0-a.wav").unlink()
    message = _problems(tau_root)
    assert "unknown scene_label 'beach'" in message
    assert "tram-lyon-200-1000-0-a.wav: missing audio file" in message


# ----------------------------------------------------------------------------- runs: lock, SIGTERM, environment, swap


def _cli(workdir, dataset, stage, *extra, **overrides):
    args = ["-m", "pipeline.run", "--stage", stage, "--workdir", str(workdir)]
    for item in tiny_overrides(workdir, dataset, **overrides):
        args += ["--set", item]
    return [sys.executable, *args, *extra]


def test_environment_errors_exit_2_naming_the_option(tmp_path, tiny_dataset):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for workdir, extra, expected in (
        (blocker, {}, f"--workdir: {blocker} exists and is not a folder"),
        (tmp_path / "w", {"tracking.uri": f"sqlite:///{blocker}"}, f"tracking.uri: {blocker} is not an SQLite"),
        (tmp_path / "w", {"tracking.uri": "http://127.0.0.1:9"}, "tracking.uri: the MLflow server http://127.0.0.1:9"),
    ):
        start = time.monotonic()
        proc = subprocess.run(
            _cli(workdir, tiny_dataset, "prepare", **extra), capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert expected in proc.stderr
        assert "stage failed" not in proc.stderr and "error.txt" not in proc.stderr
        assert time.monotonic() - start < 60


def test_concurrent_runs_one_refuses_naming_the_holder_the_other_completes(tmp_path, tiny_dataset):
    from pipeline.core import files

    workdir = tmp_path / "w"
    holder = _hold(workdir)  # another writer holds the workdir
    first = subprocess.Popen(
        _cli(workdir, tiny_dataset, "prepare", **{"train.epochs": 1}) + ["--wait-lock", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # waits for it
    try:
        second = subprocess.run(
            _cli(workdir, tiny_dataset, "prepare"), capture_output=True, text=True, timeout=120, check=False
        )
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by PID {holder.pid}" in second.stderr and "--wait-lock" in second.stderr
        assert not (workdir / "prepare").exists()  # the refused run wrote nothing
        assert first.poll() is None  # still waiting for the lock
    finally:
        holder.kill()
        holder.wait()
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-3000:]
    assert "taking over a stale lock" in out or "waiting up to 60 s for the lock" in out
    assert files.read_marker(workdir / "prepare") is not None
    assert len(pd.read_csv(workdir / "prepare" / "index.csv")) == 60


def test_a_failed_prepare_keeps_the_previous_good_outputs(tmp_path, tiny_dataset):
    import shutil

    from pipeline.core import files
    from pipeline.running import runner

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    workdir = tmp_path / "w"
    params = config.load(None, tiny_overrides(workdir, data))
    runner.run_stages(params, workdir, ["prepare"], track=False)
    before = (workdir / "prepare" / "index.csv").read_bytes()
    (data / "meta.csv").write_text((data / "meta.csv").read_text().replace("\tairport\t", "\tbeach\t", 1))
    with pytest.raises(DatasetError, match="unknown scene_label 'beach'"):
        runner.run_stages(params, workdir, ["prepare"], track=False)
    assert (workdir / "prepare" / "index.csv").read_bytes() == before
    assert files.read_marker(workdir / "prepare") is not None
    assert not (workdir / "prepare.partial").exists()  # the failed attempt left nothing behind


def test_sigterm_during_train_ends_the_runs_killed_and_leaves_no_temporary_file(tmp_path, tiny_dataset):
    import mlflow

    workdir = tmp_path / "w"
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            _cli(workdir, tiny_dataset, "all", **{"train.epochs": 50}), stdout=out, stderr=subprocess.STDOUT, text=True
        )
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "train" / "checkpoints").is_dir():  # training is under way
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 143, text[-3000:]
    assert "terminated by signal SIGTERM" in text
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    assert {r.data.tags.get("stage"): r.info.status for r in runs}["train"] == "KILLED"
    debris = [
        p for p in workdir.rglob(".*") if p.is_file() and p.name not in (".lock",) and not p.name.startswith(".mlflow")
    ]
    assert not debris, debris
    assert (workdir / ".lock").read_text() == ""


def test_runs_left_running_by_a_dead_process_are_marked_killed(tmp_path):
    import mlflow

    from pipeline.running import tracking

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = client.create_run(exp, tags={"process.pid": str(dead.pid), "process.host": host}).info.run_id
    live = client.create_run(exp, tags={"process.pid": str(os.getpid()), "process.host": host}).info.run_id
    other = client.create_run(exp, tags={"process.pid": str(dead.pid), "process.host": "elsewhere"}).info.run_id
    assert tracking.end_stale_runs(client, exp) == [stale]
    assert client.get_run(stale).info.status == "KILLED"
    assert client.get_run(live).info.status == client.get_run(other).info.status == "RUNNING"


def test_tf_data_refuses_a_clip_whose_decoded_length_is_not_the_indexed_one(tau_root):
    import soundfile as sf
    import tensorflow as tf

    from pipeline.core.params import AudioParams, DataParams
    from pipeline.data import inputs

    index = tau.read_index(tau_root)
    name = index.filename.iloc[0]
    sf.write(tau_root / name, tone(seconds=0.5), 44100, subtype="PCM_24")  # changed after prepare
    ds = inputs.eval_dataset(index.iloc[:4], tau_root, AudioParams(), DataParams(), batch_size=4)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"(?s)decoded.*22050.*frames from.*" + name.split("/")[-1] + ".*header announces.*44100",
    ):
        next(iter(ds))


def test_two_runs_creating_a_fresh_store_at_once_both_succeed(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from pipeline.running import tracking
        from pipeline.core import config
        params = config.load(None, ["tracking.uri=sqlite:///{tmp_path}/fresh.db",
                                    "tracking.artifact_root={tmp_path}/art", "tracking.experiment=e"])
        print(tracking.setup(params))
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # one experiment, the same id for all


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "soon"])
def test_wait_lock_must_be_finite_seconds(value, capsys):
    from pipeline.running import cli as run

    with pytest.raises(SystemExit) as info:
        run.main(["--stage", "prepare", "--wait-lock", value])
    assert info.value.code == 2 and "--wait-lock" in capsys.readouterr().err


def test_a_global_batch_that_does_not_split_over_the_workers_exits_2(tmp_path, monkeypatch, capsys):
    from pipeline.running import cli as run

    monkeypatch.setenv(
        "TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}'
    )
    code = run.main(
        [
            "--stage",
            "train",
            "--workdir",
            str(tmp_path / "w"),
            "--set",
            "train.strategy=multi_worker",
            "--set",
            "train.batch_size=9",
        ]
    )
    assert code == 2 and "train.batch_size: 9 is the global batch" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_prediction_refuses_non_finite_samples_by_name(tmp_path):
    import numpy as np

    from pipeline.inference import asc_infer

    samples = tone().copy()
    samples[100] = np.inf
    path = tmp_path / "bad.wav"
    path.write_bytes(_wav_bytes(samples, float32=True))
    rec = asc_infer.make_recording(str(path), asc_infer.open_wav(str(path)), _FakeModel())
    with pytest.raises(asc_infer.InputError, match=r"bad.wav.*window 0 .*1 non-finite samples"):
        list(rec.windows())


class _FakeModel:
    sample_rate, window_samples, window_seconds, hop_seconds = 44100, 44100, 1.0, 1.0


def test_a_clip_with_new_samples_and_the_same_header_changes_the_index(tau_root):
    import soundfile as sf

    before = tau.inspect(tau_root, scan_audio=True)[0]
    name = before.filename.iloc[3]
    sf.write(tau_root / name, tone(seed=1234), 44100, subtype="PCM_24")  # same rate, length, format
    after = tau.inspect(tau_root, scan_audio=True)[0]
    changed = before.content != after.content
    assert changed.sum() == 1 and before.filename[changed].item() == name
    assert tau.fingerprint(before) != tau.fingerprint(after)  # so train/evaluate/compress keys change too
    plain = tau.read_index(tau_root)  # without the scan: size and modification time
    assert plain.content.str.fullmatch(r"\d+:\d+").all()
