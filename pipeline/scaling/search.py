"""Searches: an Optuna study over the settings, each trial a run of the stages in its own folder.

``python -m pipeline.run --stage evaluate --search SPACE.yaml --trials N [--shard I/N] [--config ...] [--set ...]``

- The space (:mod:`pipeline.scaling.search_space`) gives a range or choices per config key; every
  trial is the base configuration (``--config``/``--set``) with one value per key, validated
  like any configuration (a trial whose values do not validate is recorded FAIL and the study goes on).
- The objective is the pseudo-unseen validation score, never the evaluate split: the evaluate stage's
  ``splits.validation.plain.overall.macro_accuracy`` (``metrics.json``; MLflow
  ``validation_macro_accuracy``), which exists when ``data.validation`` holds training devices out.
  A search with ``data.validation: evaluate`` is refused before any work.
- The study: TPE sampler (seeded from the config's ``seed``), median pruner on the train stage's
  per-epoch ``val_accuracy`` (reported through the runner's ``observe`` hook), maximised. Its
  name is the search id (12 hex), a digest of the base configuration without ``tracking.*`` and
  ``search.*``, the space and the stages: a rerun, or another shard, works on the same study. It
  lives in ``search.storage`` (any database URL), by default ``<workdir>/search/<id>/optuna.db``.
- Trials fill slots ``0 .. N-1``; shard ``I/S`` owns the slots ``k`` with ``k % S == I - 1`` (as
  sweep cells). A slot is done when a trial of it completed, was pruned or failed on its own; a
  rerun runs only the slots not done. A trial left RUNNING by a process of this host that is gone
  is marked FAIL (``abandoned``) and its slot runs again.
- Each trial runs :func:`pipeline.running.runner.run_stages` in ``<workdir>/search/<id>/trials/t<n>/``,
  its stage folders linked to ``<workdir>/search/<id>/stages/<stage>/<key>/`` (the sweeps' shared
  folders: a stage whose settings and inputs match runs once for the study). A shared folder is
  locked while a process works in it, so several processes may work in one workdir.
- MLflow: one parent run ``search-<id6>`` (tag ``search_role=search``); each trial's run nested
  under it, tagged ``search_id``, ``trial``, ``trial_state`` and ``searched.<key>``, with every
  setting (the sampled values too) as params; its stages nested under it as in any run.
- Written to ``<workdir>/search/<id>/`` by :mod:`pipeline.scaling.search_summary`: ``trials.csv``,
  ``history.png`` and ``best.yaml`` (the base configuration with the best trial's values: ``--config``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

from pipeline.core import config, dotted
from pipeline.core.config import ConfigError, Params
from pipeline.core.hashing import digest
from pipeline.core.lock import LockBusy, file_lock
from pipeline.running import runner, tracking
from pipeline.running import stages as registry
from pipeline.scaling import search_summary, sweep
from pipeline.scaling.search_space import Space, load_space

logger = logging.getLogger(__name__)

OBJECTIVE = ("splits", "validation", "plain", "overall", "macro_accuracy")  # in evaluate/metrics.json
INTERMEDIATE = "val_accuracy"  # the train stage's per-epoch metric the pruner watches
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class Pruned(tracking.Stopped, optuna.TrialPruned):
    """The median pruner stopped a trial: its runs end KILLED (tag ``stopped``), the trial PRUNED."""


@dataclasses.dataclass(frozen=True)
class Search:
    """A checked search: its id, space, base configuration, stages and the study's total of trials."""

    search_id: str
    space: Space
    base: Params
    names: tuple[str, ...]
    trials: int

    def root(self, workdir: Path) -> Path:
        return Path(workdir).resolve() / "search" / self.search_id

    def storage_url(self, workdir: Path) -> str:
        """``search.storage``, or the SQLite file in the search's folder."""
        return self.base.search.storage or f"sqlite:///{self.root(workdir) / 'optuna.db'}"


def plan(config_path, overrides: list[str], space_path, trials: int, names: list[str]) -> Search:
    """Check a search before any work: the configuration, the space, the stages and the validation split.

    Args:
      config_path: ``--config`` (None: the default config).
      overrides: the ``--set`` (and ``--data``) overrides.
      space_path: the ``--search`` file.
      trials: ``--trials``: the study's total.
      names: the stages each trial runs (with their upstream stages).

    Returns:
      The :class:`Search`.

    Raises:
      ConfigError: a bad configuration or space (named), ``trials < 1``, stages without
        ``evaluate``, ``data.validation: evaluate`` (the search would tune on the test devices), or
        multi-worker training.
    """
    base = config.load(config_path, overrides)
    space = load_space(space_path)
    if trials < 1:
        raise ConfigError(f"--trials {trials}: expected at least 1")
    if "evaluate" not in names:
        raise ConfigError(
            f"--search scores each trial with the evaluate stage, which --stage runs only from 'evaluate' on; "
            f"got the stages {', '.join(names)} (use --stage evaluate)"
        )
    if "evaluate" in base.data.validation:
        raise ConfigError(
            "data.validation: the search maximises the validation score, and data.validation is 'evaluate' "
            "(the evaluate split's unseen test devices): tuning on it fits the test devices. Hold training "
            "devices out as pseudo-unseen instead, e.g. --set data.validation=s3"
        )
    refuse_multi_worker(base)
    tree = dotted.without(dotted.without(base.to_dict(), "tracking"), "search")
    search_id = digest({"base": tree, "space": space.describe(), "stages": list(names)})[:12]
    return Search(search_id, space, base, tuple(names), trials)


def refuse_multi_worker(params: Params) -> None:
    """A search runs its trials one after another in one process, as a sweep its cells: no multi-worker job.

    Args:
      params: the base configuration.

    Raises:
      ConfigError: a multi-worker ``TF_CONFIG`` or ``train.strategy=multi_worker``
        (:func:`pipeline.scaling.distributed.refuse_sweep`'s reasons).
    """
    from pipeline.scaling import distributed  # here: it imports the stages

    try:
        distributed.refuse_sweep({"the search": params})
    except ConfigError as exc:
        raise ConfigError(f"--search runs its trials one after another in one process, like a sweep: {exc}") from None


def trial_params(search: Search, values: dict, number: int) -> Params:
    """The base configuration with one trial's values (validated; run name ``search-<id6>-t<number>``).

    Args:
      search: the search.
      values: ``{key: configuration value}`` (:meth:`Space.values`).
      number: the trial's number.

    Returns:
      The trial's Params.

    Raises:
      ConfigError: the values do not validate together with the base configuration.
    """
    tree = search.base.to_dict()
    for key, value in values.items():
        dotted.put(tree, key, list(value) if isinstance(value, tuple) else value)
    dotted.put(tree, "tracking.run_name", f"search-{search.search_id[:6]}-t{number}")
    return config.from_dict(tree)


def open_storage(search: Search, workdir: Path) -> optuna.storages.RDBStorage:
    """The study's database (created with its tables when new; SQLite waits up to 60 s for a writer).

    Raises:
      ConfigError: naming ``search.storage`` (without its password) and why it cannot be opened.
    """
    url = search.storage_url(workdir)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    search.root(workdir).mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:
        raise ConfigError(f"search.storage {search_summary.safe_url(url)}: cannot be opened: {exc}") from None


def open_study(search: Search, workdir: Path, shard: tuple[int, int] = (1, 1)) -> optuna.Study:
    """Create or load the study (its sampler seeded from the config's seed, this shard and the trials so far).

    A new process draws a new random sequence (two shards, or a rerun, must not repeat one
    another's first trials), and the same command on the same study draws the same one.

    Args:
      search: the search (its id names the study; ``search.*`` sets the sampler, pruner and storage).
      workdir: the base workdir (the default storage lives under it).
      shard: (I, S), part of the sampler's seed.

    Returns:
      The study (direction maximize; TPE sampler; median pruner on epochs counted from 1).

    Raises:
      ConfigError: the storage cannot be opened (:func:`open_storage`).
    """
    storage = open_storage(search, workdir)
    s = search.base.search
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_epochs + 1
    )  # steps are epochs counted from 1: step warmup + 1 is the first that can be pruned
    study = optuna.create_study(
        study_name=search.search_id, storage=storage, direction="maximize", pruner=pruner, load_if_exists=True
    )
    seed = int(digest([search.base.seed, "search", list(shard), len(study.get_trials(deepcopy=False))]), 16)
    study.sampler = optuna.samplers.TPESampler(seed=seed % 2**31, n_startup_trials=s.sampler_startup_trials)
    study.set_user_attr("space", search.space.describe())
    study.set_user_attr("stages", list(search.names))
    return study


def slots(total: int, shard: tuple[int, int]) -> list[int]:
    """The slots ``0 .. total-1`` of shard ``(I, S)``: ``k % S == I - 1`` (:func:`sweep.shard_cells`).

    Args:
      total: ``--trials``.
      shard: (I, S), 1-based.

    Returns:
      The slot numbers, ascending.
    """
    return sweep.shard_cells(list(range(total)), *shard)


def counted(trial) -> bool:
    """True for a trial that fills its slot: completed, pruned, or failed on its own (not abandoned or interrupted).

    Args:
      trial: an Optuna ``FrozenTrial``.

    Returns:
      Whether its slot is done.
    """
    if trial.state in DONE:
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def fail_abandoned(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials of this host whose process is gone; their slots run again.

    Trials of other hosts are left alone (their process cannot be checked from here).

    Args:
      study: the study.

    Returns:
      The numbers of the trials marked.
    """
    host, marked = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == host and isinstance(pid, int) and pid != os.getpid():
            if not tracking.process_alive(pid):
                _attr(study, trial.number, "abandoned", f"process {pid} on {host} was gone")
                study.tell(trial.number, state=TrialState.FAIL)
                marked.append(trial.number)
    if marked:
        logger.warning("search: marked FAIL the trial(s) %s that a dead process left RUNNING", marked)
    return marked


def _attr(study: optuna.Study, number: int, key: str, value) -> None:
    storage = study._storage  # the study's own storage object (RDBStorage)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
    storage.set_trial_user_attr(trial_id, key, value)


def _busy_slots(study: optuna.Study) -> tuple[set[int], set[int]]:
    """(slots done, slots taken by a RUNNING trial)."""
    done, running = set(), set()
    for trial in study.get_trials(deepcopy=False):
        slot = trial.user_attrs.get("slot")
        if counted(trial):
            done.add(slot)
        elif trial.state == TrialState.RUNNING:
            running.add(slot)
    return done, running


class _LockedFolders(sweep._SharedFolders):
    """The sweeps' shared stage folders, locked so that several processes can work in one workdir.

    A stage's folder is locked (``stages/<stage>/<key>.lock``) from when the runner places it until
    it places the next stage or the trial ends (:meth:`release`): the runner finishes (or fails) a
    stage before it places the next, so two processes never run one key at once, and the later one
    reuses what the first made.
    """

    def __init__(self, root: Path, force: bool):
        super().__init__(root, force)
        self._held = contextlib.ExitStack()

    def __call__(self, stage: str, key: str) -> Path:
        self.release()
        path = self.root / "stages" / stage / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._held.enter_context(file_lock(path, wait_seconds=0))
        except LockBusy:
            logger.info("search: stage %s (key %s) is being made by another process; waiting for it", stage, key)
            self._held.enter_context(file_lock(path))
        return super().__call__(stage, key)

    def release(self) -> None:
        self._held.close()
        self._held = contextlib.ExitStack()


def read_objective(run_dir: Path) -> float:
    """The validation macro accuracy in ``<run_dir>/evaluate/metrics.json``.

    Args:
      run_dir: a trial's folder.

    Returns:
      ``splits.validation.plain.overall.macro_accuracy``.

    Raises:
      StageError: the file holds no finite validation score.
    """
    path = Path(run_dir) / "evaluate" / "metrics.json"
    node = json.loads(path.read_text())
    try:
        for part in OBJECTIVE:
            node = node[part]
        value = float(node)
    except (KeyError, TypeError, ValueError):
        raise registry.StageError(f"{path} holds no validation score {'.'.join(OBJECTIVE)}") from None
    if not math.isfinite(value):
        raise registry.StageError(f"{path}: the validation score {'.'.join(OBJECTIVE)} is {value}")
    return value


def run_search(
    search: Search,
    workdir: Path,
    *,
    shard: tuple[int, int] = (1, 1),
    force: bool = False,
    rerun_changed_code: bool = False,
    stages: tuple = registry.STAGES,
) -> tuple[int, str]:
    """Run this shard's missing trials, then write and log the study's trials, history and best settings.

    Args:
      search: from :func:`plan`.
      workdir: the base workdir (the search lives in ``<workdir>/search/<id>/``).
      shard: (I, S), 1-based: this process runs the slots ``k % S == I - 1``.
      force: rerun every shared stage once in this invocation (a trial's slot is still run only when not done).
      rerun_changed_code: rerun the shared stages made by other code (once).
      stages: the stage registry (tests register toy stages).

    Returns:
      (exit status: 0 when the study holds a completed trial, else 1; a closing text for the terminal).

    Raises:
      ConfigError: multi-worker training (before anything is written).
    """
    refuse_multi_worker(search.base)
    root = search.root(workdir)
    study = open_study(search, workdir, shard)
    fail_abandoned(study)
    store = search_summary.SearchRuns(search.base)
    parent = store.parent(search, search.storage_url(workdir))
    mine = slots(search.trials, shard)
    done, running = _busy_slots(study)
    todo = [k for k in mine if k not in done and k not in running]
    logger.info(
        "search %s: study of %d trial(s), %s: %d slot(s), %d done, %d running elsewhere, %d to run; folder %s",
        search.search_id,
        search.trials,
        f"shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "this run",
        len(mine),
        len([k for k in mine if k in done]),
        len([k for k in mine if k in running]),
        len(todo),
        root,
    )
    folders = _LockedFolders(root, force)
    ran = 0
    try:
        for slot in todo:
            done, running = _busy_slots(study)  # another process may have taken it meanwhile
            if slot in done or slot in running:
                continue
            _run_trial(search, study, slot, root, folders, store, parent, shard, stages, rerun_changed_code)
            ran += 1
    except BaseException:  # interrupted: the next run of the same command resumes the study
        store.client.set_terminated(parent, "KILLED")
        raise
    finally:
        folders.release()
    text = search_summary.write(search, study, root, store, parent, ran, search.storage_url(workdir))
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return (0 if completed else 1), text


def _run_trial(
    search: Search,
    study: optuna.Study,
    slot: int,
    root: Path,
    folders: _LockedFolders,
    store,
    parent: str,
    shard: tuple[int, int],
    stages: tuple,
    rerun_changed_code: bool,
) -> None:
    """Ask for one trial, run its stages, tell the study how it ended, and tag its MLflow run so."""
    trial = study.ask(search.space.distributions())
    for key, value in {"slot": slot, "host": socket.gethostname(), "pid": os.getpid(), "shard": list(shard)}.items():
        trial.set_user_attr(key, value)
    values = search.space.values(trial.params)
    attempt = uuid.uuid4().hex
    tags = {
        "mlflow.parentRunId": parent,  # nested under the search's run in the UI
        "search_id": search.search_id,
        "search_role": "trial",
        "trial": str(trial.number),
        "trial_slot": str(slot),
        "search_attempt": attempt,
        **{f"searched.{k}": search_summary.shown(v) for k, v in values.items()},
    }
    label = ", ".join(f"{k}={search_summary.shown(v)}" for k, v in values.items())
    logger.info("search %s trial %d (slot %d): %s", search.search_id, trial.number, slot, label)
    start = time.perf_counter()

    def observe(stage: str, metrics: dict, step: int | None) -> None:
        if stage != "train" or step is None or INTERMEDIATE not in metrics:
            return
        trial.report(metrics[INTERMEDIATE], step)
        if trial.should_prune():
            raise Pruned(
                f"trial {trial.number} pruned by the median pruner after epoch {step} "
                f"({INTERMEDIATE} {metrics[INTERMEDIATE]:.4f})"
            )

    def ended(state: TrialState, extra: dict) -> str:
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        run_id = store.tag_attempt(attempt, {"trial_state": state.name, **extra})
        trial.set_user_attr("run_id", run_id)
        return run_id

    try:
        params = trial_params(search, values, trial.number)
    except ConfigError as exc:
        error = f"ConfigError: {exc}"
        logger.error("search trial %d: its values do not validate: %s (the study goes on)", trial.number, exc)
        trial.set_user_attr("error", error[:4000])
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        trial.set_user_attr("run_id", store.failed_run(search, trial.number, tags, values, error))
        study.tell(trial, state=TrialState.FAIL)
        return
    run_dir = root / "trials" / f"t{trial.number}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "data").is_symlink():  # the built-in synthetic set: generated once per search
        (root / "data").mkdir(parents=True, exist_ok=True)
        (run_dir / "data").symlink_to(root / "data", target_is_directory=True)
    try:
        runner.run_stages(
            params,
            run_dir,
            list(search.names),
            stages=stages,
            folder=folders,
            parent_tags=tags,
            rerun_changed_code=rerun_changed_code,
            observe=observe,
        )
        value = read_objective(run_dir)
    except Pruned as exc:
        logger.info("search %s: %s", search.search_id, exc)
        ended(TrialState.PRUNED, {"trial_pruned": str(exc)})
        study.tell(trial, state=TrialState.PRUNED)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        logger.error("search trial %d failed: %s (the study goes on)", trial.number, error)
        logger.debug("traceback", exc_info=True)
        trial.set_user_attr("error", error[:4000])
        ended(TrialState.FAIL, {"trial_error": error[:4000]})
        study.tell(trial, state=TrialState.FAIL)
    except BaseException:  # Ctrl-C, SIGTERM: not the trial's fault; its slot runs again on the next run
        trial.set_user_attr("abandoned", "interrupted")
        ended(TrialState.FAIL, {"trial_error": "interrupted"})
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        logger.info("search %s trial %d: validation macro accuracy %.4f", search.search_id, trial.number, value)
        store.objective(ended(TrialState.COMPLETE, {}), value)
        study.tell(trial, value)
    finally:
        folders.release()
        sweep._clear_tf_session()
