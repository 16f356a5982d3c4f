"""Searches (``--search SPACE.yaml --trials N``): the space file, the study with toy stages, MLflow, and one real run.

The toy ``train`` stage reports ``val_accuracy = f(x) * epoch / epochs`` per epoch and the toy
``evaluate`` stage writes ``f(x)`` as the validation macro accuracy, with ``x`` the searched
``augment.freq_mixstyle.p`` and ``f(x) = 1 - (x - 0.3)^2``: the best trial is known. Trials are
enqueued (``study.enqueue_trial``) where a test needs given values.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import threading

import mlflow
import optuna
import pandas as pd
import pytest
from conftest import tiny_overrides
from optuna.trial import TrialState

from pipeline.core import config
from pipeline.core.config import ConfigError
from pipeline.core.lock import LockBusy, file_lock
from pipeline.running import cli as run
from pipeline.running import runner, stages
from pipeline.running.stages import Context, Stage
from pipeline.scaling import search, search_space, sweep

KEY = "augment.freq_mixstyle.p"
CALLS: list[tuple] = []  # (stage, x, epochs reported)
INTERRUPT: set[float] = set()  # x values at which the toy train stage is "interrupted" (Ctrl-C)


def f(x: float) -> float:
    return 1.0 - (x - 0.3) ** 2


def _toy_train(ctx: Context) -> dict:
    x, epochs = ctx.params.augment.freq_mixstyle.p, ctx.params.train.epochs
    if x > 0.95:
        raise RuntimeError(f"toy training diverged at x={x}")
    if x in INTERRUPT:
        raise KeyboardInterrupt
    reported = 0
    try:
        for epoch in range(1, epochs + 1):
            reported = epoch
            ctx.record.metrics({"val_accuracy": f(x) * epoch / epochs, "loss": 1.0 / epoch}, step=epoch)
    finally:
        CALLS.append(("train", x, reported))
    (ctx.out / "model.txt").write_text(str(x))
    return {}


def _toy_evaluate(ctx: Context) -> dict:
    x = float((ctx.inputs["train"] / "model.txt").read_text())
    CALLS.append(("evaluate", x, None))
    score = {"splits": {"validation": {"plain": {"overall": {"macro_accuracy": f(x)}}}}}
    (ctx.out / "metrics.json").write_text(json.dumps(score))
    ctx.record.metrics({"validation_macro_accuracy": f(x)})
    return {}


TOY = (
    Stage("train", _toy_train, main_output="model.txt", settings=(KEY, "train.epochs", "train.learning_rate")),
    Stage("evaluate", _toy_evaluate, upstream=("train",), main_output="metrics.json", settings=(KEY,)),
)
NAMES = ["train", "evaluate"]


def _write(path, text: str):
    path.write_text(text)
    return path


def _overrides(tmp_path, **extra) -> list[str]:
    sets = {
        "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db",
        "tracking.artifact_root": f"{tmp_path}/mlruns",
        "tracking.experiment": "toy",
        "data.validation": "s3",
        "train.epochs": 3,
        "search.sampler_startup_trials": 2,
        **extra,
    }
    return [f"{k}={v}" for k, v in sets.items()]


def _plan(tmp_path, trials: int, space: str = f"{KEY}: {{low: 0.0, high: 0.9}}\n", **extra) -> search.Search:
    path = _write(tmp_path / "space.yaml", space)
    return search.plan(None, _overrides(tmp_path, **extra), path, trials, NAMES)


def _run(plan, tmp_path, **kwargs):
    return search.run_search(plan, tmp_path / "work", stages=TOY, **kwargs)


def _study(plan, tmp_path) -> optuna.Study:
    return search.open_study(plan, tmp_path / "work")


def _client(tmp_path):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def _runs(tmp_path, filter_string: str) -> list:
    client = _client(tmp_path)
    exp = client.get_experiment_by_name("toy")
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=500)


def _trained(x_values=None) -> list[float]:
    return [x for stage, x, _ in CALLS if stage == "train" and (x_values is None or x in x_values)]


@pytest.fixture(autouse=True)
def _clean():
    CALLS.clear()
    INTERRUPT.clear()


# --------------------------------------------------------------------------- the space file


@pytest.mark.parametrize(
    "text, named",
    [
        ("train.nope: {low: 0.0, high: 1.0}", "unknown key 'train.nope'"),
        ("distill.weight: {low: 0.6, high: 0.6}", r"low \(0.6\) must be below high \(0.6\)"),
        ("distill.weight: {low: 0.8, high: 0.2}", "must be below high"),
        ("train.learning_rate: {low: 0.0, high: 0.01, log: true}", "learning_rate: 0.0 must be greater than 0.0"),
        ("augment.freq_mixstyle.p: {low: 0.0, high: 0.5, log: true}", "log: true needs low > 0"),
        ("seed: {low: 0, high: 9, type: int}", "cannot be searched"),
        ("name: {choices: [a, b]}", "cannot be searched"),
        ("tracking.uri: {choices: ['sqlite:///a.db', 'sqlite:///b.db']}", "cannot be searched"),
        ("data.validation: {choices: [s1, s2]}", "cannot be searched"),
        ("search.storage: {choices: ['sqlite:///a.db']}", "cannot be searched"),
        ("distill.weight: {low: 0.0, high: 1.0, type: str}", "type 'str': expected float or int"),
        ("train.epochs: {low: 1, high: 5}", r"expected an integer, got 1.0 \(an integer setting: give type: int\)"),
        ("train.epochs: {low: 1.5, high: 5, type: int}", "low 1.5: expected an integer"),
        ("distill.weight: {low: 0.0, high: 1.5}", "high 1.5 is not a value of the key.*above the maximum 1.0"),
        ("distill.weight: {low: zero, high: 1.0}", "low 'zero': expected a finite number"),
        ("distill.weight: {high: 1.0}", "expected low and high"),
        ("distill.weight: {low: 0.0, high: 1.0, steps: 0.1}", r"unknown: \['steps'\]"),
        ("distill.weight: {low: 0.0, high: 1.0, step: 0.3}", "not a whole number of steps of 0.3"),
        ("distill.weight: {low: 0.1, high: 1.0, step: 0.1, log: true}", "log and step cannot be combined"),
        ("distill.weight: {low: 0.0, high: 1.0, log: yes-please}", "log 'yes-please': expected true or false"),
        ("augment.specaugment.mode: {choices: []}", "expected a non-empty list"),
        ("augment.specaugment.mode: {choices: [zm, xx]}", "choice 'xx'.*not allowed"),
        ("train.learning_rate: {choices: [1e-3, 0.001]}", "are the same value 0.001"),
        ("augment.specaugment.mode: {choices: [zm], low: 0}", "choices cannot be combined with"),
        ("train: {low: 0.0, high: 1.0}", "is a section, not a setting"),
        ("distill.weight: 0.5", "expected {low: .., high: ..} or {choices: \\[..\\]}, got 0.5"),
    ],
)
def test_a_bad_space_is_refused_naming_the_file_and_the_key(tmp_path, text, named):
    path = _write(tmp_path / "space.yaml", text + "\n")
    with pytest.raises(ConfigError, match=named) as info:
        search_space.load_space(path)
    key = text.split(":")[0]
    assert str(info.value).startswith(f"search space {path}: {key}: "), str(info.value)


@pytest.mark.parametrize("text", ["", "[a, b]", "just text", "a: [unclosed"])
def test_a_space_file_that_is_not_a_mapping_is_named(tmp_path, text):
    path = _write(tmp_path / "space.yaml", text)
    with pytest.raises(ConfigError, match=f"search space {path}: (expected a mapping|not valid YAML)"):
        search_space.load_space(path)
    with pytest.raises(ConfigError, match="no such file"):
        search_space.load_space(tmp_path / "missing.yaml")


def test_a_good_space_gives_the_optuna_distributions(tmp_path):
    path = _write(
        tmp_path / "space.yaml",
        "augment.freq_mixstyle.p: {low: 0.0, high: 0.6}\n"
        "train.learning_rate: {low: 1e-4, high: 1.0e-2, log: true}\n"
        "augment.device_response.p: {low: 0.0, high: 0.8, step: 0.2}\n"
        "distill.teacher.members: {low: 1, high: 4, type: int}\n"
        "model.channels: {choices: [[8, 8, 16, 16], '16,16,32,32']}\n"
        "augment.specaugment.mode: {choices: [zm, cm]}\n",
    )
    space = search_space.load_space(path)
    d = optuna.distributions
    assert space.distributions() == {
        "augment.freq_mixstyle.p": d.FloatDistribution(0.0, 0.6),
        "train.learning_rate": d.FloatDistribution(1e-4, 1e-2, log=True),  # YAML's string "1e-4" as the number
        "augment.device_response.p": d.FloatDistribution(0.0, 0.8, step=0.2),
        "distill.teacher.members": d.IntDistribution(1, 4),
        "model.channels": d.CategoricalDistribution(["[8, 8, 16, 16]", "[16, 16, 32, 32]"]),
        "augment.specaugment.mode": d.CategoricalDistribution(["zm", "cm"]),
    }
    values = space.values({"model.channels": "[16, 16, 32, 32]", "distill.teacher.members": 3})
    assert values == {"model.channels": (16, 16, 32, 32), "distill.teacher.members": 3}


def test_the_shipped_space_searches_the_generalization_knobs_within_their_ranges():
    path = config.CONFIG_DIR / "search" / "dcase22-kd.yaml"
    space = search_space.load_space(path)
    assert space.keys == [
        "augment.device_response.p",
        "augment.freq_mixstyle.p",
        "augment.freq_mixstyle.alpha",
        "distill.weight",
        "distill.temperature",
    ]
    plan = search.plan("dcase22-kd", ["data.validation=s3"], path, 40, ["prepare", "teacher", "train", "evaluate"])
    teacher = stages.get("teacher")
    key = teacher.settings_of(plan.base)
    for dim in space.dims:  # both ends are valid settings of the recipe, and none of them retrains the teachers
        for end in (dim.low, dim.high):
            assert teacher.settings_of(search.trial_params(plan, {dim.key: end}, 0)) == key, dim.key


# --------------------------------------------------------------------------- refusals


def test_the_search_refuses_to_tune_on_the_evaluate_split(tmp_path):
    with pytest.raises(ConfigError, match="^data.validation: .*is 'evaluate'.*data.validation=s3"):
        _plan(tmp_path, 3, **{"data.validation": "evaluate"})
    with pytest.raises(ConfigError, match="evaluate stage"):
        search.plan(
            None, _overrides(tmp_path), _write(tmp_path / "s.yaml", f"{KEY}: {{low: 0, high: 1}}"), 3, ["train"]
        )
    with pytest.raises(ConfigError, match="^--search runs its trials one after another.*train.strategy=multi_worker"):
        _plan(tmp_path, 3, **{"train.strategy": "multi_worker"})


def test_the_search_refuses_a_multi_worker_tf_config(tmp_path, monkeypatch):
    cluster = {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    with pytest.raises(ConfigError, match="^--search runs its trials one after another.*TF_CONFIG names 2 tasks"):
        _plan(tmp_path, 3)


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--trials", "3"], "--search SPACE.yaml and --trials N go together"),
        (["--search", "{space}"], "--search SPACE.yaml and --trials N go together"),
        (["--search", "{space}", "--trials", "3", "--sweep", "train.epochs=1,2"], "cannot be combined with --sweep"),
        (["--search", "{space}", "--trials", "3", "--seeds", "0,1"], "cannot be combined with --sweep/--seeds"),
        (["--search", "{space}", "--trials", "3", "--summary-only"], "--summary-only is a sweep option"),
        (["--search", "{space}", "--trials", "3", "--shard", "3/2"], "--shard '3/2'"),
        (["--search", "{space}", "--trials", "2", "--set", "data.validation=evaluate"], "data.validation"),
        (["--search", "{missing}", "--trials", "2"], "missing.yaml: no such file"),
        (["--search", "{space}", "--trials", "2", "--set", "search.storage=nope"], "search.storage: 'nope'"),
        (
            ["--search", "{space}", "--trials", "2", "--set", "search.storage=sqlite:////proc/none/optuna.db"],
            "search.storage sqlite:////proc/none/optuna.db: cannot be opened",
        ),
    ],
)
def test_bad_search_options_exit_2_naming_the_option(tmp_path, capsys, extra, named):
    space = _write(tmp_path / "space.yaml", f"{KEY}: {{low: 0.0, high: 0.9}}\n")
    args = [a.format(space=space, missing=tmp_path / "missing.yaml") for a in extra]
    absent = tmp_path / "no-dataset"  # were a refusal missing, the trials would fail at once (exit 1), not run
    sets = [arg for o in _overrides(tmp_path, **{"data.source": absent}) for arg in ("--set", o)]
    code = run.main(["--stage", "evaluate", "--workdir", str(tmp_path / "work"), *sets, *args])
    assert code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("trials", ["0", "-1", "many"])
def test_a_bad_trials_count_exits_2(tmp_path, capsys, trials):
    with pytest.raises(SystemExit) as info:
        run.main(["--stage", "evaluate", "--search", "space.yaml", "--trials", trials])
    assert info.value.code == 2 and "--trials" in capsys.readouterr().err


def test_the_id_depends_on_the_base_the_space_and_the_stages_not_on_the_store(tmp_path):
    a = _plan(tmp_path, 3)
    assert _plan(tmp_path, 10).search_id == a.search_id  # --trials N: the study's total, not its identity
    assert search.plan(None, _overrides(tmp_path / "x"), a.space.path, 3, NAMES).search_id == a.search_id
    assert _plan(tmp_path, 3, **{"search.pruner_warmup_epochs": 7}).search_id == a.search_id
    assert _plan(tmp_path, 3, **{"train.epochs": 4}).search_id != a.search_id
    assert _plan(tmp_path, 3, space=f"{KEY}: {{low: 0.0, high: 0.8}}\n").search_id != a.search_id
    assert search.plan(None, _overrides(tmp_path), a.space.path, 3, ["x", *NAMES]).search_id != a.search_id
    assert a.storage_url(tmp_path / "work") == f"sqlite:///{tmp_path}/work/search/{a.search_id}/optuna.db"
    assert _plan(tmp_path, 3, **{"search.storage": "sqlite:////tmp/o.db"}).storage_url(tmp_path) == (
        "sqlite:////tmp/o.db"
    )


# --------------------------------------------------------------------------- the runner's observe hook


def test_the_runner_hands_a_running_stages_metrics_to_observe(tmp_path):
    seen = []
    params = config.load(None, _overrides(tmp_path, **{KEY: 0.5}))
    observe = lambda stage, metrics, step: seen.append((stage, metrics, step))  # noqa: E731
    runner.run_stages(params, tmp_path / "w", NAMES, stages=TOY, track=False, observe=observe)
    assert seen[:3] == [("train", {"val_accuracy": pytest.approx(f(0.5) * e / 3), "loss": 1 / e}, e) for e in (1, 2, 3)]
    assert [(stage, sorted(m), step) for stage, m, step in seen[3:]] == [
        ("train", ["stage_seconds"], None),  # the runner's own record of the stage
        ("evaluate", ["validation_macro_accuracy"], None),
        ("evaluate", ["stage_seconds"], None),
    ]
    seen.clear()
    runner.run_stages(params, tmp_path / "w", NAMES, stages=TOY, track=False, observe=observe)
    assert seen == []  # reused stages report nothing


# --------------------------------------------------------------------------- studies of toy stages


def test_the_study_finds_the_best_trial_and_writes_it_as_a_config(tmp_path):
    plan = _plan(tmp_path, 5)
    study = _study(plan, tmp_path)
    for x in (0.9, 0.3, 0.6):  # the optimum, 0.3, among them; two more trials sampled by TPE
        study.enqueue_trial({KEY: x})
    code, text = _run(plan, tmp_path)
    assert code == 0
    root = tmp_path / "work" / "search" / plan.search_id
    table = pd.read_csv(root / "trials.csv")
    assert list(table.columns) == ["number", "slot", "state", "value", "params", "seconds", "error", "run_id"]
    assert table.number.tolist() == [0, 1, 2, 3, 4] and sorted(table.slot) == [0, 1, 2, 3, 4]
    assert (table.state == "COMPLETE").all() and (table.seconds > 0).all()
    xs = [json.loads(p)[KEY] for p in table.params]
    assert xs[:3] == [0.9, 0.3, 0.6] and all(0.0 <= x <= 0.9 for x in xs)
    assert table.value.tolist() == pytest.approx([f(x) for x in xs])
    study = _study(plan, tmp_path)
    assert study.best_trial.number == 1 and study.best_value == 1.0 and study.best_params == {KEY: 0.3}
    assert "best: trial 1, validation macro accuracy 1.0000 (augment.freq_mixstyle.p=0.3)" in text

    best = config.load(root / "best.yaml")
    assert best.augment.freq_mixstyle.p == 0.3 and best.train.epochs == 3 and best.data.validation == ("s3",)
    header = (root / "best.yaml").read_text().splitlines()[:3]
    assert header[0].startswith(f"# Best settings of search {plan.search_id}: Optuna study '{plan.search_id}'")
    assert header[1].startswith("# trial 1: validation macro accuracy 1.000000")
    assert header[2] == "#   augment.freq_mixstyle.p: 0.3"

    (parent,) = _runs(tmp_path, f"tags.search_id = '{plan.search_id}' and tags.search_role = 'search'")
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_validation_macro_accuracy"] == 1.0
    logged = {a.path for a in _client(tmp_path).list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "history.png", "best.yaml", "space.yaml", "base_config.yaml"} <= logged
    trials = _runs(tmp_path, f"tags.search_id = '{plan.search_id}' and tags.search_role = 'trial'")
    assert sorted(int(r.data.tags["trial"]) for r in trials) == [0, 1, 2, 3, 4]
    for r in trials:
        n = int(r.data.tags["trial"])
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED"
        assert r.data.tags["trial_state"] == "COMPLETE" and float(r.data.params[KEY]) == xs[n]
        assert float(r.data.tags[f"searched.{KEY}"]) == xs[n] and r.info.run_id == table.run_id[n]
        assert r.data.metrics["search_objective"] == pytest.approx(f(xs[n]))
        assert r.info.run_name == f"search-{plan.search_id[:6]}-t{n}"
        stages = _runs(tmp_path, f"tags.`mlflow.parentRunId` = '{r.info.run_id}'")
        assert sorted(s.data.tags["stage"] for s in stages) == ["evaluate", "train"]


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    space = f"{KEY}: {{low: 0.0, high: 1.0}}\ntrain.learning_rate: {{low: 1.0e-4, high: 1.0e-2, log: true}}\n"
    plan = _plan(tmp_path, 4, space=space, **{"train.min_learning_rate": 1e-3})
    study = _study(plan, tmp_path)
    study.enqueue_trial({KEY: 0.5, "train.learning_rate": 1e-4})  # below train.min_learning_rate: invalid
    study.enqueue_trial({KEY: 0.99, "train.learning_rate": 5e-3})  # the toy train stage raises
    study.enqueue_trial({KEY: 0.3, "train.learning_rate": 5e-3})
    code, _ = _run(plan, tmp_path)
    assert code == 0
    trials = _study(plan, tmp_path).get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["error"].startswith("ConfigError: train.min_learning_rate: 0.001 exceeds")
    assert trials[1].user_attrs["error"] == "RuntimeError: toy training diverged at x=0.99"
    assert trials[2].value == 1.0 and len(trials) == 4  # the failures fill their slots; a 4th trial ran
    table = pd.read_csv(tmp_path / "work" / "search" / plan.search_id / "trials.csv")
    assert table.error[1] == "RuntimeError: toy training diverged at x=0.99" and table.state[1] == "FAIL"
    CALLS.clear()  # a trial that failed on its own fills its slot: a rerun has nothing to do
    assert "this run ran 0" in _run(plan, tmp_path)[1] and CALLS == []

    (parent,) = _runs(tmp_path, f"tags.search_id = '{plan.search_id}' and tags.search_role = 'search'")
    (invalid,) = _runs(tmp_path, f"tags.search_id = '{plan.search_id}' and tags.trial = '0'")
    assert invalid.info.status == "FAILED" and invalid.data.tags["trial_state"] == "FAIL"
    assert invalid.data.tags["trial_error"].startswith("ConfigError: train.min_learning_rate")
    assert invalid.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert invalid.info.run_id == trials[0].user_attrs["run_id"]
    assert invalid.data.params == {KEY: "0.5", "train.learning_rate": "0.0001"}  # the values that did not validate
    (crashed,) = _runs(tmp_path, f"tags.search_id = '{plan.search_id}' and tags.trial = '1'")
    assert crashed.info.status == "FAILED" and crashed.data.tags["trial_error"].startswith("RuntimeError: toy")

    # A study in which no trial completed exits 1.
    lone = _plan(tmp_path, 1, space=f"{KEY}: {{low: 0.96, high: 1.0}}\n")
    code, text = _run(lone, tmp_path)
    assert code == 1 and "no trial completed" in text
    assert not (tmp_path / "work" / "search" / lone.search_id / "best.yaml").exists()


def test_the_median_pruner_prunes_a_clearly_bad_trial(tmp_path):
    plan = _plan(tmp_path, 4, **{"search.pruner_startup_trials": 2, "search.pruner_warmup_epochs": 0})
    study = _study(plan, tmp_path)
    for x in (0.3, 0.35, 0.9, 0.31):  # 0.9: f = 0.64, a third below the median after epoch 1
        study.enqueue_trial({KEY: x})
    code, _ = _run(plan, tmp_path)
    assert code == 0
    trials = _study(plan, tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED, TrialState.COMPLETE]
    assert trials[2].intermediate_values == {1: pytest.approx(f(0.9) / 3)}
    assert ("train", 0.9, 1) in CALLS and ("evaluate", 0.9, None) not in CALLS  # stopped after its first epoch
    assert trials[3].value == pytest.approx(f(0.31))  # the study went on

    (pruned,) = _runs(tmp_path, f"tags.search_id = '{plan.search_id}' and tags.trial = '2'")
    assert pruned.info.status == "KILLED" and pruned.data.tags["trial_state"] == "PRUNED"
    assert pruned.data.tags["stopped"].startswith("trial 2 pruned by the median pruner after epoch 1")
    (train,) = _runs(tmp_path, f"tags.`mlflow.parentRunId` = '{pruned.info.run_id}'")
    assert train.info.status == "KILLED" and "pruned" in train.data.tags["stopped"]
    assert train.data.metrics["val_accuracy"] == pytest.approx(f(0.9) / 3)  # logged before the pruner stopped it
    table = pd.read_csv(tmp_path / "work" / "search" / plan.search_id / "trials.csv")
    assert table.state.tolist() == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_rerun_runs_only_the_missing_trials(tmp_path):
    plan = _plan(tmp_path, 2)
    study = _study(plan, tmp_path)
    for x in (0.1, 0.2, 0.4, 0.5, 0.6):
        study.enqueue_trial({KEY: x})
    INTERRUPT.add(0.2)
    with pytest.raises(KeyboardInterrupt):
        _run(plan, tmp_path)
    assert _trained() == [0.1]
    trials = _study(plan, tmp_path).get_trials()
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["abandoned"] == "interrupted"

    # A trial left RUNNING by a process that is gone (SIGKILL, power loss): marked FAIL, its slot runs again.
    dead = _study(plan, tmp_path).ask({KEY: optuna.distributions.FloatDistribution(0.0, 0.9)})  # takes 0.4
    for key, value in {"slot": 2, "host": socket.gethostname(), "pid": _dead_pid()}.items():
        dead.set_user_attr(key, value)
    INTERRUPT.clear()
    CALLS.clear()
    code, text = _run(search.plan(None, _overrides(tmp_path), plan.space.path, 4, NAMES), tmp_path)
    assert code == 0 and "this run ran 3" in text
    trained = _trained()  # slot 1 (interrupted: the next queued value), slot 2 (abandoned), slot 3 (sampled)
    assert trained[:2] == [0.5, 0.6] and len(trained) == 3
    trials = _study(plan, tmp_path).get_trials()
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs["abandoned"].startswith("process ")
    done = {t.user_attrs["slot"]: t for t in trials if search.counted(t)}
    assert sorted(done) == [0, 1, 2, 3] and all(t.state == TrialState.COMPLETE for t in done.values())

    CALLS.clear()
    code, text = _run(search.plan(None, _overrides(tmp_path), plan.space.path, 4, NAMES), tmp_path)
    assert code == 0 and CALLS == [] and "this run ran 0" in text and len(_study(plan, tmp_path).trials) == 6


def test_two_shards_give_the_study_its_total(tmp_path):
    plan = _plan(tmp_path, 5, **{"search.sampler_startup_trials": 10})  # every draw random: repeats would show
    first, text = _run(plan, tmp_path, shard=(1, 2))
    assert first == 0 and "this run ran 3" in text
    trials = _study(plan, tmp_path).get_trials()
    assert sorted(t.user_attrs["slot"] for t in trials) == [0, 2, 4]
    second, text = _run(plan, tmp_path, shard=(2, 2))
    assert second == 0 and "this run ran 2" in text and "5 trial(s) in the study (5 complete" in text
    trials = _study(plan, tmp_path).get_trials()
    assert sorted(t.user_attrs["slot"] for t in trials) == [0, 1, 2, 3, 4]
    assert [t.user_attrs["shard"] for t in trials] == [[1, 2]] * 3 + [[2, 2]] * 2
    xs = [t.params[KEY] for t in trials]
    assert len(set(xs)) == 5  # the second shard's sampler does not repeat the first one's draws
    parents = _runs(tmp_path, f"tags.search_id = '{plan.search_id}' and tags.search_role = 'search'")
    assert len(parents) == 1
    assert len(_runs(tmp_path, f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")) == 5


def test_a_stage_shared_by_trials_runs_once(tmp_path):
    """Choices that repeat: the second trial with x=0.3 reuses the first one's stage folders."""
    plan = _plan(tmp_path, 3, space=f"{KEY}: {{choices: [0.3, 0.6]}}\n")
    study = _study(plan, tmp_path)
    for x in (0.3, 0.6, 0.3):
        study.enqueue_trial({KEY: x})
    assert _run(plan, tmp_path)[0] == 0
    assert _trained() == [0.3, 0.6]
    trials = _study(plan, tmp_path).get_trials()
    assert [t.value for t in trials] == [1.0, pytest.approx(f(0.6)), 1.0]
    root = tmp_path / "work" / "search" / plan.search_id
    assert (root / "trials/t0/train").resolve() == (root / "trials/t2/train").resolve()


def test_a_shared_stage_folder_waits_for_the_process_making_it(tmp_path):
    """Several processes in one workdir: a stage key another process holds is waited for, then reused."""
    folders = search._LockedFolders(tmp_path, force=False)
    lock = tmp_path / "stages" / "train" / "k1.lock"
    lock.parent.mkdir(parents=True)
    placed = []
    with file_lock(lock):  # another process works in stages/train/k1
        waiting = threading.Thread(target=lambda: placed.append(folders("train", "k1")))
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive() and placed == []
    waiting.join(10)
    assert placed == [tmp_path / "stages" / "train" / "k1"]
    with pytest.raises(LockBusy):  # held while the runner works in it ...
        with file_lock(lock, wait_seconds=0):
            pass
    folders("evaluate", "k2")  # ... until it places the next stage
    with file_lock(lock, wait_seconds=0):
        pass
    folders.release()
    with file_lock(tmp_path / "stages" / "evaluate" / "k2.lock", wait_seconds=0):
        pass


# --------------------------------------------------------------------------- the real stages


@pytest.mark.slow
@pytest.mark.extended  # long: outside the default run (docs/tests.md)
def test_a_real_search_records_three_trials_under_one_parent(tmp_path, tiny_dataset):
    space = _write(tmp_path / "space.yaml", "train.learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    sets = tiny_overrides(
        tmp_path, tiny_dataset, **{"train.epochs": 1, "data.validation": "s3", "augment.tta.enabled": "false"}
    )
    args = ["--stage", "evaluate", "--workdir", str(tmp_path / "work"), "--search", str(space), "--trials", "3"]
    assert run.main([*args, *(a for o in sets for a in ("--set", o))]) == 0
    plan = search.plan(None, sets, space, 3, sweep.with_upstream("evaluate"))
    root = tmp_path / "work" / "search" / plan.search_id

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs(
        [exp.experiment_id], f"tags.search_id = '{plan.search_id}' and tags.search_role = 'search'"
    )
    trials = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["trial"] for r in trials) == ["0", "1", "2"]
    table = pd.read_csv(root / "trials.csv")
    assert (table.state == "COMPLETE").all()
    for r in trials:
        assert r.info.status == "FINISHED" and r.data.tags["search_id"] == plan.search_id
        n = int(r.data.tags["trial"])
        assert float(r.data.params["train.learning_rate"]) == json.loads(table.params[n])["train.learning_rate"]
        assert r.data.metrics["search_objective"] == pytest.approx(table.value[n])
        stages = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{r.info.run_id}'")
        by_stage = {s.data.tags["stage"]: s for s in stages}
        assert sorted(by_stage) == ["evaluate", "prepare", "train"]
        assert by_stage["evaluate"].data.metrics["validation_macro_accuracy"] == pytest.approx(table.value[n])
        assert "val_accuracy" in by_stage["train"].data.metrics  # the curve the pruner watches
        metrics = json.loads((root / "trials" / f"t{n}" / "evaluate" / "metrics.json").read_text())
        assert metrics["splits"]["validation"]["plain"]["overall"]["macro_accuracy"] == pytest.approx(table.value[n])
    best = config.load(root / "best.yaml")
    assert best.train.learning_rate == json.loads(table.params[table.value.idxmax()])["train.learning_rate"]
    assert math.isclose(parent.data.metrics["best_validation_macro_accuracy"], table.value.max())
    assert os.path.getsize(root / "history.png") > 1000
