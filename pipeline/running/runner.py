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

import json
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.scaling import distributed
from pipeline.running import tracking
from pipeline.running import stages as registry
from pipeline.core import files, lock, source
from pipeline.core.config import Params
from pipeline.core.hashing import digest, file_digest
from pipeline.running.stages import Context, MemoryRecorder, Stage, StageError

logger = logging.getLogger(__name__)
worker_log = logging.getLogger(__name__ + ".worker")  # a non-chief worker's lines: not the chief's stage lines

RUNNING = "_RUNNING.json"  # in the folder of a resumable stage while it runs: its key and MLflow run
PARTIAL = ".partial"  # <stage>.partial/: where a non-resumable stage writes until it is complete
PARENT_TAG_PREFIX = "dataset."  # stage tags that describe the whole invocation, copied to the parent run
Folder = Callable[[str, str], Path]  # (stage name, reuse key) -> the folder holding that stage's outputs


def active_upstream(stage: Stage, params: Params, stages: tuple[Stage, ...] = registry.STAGES) -> tuple[str, ...]:
    """The upstream stages that take part in a run with ``params`` (see ``Stage.when``)."""
    return tuple(up for up in stage.upstream if registry.get(up, stages).active(params))


def available_optional(stage: Stage, params: Params, workdir: Path,
                       stages: tuple[Stage, ...] = registry.STAGES) -> tuple[str, ...]:
    """The optional upstream stages a run reads: active, complete and made with this run's settings."""
    found = []
    for name in stage.optional:
        up = registry.get(name, stages)
        marker = complete_marker(up, workdir / name) if up.active(params) else None
        key = stage_key(up, params, workdir, stages) if marker is not None else None
        if marker is not None and (key is None or marker.get("key") == key):
            found.append(name)
    return tuple(found)


def stage_key(stage: Stage, params: Params, workdir: Path, stages: tuple[Stage, ...] = registry.STAGES) -> str | None:
    """What a stage's outputs depend on; equal keys mean the outputs can be reused (None: always run)."""
    if stage.settings is None:
        return None
    upstream = {up: (files.read_marker(workdir / up) or {}).get("output")
                for up in active_upstream(stage, params, stages)}
    facts = {"stage": stage.name, "settings": stage.settings_of(params),
             "external": stage.external(params) if stage.external else None, "upstream": upstream}
    if stage.optional:  # only then: the keys of stages without optional inputs stay as they were
        facts["optional"] = {up: (files.read_marker(workdir / up) or {}).get("output")
                             for up in available_optional(stage, params, workdir, stages)}
    return digest(facts)


def complete_marker(stage: Stage, folder: Path) -> dict | None:
    """The marker of a complete stage folder (marker and main output present), else None."""
    marker = files.read_marker(folder)
    if marker is None or not (folder / stage.main_output).is_file():
        return None
    return marker


def check_upstream(stage: Stage, params: Params, workdir: Path, stages: tuple[Stage, ...], *,
                   rerun_changed_code: bool = False, reported: frozenset[str] | set[str] = frozenset()) -> None:
    """Refuse inputs that are missing, incomplete or made with other settings than ``params``.

    Args:
      stage, params, workdir, stages: the stage about to run and its run.
      rerun_changed_code: also refuse an input made by other code than this process's.
      reported: upstream stages whose code change was already reported (no second warning).

    Raises:
      StageError: naming the upstream folder and the command that makes it.
    """
    for name in active_upstream(stage, params, stages):
        up = registry.get(name, stages)
        marker = complete_marker(up, workdir / name)
        if marker is None:
            raise StageError(f"{workdir / name} is missing or incomplete: run --stage {name} first")
        key = stage_key(up, params, workdir, stages)
        if key is not None and marker.get("key") != key:
            raise StageError(f"{workdir / name} was made with other settings or inputs than this run's; "
                             f"run --stage {name} (or --stage all) with the same --config/--set first")
        if code_changed(up, marker):
            note = code_note(marker, stage_code(up))
            if rerun_changed_code:
                raise StageError(f"{workdir / name} was made by other code than this run's ({note}); run --stage "
                                 f"{name} --rerun-changed-code (or --stage all --rerun-changed-code) first")
            if name not in reported:
                logger.warning("stage %s: its input %s was made by other code (%s); --rerun-changed-code reruns "
                               "such stages", stage.name, name, note)


_NO_CODE: set[str | None] = set()  # modules whose code could not be digested (warned once)


def stage_code(stage: Stage) -> source.CodeDigest | None:
    """The digest of the project source the stage's function depends on (None: no source file to digest)."""
    module = source.function_module(stage.function)
    try:
        if module is None:
            raise ValueError(f"the function of stage {stage.name} names no module")
        return source.code_digest(module)
    except ValueError as exc:
        if module not in _NO_CODE:
            _NO_CODE.add(module)
            logger.warning("stage %s: its code is not digested (%s); code changes are not detected", stage.name, exc)
        return None


def code_changed(stage: Stage, record: dict) -> bool:
    """Whether a marker (or running state) was made by other code than this process's (False: unknown now)."""
    code = stage_code(stage)
    return code is not None and record.get("code") != code.digest


def code_note(record: dict, code: source.CodeDigest | None) -> str:
    """``code digest OLD -> NEW, N source files; changed: a.py, b.py`` for a marker made by other code."""
    new = code.digest if code else "unknown"
    text = f"code digest {record.get('code') or 'not recorded'} -> {new}, {len(code.files) if code else 0} source files"
    if code is not None and isinstance(record.get("code_sources"), dict):
        changed = source.changed_files(record["code_sources"], code.files)
        if changed:
            more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
            text += f"; changed: {', '.join(changed[:3])}{more}"
    return text


def reusable(stage: Stage, marker: dict | None, key: str | None, *, force: bool = False,
             rerun_changed_code: bool = False) -> bool:
    """Whether a complete marker's outputs are reused: same key, no ``force``, and (with
    ``rerun_changed_code``) made by this process's code."""
    if force or key is None or marker is None or marker.get("key") != key:
        return False
    return not (rerun_changed_code and code_changed(stage, marker))


def running_state(stage: Stage, folder: Path, key: str | None, force: bool,
                  rerun_changed_code: bool = False) -> dict | None:
    """The state of an interrupted run of a resumable stage with the same key (None: start afresh).

    With ``rerun_changed_code``, an interrupted run started by other code starts afresh too.
    """
    path = folder / RUNNING
    if force or not stage.resumable or key is None or not path.is_file() or files.read_marker(folder):
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if state.get("key") != key:
        return None
    return None if rerun_changed_code and code_changed(stage, state) else state


def run_stages(params: Params, workdir: Path, names: list[str], *, force: bool = False, track: bool = True,
               stages: tuple[Stage, ...] = registry.STAGES, folder: Folder | None = None,
               parent_tags: dict[str, str] | None = None, wait_lock: float = 0.0,
               rerun_changed_code: bool = False) -> dict[str, dict]:
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
        return _run_as_worker(chosen, params, workdir, stages, cluster, force=force,
                              rerun_changed_code=rerun_changed_code)
    data = registry.data_name(params)
    tracker = tracking.MlflowTracker(params, data) if track else tracking.MemoryTracker()
    results: dict[str, dict] = {}
    with lock.workdir_lock(workdir, wait_seconds=wait_lock), tracker.parent(",".join(s.name for s in chosen)):
        if parent_tags:
            tracker.parent_tags(parent_tags)
        invoked = frozenset(s.name for s in chosen)  # their code changes are reported as they are reached
        for stage in chosen:
            results[stage.name] = _run_one(stage, params, workdir, data, tracker, force, stages, folder,
                                           rerun_changed_code=rerun_changed_code, reported=invoked)
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


def _run_one(stage: Stage, params: Params, workdir: Path, data: str, tracker, force: bool,
             stages: tuple[Stage, ...], place: Folder | None = None, *, rerun_changed_code: bool = False,
             reported: frozenset[str] = frozenset()) -> dict:
    key = stage_key(stage, params, workdir, stages)
    folder = _place(stage.name, workdir, key, place)
    marker = complete_marker(stage, folder)
    code = stage_code(stage)
    if reusable(stage, marker, key, force=force):
        changed = code_changed(stage, marker)
        if not (changed and rerun_changed_code):
            if changed:
                logger.warning("stage %s: reusing outputs made by other code (%s); --rerun-changed-code reruns such "
                               "stages", stage.name, code_note(marker, code))
            else:
                logger.info("stage %s: reusing the complete outputs in %s (same settings and inputs; --force reruns "
                            "it)", stage.name, folder)
            tags = {"reused": "true", "reused_from_run": marker.get("run_id", ""),
                    **({"code": code.digest} if code else {}), **({"code_changed": "true"} if changed else {})}
            with tracker.stage(stage.name, tags=tags) as rec:
                rec.dict(marker, "reused_marker.json")
                rec.metrics(marker.get("headline", {}))
            tracker.parent_metrics(marker.get("headline", {}))
            tracker.parent_tags(marker.get("parent_tags", {}))
            return {"reused": True, **({"code_changed": True} if changed else {})}
        logger.info("stage %s: rerunning: its outputs in %s were made by other code (%s; --rerun-changed-code)",
                    stage.name, folder, code_note(marker, code))

    state = running_state(stage, folder, key, force)
    if state and code_changed(stage, state):
        if rerun_changed_code:
            logger.info("stage %s: starting afresh: its interrupted run was started by other code (%s; "
                        "--rerun-changed-code)", stage.name, code_note(state, code))
            state = None
        else:
            logger.warning("stage %s: resuming an interrupted run started by other code (%s); --rerun-changed-code "
                           "starts such stages afresh", stage.name, code_note(state, code))
    run_id = state.get("run_id") if state and tracker.run_exists(state.get("run_id")) else None
    if state and run_id is None:
        logger.warning("%s: the run of the interrupted stage is not in this store; logging into a new run",
                       stage.name)
    logger.info("stage %s", stage.name)
    start = time.perf_counter()
    # A resumable stage works in its folder (its checkpoints are what a rerun resumes from); any
    # other stage writes beside its previous outputs, which stay complete and in place until the
    # new ones are complete (a failed rerun leaves them as they were).
    work = folder if stage.resumable else folder.with_name(folder.name + PARTIAL)
    try:
        return _run_in(stage, params, workdir, data, tracker, stages, key, folder, work, state, run_id, start,
                       code=code, rerun_changed_code=rerun_changed_code, reported=reported)
    except BaseException:
        if work != folder:  # a failed or interrupted stage leaves no half-written folder behind
            shutil.rmtree(work, ignore_errors=True)
        raise


def _run_in(stage: Stage, params: Params, workdir: Path, data: str, tracker, stages: tuple[Stage, ...],
            key: str | None, folder: Path, work: Path, state: dict | None, run_id: str | None, start: float, *,
            code: source.CodeDigest | None = None, rerun_changed_code: bool = False,
            reported: frozenset[str] = frozenset()) -> dict:
    """Run ``stage`` into ``work``, mark it complete, and swap it in as ``folder`` (see :func:`_run_one`)."""
    code_facts = {"code": code.digest if code else None, "code_files": len(code.files) if code else 0,
                  "code_sources": dict(code.files) if code else {}}
    with tracker.stage(stage.name, run_id=run_id, tags={"code": code.digest} if code else None) as rec:
        check_upstream(stage, params, workdir, stages, rerun_changed_code=rerun_changed_code, reported=reported)
        if state is None:
            shutil.rmtree(work, ignore_errors=True)  # start clean: nothing of another run survives
        work.mkdir(parents=True, exist_ok=True)
        files.clear_marker(work)
        if stage.resumable:
            files.write_json(folder / RUNNING, {"key": key, "run_id": rec.run_id, "code": code_facts["code"],
                                                "code_sources": code_facts["code_sources"]})
        ctx = _context(stage, params, workdir, stages, work, rec, data, resuming=state is not None)
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
    files.mark_complete(work, **{**ctx.facts, **code_facts}, key=key, run_id=run_id, output=file_digest(output),
                        seconds=round(seconds, 3), headline=headline, parent_tags=parent_tags)
    (folder / RUNNING).unlink(missing_ok=True)
    if work != folder:
        _swap_in(work, folder)
        result = {k: folder / Path(v).relative_to(work) if isinstance(v, Path) and work in Path(v).parents else v
                  for k, v in result.items()}
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


def _context(stage: Stage, params: Params, workdir: Path, stages: tuple[Stage, ...], out: Path, record,
             data: str, *, resuming: bool) -> Context:
    """The :class:`Context` of a stage writing into ``out`` (chief: its folder; worker: its scratch folder)."""
    inputs = {up: workdir / up for up in active_upstream(stage, params, stages)}
    inputs.update({up: workdir / up for up in available_optional(stage, params, workdir, stages)})
    return Context(params=params, workdir=workdir, out=out, inputs=inputs, record=record, data_name=data,
                   resuming=resuming, outputs={up: dict(registry.get(up, stages).outputs) for up in inputs})


# --------------------------------------------------------------------------- non-chief workers


def scratch_folder(workdir: Path, rank: int) -> Path:
    """A non-chief worker's private folder: ``<temp>/asc-worker<rank>-<digest of the workdir path>``.

    One folder per (workdir, rank): a restarted worker clears what a killed one left behind.
    """
    return Path(tempfile.gettempdir()) / f"asc-worker{rank}-{digest(str(Path(workdir).resolve()))[:12]}"


def _upstream_ready(stage: Stage, params: Params, workdir: Path, stages: tuple[Stage, ...],
                    rerun_changed_code: bool) -> bool:
    """Whether the chief's upstream outputs are complete and made with this run's settings (and code)."""
    try:
        check_upstream(stage, params, workdir, stages, rerun_changed_code=rerun_changed_code,
                       reported=frozenset(stage.upstream))  # the chief warns of code changes, not each poll
    except StageError:
        return False
    return True


def _wait_for_chief(condition: Callable[[], bool], what: str, timeout: float, poll: float = 1.0) -> None:
    """Poll ``condition`` until true; a :class:`StageError` naming ``train.worker_wait_seconds`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    logged = False
    while not condition():
        if time.monotonic() > deadline:
            raise StageError(f"multi-worker (non-chief): {what} did not appear within "
                             f"train.worker_wait_seconds={timeout:g} s; is the chief running?")
        if not logged:
            worker_log.info("waiting for the chief: %s", what)
            logged = True
        time.sleep(poll)


def _run_as_worker(chosen: list[Stage], params: Params, workdir: Path, stages: tuple[Stage, ...],
                   cluster: distributed.Cluster, *, force: bool, rerun_changed_code: bool) -> dict[str, dict]:
    """A non-chief worker's share of ``chosen``: the ``distributed`` stages, writing nothing under ``workdir``.

    Each distributed stage waits for the chief's complete upstream outputs, then runs with a
    scratch ``ctx.out`` and a :class:`~pipeline.running.stages.MemoryRecorder`; it resumes when the chief
    resumes (the same interrupted run with the same key in the shared folder; the stage restores
    the chief's checkpoints) and is skipped when the chief reuses it. ``force`` and
    ``rerun_changed_code`` are the chief's (the same ``pipeline.run`` arguments), so a worker
    reruns, resumes or skips as the chief does. The scratch folder (:func:`scratch_folder`) is
    cleared at the start and deleted at the end.

    Returns:
      Per stage: its result plus ``seconds``, ``{"reused": True}`` or ``{"skipped": True}``.
    """
    scratch = scratch_folder(workdir, cluster.rank)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    shared = [stage.name for stage in chosen if stage.distributed]
    worker_log.info("non-chief worker %d of %d: running %s in the scratch folder %s (nothing is written under %s)",
                cluster.rank, cluster.num_workers, "/".join(shared) or "no stage", scratch, workdir)
    data = registry.data_name(params)
    results: dict[str, dict] = {}
    try:
        for stage in chosen:
            if not stage.distributed:
                results[stage.name] = {"skipped": True}
                worker_log.info("stage %s: runs on the chief only", stage.name)
                continue
            ups = active_upstream(stage, params, stages)
            _wait_for_chief(lambda stage=stage: _upstream_ready(stage, params, workdir, stages, rerun_changed_code),
                            f"complete outputs of {', '.join(ups)} under {workdir}", params.train.worker_wait_seconds)
            key = stage_key(stage, params, workdir, stages)
            marker = complete_marker(stage, workdir / stage.name)
            if reusable(stage, marker, key, force=force, rerun_changed_code=rerun_changed_code):
                worker_log.info("stage %s: the chief reuses its complete outputs; nothing to do", stage.name)
                results[stage.name] = {"reused": True}
                continue
            state = running_state(stage, workdir / stage.name, key, force, rerun_changed_code)
            out = scratch / stage.name
            out.mkdir(parents=True)
            ctx = _context(stage, params, workdir, stages, out, MemoryRecorder(f"worker{cluster.rank}"), data,
                           resuming=state is not None)
            start = time.perf_counter()
            worker_log.info("stage %s (non-chief worker %d)", stage.name, cluster.rank)
            results[stage.name] = {**stage.function(ctx), "seconds": time.perf_counter() - start}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def summary(params: Params, workdir: Path, results: dict[str, dict] | None = None,
            stages: tuple[Stage, ...] = registry.STAGES) -> str:
    """A short closing summary: per-stage wall time, each complete stage's own lines (its record's
    ``summary``: report, headline metrics, int8 size and MACs, package, registry), the MLflow UI."""
    workdir = Path(workdir)
    lines = [f"Outputs in {workdir.resolve()}"]
    if results:
        times = ", ".join(f"{name} {'reused' if r.get('reused') else _duration(r.get('seconds', 0.0))}"
                          for name, r in results.items())
        lines.append(f"  time:     {times}")
    for stage in stages:
        if stage.summary is not None and complete_marker(stage, workdir / stage.name) is not None:
            lines += stage.summary(workdir / stage.name, params)
    lines.append(f"  MLflow:   mlflow ui --backend-store-uri {params.tracking.uri} --default-artifact-root "
                 f"{params.tracking.artifact_root} (experiment '{params.tracking.experiment}')")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"
