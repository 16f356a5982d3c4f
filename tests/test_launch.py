"""The local launcher's rules (``python -m pipeline.launch``) and sweeps under multi-worker training.

Checked before any worker starts: the bounds of ``--workers`` and ``--max-restarts``, ``--host``,
and the refusal of sweep options; ``pipeline.run --sweep`` refuses a multi-worker TF_CONFIG or
``train.strategy=multi_worker`` before it takes the workdir lock. Signals: stand-in workers check
what the launcher forwards and that a second signal kills at once; a one-task strategy checks
that SIGTERM reaches Python once TensorFlow's runtime is up; the end-to-end test sends SIGTERM
to a launcher whose two real workers are training and checks they unwind like Ctrl-C.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from conftest import tiny_overrides

from pipeline.core import config
from pipeline.running import cli as run
from pipeline.running import runner, stages
from pipeline.running import state as run_state
from pipeline.scaling import launch, sweep

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "train.progress_bar": "false",
    "train.connect_timeout_seconds": 60,
    "train.collective_timeout_seconds": 60,
    "train.worker_wait_seconds": 120,
}


@pytest.fixture
def no_workers(monkeypatch):
    """Starting a worker fails the test: every check must come before."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a worker group was started: {args}")

    monkeypatch.setattr(launch, "Group", refuse)


# --------------------------------------------------------------------------- checks before any worker


@pytest.mark.parametrize(
    "host, reason",
    [
        ("no-such-host.invalid", "cannot resolve it to an IPv4 address"),
        ("192.0.2.1", "it is not an address of this machine"),  # TEST-NET-1: never a local address
        ("::1", "cannot resolve it to an IPv4 address"),
        ("", "give an IPv4 address or a name of this machine"),
    ],
)
def test_bad_host_is_one_line_and_status_2(host, reason, no_workers, capsys):
    code = launch.main(["--workers", "2", "--host", host, "--", "--stage", "train"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: --host {host!r}: ") and reason in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "option, value",
    [
        ("--workers", "1000"),
        ("--workers", "0"),
        ("--workers", "-3"),
        ("--workers", "max+1"),
        ("--max-restarts", "1000"),
        ("--max-restarts", "-1"),
    ],
)
def test_bounds_are_refused_naming_the_value(option, value, no_workers, capsys):
    value = str(launch.max_workers() + 1) if value == "max+1" else value
    argv = ["--workers", "2", option, value] if option != "--workers" else [option, value]
    with pytest.raises(SystemExit) as exit_:
        launch.main([*argv, "--", "--stage", "train"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert re.search(rf"argument {option}: expected \d+\.\.\d+\b.*, got {re.escape(value)}$", err.strip()), err


def test_the_bounds_follow_the_machine(no_workers):
    top = launch.max_workers()
    assert top == min(launch.MAX_WORKERS, launch.WORKERS_PER_CPU * launch.usable_cpus()) and top >= 4
    assert f"1..{top} here" in launch.build_parser().format_help().replace("\n", " ").replace("  ", " ")
    with pytest.raises(ValueError, match=rf"--workers: expected 1\.\.{top} .*got {top + 1}$"):
        launch.launch(top + 1, ["--stage", "train"])
    with pytest.raises(ValueError, match=rf"--max-restarts: expected 0\.\.{launch.MAX_RESTARTS}, got 21$"):
        launch.launch(2, ["--stage", "train"], max_restarts=21)


@pytest.mark.parametrize(
    "run_args, named",
    [
        (["--sweep", "train.epochs=1,2"], "--sweep"),
        (["--sweep=train.epochs=1,2"], "--sweep=train.epochs=1,2"),
        (["--seeds", "0,1"], "--seeds"),
        (["--see", "0,1"], "--see"),  # argparse takes unique abbreviations
        (["--shard", "1/2", "--sweep", "seed=1"], "--shard"),
        (["--summary-only"], "--summary-only"),
        (["--su"], "--su"),
    ],
)
def test_sweep_options_are_refused_before_any_worker(run_args, named, no_workers, capsys):
    code = launch.main(["--workers", "2", "--", "--stage", "train", *run_args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(
        f"error: the pipeline.run arguments select a sweep ({named}); the launcher runs one multi-worker job"
    ), err
    assert "python -m pipeline.run ... --sweep" in err


def test_options_that_only_look_like_sweeps_pass():
    assert launch.sweep_option(["--stage", "train", "--set", "seed=3", "--se", "--s", "--"]) is None


# --------------------------------------------------------------------------- pipeline.run --sweep, multi-worker


def _tf_config(index: int, n: int = 2) -> str:
    return json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{2222 + i}" for i in range(n)]}, "task": {"type": "worker", "index": index}}
    )


@pytest.mark.parametrize(
    "tf_config, extra, message",
    [
        (
            _tf_config(1),
            ["--set", "train.strategy=multi_worker"],
            "TF_CONFIG names 2 tasks and makes this process a non-chief task (worker 1)",
        ),
        (_tf_config(0), [], "TF_CONFIG names 2 tasks and makes this process the chief (worker 0)"),
        ("{oops", [], "TF_CONFIG is set: TF_CONFIG is not valid JSON"),
        (None, ["--set", "train.strategy=multi_worker"], "train.strategy=multi_worker in every cell of the sweep"),
        (None, ["--sweep", "train.strategy=default,multi_worker"], "train.strategy=multi_worker in cell(s) c1-seed"),
    ],
)
def test_run_refuses_a_sweep_under_multi_worker_before_the_lock(
    tf_config, extra, message, tmp_path, tiny_dataset, monkeypatch, capsys
):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    workdir = tmp_path / "work"
    overrides = [a for kv in tiny_overrides(workdir, tiny_dataset) for a in ("--set", kv)]
    code = run.main(["--stage", "prepare", "--workdir", str(workdir), *overrides, "--seeds", "0,1", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: invalid sweep: ") and message in err, err
    assert not workdir.exists()  # no lock, no store, no summary


def test_run_sweep_refuses_multi_worker_itself(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    workdir = tmp_path / "work"
    plan = sweep.plan(None, [*tiny_overrides(workdir, tiny_dataset), "train.strategy=multi_worker"], [], "0,1")
    with pytest.raises(config.ConfigError, match="train.strategy=multi_worker in every cell of the sweep"):
        sweep.run_sweep(plan, workdir, ["prepare"])
    assert not workdir.exists()


# --------------------------------------------------------------------------- signals (stand-in workers)

# A stand-in for pipeline.run: reports the signal it gets and exits 128 + it; with STUBBORN it ignores
# SIGTERM, as the workers did while TensorFlow's runtime held SIGTERM.
WORKER = r"""
import os, signal, sys, time
def report(sig, _frame):
    print("got", signal.Signals(sig).name, flush=True)
    sys.exit(128 + sig)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, report)
if os.environ.get("STUBBORN"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(120)
"""
LAUNCHER = (
    "import sys; from pipeline.scaling import launch; "
    "sys.exit(launch.launch(2, ['--stage', 'train'], grace=60, command=[sys.executable, '-c', {worker!r}]))"
)


def _start_launcher(stubborn: bool = False, nohup: bool = False):
    env = {**os.environ, **({"STUBBORN": "1"} if stubborn else {})}
    # Started as under nohup, or with SIGHUP at its default whatever this test runner inherited
    # (a test suite run under nohup would otherwise hand its ignored SIGHUP down to the launcher).
    hup = "signal.SIG_IGN" if nohup else "signal.SIG_DFL"
    # SIGINT at Python's own handler too: a suite started in the background inherits SIGINT ignored, and
    # Python then leaves it ignored, so the launcher would never see the Ctrl-C this test sends
    code = (
        f"import signal; signal.signal(signal.SIGHUP, {hup}); "
        "signal.signal(signal.SIGINT, signal.default_int_handler); " + LAUNCHER
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code.format(worker=WORKER)],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while sum("] ready" in line for line in list(lines)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)
    return proc, lines, reader


@pytest.mark.parametrize(
    "sent, forwarded", [(signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM"), (signal.SIGHUP, "SIGTERM")]
)
def test_launcher_forwards_signals_and_exits_128_plus(sent, forwarded):
    proc, lines, reader = _start_launcher()
    proc.send_signal(sent)
    code = proc.wait(timeout=30)
    reader.join(timeout=5)
    log = "".join(lines)
    assert code == 128 + sent, log
    assert f"[worker 0] got {forwarded}" in log and f"[worker 1] got {forwarded}" in log
    status = 128 + signal.Signals[forwarded]
    assert f"workers stopped (worker 0: {status}, worker 1: {status}); exit status {128 + sent}" in log
    assert "killing them" not in log


def test_a_signal_ignored_at_start_stays_ignored():
    proc, lines, reader = _start_launcher(nohup=True)  # as under nohup: closing the terminal must not stop the job
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert proc.poll() is None and "got" not in "".join(lines)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    reader.join(timeout=5)
    assert "[worker 0] got SIGTERM" in "".join(lines)


def test_a_second_signal_kills_the_workers_at_once():
    proc, lines, reader = _start_launcher(stubborn=True)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.poll() is None  # the stand-ins ignore SIGTERM; the grace is 60 s
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    reader.join(timeout=5)
    log = "".join(lines)
    assert code == 143 and time.monotonic() - t0 < 10, log
    assert "[launch] workers at a second signal: killing them (SIGKILL)" in log
    assert "workers stopped (worker 0: 137, worker 1: 137); exit status 143" in log


STRATEGY_THEN_SIGTERM = r"""
import json, os, signal, sys, time
import pipeline.core.env
from pipeline.scaling import distributed
from pipeline.scaling import launch
from pipeline.running import preflight
from pipeline.core import config
(port,) = launch.free_ports(1)
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}"]},
                                      "task": {"type": "worker", "index": 0}})
params = config.load(None, ["train.strategy=multi_worker"])
try:
    with preflight.terminate_as_interrupt():
        distributed.strategy(params.train)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(20)
        print("SIGTERM did not reach Python")
except preflight.Terminated as exc:
    print("unwound:", exc)
"""


def test_sigterm_reaches_python_once_the_strategy_runs():
    # MultiWorkerMirroredStrategy's runtime installs a C++ SIGTERM handler (a preemption notice) that
    # swallows the signal; distributed.strategy() gives SIGTERM back to Python.
    proc = subprocess.run(
        [sys.executable, "-c", STRATEGY_THEN_SIGTERM],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "unwound: terminated by signal SIGTERM" in proc.stdout, proc.stderr[-3000:]


# --------------------------------------------------------------------------- SIGTERM end to end


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_dataset):
    workdir = tmp_path_factory.mktemp("launch-prepared")
    runner.run_stages(
        config.load(None, tiny_overrides(workdir, tiny_dataset, **FAST)), workdir, ["prepare"], track=False
    )
    return workdir


def _launch_cmd(workdir, dataset, grace):
    overrides = tiny_overrides(workdir, dataset, **{**FAST, "train.epochs": 4})
    return [
        sys.executable,
        "-m",
        "pipeline.launch",
        "--workers",
        "2",
        "--grace-seconds",
        str(grace),
        "--",
        "--stage",
        "train",
        "--workdir",
        str(workdir),
        *[a for kv in overrides for a in ("--set", kv)],
    ]


@pytest.mark.slow
def test_sigterm_unwinds_the_workers_like_ctrl_c(prepared, tmp_path, tiny_dataset):
    workdir = tmp_path / "work"
    shutil.copytree(prepared / "prepare", workdir / "prepare")
    grace = 60  # far beyond a clean stop: SIGKILL must not be what ends the workers
    proc = subprocess.Popen(
        _launch_cmd(workdir, tiny_dataset, grace), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    latest = workdir / "train/checkpoints/latest.json"
    started = time.monotonic()
    deadline = started + 240
    try:
        while not (latest.is_file() and json.loads(latest.read_text())["epoch"] >= 1):  # training, 1 of 4 done
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=grace + 30)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    log = "".join(lines)
    assert code == 143, log[-4000:]
    assert seconds < grace - 15 and "killing them" not in log, log[-4000:]
    for worker in (0, 1):
        assert re.search(rf"^\[worker {worker}\] terminated by signal SIGTERM", log, re.MULTILINE), log[-4000:]
    assert "[launch] workers stopped (worker 0: 143, worker 1: 143); exit status 143" in log

    (scratch,) = re.findall(r"^\[worker 1\] .*in the scratch folder (\S+)", log, re.MULTILINE)
    assert not Path(scratch).exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    (train_run,) = [r for r in runs if r.data.tags.get("stage") == "train"]
    assert train_run.info.status == "KILLED"
    assert "error.txt" in [a.path for a in client.list_artifacts(train_run.info.run_id)]
    # What a rerun resumes from stays: the checkpoints and the marker naming the KILLED run; nothing complete.
    left = {p.name for p in (workdir / "train").iterdir()}
    assert {run_state.RUNNING, "checkpoints", "history.json"} <= left and not {"_SUCCESS.json", "model.keras"} & left
    assert json.loads((workdir / "train" / run_state.RUNNING).read_text())["run_id"] == train_run.info.run_id

    # ... and the runner resumes from it: the state a rerun of the same command reads (resuming end to end:
    # test_multiworker.test_killed_worker_restarts_and_resumes).
    params = config.load(
        None, [*tiny_overrides(workdir, tiny_dataset, **{**FAST, "train.epochs": 4}), "train.strategy=multi_worker"]
    )
    train = stages.get("train")
    state = run_state.running_state(train, workdir / "train", run_state.stage_key(train, params, workdir), force=False)
    assert state is not None and state["run_id"] == train_run.info.run_id
    print(f"SIGTERM after {t0 - started:.0f} s (epoch 1 of 4 done); the launcher exited {seconds:.1f} s later")
