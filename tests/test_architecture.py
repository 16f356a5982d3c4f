"""The architecture, checked: no import circle, no stage importing a stage, a distributed stage in one record.

The import graph is built from the source (``ast``), imports inside functions included: a lazy
import hides a circle from Python, not from this test. An edge goes to the module imported (its
parent packages' ``__init__`` files are not edges: Python runs them, but they do not make the
importing module depend on their siblings).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.core import config
from pipeline.running import runner
from pipeline.running import worker as worker_role
from pipeline.running.stages import Context, MemoryRecorder, Stage
from pipeline.running.stages.base import replace

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "models", "augment", "evaluate")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source (top level, functions, classes).

    ``import a.b`` and ``from a.b import name`` give an edge to ``a.b``; ``from a.b import c``
    where ``a.b.c`` is a module gives an edge to ``a.b.c``. Relative imports are resolved.
    """
    known = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(_resolve(alias.name, known) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    targets.add(child if child in known else _resolve(base, known))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "pipeline.running.task" in graph["pipeline.running.stages.train"]
    assert (
        "pipeline.scaling.distributed" in graph["pipeline.running.training"]
    )  # lazy imports count too (none left here)
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_lazy_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_stage_module_imports_another_stage_module():
    graph = import_graph()
    stage_modules = {
        m for m in graph if m.startswith("pipeline.running.stages.") and m != "pipeline.running.stages.base"
    }
    assert {
        "pipeline.running.stages.train",
        "pipeline.running.stages.evaluate",
        "pipeline.running.stages.report",
    } <= stage_modules
    bad = {
        m: sorted(graph[m] & stage_modules)
        for m in stage_modules
        if graph[m] & stage_modules and m != "pipeline.running.stages.__main__"
    }
    assert not bad, f"stage modules importing other stage modules: {bad}"


# ------------------------------------------------------------------------------ a toy distributed stage


def _produce(ctx: Context) -> dict:
    (ctx.out / "numbers.json").write_text(json.dumps([1, 2, 3]))
    return {}


def _spread(ctx: Context) -> dict:
    """The toy distributed stage: reads its upstream, writes into ``ctx.out`` (chief: its folder; worker: scratch)."""
    numbers = json.loads((ctx.inputs["produce"] / "numbers.json").read_text())
    (ctx.out / "sum.json").write_text(json.dumps(sum(numbers)))
    ctx.record.metrics({"total": sum(numbers)})
    return {"total": sum(numbers), "out": str(ctx.out)}


TOY = (
    Stage("produce", _produce, main_output="numbers.json", settings=("seed",)),
    Stage(
        "spread",
        _spread,
        upstream=("produce",),
        main_output="sum.json",
        settings=("seed",),
        distributed=True,
        headline=("total",),
    ),
)


def _tf_config(monkeypatch, task_type: str, index: int) -> None:
    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}}))


def test_a_toy_distributed_stage_runs_as_chief_and_as_worker(tmp_path, monkeypatch):
    params = config.load(None, ["train.strategy=multi_worker", "train.worker_wait_seconds=5"])
    _tf_config(monkeypatch, "chief", 0)
    chief = runner.run_stages(params, tmp_path, ["produce", "spread"], stages=TOY, track=False)
    assert chief["spread"]["total"] == 6 and json.loads((tmp_path / "spread/sum.json").read_text()) == 6
    assert (tmp_path / "spread/_SUCCESS.json").is_file()

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    _tf_config(monkeypatch, "worker", 0)
    worker = runner.run_stages(params, tmp_path, ["produce", "spread"], stages=TOY, track=False)
    assert worker == {"produce": {"skipped": True}, "spread": {"reused": True}}  # the chief reuses it: so does a worker
    forced = runner.run_stages(params, tmp_path, ["produce", "spread"], stages=TOY, track=False, force=True)
    assert forced["produce"] == {"skipped": True} and forced["spread"]["total"] == 6
    scratch = worker_role.scratch_folder(tmp_path, 1)
    assert Path(forced["spread"]["out"]) == scratch / "spread"
    assert not scratch.exists()  # the worker's scratch folder is deleted when it is done
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written under the workdir


def test_a_worker_waits_for_the_chief_and_names_the_setting(tmp_path, monkeypatch):
    params = config.load(None, ["train.strategy=multi_worker", "train.worker_wait_seconds=1"])
    _tf_config(monkeypatch, "worker", 0)
    with pytest.raises(runner.StageError, match="train.worker_wait_seconds=1 s; is the chief running"):
        runner.run_stages(params, tmp_path, ["produce", "spread"], stages=TOY, track=False)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------ settings read vs declared


class RecordingParams:
    """A read-only view of a Params (sub)tree that records the dotted path of every setting read.

    A leaf read records its path (``train.epochs``); a method of a section or of the tree
    (``params.to_yaml()``) reads all of it and records the section's path (``""`` for the whole
    tree). ``params.replace(**changes)`` on the tree returns a recording view of the changed tree in
    which the changed settings are not recorded (their values come from the caller, not from the run).
    """

    def __init__(self, obj, path: str, reads: set[str], given: frozenset[str] = frozenset()):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_given", given)

    def __getattr__(self, name: str):
        if name == "replace" and self._path == "":
            return lambda **changes: RecordingParams(
                self._obj.replace(**changes), "", self._reads, self._given | frozenset(changes)
            )
        prop = getattr(type(self._obj), name, None)
        if isinstance(prop, property):  # a derived value (audio.clip_samples): record the fields it reads
            return prop.fget(self)
        value = getattr(self._obj, name)
        dotted = f"{self._path}.{name}" if self._path else name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return RecordingParams(value, dotted, self._reads, self._given)
        if dotted not in self._given:
            self._reads.add(self._path if callable(value) else dotted)
        return value

    def __setattr__(self, name, value):
        raise AttributeError("Params are frozen")


def undeclared_reads(stage: Stage, reads: set[str], neutral: tuple[str, ...] = (), params=None) -> list[str]:
    """The recorded reads not covered by the stage's ``settings`` minus its ``exclude`` (and, given the run's
    ``params``, minus what its ``unused`` leaves out), nor in ``neutral``."""

    def under(path: str, prefix: str) -> bool:
        return path == prefix or path.startswith(prefix + ".")

    declared = stage.settings or ()
    excluded = stage.exclude if params is None else stage.excluded(params)
    return sorted(
        path
        for path in reads
        if (not any(under(path, s) for s in declared) or any(under(path, e) for e in excluded)) and path not in neutral
    )


def _reads_of(stage: Stage, params, tmp_path: Path, **context) -> set[str]:
    reads: set[str] = set()
    out = tmp_path / stage.name
    out.mkdir(exist_ok=True)
    stage.function(
        Context(
            params=RecordingParams(params, "", reads),
            workdir=tmp_path,
            out=out,
            record=MemoryRecorder(),
            **{"inputs": {}, **context},
        )
    )
    return reads


def _epochs_and_seed(ctx: Context) -> dict:
    (ctx.out / "value.txt").write_text(f"{ctx.params.train.epochs} {ctx.params.seed}")
    return {}


def _whole_yaml(ctx: Context) -> dict:
    (ctx.out / "value.txt").write_text(ctx.params.to_yaml())  # reads every setting
    return {}


def _replaced_epochs(ctx: Context) -> dict:
    member = ctx.params.replace(**{"train.epochs": "3"})  # as the teacher stage makes its members' trees
    (ctx.out / "value.txt").write_text(f"{member.train.epochs} {member.seed}")
    return {}


def test_a_setting_read_outside_the_declared_settings_is_caught(tmp_path):
    params = config.load(None)
    honest = Stage("honest", _epochs_and_seed, main_output="value.txt", settings=("train.epochs", "seed"))
    assert _reads_of(honest, params, tmp_path) == {"train.epochs", "seed"}
    assert undeclared_reads(honest, _reads_of(honest, params, tmp_path)) == []

    forgetful = replace(honest, settings=("train.epochs",))  # reads seed without declaring it: a stale reuse
    assert undeclared_reads(forgetful, _reads_of(forgetful, params, tmp_path)) == ["seed"]
    excluded = replace(honest, settings=("train", "seed"), exclude=("train.epochs",))
    assert undeclared_reads(excluded, _reads_of(excluded, params, tmp_path)) == ["train.epochs"]

    whole = Stage("whole", _whole_yaml, main_output="value.txt", settings=("train",))
    assert undeclared_reads(whole, _reads_of(whole, params, tmp_path)) == [""]  # the whole tree: not declared

    given = Stage("given", _replaced_epochs, main_output="value.txt", settings=("seed",))
    assert _reads_of(given, params, tmp_path) == {"seed"}  # a replaced setting is the caller's value, not a read
    # a setting the record says this run does not use (``unused``) is left out of the key: reading it is caught
    unused = replace(honest, unused=lambda p: ("seed",) if p.train.epochs > 10 else ())
    assert unused.settings_of(params) == {"train.epochs": params.train.epochs}
    assert undeclared_reads(unused, _reads_of(unused, params, tmp_path), params=params) == ["seed"]
    short = config.load(None, ["train.epochs=5"])
    assert undeclared_reads(unused, _reads_of(unused, short, tmp_path), params=short) == []


# ------------------------------------------------------------------------------ outputs by name, optional upstreams


def test_every_record_names_its_outputs_and_its_main_output_among_them():
    from pipeline.running import stages

    names = set(stages.NAMES)
    for stage in stages.STAGES:
        assert stage.main_output in stage.outputs.values(), stage.name
        assert set(stage.upstream) <= names and set(stage.optional) <= names, stage.name
        assert not set(stage.upstream) & set(stage.optional), stage.name
    assert stages.get("report").optional == ("compress", "teacher")
    assert [s.name for s in stages.STAGES if s.distributed] == ["teacher", "train"]


def _tally(ctx: Context) -> dict:
    """Reads ``produce`` by name and, when it is there, the optional ``extra``."""
    total = sum(json.loads(ctx.input("produce", "numbers").read_text()))
    extra = ctx.input("extra", "bonus", missing_ok=True)
    total += json.loads(extra.read_text()) if extra is not None else 0
    (ctx.out / "tally.json").write_text(json.dumps(total))
    return {"total": total}


def _bonus(ctx: Context) -> dict:
    (ctx.out / "bonus.json").write_text("100")
    return {}


CATALOG = (
    Stage("produce", _produce, main_output="numbers.json", settings=("seed",), outputs={"numbers": "numbers.json"}),
    Stage("extra", _bonus, main_output="bonus.json", settings=("seed",), outputs={"bonus": "bonus.json"}),
    Stage(
        "tally",
        _tally,
        upstream=("produce",),
        optional=("extra",),
        main_output="tally.json",
        outputs={"tally": "tally.json"},
    ),
)


def test_outputs_by_name_and_an_optional_upstream(tmp_path):
    params = config.load(None)
    first = runner.run_stages(params, tmp_path, ["produce", "tally"], stages=CATALOG, track=False)
    assert first["tally"]["total"] == 6  # the optional upstream is absent: not waited for, not required
    runner.run_stages(params, tmp_path, ["extra"], stages=CATALOG, track=False)
    assert runner.run_stages(params, tmp_path, ["tally"], stages=CATALOG, track=False)["tally"]["total"] == 106
    stale = config.load(None, ["seed=7"])  # extra was made with seed 42: not this run's, so not read
    runner.run_stages(stale, tmp_path, ["produce"], stages=CATALOG, track=False)
    assert runner.run_stages(stale, tmp_path, ["tally"], stages=CATALOG, track=False)["tally"]["total"] == 6


def test_an_unknown_output_or_input_is_named(tmp_path):
    (tmp_path / "produce").mkdir()
    ctx = Context(
        params=config.load(None),
        workdir=tmp_path,
        out=tmp_path / "out",
        inputs={"produce": tmp_path / "produce"},
        record=MemoryRecorder(),
        outputs={"produce": {"numbers": "numbers.json"}},
    )
    with pytest.raises(runner.StageError, match="declares no output 'sums'; its outputs: numbers"):
        ctx.input("produce", "sums")
    with pytest.raises(runner.StageError, match="numbers.json is missing: run --stage produce first"):
        ctx.input("produce", "numbers")
    with pytest.raises(runner.StageError, match="'train' is not a .complete. input of this stage; inputs: produce"):
        ctx.input("train", "model")
    assert ctx.input("train", "model", missing_ok=True) is None
    assert ctx.input("produce", "numbers", missing_ok=True) is None


def test_prepare_reads_only_its_declared_settings_and_its_dataset_facts(tmp_path, tiny_dataset):
    """The real ``prepare`` stage: what it reads is in its ``settings`` or in its ``external`` facts (its key)."""
    from conftest import tiny_overrides

    from pipeline.running import stages

    prepare = stages.get("prepare")
    params = config.load(None, tiny_overrides(tmp_path, tiny_dataset))
    external: set[str] = set()
    prepare.external(RecordingParams(params, "", external))
    assert {"data.source", "audio.sample_rate_hz", "audio.clip_seconds"} <= external
    reads = _reads_of(prepare, params, tmp_path)
    assert {"data.scan_audio", "data.strict_checks"} <= reads
    covered = replace(prepare, settings=(*prepare.settings, *sorted(external)))
    assert undeclared_reads(covered, reads) == []
