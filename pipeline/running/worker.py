"""The worker role: a non-chief worker's share of a multi-worker run.

Under ``train.strategy=multi_worker`` (TF_CONFIG: :mod:`pipeline.scaling.distributed`) every
worker other than the chief runs only the stages whose record says ``distributed=True``: each
waits for the chief's complete upstream outputs in the shared workdir (at most
``train.worker_wait_seconds``), is skipped when the chief reuses it, and otherwise runs its
function with a private scratch folder as ``ctx.out`` and an in-memory recorder: no MLflow run,
no marker, no lock, nothing written under the workdir. The runner
(:func:`pipeline.running.runner.run_stages`) hands a non-chief process over to :func:`run_as_worker`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.core.config import Params
from pipeline.core.hashing import digest
from pipeline.running import stages as registry
from pipeline.running.stages import MemoryRecorder, Stage, StageError
from pipeline.running.state import (
    active_upstream,
    check_upstream,
    complete_marker,
    context,
    reusable,
    running_state,
    stage_key,
)
from pipeline.scaling import distributed

worker_log = logging.getLogger("pipeline.running.runner.worker")  # a non-chief worker's lines


def scratch_folder(workdir: Path, rank: int) -> Path:
    """A non-chief worker's private folder: ``<temp>/asc-worker<rank>-<digest of the workdir path>``.

    One folder per (workdir, rank): a restarted worker clears what a killed one left behind.
    """
    return Path(tempfile.gettempdir()) / f"asc-worker{rank}-{digest(str(Path(workdir).resolve()))[:12]}"


def upstream_ready(
    stage: Stage, params: Params, workdir: Path, stages: tuple[Stage, ...], rerun_changed_code: bool
) -> bool:
    """Whether the chief's upstream outputs are complete and made with this run's settings (and code)."""
    try:
        check_upstream(
            stage, params, workdir, stages, rerun_changed_code=rerun_changed_code, reported=frozenset(stage.upstream)
        )  # the chief warns of code changes, not each poll
    except StageError:
        return False
    return True


def wait_for_chief(condition: Callable[[], bool], what: str, timeout: float, poll: float = 1.0) -> None:
    """Poll ``condition`` until true; a :class:`StageError` naming ``train.worker_wait_seconds`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    logged = False
    while not condition():
        if time.monotonic() > deadline:
            raise StageError(
                f"multi-worker (non-chief): {what} did not appear within "
                f"train.worker_wait_seconds={timeout:g} s; is the chief running?"
            )
        if not logged:
            worker_log.info("waiting for the chief: %s", what)
            logged = True
        time.sleep(poll)


def run_as_worker(
    chosen: list[Stage],
    params: Params,
    workdir: Path,
    stages: tuple[Stage, ...],
    cluster: distributed.Cluster,
    *,
    force: bool,
    rerun_changed_code: bool,
) -> dict[str, dict]:
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
    worker_log.info(
        "non-chief worker %d of %d: running %s in the scratch folder %s (nothing is written under %s)",
        cluster.rank,
        cluster.num_workers,
        "/".join(shared) or "no stage",
        scratch,
        workdir,
    )
    data = registry.data_name(params)
    results: dict[str, dict] = {}
    try:
        for stage in chosen:
            if not stage.distributed:
                results[stage.name] = {"skipped": True}
                worker_log.info("stage %s: runs on the chief only", stage.name)
                continue
            ups = active_upstream(stage, params, stages)
            wait_for_chief(
                lambda stage=stage: upstream_ready(stage, params, workdir, stages, rerun_changed_code),
                f"complete outputs of {', '.join(ups)} under {workdir}",
                params.train.worker_wait_seconds,
            )
            key = stage_key(stage, params, workdir, stages)
            marker = complete_marker(stage, workdir / stage.name)
            if reusable(stage, marker, key, force=force, rerun_changed_code=rerun_changed_code):
                worker_log.info("stage %s: the chief reuses its complete outputs; nothing to do", stage.name)
                results[stage.name] = {"reused": True}
                continue
            state = running_state(stage, workdir / stage.name, key, force, rerun_changed_code)
            out = scratch / stage.name
            out.mkdir(parents=True)
            ctx = context(
                stage,
                params,
                workdir,
                stages,
                out,
                MemoryRecorder(f"worker{cluster.rank}"),
                data,
                resuming=state is not None,
            )
            start = time.perf_counter()
            worker_log.info("stage %s (non-chief worker %d)", stage.name, cluster.rank)
            results[stage.name] = {**stage.function(ctx), "seconds": time.perf_counter() - start}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results
