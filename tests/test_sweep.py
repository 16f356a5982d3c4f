"""Sweeps: grid parsing, shards, a real 2 settings x 2 seeds sweep read back from MLflow, reruns, failures.

The real sweeps run ``--stage evaluate`` (prepare, train, evaluate) on the tiny synthetic set:
the swept key (``evaluate.batch_size``, ``evaluate.splits``) leaves ``train`` shared, so the
2 x 2 grid trains twice (once per seed) and the failure sweep once.
"""

import logging

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import ConfigError
from pipeline.running import cli as run
from pipeline.scaling import sweep
from tests.conftest import SWEEP_GRID, sweep_overrides

GRID = SWEEP_GRID


def _sets(workdir, dataset, **extra) -> list[str]:
    return [arg for o in sweep_overrides(workdir, dataset, **extra) for arg in ("--set", o)]


def _client(workdir):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")


def _runs(workdir, filter_string):
    client = _client(workdir)
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=500)


def _plan(workdir, dataset, args):
    sweeps = [args[i + 1] for i, a in enumerate(args) if a == "--sweep"]
    seeds = args[args.index("--seeds") + 1] if "--seeds" in args else None
    return sweep.plan(None, sweep_overrides(workdir, dataset), sweeps, seeds)


# --------------------------------------------------------------------------- pure functions


def test_values_split_on_commas_outside_brackets_and_quotes():
    assert sweep.split_values("[32,64,64,64], [64,128,128,128]") == ["[32,64,64,64]", "[64,128,128,128]"]
    assert sweep.split_values("zm,mm,cm") == ["zm", "mm", "cm"]
    assert sweep.split_values("'a,b',{x: [1, 2]},3") == ["'a,b'", "{x: [1, 2]}", "3"]
    dim = sweep.parse_sweep("model.channels=[8,8,16,16],[16,16,32,32]")
    assert dim.key == "model.channels" and dim.values == [[8, 8, 16, 16], [16, 16, 32, 32]]
    assert sweep.parse_sweep("train.learning_rate=1e-3,0.01").values == ["1e-3", 0.01]  # as --set parses them
    for bad, named in (
        ("model.channels=[8,8", "unclosed bracket"),
        ("train.epochs=1,,2", "empty value"),
        ("train.epochs=1]", "unbalanced"),
        ("train.epochs", "expected KEY=V1,V2"),
        ("seed=1,2", "--seeds"),
        ("tracking.uri=a,b", "cannot be swept"),
        ("train.epochs=2,2", "duplicate"),
        ("train..epochs=1", "malformed key"),
    ):
        with pytest.raises(ConfigError, match=named) as info:
            sweep.parse_sweep(bad)
        assert repr(bad) in str(info.value)
    assert sweep.parse_seeds("0, 1,2") == (0, 1, 2)
    for bad in ("0,0", "-1", "a", "1,"):
        with pytest.raises(ConfigError, match="--seeds"):
            sweep.parse_seeds(bad)


@pytest.mark.parametrize(
    "arg, spellings, typed",
    [
        ('train.learning_rate=0.001,"0.001"', ['"0.001"', "0.001"], "0.001"),  # a quoted number is a string to YAML
        ("train.learning_rate=1e-3,0.001,0.01", ["0.001", "1e-3"], "0.001"),  # YAML 1.1 reads 1e-3 as a string
        ("model.channels=[8,8,16,16],'8,8,16,16'", ["'8,8,16,16'", "[8,8,16,16]"], "(8, 8, 16, 16)"),
        ("train.deterministic=true,True", ["True", "true"], "True"),
    ],
)
def test_values_equal_after_type_conversion_are_duplicates(arg, spellings, typed):
    """Two spellings of one setting would plan two identical cells: refused, naming the key and both spellings."""
    with pytest.raises(ConfigError, match="duplicate value") as info:
        sweep.parse_sweep(arg)
    message = str(info.value)
    assert repr(arg) in message and arg.split("=")[0] in message and typed in message, message
    for spelling in spellings:
        assert repr(spelling) in message, (spelling, message)


def test_sweep_values_are_converted_once_with_the_key_named():
    with pytest.raises(ConfigError, match=r"'train.epochs=1,abc'.*train.epochs: expected an integer, got 'abc'"):
        sweep.parse_sweep("train.epochs=1,abc")
    with pytest.raises(ConfigError, match=r"unknown key.*train.nope"):
        sweep.parse_sweep("train.nope=1,2")
    assert sweep.parse_sweep("train.learning_rate=1e-3,0.01").texts == ("1e-3", "0.01")


def test_shards_cover_the_grid_without_overlap_or_gap():
    cells = [(combo, seed) for combo in range(5) for seed in range(3)]  # 15 cells
    for count in range(1, 8):
        parts = [sweep.shard_cells(cells, index, count) for index in range(1, count + 1)]
        flat = [cell for part in parts for cell in part]
        assert sorted(flat) == sorted(cells) and len(flat) == len(set(flat)) == 15, count
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    assert sweep.shard_cells(cells, 2, 3) == cells[1::3]
    assert sweep.parse_shard("2/3") == (2, 3) and sweep.parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/3", "4/3", "1/0", "a/b", "1-3", ""):
        with pytest.raises(ConfigError, match="1-based"):
            sweep.parse_shard(bad)


def test_plan_validates_every_combination_and_the_id_is_deterministic(tmp_path, tiny_dataset):
    a = _plan(tmp_path, tiny_dataset, GRID)
    assert [c.name for c in a.cells] == ["c0-seed0", "c0-seed1", "c1-seed0", "c1-seed1"]
    assert a.params["c1-seed1"].evaluate.batch_size == 8 and a.params["c1-seed1"].seed == 1
    assert a.params["c0-seed0"].tracking.run_name == f"sweep-{a.sweep_id[:6]}-c0-seed0"
    assert _plan(tmp_path / "elsewhere", tiny_dataset, GRID).sweep_id == a.sweep_id  # store and workdir: same id
    assert (
        _plan(tmp_path, tiny_dataset, ["--sweep", "evaluate.batch_size=16,4", "--seeds", "0,1"]).sweep_id != a.sweep_id
    )
    assert _plan(tmp_path, tiny_dataset, ["--sweep", "evaluate.batch_size=16,8", "--seeds", "0"]).sweep_id != a.sweep_id
    with pytest.raises(ConfigError, match=r"combination audio.n_mels=8 \(seed 0\).*audio"):
        _plan(tmp_path, tiny_dataset, ["--sweep", "audio.n_mels=32,8", "--seeds", "0"])


@pytest.mark.parametrize(
    "args, named",
    [
        (["--sweep", "train.epochs=1,abc"], "train.epochs"),
        (["--sweep", "model.channels=[8,8,16,16],[8,8"], "unclosed bracket"),
        (["--sweep", "train.nope=1,2"], "train.nope"),
        (["--sweep", "train.epochs=1,2", "--sweep", "train.epochs=3"], "given twice"),
        (["--seeds", "0,x"], "--seeds"),
        (["--sweep", "train.epochs=1,2", "--shard", "3/2"], "--shard"),
        (["--shard", "1/2"], "need a sweep"),
        (["--sweep", "train.learning_rate=1e-3,0.001"], "duplicate value"),
    ],
)
def test_bad_sweep_exits_2_naming_it_before_any_work(tmp_path, tiny_dataset, capsys, args, named):
    code = run.main(["--stage", "evaluate", "--workdir", str(tmp_path), *_sets(tmp_path, tiny_dataset), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert "invalid sweep" in err and named in err, err
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "mlflow.db").exists()


# --------------------------------------------------------------------------- real sweeps


@pytest.fixture()
def swept(tiny_sweep):
    """The 2 x 2 grid run as two shards, once per session (``conftest.tiny_sweep``, shared with the browser test)."""
    return tiny_sweep


@pytest.mark.slow
def test_shards_run_their_cells_and_the_last_writes_the_grid_summary(swept):
    assert swept["codes"] == (0, 0)
    assert swept["after_first"]["grid"] is False  # shard 1 alone: the grid is not finished
    shard1 = swept["after_first"]["shard"]
    assert list(shard1.cell) == ["c0-seed0", "c1-seed0"] and set(shard1.status) == {"finished"}
    assert list(pd.read_csv(swept["root"] / "shard-2-of-2" / "runs.csv").cell) == ["c0-seed1", "c1-seed1"]
    runs = pd.read_csv(swept["root"] / "runs.csv")
    assert sorted(runs.cell) == ["c0-seed0", "c0-seed1", "c1-seed0", "c1-seed1"] and set(runs.status) == {"finished"}


@pytest.mark.slow
def test_summary_mean_and_std_equal_the_runs_read_back_from_mlflow(swept):
    sid = swept["plan"].sweep_id
    summary = pd.read_csv(swept["root"] / "summary.csv")
    assert list(summary.combo) == ["c0", "c1"] and list(summary["evaluate.batch_size"]) == [16, 8]
    assert list(summary.n_seeds) == [2, 2] and list(summary.n_failed) == [0, 0]
    assert "int8_size_bytes_mean" not in summary  # no compress stage ran: left out, not empty
    parents = _runs(swept["workdir"], f"tags.sweep_id = '{sid}' and tags.sweep_role = 'run'")
    assert len(parents) == 4 and {r.info.status for r in parents} == {"FINISHED"}
    for row in summary.to_dict("records"):
        mine = [r for r in parents if r.data.tags["sweep_combo"] == row["combo"]]
        assert sorted(r.data.tags["seed"] for r in mine) == ["0", "1"]
        assert {r.data.tags["sweep.evaluate.batch_size"] for r in mine} == {str(row["evaluate.batch_size"])}
        for metric in ("macro_accuracy", "group_unseen_macro_accuracy", "log_loss"):
            values = np.array([r.data.metrics[metric] for r in mine])
            assert row[f"{metric}_mean"] == pytest.approx(values.mean(), abs=1e-12), metric
            assert row[f"{metric}_std"] == pytest.approx(values.std(ddof=1), abs=1e-12), metric
    assert summary.log_loss_std.iloc[0] > 0  # the seeds' models differ: the std is a real number, not 0

    (logged,) = _runs(swept["workdir"], f"tags.sweep_id = '{sid}' and tags.sweep_scope = 'grid'")
    names = {a.path for a in _client(swept["workdir"]).list_artifacts(logged.info.run_id)}
    assert names == {"summary.csv", "runs.csv", "summary.png"}
    assert logged.data.metrics["c1_log_loss_mean"] == pytest.approx(summary.log_loss_mean.iloc[1])
    assert (swept["root"] / "summary.png").stat().st_size > 10_000


@pytest.mark.slow
def test_stages_with_equal_keys_are_shared_across_combinations(swept):
    stages = swept["root"] / "stages"
    assert [len(list((stages / s).iterdir())) for s in ("prepare", "train", "evaluate")] == [1, 2, 4]
    cell = swept["root"] / "runs" / "c1-seed0"
    assert (cell / "train").is_symlink() and (cell / "train").resolve() == (
        swept["root"] / "runs" / "c0-seed0" / "train"
    ).resolve()
    trained = _runs(swept["workdir"], "tags.stage = 'train'")
    assert len(trained) == 4 and sum(r.data.tags.get("reused") != "true" for r in trained) == 2


@pytest.mark.slow
def test_rerun_reuses_everything(swept, caplog):
    sid = swept["plan"].sweep_id
    before = len(_runs(swept["workdir"], "tags.stage != ''"))
    markers = {p: p.stat().st_mtime_ns for p in swept["root"].glob("stages/*/*/_SUCCESS.json")}
    with caplog.at_level(logging.INFO):
        assert run.main(swept["base"]) == 0
    assert len(_runs(swept["workdir"], "tags.stage != ''")) == before  # no stage run, not even a reused one
    assert len(_runs(swept["workdir"], f"tags.sweep_id = '{sid}' and tags.sweep_role = 'run'")) == 4
    assert {p: p.stat().st_mtime_ns for p in swept["root"].glob("stages/*/*/_SUCCESS.json")} == markers
    assert sum("skipped (--force reruns it" in r.getMessage() for r in caplog.records) == 4
    assert not any(r.getMessage().startswith("stage ") for r in caplog.records if r.name == "pipeline.running.runner")


@pytest.mark.slow
def test_a_failing_combination_is_recorded_and_the_others_finish(tmp_path, tiny_dataset, caplog):
    # evaluate.splits=[test]: the tiny set has no labelled test clips, so that cell's evaluate fails.
    args = [
        "--stage",
        "evaluate",
        "--workdir",
        str(tmp_path),
        *_sets(tmp_path, tiny_dataset),
        "--sweep",
        "evaluate.splits=[evaluate],[test]",
        "--seeds",
        "0",
    ]
    assert run.main(args) == 1
    sid = _plan(tmp_path, tiny_dataset, args).sweep_id
    root = tmp_path / "sweeps" / sid
    runs = pd.read_csv(root / "runs.csv").set_index("cell")
    assert runs.loc["c0-seed0", "status"] == "finished" and 0 <= runs.loc["c0-seed0", "macro_accuracy"] <= 1
    assert runs.loc["c1-seed0", "status"] == "failed" and "no labelled clips" in runs.loc["c1-seed0", "error"]
    summary = pd.read_csv(root / "summary.csv").set_index("combo")
    assert summary.loc["c1", "status"] == "failed" and summary.loc["c1", "n_failed"] == 1
    assert summary.loc["c1", "n_seeds"] == 0 and np.isnan(summary.loc["c1", "macro_accuracy_mean"])
    assert "c1-seed0: StageError" in summary.loc["c1", "error"] and summary.loc["c0", "status"] == "finished"
    (failed,) = _runs(tmp_path, f"tags.sweep_id = '{sid}' and tags.sweep_cell = 'c1-seed0'")
    assert failed.info.status == "FAILED" and "no labelled clips" in failed.data.tags["sweep_error"]
    (evaluate,) = _runs(tmp_path, f"tags.stage = 'evaluate' and tags.`mlflow.parentRunId` = '{failed.info.run_id}'")
    assert evaluate.info.status == "FAILED"

    # The rerun skips the finished cell and retries the failed one, reusing its complete stages by marker.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run.main(args) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("c0-seed0: done in MLflow run" in m for m in messages)
    assert any(m.startswith("stage prepare: reusing") for m in messages)
    assert any(m.startswith("stage train: reusing") for m in messages)
    attempts = _runs(tmp_path, f"tags.sweep_id = '{sid}' and tags.sweep_cell = 'c1-seed0'")
    assert [r.info.status for r in attempts] == ["FAILED", "FAILED"]
    assert len(_runs(tmp_path, f"tags.sweep_id = '{sid}' and tags.sweep_cell = 'c0-seed0'")) == 1


@pytest.mark.slow
def test_summary_only_rewrites_the_grid_summary_from_mlflow(swept):
    summary = swept["root"] / "summary.csv"
    before = pd.read_csv(summary)
    summary.unlink()
    assert run.main([*swept["base"], "--summary-only"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(summary), before)  # the same numbers, read back again
    assert (
        len(
            _runs(
                swept["workdir"],
                f"tags.sweep_id = '{swept['plan'].sweep_id}' and "
                "tags.sweep_role = 'summary' and tags.sweep_scope = 'grid'",
            )
        )
        == 1
    )


def test_sweep_plot_draws_mean_and_std_per_setting(tmp_path):
    from evaluate.plots import plot_sweep

    path = plot_sweep(
        ["c0: a=1 (n=2)", "c1: a=2 (n=1)"],
        [("macro accuracy", [0.5, 0.6], [0.01, float("nan")]), ("log loss", [1.2, 1.1], [0.1, 0.0])],
        tmp_path / "sweep.png",
    )
    assert path.stat().st_size > 5_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="'log loss' has 1 means"):
        plot_sweep(["a", "b"], [("log loss", [1.0], [0.1])], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="at least one setting"):
        plot_sweep([], [], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_force_reruns_each_shared_stage_folder_once_per_invocation(tmp_path):
    from pipeline.core import files

    folders = sweep._SharedFolders(tmp_path, force=True)
    path = tmp_path / "stages" / "train" / "k1"
    files.mark_complete(path, key="k1")
    assert folders("train", "k1") == path and files.read_marker(path) is None  # first cell: rerun
    files.mark_complete(path, key="k1")  # (the runner wrote it again)
    assert folders("train", "k1") == path and files.read_marker(path) == {"key": "k1"}  # next cells: reuse
    files.mark_complete(path, key="k1")
    assert files.read_marker(sweep._SharedFolders(tmp_path, force=False)("train", "k1")) == {"key": "k1"}
