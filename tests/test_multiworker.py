"""Multi-worker training (train.strategy=multi_worker) and the local launcher (pipeline.launch).

The end-to-end tests start real worker processes on 127.0.0.1 through ``python -m pipeline.launch``
on the tiny synthetic set: two workers train, one is killed and the group restarted, a bad
TF_CONFIG and an absent peer fail fast. The unit tests check TF_CONFIG validation, the peer
probe and the input sharding against the single-worker pipeline.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras
from conftest import tiny_overrides

from pipeline.core import config
from pipeline.data import inputs
from pipeline.running import runner, training
from pipeline.scaling import distributed, launch

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "train.progress_bar": "false",
    "train.connect_timeout_seconds": 60,
    "train.collective_timeout_seconds": 60,
    "train.worker_wait_seconds": 120,
}


def _overrides(workdir, dataset, **extra):
    return tiny_overrides(workdir, dataset, **{**FAST, **extra})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_dataset):
    """A workdir whose ``prepare`` stage is complete (copied by each test that trains)."""
    workdir = tmp_path_factory.mktemp("mw-prepared")
    runner.run_stages(config.load(None, _overrides(workdir, tiny_dataset)), workdir, ["prepare"], track=False)
    return workdir


def _workdir(prepared, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(prepared / "prepare", workdir / "prepare")
    return workdir


def _set_args(overrides):
    return [arg for kv in overrides for arg in ("--set", kv)]


def _launch_cmd(workdir, dataset, *launcher_args, **extra):
    return [
        sys.executable,
        "-m",
        "pipeline.launch",
        "--workers",
        "2",
        "--grace-seconds",
        "3",
        *launcher_args,
        "--",
        "--stage",
        "train",
        "--workdir",
        str(workdir),
        *_set_args(_overrides(workdir, dataset, **extra)),
    ]


def _train_runs(workdir):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    return client, client.search_runs([exp.experiment_id], filter_string="tags.stage = 'train'")


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.extended  # minutes of two-worker training: outside the default run (docs/tests.md)
def test_two_workers_train_like_one(prepared, tmp_path, tiny_dataset):
    workdir = _workdir(prepared, tmp_path)
    t0 = time.perf_counter()
    proc = subprocess.run(
        _launch_cmd(workdir, tiny_dataset), check=False, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    seconds = time.perf_counter() - t0
    log = proc.stdout
    assert proc.returncode == 0, log[-4000:]

    # Both workers end with the same weights, and they are the weights of the saved model.
    digests = dict(re.findall(r"^\[worker (\d)\] .*train: weights digest ([0-9a-f]{16})", log, re.MULTILINE))
    assert set(digests) == {"0", "1"}, log[-3000:]
    assert digests["0"] == digests["1"]
    saved = tf_keras.models.load_model(workdir / "train/model.keras")
    assert training.weights_digest(saved) == digests["0"]

    # Only the chief wrote: its scratch-free workdir, one MLflow train run with the curves.
    (scratch,) = re.findall(r"^\[worker 1\] .*in the scratch folder (\S+)", log, re.MULTILINE)
    assert not Path(scratch).exists() and not Path(scratch).is_relative_to(workdir)
    assert "stage train (non-chief worker 1)" in log
    assert not re.search(r"^\[worker 1\] .*(pipeline\.runner: stage train|MLflow .*run)", log, re.MULTILINE)
    assert {
        "model.keras",
        "best.keras",
        "history.json",
        "curves.png",
        "params.yaml",
        "_SUCCESS.json",
        "checkpoints/latest.json",
    } <= _files(workdir / "train")
    # the chief's workdir lock and the store's creation lock, then the outputs
    assert sorted(p.name for p in workdir.iterdir()) == [
        ".lock",
        ".mlflow.db.lock",
        "mlflow.db",
        "mlruns",
        "prepare",
        "train",
    ]
    client, runs = _train_runs(workdir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    losses = [m.value for m in sorted(client.get_metric_history(runs[0].info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 2
    assert runs[0].data.tags["weights_digest"] == digests["0"]

    # The same global batch on one worker: the same clips per step, so the same curve up to what
    # depends on the split (batch-norm statistics over 4 clips instead of 8, per-replica augmentation
    # draws). Measured (2 epochs, loss ~2.3): gaps 0.003 and 0.014 in loss, below 0.001 in validation
    # loss; tolerances 0.05 and 0.02.
    history = json.loads((workdir / "train/history.json").read_text())["history"]
    assert history["loss"] == pytest.approx(losses)
    single = tmp_path / "single"
    shutil.copytree(prepared / "prepare", single / "prepare")
    runner.run_stages(config.load(None, _overrides(single, tiny_dataset)), single, ["train"], track=False)
    reference = json.loads((single / "train/history.json").read_text())["history"]
    assert np.allclose(history["loss"], reference["loss"], atol=0.05), (history["loss"], reference["loss"])
    assert np.allclose(history["val_loss"], reference["val_loss"], atol=0.02), (
        history["val_loss"],
        reference["val_loss"],
    )
    print(
        f"2 workers: {seconds:.0f} s; loss {history['loss']} vs one worker {reference['loss']}; "
        f"val_loss {history['val_loss']} vs {reference['val_loss']}"
    )


@pytest.mark.slow
@pytest.mark.extended  # minutes of two-worker training: outside the default run (docs/tests.md)
def test_killed_worker_restarts_and_resumes(prepared, tmp_path, tiny_dataset):
    workdir = _workdir(prepared, tmp_path)
    cmd = _launch_cmd(workdir, tiny_dataset, "--max-restarts", "1", **{"train.epochs": 4})
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    latest = workdir / "train/checkpoints/latest.json"
    killed_at = None
    deadline = time.monotonic() + 240
    while killed_at is None and proc.poll() is None and time.monotonic() < deadline:
        if latest.is_file() and json.loads(latest.read_text())["epoch"] >= 1:
            pid = int(
                next(
                    re.search(r"worker 1: pid (\d+)", x).group(1)
                    for x in list(lines)
                    if re.search(r"worker 1: pid (\d+)", x)
                )
            )
            os.kill(pid, signal.SIGKILL)
            killed_at = json.loads(latest.read_text())["epoch"]
        time.sleep(0.05)
    try:
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    log = "".join(lines)
    assert killed_at is not None and killed_at < 4, log[-3000:]
    assert code == 0, log[-4000:]
    assert "[launch] worker 1 failed with status 137" in log
    assert "[launch] restarting the group" in log
    assert re.search(r"^\[worker 0\] .*resuming train at epoch [2-4] of 4", log, re.MULTILINE), log[-3000:]
    assert re.search(r"^\[worker 1\] .*resumed from .*/train/checkpoints/epoch-000[1-3]", log, re.MULTILINE)
    assert (workdir / "train/_SUCCESS.json").is_file()
    history = json.loads((workdir / "train/history.json").read_text())["history"]
    assert len(history["loss"]) == 4
    digests = re.findall(r"^\[worker \d\] .*train: weights digest ([0-9a-f]{16})", log, re.MULTILINE)
    assert len(digests) == 2 and digests[0] == digests[1]
    client, runs = _train_runs(workdir)  # the resumed stage logs into its interrupted run
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss"))
    assert steps[-1] == 4
    # Determinism is on (tiny_overrides): the interrupted job ends with the trainable weights of an
    # uninterrupted one, bit for bit. BatchNorm's moving statistics are ON_READ variables: each replica
    # keeps its own and a checkpoint stores their mean, so after a restore both workers continue from the
    # mean; they end within float rounding (measured <= 1e-6) of the uninterrupted run's.
    other = _workdir(prepared, tmp_path / "uninterrupted")
    done = subprocess.run(
        _launch_cmd(other, tiny_dataset, **{"train.epochs": 4}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    resumed = tf_keras.models.load_model(workdir / "train/model.keras", compile=False)
    straight = tf_keras.models.load_model(other / "train/model.keras", compile=False)
    for a, b in zip(resumed.trainable_weights, straight.trainable_weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    for a, b in zip(resumed.non_trainable_weights, straight.non_trainable_weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5, err_msg=a.name)
    assert history["loss"] == json.loads((other / "train/history.json").read_text())["history"]["loss"]


def test_bad_tf_config_fails_fast_with_exit_2(prepared, tmp_path, tiny_dataset):
    workdir = _workdir(prepared, tmp_path)
    env = {
        **os.environ,
        "TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:2222"]}, "task": {"type": "worker", "index": 3}}',
    }
    args = [
        "--stage",
        "train",
        "--workdir",
        str(workdir),
        *_set_args(_overrides(workdir, tiny_dataset, **{"train.strategy": "multi_worker"})),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "TF_CONFIG: task.index 3 is not in 0..0" in proc.stderr
    assert time.perf_counter() - t0 < 60
    assert not (workdir / "train").exists()


def test_unreachable_peer_fails_within_the_timeout(prepared, tmp_path, tiny_dataset):
    workdir = _workdir(prepared, tmp_path)
    me, absent = launch.free_ports(2)
    env = {
        **os.environ,
        "TF_CONFIG": json.dumps(
            {"cluster": {"worker": [f"127.0.0.1:{me}", f"127.0.0.1:{absent}"]}, "task": {"type": "worker", "index": 0}}
        ),
    }
    args = [
        "--stage",
        "train",
        "--workdir",
        str(workdir),
        *_set_args(
            _overrides(workdir, tiny_dataset, **{"train.strategy": "multi_worker", "train.connect_timeout_seconds": 3})
        ),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"did not come up within train.connect_timeout_seconds=3 s: 127.0.0.1:{absent}" in proc.stderr
    assert time.perf_counter() - t0 < 60


# --------------------------------------------------------------------------- units


def _config(cluster, task_type="worker", index=0):
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_tf_config_roles():
    c = distributed.parse_tf_config(_config({"chief": ["h:1"], "worker": ["h:2", "h:3"]}, "worker", 1))
    assert (c.rank, c.num_workers, c.is_chief, c.address, c.peers) == (2, 3, False, "h:3", ("h:1", "h:2"))
    assert distributed.parse_tf_config(_config({"chief": ["h:1"], "worker": ["h:2"]}, "chief", 0)).is_chief
    assert distributed.parse_tf_config(_config({"worker": ["h:2", "h:3"]}, "worker", 0)).is_chief
    configs = launch.tf_configs(3)
    parsed = [distributed.parse_tf_config(c) for c in configs]
    assert [p.rank for p in parsed] == [0, 1, 2] and len(set(parsed[0].addresses)) == 3
    assert all(p.addresses == parsed[0].addresses for p in parsed)


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "'cluster' object"),
        (_config({"ps": ["h:1"], "worker": ["h:2"]}), "task type(s) ['ps']"),
        (_config({"worker": []}), "cluster.worker must be a non-empty list"),
        (_config({"worker": ["h:2", "nohostport"]}), "cluster.worker[1] must be a 'host:port'"),
        (_config({"worker": ["h:2", "h:99999"]}), "port in 1..65535"),
        (_config({"worker": ["h:2", "h:2"]}), "names an address twice"),
        (_config({"worker": ["h:2"]}, "chief", 0), "task.type 'chief' is not a task type"),
        (_config({"worker": ["h:2"]}, "worker", 1), "task.index 1 is not in 0..0"),
        (_config({"chief": ["h:1", "h:3"], "worker": ["h:2"]}), "exactly one"),
    ],
)
def test_bad_tf_config_is_named(text, message):
    with pytest.raises(distributed.TFConfigError) as err:
        distributed.parse_tf_config(text)
    assert message in str(err.value) and "TF_CONFIG" in str(err.value)
    assert isinstance(err.value, config.ConfigError)


def test_peer_probe_meets_and_times_out():
    a, b, absent = launch.free_ports(3)
    cluster = {"worker": [f"127.0.0.1:{a}", f"127.0.0.1:{b}"]}
    errors = []

    def probe(index):
        try:
            distributed.wait_for_peers(distributed.parse_tf_config(_config(cluster, "worker", index)), timeout=20)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=probe, args=(i,)) for i in (0, 1)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and time.perf_counter() - t0 < 10
    lonely = distributed.parse_tf_config(_config({"worker": [f"127.0.0.1:{a}", f"127.0.0.1:{absent}"]}))
    t0 = time.perf_counter()
    with pytest.raises(distributed.PeerUnreachableError, match=f"127.0.0.1:{absent}"):
        distributed.wait_for_peers(lonely, timeout=1.0)
    assert 1.0 <= time.perf_counter() - t0 < 5
    taken = distributed.parse_tf_config(_config(cluster, "worker", 1))
    with socket.create_server(("", b)), pytest.raises(Exception, match=f"port {b} is taken"):  # by someone else
        distributed.wait_for_peers(taken, timeout=1.0)


def test_sharded_batches_are_the_single_worker_batches_split(prepared):
    index = pd.read_csv(prepared / "prepare/index.csv", dtype={"filename": str, "device": str})
    root = Path(json.loads((prepared / "prepare/_SUCCESS.json").read_text())["root"])
    tr = index[index.split == "train"].reset_index(drop=True)
    params = config.load(None, _overrides(prepared, prepared))
    kw = {"batch_size": 8, "seed": 3, "start_epoch": 0, "epochs": 2}
    single, steps = inputs.train_dataset(tr, root, params.audio, params.data, **kw)
    shards = [inputs.train_dataset(tr, root, params.audio, params.data, shard=(w, 2), **kw) for w in (0, 1)]
    assert all(s == steps for _, s in shards)
    policy = shards[0][0].options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.OFF
    batches = list(single.as_numpy_iterator())
    parts = [list(ds.as_numpy_iterator()) for ds, _ in shards]
    assert len(batches) == len(parts[0]) == len(parts[1]) == 2 * steps
    for whole, a, b in zip(batches, *parts, strict=True):
        b_size = len(whole[1])
        assert len(a[1]) == b_size // 2 and len(a[1]) + len(b[1]) == b_size  # [b*w//W, b*(w+1)//W)
        np.testing.assert_array_equal(np.concatenate([a[0], b[0]]), whole[0])
        np.testing.assert_array_equal(np.concatenate([a[1], b[1]]), whole[1])
    with pytest.raises(ValueError, match="shard must be"):
        inputs.train_dataset(tr, root, params.audio, params.data, shard=(2, 2), **kw)


def test_global_batch_must_split_over_the_workers():
    distributed.check_batch(8, 42, 2)
    with pytest.raises(ValueError, match="train.batch_size=9 is the global batch and must be a multiple of the 2"):
        distributed.check_batch(9, 42, 2)
    with pytest.raises(ValueError, match="the last batch of each epoch holds 1 of 41 clips"):
        distributed.check_batch(8, 41, 2)


def test_launcher_sets_the_strategy():
    assert launch.run_arguments(["--stage", "train"])[-2:] == ["--set", "train.strategy=multi_worker"]
    assert launch.run_arguments(["--set", "train.strategy=multi_worker"]) == ["--set", "train.strategy=multi_worker"]
    with pytest.raises(ValueError, match="train.strategy=mirrored"):
        launch.run_arguments(["--set", "train.strategy=mirrored"])
    assert launch.main(["--workers", "2", "--", "--set", "train.strategy=default"]) == 2
