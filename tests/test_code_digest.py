"""Reuse notices code changes: the code digest of a stage, its marker, the warning and --rerun-changed-code.

The toy stages live in a package written to ``tmp_path`` (a fresh name per test) so that editing
its files changes their code digest, as editing ``models/asc.py`` changes the real stages'.
"""

import importlib
import json
import logging
import sys
import uuid

import mlflow
import pytest
from conftest import toy_params

from pipeline.core import files, source
from pipeline.running import cli as run
from pipeline.running import runner
from pipeline.running import state as run_state
from pipeline.running.stages import Stage, StageError
from pipeline.scaling import sweep

STAGES_PY = '''
from {pkg} import helper  # module level
from {outside} import CALLS  # outside the project: not digested


def count(ctx):
    from {pkg} import lazy  # inside a function
    (ctx.out / "count.txt").write_text(str(helper.VALUE + lazy.ZERO))
    ctx.record.metrics({{"count": helper.VALUE}})
    CALLS.append("count")
    return {{}}


def double(ctx):
    value = int((ctx.inputs["count"] / "count.txt").read_text()) * 2
    (ctx.out / "double.txt").write_text(str(value))
    CALLS.append("double")
    return {{"value": value}}


def slow(ctx):
    """Resumable: interrupted on its first call (a flag file), records whether it resumed."""
    CALLS.append(("slow", ctx.resuming))
    flag = ctx.workdir / "interrupt"
    if flag.exists():
        flag.unlink()
        raise KeyboardInterrupt
    (ctx.out / "slow.txt").write_text("done")
    return {{}}
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A toy project package in ``tmp_path/src`` and its stage records; edits via ``toy.edit(name, text)``."""
    pkg, outside = f"toyproj_{uuid.uuid4().hex[:8]}", f"outside_{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    (src / pkg).mkdir(parents=True)
    (src / pkg / "__init__.py").write_text("")
    (src / pkg / "stages.py").write_text(STAGES_PY.format(pkg=pkg, outside=outside))
    (src / pkg / "helper.py").write_text("from .rel import ONE\n\nVALUE = 3 * ONE\n")
    (src / pkg / "rel.py").write_text("ONE = 1\n")
    (src / pkg / "lazy.py").write_text("ZERO = 0\n")
    (src / pkg / "unused.py").write_text("# imported by nothing\n")
    (src / f"{outside}.py").write_text("CALLS = []\n")
    monkeypatch.syspath_prepend(str(src))
    source.code_digest.cache_clear()

    class Toy:
        """The toy package: ``records`` its stage records, ``calls`` what its stage functions did."""

        name, root, outside_file = pkg, src, f"{outside}.py"

        def __init__(self):
            self.calls = importlib.import_module(outside).CALLS
            self._load()

        def _load(self):
            module = importlib.import_module(f"{pkg}.stages")
            self.records = (
                Stage("count", module.count, main_output="count.txt", settings=(), headline=("count",)),
                Stage("double", module.double, upstream=("count",), main_output="double.txt", settings=("seed",)),
                Stage("slow", module.slow, main_output="slow.txt", settings=(), resumable=True),
            )

        def edit(self, relative: str, text: str) -> None:
            """Append ``text`` to a file, then load the package afresh (as a new process would)."""
            path = src / relative
            path.write_text(path.read_text() + text)
            for name in [m for m in sys.modules if m.split(".")[0] == pkg]:
                del sys.modules[name]
            importlib.invalidate_caches()
            source.code_digest.cache_clear()
            self._load()

    yield Toy()
    source.code_digest.cache_clear()
    for name in [m for m in sys.modules if m.split(".")[0] in (pkg, outside)]:
        del sys.modules[name]


def _code_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "other code" in r.getMessage()]


# ------------------------------------------------------------------------------ (1) the digest


def test_digest_follows_every_import_of_the_project_and_nothing_else(toy):
    first = source.code_digest(f"{toy.name}.stages")
    assert sorted(first.files) == [
        f"{toy.name}/{f}" for f in ("__init__.py", "helper.py", "lazy.py", "rel.py", "stages.py")
    ]
    assert len(first.digest) == 16
    source.code_digest.cache_clear()
    assert source.code_digest(f"{toy.name}.stages") == first  # unchanged files: the same digest

    seen, before = {first.digest}, first
    # helper: a module-level import; rel: a relative import of helper; lazy: an import inside a function
    for relative in ("helper.py", "lazy.py", "rel.py", "stages.py", "__init__.py"):
        toy.edit(f"{toy.name}/{relative}", "# edited\n")
        now = source.code_digest(f"{toy.name}.stages")
        assert now.digest not in seen and source.changed_files(before.files, now.files) == [f"{toy.name}/{relative}"]
        seen.add(now.digest)
        before = now

    toy.edit(toy.outside_file, "# edited\n")  # outside the project
    toy.edit(f"{toy.name}/unused.py", "# edited\n")  # in the package, imported by nothing
    assert source.code_digest(f"{toy.name}.stages") == before


def test_digest_is_cached_per_process(toy):
    first = source.code_digest(f"{toy.name}.stages")
    (toy.root / toy.name / "helper.py").write_text("VALUE = 5\n")  # no cache_clear: this process runs the old code
    assert source.code_digest(f"{toy.name}.stages") is first


def test_the_real_stages_digest_the_model_and_no_installed_package():
    code = source.code_digest("pipeline.running.stages.train")
    assert {
        "models/asc.py",
        "pipeline/scaling/distributed.py",
        "pipeline/running/stages/__init__.py",
        "pipeline/__init__.py",
    } <= set(code.files)  # imported, imported inside a function, the packages' __init__ files
    assert all(path.split("/")[0] in source.PROJECT_PACKAGES for path in code.files)
    with pytest.raises(ValueError, match="no Python source file found for module 'no_such_module_xyz'"):
        source.code_digest("no_such_module_xyz")


def test_a_parent_package_is_digested_but_its_siblings_are_not_followed():
    """``pipeline/running/stages/__init__.py`` imports every stage; a stage module does not depend on its
    siblings for that."""
    prepare = source.code_digest("pipeline.running.stages.prepare").files
    assert "pipeline/running/stages/__init__.py" in prepare and "pipeline/running/stages/prepare.py" in prepare
    assert not {"pipeline/running/stages/report.py", "pipeline/running/stages/train.py", "models/asc.py"} & set(prepare)
    register = source.code_digest("pipeline.running.stages.register").files
    assert "pipeline/running/stages/compress.py" not in register and len(register) < len(prepare)


# ------------------------------------------------------------------------------ (2) reuse warns, (4) marker


def test_marker_records_the_code_digest(toy, tmp_path):
    runner.run_stages(toy_params(tmp_path), tmp_path, ["count", "double"], stages=toy.records, track=False)
    code = source.code_digest(f"{toy.name}.stages")
    for name in ("count", "double"):
        marker = files.read_marker(tmp_path / name)
        assert marker["code"] == code.digest and marker["code_files"] == 5 and marker["code_sources"] == code.files


def test_reuse_after_a_code_change_warns_once_per_stage_and_reuses(toy, tmp_path, caplog):
    params = toy_params(tmp_path)
    runner.run_stages(params, tmp_path, ["count", "double"], stages=toy.records, track=False)
    caplog.clear()
    assert runner.run_stages(params, tmp_path, ["count", "double"], stages=toy.records, track=False) == {
        "count": {"reused": True},
        "double": {"reused": True},
    }
    assert _code_warnings(caplog) == []  # same code: no warning

    old = source.code_digest(f"{toy.name}.stages").digest
    toy.edit(f"{toy.name}/helper.py", "VALUE = 30\n")
    new = source.code_digest(f"{toy.name}.stages").digest
    caplog.clear()
    toy.calls.clear()
    results = runner.run_stages(params, tmp_path, ["count", "double"], stages=toy.records, track=False)
    assert results == {
        "count": {"reused": True, "code_changed": True},
        "double": {"reused": True, "code_changed": True},
    }
    assert toy.calls == [] and (tmp_path / "count" / "count.txt").read_text() == "3"  # the old outputs
    warnings = _code_warnings(caplog)
    assert len(warnings) == 2, warnings
    for name, line in zip(("count", "double"), warnings, strict=True):
        assert "\n" not in line
        assert line == (
            f"stage {name}: reusing outputs made by other code (code digest {old} -> {new}, 5 source "
            f"files; changed: {toy.name}/helper.py); --rerun-changed-code reruns such stages"
        )


def test_marker_without_a_code_digest_counts_as_other_code(toy, tmp_path, caplog):
    params = toy_params(tmp_path)
    runner.run_stages(params, tmp_path, ["count"], stages=toy.records, track=False)
    marker = files.read_marker(tmp_path / "count")
    for field in ("code", "code_files", "code_sources"):
        del marker[field]
    files.mark_complete(tmp_path / "count", **marker)  # as written before code digests
    caplog.clear()
    assert runner.run_stages(params, tmp_path, ["count"], stages=toy.records, track=False) == {
        "count": {"reused": True, "code_changed": True}
    }
    (line,) = _code_warnings(caplog)
    assert line.startswith("stage count: reusing outputs made by other code (code digest not recorded -> ")


def test_reused_mlflow_run_is_tagged_code_changed(toy, tmp_path):
    params = toy_params(tmp_path)
    runner.run_stages(params, tmp_path, ["count"], stages=toy.records)
    runner.run_stages(params, tmp_path, ["count"], stages=toy.records)
    toy.edit(f"{toy.name}/lazy.py", "# edited\n")
    runner.run_stages(params, tmp_path, ["count"], stages=toy.records)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("toy")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'count'", order_by=["start_time"])
    assert [(r.data.tags.get("reused"), r.data.tags.get("code_changed")) for r in runs] == [
        (None, None),
        ("true", None),
        ("true", "true"),
    ]
    assert runs[0].data.tags["code"] == runs[1].data.tags["code"] != runs[2].data.tags["code"]


# ------------------------------------------------------------------------------ (3) rerun_changed_code


def test_rerun_changed_code_reruns_the_stage_and_its_downstream(toy, tmp_path, caplog):
    params = toy_params(tmp_path)
    runner.run_stages(params, tmp_path, ["count", "double"], stages=toy.records, track=False)
    toy.edit(f"{toy.name}/helper.py", "VALUE = 30\n")
    toy.calls.clear()
    results = runner.run_stages(
        params, tmp_path, ["count", "double"], stages=toy.records, track=False, rerun_changed_code=True
    )
    assert toy.calls == ["count", "double"] and results["double"]["value"] == 60
    assert (tmp_path / "double" / "double.txt").read_text() == "60"
    assert files.read_marker(tmp_path / "count")["code"] == source.code_digest(f"{toy.name}.stages").digest

    caplog.clear()
    toy.calls.clear()
    again = runner.run_stages(
        params, tmp_path, ["count", "double"], stages=toy.records, track=False, rerun_changed_code=True
    )
    assert again == {"count": {"reused": True}, "double": {"reused": True}} and toy.calls == []
    assert _code_warnings(caplog) == []


def test_an_input_made_by_other_code_is_refused_with_the_setting_and_named_without(toy, tmp_path, caplog):
    runner.run_stages(toy_params(tmp_path), tmp_path, ["count", "double"], stages=toy.records, track=False)
    toy.edit(f"{toy.name}/rel.py", "# edited\n")
    with pytest.raises(
        StageError,
        match=rf"{tmp_path / 'count'} was made by other code than this run's .*"
        r"run --stage count --rerun-changed-code",
    ):
        runner.run_stages(
            toy_params(tmp_path, seed=7), tmp_path, ["double"], stages=toy.records, track=False, rerun_changed_code=True
        )
    caplog.clear()
    runner.run_stages(toy_params(tmp_path, seed=7), tmp_path, ["double"], stages=toy.records, track=False)
    assert any(
        line.startswith("stage double: its input count was made by other code (") for line in _code_warnings(caplog)
    ), _code_warnings(caplog)


def test_an_interrupted_run_of_other_code_resumes_with_a_warning_or_starts_afresh(toy, tmp_path, caplog):
    params = toy_params(tmp_path)
    for rerun in (False, True):
        workdir = tmp_path / f"w{rerun}"
        workdir.mkdir()
        (workdir / "interrupt").touch()
        with pytest.raises(KeyboardInterrupt):
            runner.run_stages(params, workdir, ["slow"], stages=toy.records, track=False)
        state = json.loads((workdir / "slow" / run_state.RUNNING).read_text())
        assert state["code"] == source.code_digest(f"{toy.name}.stages").digest
        toy.edit(f"{toy.name}/lazy.py", "# edited\n")
        toy.calls.clear()
        caplog.clear()
        runner.run_stages(params, workdir, ["slow"], stages=toy.records, track=False, rerun_changed_code=rerun)
        assert toy.calls == [("slow", not rerun)]
        resumed = [line for line in _code_warnings(caplog) if "resuming an interrupted run" in line]
        assert len(resumed) == (0 if rerun else 1)
        assert not (workdir / "slow" / run_state.RUNNING).exists()


def test_same_code_still_resumes(toy, tmp_path, caplog):
    (tmp_path / "interrupt").touch()
    with pytest.raises(KeyboardInterrupt):
        runner.run_stages(toy_params(tmp_path), tmp_path, ["slow"], stages=toy.records, track=False)
    toy.calls.clear()
    runner.run_stages(
        toy_params(tmp_path), tmp_path, ["slow"], stages=toy.records, track=False, rerun_changed_code=True
    )
    assert toy.calls == [("slow", True)] and _code_warnings(caplog) == []


def test_sweep_reruns_a_shared_stage_made_by_other_code_once(toy, tmp_path):
    overrides = [
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_root={tmp_path}/mlruns",
        "tracking.experiment=toy",
    ]
    plan = sweep.plan(None, overrides, [], "0,1")  # two cells: count is shared (no settings), double is not
    assert sweep.run_sweep(plan, tmp_path, ["count", "double"], stages=toy.records)[0] == 0
    toy.edit(f"{toy.name}/helper.py", "VALUE = 30\n")
    toy.calls.clear()
    assert sweep.run_sweep(plan, tmp_path, ["count", "double"], stages=toy.records)[0] == 0
    assert toy.calls == []  # finished cells are skipped
    assert sweep.run_sweep(plan, tmp_path, ["count", "double"], stages=toy.records, rerun_changed_code=True)[0] == 0
    assert toy.calls == ["count", "double", "double"]  # the shared folder once, each cell's own stage
    for cell in plan.cells:
        assert (tmp_path / "sweeps" / plan.sweep_id / "runs" / cell.name / "double" / "double.txt").read_text() == "60"


# ------------------------------------------------------------------------------ (5) the CLI


def test_cli_help_lists_the_setting(capsys):
    with pytest.raises(SystemExit) as info:
        run.main(["--help"])
    assert info.value.code == 0
    assert "--rerun-changed-code" in capsys.readouterr().out


def test_cli_passes_the_setting_to_the_runner_and_the_sweep(tmp_path, monkeypatch):
    seen = {}

    def run_stages(*args, **kwargs):
        seen["run"] = kwargs
        return {}

    def run_sweep(*args, **kwargs):
        seen["sweep"] = kwargs
        return 0, ""

    monkeypatch.setattr(runner, "run_stages", run_stages)
    monkeypatch.setattr(runner, "summary", lambda *args: "")
    monkeypatch.setattr(sweep, "run_sweep", run_sweep)
    sets = [
        "--set",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        "--set",
        f"tracking.artifact_root={tmp_path}/mlruns",
    ]
    base = ["--stage", "prepare", "--workdir", str(tmp_path / "w"), *sets]
    assert run.main([*base, "--rerun-changed-code"]) == 0
    assert run.main([*base, "--rerun-changed-code", "--seeds", "0,1"]) == 0
    assert seen["run"]["rerun_changed_code"] is True and seen["sweep"]["rerun_changed_code"] is True
