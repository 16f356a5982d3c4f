"""The runner: reuse, upstream checks, completion markers, MLflow runs and failure records.

For each stage of a run, in order:

1. its **key** is computed: a digest of the settings its record names, the facts of its
   external inputs and the digests of its upstream stages' main outputs;
2. if its folder holds a complete run (``_SUCCESS.json``) with the same key and its main
   output, it is **reused**: a nested MLflow run tagged ``reused=true`` records that, and its
   headline metrics are copied from the marker;
3. otherwise a nested MLflow run starts (a resumable stage interrupted with the same key
   continues its run and its folder), the upstream stages are checked (complete, and made
   with this run's settings), the folder is emptied, the stage function runs with a
   :class:`~pipeline.running.stages.Context`, and the marker is written last, holding the key, the
   run id, the digest of the main output, the wall time, the headline metrics, the facts
   the stage noted and the digest of the code that made it (``code``, ``code_files``,
   ``code_sources``: :mod:`pipeline.core.source`). A stage that raises ends its run FAILED
   (KILLED on Ctrl-C) with ``error.txt``, and leaves no marker.

Roles. Under ``train.strategy=multi_worker`` (TF_CONFIG: :mod:`pipeline.scaling.distributed`) the chief
runs as above; every other worker runs only the stages whose record says ``distributed=True``:
each waits for the chief's complete upstream outputs in the shared workdir (at most
``train.worker_wait_seconds``), is skipped when the chief reuses it, and otherwise runs its
function with a private scratch folder as ``ctx.out`` and an in-memory recorder: no MLflow run,
no marker, no lock, nothing written under the workdir.

The code is not part of the key (a comment edit does not retrain): a stage reused although its
marker was made by other code says so in one warning line naming the stage and the changed
files, and its reused run is tagged ``code_changed=true``; ``rerun_changed_code`` (the CLI's
``--rerun-changed-code``) reruns such stages instead, and refuses upstream outputs made by
other code.
"""

from __future__ import annotations

import functools
import logging
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.core import files, lock, source
from pipeline.core.config import Params
from pipeline.core.hashing import file_digest
from pipeline.running import stages as registry
from pipeline.running import tracking, worker
from pipeline.running.stages import Stage, StageError
from pipeline.running.state import (
    RUNNING,
    check_upstream,
    code_changed,
    code_note,
    complete_marker,
    context,
    reusable,
    running_state,
    stage_code,
    stage_key,
)
from pipeline.scaling import distributed

logger = logging.getLogger(__name__)

PARTIAL = ".partial"  # <stage>.partial/: where a non-resumable stage writes until it is complete
PARENT_TAG_PREFIX = "dataset."  # stage tags that describe the whole invocation, copied to the parent run
Folder = Callable[[str, str], Path]  # (stage name, reuse key) -> the folder holding that stage's outputs
Observe = Callable[[str, dict, int | None], None]  # (stage name, metrics, step) for every metrics call of a stage


def run_stages(
    params: Params,
    workdir: Path,
    names: list[str],
    *,
    force: bool = False,
    track: bool = True,
    stages: tuple[Stage, ...] = registry.STAGES,
    folder: Folder | None = None,
    parent_tags: dict[str, str] | None = None,
    wait_lock: float = 0.0,
    rerun_changed_code: bool = False,
    observe: Observe | None = None,
) -> dict[str, dict]:
    """Run the named stages in order under one parent run, one nested run per stage.

    Args:
      params: the validated parameter tree.
      workdir: the folder of every stage's outputs.
      names: stage names, in the order to run them.
      force: rerun stages whose complete outputs match (default: reuse them).
      track: record to MLflow (``tracking.uri``); False keeps the records in memory (tests).
      stages: the stage registry (tests register toy stages).
      folder: ``folder(stage_name, key) -> Path``: where a stage with a reuse key keeps its outputs
        (sweeps share them by key); ``workdir/<stage>`` becomes a symbolic link to it, so every
        reader of ``workdir/<stage>`` is unchanged. None (default) and stages without a key
        (``report``): the folder is ``workdir/<stage>`` itself.
      parent_tags: extra tags on the parent run (set before any stage runs).
      wait_lock: seconds to wait for another process's lock on ``workdir`` (one workdir, one
        writer: :mod:`pipeline.core.lock`); 0 refuses at once with
        :class:`~pipeline.core.lock.WorkdirLocked` naming the holder.
      rerun_changed_code: rerun a stage whose complete outputs (same key) were made by other code
        (its marker's ``code`` digest differs from :func:`stage_code`), and refuse upstream
        outputs made by other code; default: reuse them with one warning line per stage.
      observe: ``observe(stage_name, metrics, step)`` is called with every metrics call of a stage
        that runs (not of a reused one), after the metrics are recorded: a caller watching a
        stage as it works (a search prunes a trial on the train stage's per-epoch ``val_accuracy``).
        What it raises ends the stage as the stage's own error would;
        :class:`~pipeline.running.tracking.Stopped` ends its MLflow runs KILLED instead of FAILED.

    Returns:
      Per stage: the function's result plus ``seconds``, or ``{"reused": True}`` (plus
      ``"code_changed": True`` when made by other code).
    """
    chosen = [registry.get(name, stages) for name in names]
    for stage in chosen:
        if not stage.active(params):
            logger.info("stage %s: skipped (not enabled by this configuration)", stage.name)
    chosen = [stage for stage in chosen if stage.active(params)]
    workdir = Path(workdir)
    cluster = distributed.cluster_of(params)  # TF_CONFIG validated before any work (multi_worker only)
    if cluster is not None and not cluster.is_chief:  # only the chief writes under the workdir and to MLflow
        return worker.run_as_worker(
            chosen, params, workdir, stages, cluster, force=force, rerun_changed_code=rerun_changed_code
        )
    data = registry.data_name(params)
    tracker = tracking.MlflowTracker(params, data) if track else tracking.MemoryTracker()
    results: dict[str, dict] = {}
    with lock.workdir_lock(workdir, wait_seconds=wait_lock), tracker.parent(",".join(s.name for s in chosen)):
        if parent_tags:
            tracker.parent_tags(parent_tags)
        invoked = frozenset(s.name for s in chosen)  # their code changes are reported as they are reached
        for stage in chosen:
            results[stage.name] = _run_one(
                stage,
                params,
                workdir,
                data,
                tracker,
                force,
                stages,
                folder,
                rerun_changed_code=rerun_changed_code,
                reported=invoked,
                observe=observe,
            )
    return results


def _place(name: str, workdir: Path, key: str | None, folder: Folder | None) -> Path:
    """The stage's real folder; with a ``folder`` hook and a key, ``workdir/<name>`` links to it."""
    link = workdir / name
    if folder is None or key is None:
        return link
    target = Path(folder(name, key)).resolve()
    target.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() == target:
        return target
    if link.exists() and not link.is_symlink():
        raise StageError(f"{link} is a folder, not a link to a shared stage folder; remove it to run here")
    tmp = workdir / f".{name}.link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    tmp.replace(link)  # atomic: the link always points at one complete-or-not folder
    return target


def _run_one(
    stage: Stage,
    params: Params,
    workdir: Path,
    data: str,
    tracker,
    force: bool,
    stages: tuple[Stage, ...],
    place: Folder | None = None,
    *,
    rerun_changed_code: bool = False,
    reported: frozenset[str] = frozenset(),
    observe: Observe | None = None,
) -> dict:
    key = stage_key(stage, params, workdir, stages)
    folder = _place(stage.name, workdir, key, place)
    marker = complete_marker(stage, folder)
    code = stage_code(stage)
    if reusable(stage, marker, key, force=force):
        changed = code_changed(stage, marker)
        if not (changed and rerun_changed_code):
            if changed:
                logger.warning(
                    "stage %s: reusing outputs made by other code (%s); --rerun-changed-code reruns such stages",
                    stage.name,
                    code_note(marker, code),
                )
            else:
                logger.info(
                    "stage %s: reusing the complete outputs in %s (same settings and inputs; --force reruns it)",
                    stage.name,
                    folder,
                )
            tags = {
                "reused": "true",
                "reused_from_run": marker.get("run_id", ""),
                **({"code": code.digest} if code else {}),
                **({"code_changed": "true"} if changed else {}),
            }
            with tracker.stage(stage.name, tags=tags) as rec:
                rec.dict(marker, "reused_marker.json")
                rec.metrics(marker.get("headline", {}))
            tracker.parent_metrics(marker.get("headline", {}))
            tracker.parent_tags(marker.get("parent_tags", {}))
            return {"reused": True, **({"code_changed": True} if changed else {})}
        logger.info(
            "stage %s: rerunning: its outputs in %s were made by other code (%s; --rerun-changed-code)",
            stage.name,
            folder,
            code_note(marker, code),
        )

    state = running_state(stage, folder, key, force)
    if state and code_changed(stage, state):
        if rerun_changed_code:
            logger.info(
                "stage %s: starting afresh: its interrupted run was started by other code (%s; --rerun-changed-code)",
                stage.name,
                code_note(state, code),
            )
            state = None
        else:
            logger.warning(
                "stage %s: resuming an interrupted run started by other code (%s); --rerun-changed-code "
                "starts such stages afresh",
                stage.name,
                code_note(state, code),
            )
    run_id = state.get("run_id") if state and tracker.run_exists(state.get("run_id")) else None
    if state and run_id is None:
        logger.warning("%s: the run of the interrupted stage is not in this store; logging into a new run", stage.name)
    logger.info("stage %s", stage.name)
    start = time.perf_counter()
    # A resumable stage works in its folder (its checkpoints are what a rerun resumes from); any
    # other stage writes beside its previous outputs, which stay complete and in place until the
    # new ones are complete (a failed rerun leaves them as they were).
    work = folder if stage.resumable else folder.with_name(folder.name + PARTIAL)
    try:
        return _run_in(
            stage,
            params,
            workdir,
            data,
            tracker,
            stages,
            key,
            folder,
            work,
            state,
            run_id,
            start,
            code=code,
            rerun_changed_code=rerun_changed_code,
            reported=reported,
            observe=observe,
        )
    except BaseException:
        if work != folder:  # a failed or interrupted stage leaves no half-written folder behind
            shutil.rmtree(work, ignore_errors=True)
        raise


def _run_in(
    stage: Stage,
    params: Params,
    workdir: Path,
    data: str,
    tracker,
    stages: tuple[Stage, ...],
    key: str | None,
    folder: Path,
    work: Path,
    state: dict | None,
    run_id: str | None,
    start: float,
    *,
    code: source.CodeDigest | None = None,
    rerun_changed_code: bool = False,
    reported: frozenset[str] = frozenset(),
    observe: Observe | None = None,
) -> dict:
    """Run ``stage`` into ``work``, mark it complete, and swap it in as ``folder`` (see :func:`_run_one`)."""
    code_facts = {
        "code": code.digest if code else None,
        "code_files": len(code.files) if code else 0,
        "code_sources": dict(code.files) if code else {},
    }
    with tracker.stage(stage.name, run_id=run_id, tags={"code": code.digest} if code else None) as rec:
        if observe is not None:
            rec.observe = functools.partial(observe, stage.name)
        check_upstream(stage, params, workdir, stages, rerun_changed_code=rerun_changed_code, reported=reported)
        if state is None:
            shutil.rmtree(work, ignore_errors=True)  # start clean: nothing of another run survives
        work.mkdir(parents=True, exist_ok=True)
        files.clear_marker(work)
        if stage.resumable:
            files.write_json(
                folder / RUNNING,
                {
                    "key": key,
                    "run_id": rec.run_id,
                    "code": code_facts["code"],
                    "code_sources": code_facts["code_sources"],
                },
            )
        ctx = context(stage, params, workdir, stages, work, rec, data, resuming=state is not None)
        result = stage.function(ctx)
        seconds = time.perf_counter() - start
        rec.metrics({"stage_seconds": seconds})
        latest = rec.latest()
        headline = {k: latest[k] for k in stage.headline if k in latest}
        parent_tags = {k: v for k, v in rec.logged_tags().items() if k.startswith(PARENT_TAG_PREFIX)}
        run_id = rec.run_id
    output = work / stage.main_output
    if not output.is_file():
        raise StageError(f"stage {stage.name} finished without writing its main output {folder / stage.main_output}")
    files.mark_complete(
        work,
        **{**ctx.facts, **code_facts},
        key=key,
        run_id=run_id,
        output=file_digest(output),
        seconds=round(seconds, 3),
        headline=headline,
        parent_tags=parent_tags,
    )
    (folder / RUNNING).unlink(missing_ok=True)
    if work != folder:
        _swap_in(work, folder)
        result = {
            k: folder / Path(v).relative_to(work) if isinstance(v, Path) and work in Path(v).parents else v
            for k, v in result.items()
        }
    tracker.parent_metrics({**headline, f"stage_seconds_{stage.name}": seconds})
    tracker.parent_tags(parent_tags)
    logger.info("stage %s: done in %.1f s", stage.name, seconds)
    return {**result, "seconds": seconds}


def _swap_in(new: Path, folder: Path) -> None:
    """Replace ``folder`` by the complete ``new`` one: two renames, then the old outputs are deleted.

    SIGINT and SIGTERM are held back between the two renames (delivered right after), so an
    interruption never leaves the stage without its folder.
    """
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        if folder.exists():
            folder.rename(old)
        new.rename(folder)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    shutil.rmtree(old, ignore_errors=True)


def summary(
    params: Params, workdir: Path, results: dict[str, dict] | None = None, stages: tuple[Stage, ...] = registry.STAGES
) -> str:
    """A short closing summary: per-stage wall time, each complete stage's own lines (its record's
    ``summary``: report, headline metrics, int8 size and MACs, package, registry), the MLflow UI."""
    workdir = Path(workdir)
    lines = [f"Outputs in {workdir.resolve()}"]
    if results:
        times = ", ".join(
            f"{name} {'reused' if r.get('reused') else _duration(r.get('seconds', 0.0))}" for name, r in results.items()
        )
        lines.append(f"  time:     {times}")
    for stage in stages:
        if stage.summary is not None and complete_marker(stage, workdir / stage.name) is not None:
            lines += stage.summary(workdir / stage.name, params)
    lines.append(
        f"  MLflow:   mlflow ui --backend-store-uri {params.tracking.uri} --default-artifact-root "
        f"{params.tracking.artifact_root} (experiment '{params.tracking.experiment}')"
    )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"
