"""Hostile and careless input (issue #16): every case ends with a clear message, the right exit status, no debris."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.core import config, lock

# ----------------------------------------------------------------------------- config: finite floats, exit 2

@pytest.mark.parametrize("key", ["train.learning_rate", "audio.fmin_hz", "model.dropout", "train.weight_decay",
                                 "audio.clip_seconds"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_config_values_are_refused_naming_the_key(key, value):
    with pytest.raises(config.ConfigError, match=rf"{key}: expected a finite number"):
        config.load(None, [f"{key}={value}"])


def test_nan_clip_seconds_exits_2_from_the_cli(tmp_path, capsys):
    from pipeline import run

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
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    holder = _hold(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(lock.WorkdirLocked) as info, lock.workdir_lock(tmp_path, wait_seconds=0.6,
                                                                          poll_seconds=0.1):
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
        subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
        with lock.workdir_lock(tmp_path, wait_seconds=30, poll_seconds=0.1):
            pass
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
        other = subprocess.run([sys.executable, "-c", _HOLDER.replace("time.sleep(60)", ""), str(tmp_path)],
                               check=False, capture_output=True, text=True, timeout=60)
        assert other.returncode == 1 and f"in use by PID {os.getpid()}" in other.stderr


# ----------------------------------------------------------------------------- environment errors: fast, named

def test_preflight_names_the_option_and_the_path(tmp_path):
    from pipeline import preflight

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
    from pipeline import preflight

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(preflight.EnvironmentProblem, match=rf"tracking.uri: the MLflow server http://127.0.0.1:{port}"):
        preflight.check_tracking(f"http://127.0.0.1:{port}", str(tmp_path / "art"), timeout=2)
    assert time.monotonic() - start < 10


def test_sigterm_unwinds_like_ctrl_c_and_removes_temporary_files(tmp_path):
    from pipeline import preflight
    from pipeline.core import files

    target = tmp_path / "out.bin"
    with pytest.raises(preflight.Terminated), preflight.terminate_as_interrupt(), files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
