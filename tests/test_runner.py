"""The runner with toy stages: one record and one function make a stage; reuse, markers, MLflow, failures."""

import json
import re
from pathlib import Path

import mlflow
import pytest
from conftest import toy_params

from pipeline.core import config, files
from pipeline.running import runner, stages
from pipeline.running.stages import Context, MemoryRecorder, Stage, StageError

README = Path(__file__).resolve().parents[1] / "README.md"


CALLS: list[str] = []


def _count(ctx: Context) -> dict:
    """Toy stage: writes the number of epochs, logs a metric and a tag."""
    CALLS.append("count")
    (ctx.out / "count.txt").write_text(str(ctx.params.train.epochs))
    ctx.record.metrics({"count": ctx.params.train.epochs})
    ctx.record.tags({"dataset.toy": "yes"})
    ctx.facts["epochs"] = ctx.params.train.epochs
    return {"written": ctx.out / "count.txt"}


def _double(ctx: Context) -> dict:
    """Toy stage downstream of ``count``: reads its output through ``ctx.inputs``."""
    CALLS.append("double")
    value = int((ctx.inputs["count"] / "count.txt").read_text()) * 2
    assert ctx.marker("count")["epochs"] == ctx.params.train.epochs
    (ctx.out / "double.txt").write_text(str(value))
    ctx.record.metrics({"double": value})
    ctx.record.artifact(ctx.out / "double.txt")
    return {"value": value}


def _broken(ctx: Context) -> dict:
    (ctx.out / "partial.txt").write_text("half")
    raise RuntimeError("toy failure")


TOY = (
    Stage("count", _count, main_output="count.txt", settings=("train.epochs",), headline=("count",)),
    Stage("double", _double, upstream=("count",), main_output="double.txt", settings=("seed",), headline=("double",)),
    Stage("broken", _broken, upstream=("count",), main_output="never.txt", settings=()),
)


def _runs(tmp_path, stage):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("toy")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.stage = '{stage}'")


def test_toy_stage_runs_through_reuse_markers_and_mlflow(tmp_path):
    CALLS.clear()
    params = toy_params(tmp_path, **{"train.epochs": 3})
    results = runner.run_stages(params, tmp_path, ["count", "double"], stages=TOY)
    assert results["double"]["value"] == 6 and CALLS == ["count", "double"]
    marker = files.read_marker(tmp_path / "double")
    assert marker["headline"] == {"double": 6.0} and len(marker["output"]) == 16 and marker["seconds"] >= 0
    assert files.read_marker(tmp_path / "count")["epochs"] == 3  # facts the stage noted

    (run,) = _runs(tmp_path, "double")
    assert run.info.status == "FINISHED" and run.data.metrics["double"] == 6.0
    assert "stage_seconds" in run.data.metrics
    parent = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(
        run.data.tags["mlflow.parentRunId"]
    )
    assert parent.data.metrics["double"] == 6.0 and parent.data.metrics["count"] == 3.0
    assert {"stage_seconds_count", "stage_seconds_double"} <= set(parent.data.metrics)
    assert parent.data.tags["dataset.toy"] == "yes"

    # Same settings: both reused, nothing called, headline metrics still on the new parent.
    CALLS.clear()
    again = runner.run_stages(params, tmp_path, ["count", "double"], stages=TOY)
    assert again == {"count": {"reused": True}, "double": {"reused": True}} and CALLS == []
    reused = [r for r in _runs(tmp_path, "double") if r.data.tags.get("reused") == "true"]
    assert len(reused) == 1 and reused[0].data.metrics["double"] == 6.0

    # A setting only the downstream stage depends on reruns it alone.
    CALLS.clear()
    runner.run_stages(toy_params(tmp_path, **{"train.epochs": 3, "seed": 7}), tmp_path, ["count", "double"], stages=TOY)
    assert CALLS == ["double"]

    # A setting of the upstream stage: running only the downstream stage is refused, naming the stage.
    with pytest.raises(StageError, match="count was made with other settings"):
        runner.run_stages(toy_params(tmp_path, **{"train.epochs": 4}), tmp_path, ["double"], stages=TOY)


def test_failing_toy_stage_leaves_no_marker_and_a_failed_run(tmp_path):
    params = toy_params(tmp_path)
    with pytest.raises(RuntimeError, match="toy failure"):
        runner.run_stages(params, tmp_path, ["count", "broken"], stages=TOY)
    assert files.read_marker(tmp_path / "broken") is None
    (failed,) = _runs(tmp_path, "broken")
    assert failed.info.status == "FAILED"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}


def test_missing_main_output_is_an_error(tmp_path):
    lazy = (Stage("lazy", lambda ctx: {}, main_output="promised.txt", settings=()),)
    with pytest.raises(StageError, match="main output"):
        runner.run_stages(toy_params(tmp_path), tmp_path, ["lazy"], stages=lazy, track=False)
    assert files.read_marker(tmp_path / "lazy") is None


def test_stages_run_without_mlflow(tmp_path):
    CALLS.clear()
    results = runner.run_stages(
        toy_params(tmp_path, **{"train.epochs": 2}), tmp_path, ["count", "double"], stages=TOY, track=False
    )
    assert results["double"]["value"] == 4
    assert not (tmp_path / "mlflow.db").exists()


def test_stage_function_with_a_memory_recorder(tmp_path):
    """A stage function is a plain function of a context: call it directly."""
    out = tmp_path / "count"
    out.mkdir()
    record = MemoryRecorder()
    params = toy_params(tmp_path, **{"train.epochs": 5})
    ctx = Context(params=params, workdir=tmp_path, out=out, inputs={}, record=record)
    _count(ctx)
    assert record.latest() == {"count": 5.0} and record.logged_tags() == {"dataset.toy": "yes"}
    assert (out / "count.txt").read_text() == "5" and ctx.facts == {"epochs": 5}


def test_unknown_stage_is_named():
    with pytest.raises(StageError, match="unknown stage .nope.; available: prepare, teacher, train"):
        stages.get("nope")


def test_cli_choices_come_from_the_records():
    from pipeline.running import cli as run

    action = next(a for a in run.build_parser()._actions if a.dest == "stage")
    assert tuple(action.choices) == (*stages.NAMES, "all")
    assert stages.NAMES == ("prepare", "teacher", "train", "specialize", "evaluate", "compress", "report", "register")


def test_readme_stage_table_is_made_from_the_records():
    """The stage table is in README.md or, once moved, in one of docs/*.md: whichever holds it must be current."""
    documents = [README, *sorted((README.parent / "docs").glob("*.md"))]
    holders = [doc for doc in documents if "| stage | reads | writes under `--workdir`" in doc.read_text()]
    assert holders, f"no stage table in {', '.join(str(d) for d in documents)}"
    for doc in holders:
        assert stages.table() in doc.read_text(), (
            f"{doc.name}'s stage table is stale: paste `python -m pipeline.running.stages` into it"
        )


def test_every_stage_function_is_free_of_mlflow_and_markers():
    for stage in stages.STAGES:
        source = Path(stage.function.__code__.co_filename).read_text()
        assert not re.search(r"^\s*(import mlflow|from mlflow)", source, re.M), stage.name
        assert "mark_complete" not in source and "clear_marker" not in source, stage.name


def test_settings_keys_exist_intoy_params():
    tree = config.Params().to_dict()
    for stage in stages.STAGES:
        for dotted in (*(stage.settings or ()), *stage.exclude):
            node = tree
            for part in dotted.split("."):
                assert part in node, f"{stage.name}: {dotted}"
                node = node[part]
    assert json.dumps(stages.get("train").settings_of(config.Params()))  # JSON-able
    assert "tta" not in stages.get("train").settings_of(config.Params())["augment"]
