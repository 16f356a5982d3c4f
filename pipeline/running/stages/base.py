"""What a stage is: a record (:class:`Stage`) and the context its function receives.

A stage function is a plain function ``f(ctx: Context) -> dict``. It asks for its upstream
outputs by name (``ctx.input("prepare", "index")``: the upstream record's ``outputs`` catalog),
writes files under ``ctx.out`` and records metrics, tags, artifacts and models through
``ctx.record`` (a :class:`Recorder`). It never imports MLflow, never writes its completion marker
and never decides whether it should run: the runner (:mod:`pipeline.running.runner`) does reuse,
markers, MLflow runs and the failure record. A stage can therefore run in a test with a :class:`MemoryRecorder`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core import dotted, files
from pipeline.core.config import Params
from pipeline.core.errors import StageError


class Recorder:
    """Where a stage records what it measured and made (MLflow in a run, memory in tests).

    The base class keeps the last value of every metric and every tag (the runner copies the
    headline metrics and the ``dataset.*`` tags from them); subclasses send them somewhere.
    """

    def __init__(self, run_id: str = "local"):
        self.run_id = run_id
        self._latest: dict[str, float] = {}
        self._tags: dict[str, str] = {}
        self.packages: list[tuple[Path, dict[str, str]]] = []
        self.observe: Callable[[dict[str, float], int | None], None] | None = None  # set by the runner

    def metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics (``step``: the epoch, for curves), then hand them to ``observe`` when the runner set one."""
        clean = {k: float(v) for k, v in values.items() if v is not None}
        if clean:
            self._latest.update(clean)
            self._log_metrics(clean, step)
            if self.observe is not None:
                self.observe(dict(clean), step)

    def tags(self, values: Mapping[str, str]) -> None:
        clean = {k: str(v) for k, v in values.items()}
        self._tags.update(clean)
        self._log_tags(clean)

    def artifact(self, path: Path, folder: str | None = None) -> None:
        """Store a file the stage wrote (``folder``: where among the run's artifacts)."""

    def dict(self, obj: dict, name: str) -> None:
        """Store a JSON-able dict as an artifact file ``name``."""

    def model(self, model, example_input) -> None:
        """Store the trained Keras model with a signature inferred from ``example_input``."""

    def package(self, path: Path, tags: Mapping[str, str]) -> dict | None:
        """Store the deployable package folder ``path`` as a model (MLflow: a pyfunc, registered).

        Args:
          path: the package folder (holds ``asc_infer/`` and ``asc_infer/model/``).
          tags: what to attach to the registered model version (metrics, complexity, config, data name).

        Returns:
          Where the model went: ``{"model_uri", "logged_model_uri", "version"}`` (MLflow; ``version``
          ``None`` when not registered), or ``None`` when it is only kept in memory (``self.packages``).
        """
        self.packages.append((Path(path), {k: str(v) for k, v in tags.items()}))
        return None

    def finished_runs(self, stage: str) -> list[dict]:
        """Earlier finished runs of ``stage`` in the experiment: ``{"name", "metrics", "tags", "params"}`` each."""
        return []

    def latest(self) -> dict[str, float]:
        """The last value logged for every metric."""
        return dict(self._latest)

    def logged_tags(self) -> dict[str, str]:
        return dict(self._tags)

    def _log_metrics(self, values: dict[str, float], step: int | None) -> None:
        pass

    def _log_tags(self, values: dict[str, str]) -> None:
        pass


class MemoryRecorder(Recorder):
    """A :class:`Recorder` that keeps everything in lists: stages without MLflow (tests, notebooks)."""

    def __init__(self, run_id: str = "local"):
        super().__init__(run_id)
        self.logged_metrics: list[tuple[dict, int | None]] = []
        self.logged_artifacts: list[tuple[Path, str | None]] = []
        self.logged_dicts: dict[str, dict] = {}
        self.logged_models: list[Any] = []

    def _log_metrics(self, values, step):
        self.logged_metrics.append((values, step))

    def artifact(self, path, folder=None):
        self.logged_artifacts.append((Path(path), folder))

    def dict(self, obj, name):
        self.logged_dicts[name] = obj

    def model(self, model, example_input):
        self.logged_models.append(model)


class PrefixedRecorder(Recorder):
    """Records into another recorder with every metric name prefixed (e.g. ``teacher1_loss``)."""

    def __init__(self, inner: Recorder, prefix: str):
        super().__init__(inner.run_id)
        self.inner = inner
        self.prefix = prefix

    def _log_metrics(self, values, step):
        self.inner.metrics({self.prefix + k: v for k, v in values.items()}, step)

    def _log_tags(self, values):
        self.inner.tags({self.prefix + k: v for k, v in values.items()})

    def artifact(self, path, folder=None):
        self.inner.artifact(path, self.prefix.rstrip("_") + ("/" + folder if folder else ""))

    def dict(self, obj, name):
        self.inner.dict(obj, self.prefix + name)

    def model(self, model, example_input):
        pass  # one model per run: the stage's own

    def package(self, path, tags):
        super().package(path, tags)
        return self.inner.package(path, tags)


@dataclass
class Context:
    """Everything a stage function may use.

    Attributes:
      params: the validated parameter tree of this run.
      workdir: the run's working directory (each stage has a folder in it).
      out: this stage's output folder (exists; empty unless the stage resumes).
      inputs: the output folder of each upstream stage, by stage name (complete, checked; an
        optional upstream only when it is complete and made with this run's settings).
      outputs: the output catalog of each upstream stage (its record's ``outputs``), by stage name:
        what :meth:`input` resolves.
      record: where metrics, tags, artifacts and models go.
      data_name: ``synthetic`` or the dataset folder's name (titles, run names).
      resuming: True when ``out`` holds an interrupted run of this stage with the same key.
      facts: what the stage wants kept in its completion marker (read by later stages).
      settings: the settings this stage's outputs depend on (its record's ``settings`` minus
        ``exclude``, as in its reuse key: dotted path -> value), or None for a stage that always runs.
    """

    params: Params
    workdir: Path
    out: Path
    inputs: dict[str, Path]
    record: Recorder
    data_name: str = "synthetic"
    resuming: bool = False
    facts: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Mapping[str, str]] = field(default_factory=dict)
    settings: dict[str, Any] | None = None

    def input(self, stage: str, name: str, *, missing_ok: bool = False) -> Path | None:
        """The path of output ``name`` of upstream stage ``stage`` (its record's ``outputs`` catalog).

        Args:
          stage: an upstream stage of this one (declared in its record's ``upstream`` or ``optional``).
          name: a name in that stage's ``outputs``, e.g. ``ctx.input("prepare", "index")``.
          missing_ok: return None when the output (or an optional upstream stage) is absent.

        Returns:
          The path (checked to exist), or None with ``missing_ok``.

        Raises:
          StageError: ``stage`` is not an input of this stage, ``name`` is not in its catalog, or the
            output is missing (naming the file and the command that makes it).
        """
        if stage not in self.inputs:
            if missing_ok:
                return None
            raise StageError(
                f"stage {stage!r} is not a (complete) input of this stage; inputs: "
                f"{', '.join(sorted(self.inputs)) or 'none'}"
            )
        catalog = self.outputs.get(stage, {})
        if name not in catalog:
            raise StageError(
                f"stage {stage!r} declares no output {name!r}; its outputs: {', '.join(sorted(catalog)) or 'none'}"
            )
        path = self.inputs[stage] / catalog[name]
        if not path.exists():
            if missing_ok:
                return None
            raise StageError(f"{path} is missing: run --stage {stage} first")
        return path

    def marker(self, stage: str) -> dict:
        """The completion marker of an upstream stage (its facts, key and run id)."""
        found = files.read_marker(self.inputs[stage])
        if found is None:  # the runner checked it; a concurrent writer removed it since
            raise StageError(f"{self.inputs[stage]} is missing or incomplete: run --stage {stage} first")
        return found


@dataclass(frozen=True)
class Stage:
    """One stage, declared once: everything the CLI, the runner and the README need.

    Attributes:
      name: the stage's name (``--stage NAME``, its folder under the workdir).
      function: ``f(ctx) -> dict``.
      upstream: stages whose complete outputs it reads (checked before it runs).
      optional: stages whose outputs it reads when they are complete and made with this run's
        settings (``ctx.input(..., missing_ok=True)``); not waited for, not checked.
      outputs: its output catalog, name -> file or folder in its folder (``{"index": "index.csv"}``):
        what downstream stages ask for by name (:meth:`Context.input`).
      main_output: the file (in its folder) whose presence and content stand for its outputs;
        its SHA-256 keys the stages downstream.
      settings: the Params sections (dotted paths) its outputs depend on; with the upstream
        outputs they form its reuse key. ``None``: never reused (always runs).
      exclude: dotted paths inside ``settings`` that do not matter to it.
      unused: ``unused(params) -> dotted paths``: those inside ``settings`` that a run with these params
        does not use (e.g. the teachers' device augmentations when they train without them); left out of
        the key like ``exclude``. ``unused_note`` says when, for the README's stage table.
      external: facts of inputs outside the workdir (e.g. the dataset files' sizes and times);
        ``external_note`` names them for the README's stage table.
      headline: metrics copied onto the parent MLflow run.
      resumable: an interrupted run with the same key resumes in place (checkpoints).
      when: the stage takes part only when this is true of the params (``--stage all`` skips it
        otherwise, and stages downstream do not wait for it).
      distributed: under ``train.strategy=multi_worker`` every worker runs it (the chief as usual,
        the others in a private scratch folder, untracked: :mod:`pipeline.running.runner`); other stages
        run on the chief only.
      summary: ``summary(folder, params) -> lines`` for the closing summary of ``pipeline.run``,
        called only when the stage's folder is complete.
      reads, writes: one-line descriptions for the README's stage table.
    """

    name: str
    function: Callable[[Context], dict]
    upstream: tuple[str, ...] = ()
    main_output: str = ""
    optional: tuple[str, ...] = ()
    outputs: Mapping[str, str] = field(default_factory=dict, hash=False)
    settings: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    unused: Callable[[Params], tuple[str, ...]] | None = None
    unused_note: str = ""
    external: Callable[[Params], Any] | None = None
    external_note: str = "the dataset files"
    headline: tuple[str, ...] = ()
    resumable: bool = False
    when: Callable[[Params], bool] | None = None
    distributed: bool = False
    summary: Callable[[Path, Params], list[str]] | None = None
    reads: str = ""
    writes: str = ""

    def active(self, params: Params) -> bool:
        """Whether the stage takes part in a run with ``params``."""
        return self.when is None or bool(self.when(params))

    def settings_of(self, params: Params) -> dict | None:
        """The part of ``params`` this stage depends on (``None`` for a stage that always runs)."""
        if self.settings is None:
            return None
        tree = params.to_dict()
        picked = {path: dotted.get(tree, path) for path in self.settings}
        for path in self.excluded(params):
            head, _, rest = path.partition(".")
            if head in picked and rest:
                picked[head] = dotted.without(picked[head], rest)
            elif head in picked:
                del picked[head]
        return picked

    def excluded(self, params: Params) -> tuple[str, ...]:
        """``exclude`` plus what ``unused`` says a run with ``params`` does not use."""
        return (*self.exclude, *(self.unused(params) if self.unused is not None else ()))


def replace(stage: Stage, **changes) -> Stage:
    """A copy of a stage record with some fields changed (tests register toy stages this way)."""
    return dataclasses.replace(stage, **changes)


# --------------------------------------------------------------------------- shared by stages


def load_index(ctx: Context) -> tuple[pd.DataFrame, Path, str]:
    """The index written by ``prepare``, its dataset root and its fingerprint."""
    marker = ctx.marker("prepare")
    index = pd.read_csv(ctx.input("prepare", "index"), dtype={"filename": str, "device": str})
    index.attrs["root"] = marker["root"]  # where data.train_split=<N> finds splits/split<N>.csv (clips)
    return index, Path(marker["root"]), marker["fingerprint"]


# The student's device imitations: teachers and device models leave them out unless asked.
DEVICE_AUGMENTATIONS = ("augment.device_response", "augment.freq_mixstyle")


def derived_settings(settings: dict, derived: Params, changes: dict[str, str]) -> dict:
    """The stage's settings (``ctx.settings``: dotted path -> value) as a derived run uses them (a teacher
    member, a device's fine-tuning): its own values in place of the run's, for its ``params.yaml``."""
    import copy
    import functools

    out = copy.deepcopy(settings)
    for key in changes:
        value = functools.reduce(getattr, key.split("."), derived)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def train_split_facts(params: Params) -> dict | None:
    """The ``data.train_split`` list's digest, for the key of every stage that reads training clips (None
    without one). The built-in set's own lists are keyed by name: its settings already key its folder."""
    from pipeline.data.splits import split_facts

    root = None if params.data.source == "synthetic" else Path(params.data.source).expanduser()
    return split_facts(params.data.train_split, root)


def held_out_devices(params: Params) -> tuple[str, ...]:
    """The training devices held out as pseudo-unseen (``data.validation``; upper case), or ``()``."""
    return () if params.data.validation == ("evaluate",) else tuple(d.upper() for d in params.data.validation)


def validation_split(params: Params) -> str:
    """The split training validates on: ``evaluate``, or ``validation`` (held-out training devices)."""
    return "validation" if held_out_devices(params) else "evaluate"


def clips(index: pd.DataFrame, split: str, params: Params, *, labelled: bool = False) -> pd.DataFrame:
    """The clips of one split, subsampled to ``data.max_train_clips``/``max_eval_clips`` (seeded).

    ``data.train_split`` first restricts the training split to the clips its list names
    (:func:`pipeline.data.splits.restrict`; a percentage is read from the index's dataset root,
    ``index.attrs["root"]``, set by :func:`load_index`). With training devices held out
    (``data.validation``, e.g. ``s3``), ``train`` is the training split without those devices' clips
    and ``validation`` is exactly those clips; without, ``validation`` is the evaluate split. The
    subsample is drawn before the hold-out, so both come from one draw.

    Raises:
      StageError: a held-out device has no clip in the training split (named, with the devices it has).
      SplitError: the ``data.train_split`` list is missing or bad, or names clips outside the training split.
    """
    held = held_out_devices(params)
    if split == "validation" and not held:
        return clips(index, "evaluate", params, labelled=labelled)
    source = "train" if split == "validation" else split
    part = index[index.split == source]
    if labelled:
        part = part[part.label >= 0]
    limit = params.data.max_train_clips if source == "train" else params.data.max_eval_clips
    if source == "train" and params.data.train_split is not None:
        from pipeline.data import splits

        if "root" not in index.attrs:
            raise StageError("data.train_split: the index does not say its dataset folder (load it with load_index)")
        part = splits.restrict(part, params.data.train_split, index.attrs["root"])
    part = part.reset_index(drop=True)
    if limit and source in ("train", "evaluate"):
        part = part.sample(n=min(len(part), limit), random_state=params.seed).reset_index(drop=True)
    if source == "train" and held:
        present = set(part.device)
        missing = [d for d in held if d not in present]
        if missing:
            raise StageError(
                f"data.validation: device(s) {', '.join(d.lower() for d in missing)} have no clip in the training "
                f"split (it has {', '.join(sorted(d.lower() for d in present)) or 'no clip'})"
            )
        keep = part.device.isin(held) if split == "validation" else ~part.device.isin(held)
        part = part[keep].reset_index(drop=True)
    return part
