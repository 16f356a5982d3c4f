"""A stage's state in the workdir: its reuse key, its completion marker, its upstream, its code, its context.

What the runner (:mod:`pipeline.running.runner`) and a non-chief worker
(:mod:`pipeline.running.worker`) both ask before a stage runs:

* :func:`stage_key`: a digest of the settings its record names, the facts of its external inputs
  and the digests of its upstream stages' main outputs (and of its available optional ones);
* :func:`complete_marker`, :func:`reusable`, :func:`running_state`: whether its folder holds a
  complete run with that key, or an interrupted resumable one;
* :func:`check_upstream`: its inputs complete and made with this run's settings (and code);
* :func:`stage_code`, :func:`code_changed`, :func:`code_note`: the digest of the code it imports
  (:mod:`pipeline.core.source`) against the one its marker records;
* :func:`context`: the :class:`~pipeline.running.stages.Context` its function gets.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.core import files, source
from pipeline.core.config import Params
from pipeline.core.hashing import digest
from pipeline.running import stages as registry
from pipeline.running.stages import Context, Stage, StageError

logger = logging.getLogger("pipeline.running.runner")  # the runner's lines, wherever they are decided

RUNNING = "_RUNNING.json"  # in the folder of a resumable stage while it runs: its key and MLflow run


def active_upstream(stage: Stage, params: Params, stages: tuple[Stage, ...] = registry.STAGES) -> tuple[str, ...]:
    """The upstream stages that take part in a run with ``params`` (see ``Stage.when``)."""
    return tuple(up for up in stage.upstream if registry.get(up, stages).active(params))


def available_optional(
    stage: Stage, params: Params, workdir: Path, stages: tuple[Stage, ...] = registry.STAGES
) -> tuple[str, ...]:
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
    upstream = {
        up: (files.read_marker(workdir / up) or {}).get("output") for up in active_upstream(stage, params, stages)
    }
    facts = {
        "stage": stage.name,
        "settings": stage.settings_of(params),
        "external": stage.external(params) if stage.external else None,
        "upstream": upstream,
    }
    if stage.optional:  # only then: the keys of stages without optional inputs stay as they were
        facts["optional"] = {
            up: (files.read_marker(workdir / up) or {}).get("output")
            for up in available_optional(stage, params, workdir, stages)
        }
    return digest(facts)


def complete_marker(stage: Stage, folder: Path) -> dict | None:
    """The marker of a complete stage folder (marker and main output present), else None."""
    marker = files.read_marker(folder)
    if marker is None or not (folder / stage.main_output).is_file():
        return None
    return marker


def check_upstream(
    stage: Stage,
    params: Params,
    workdir: Path,
    stages: tuple[Stage, ...],
    *,
    rerun_changed_code: bool = False,
    reported: frozenset[str] | set[str] = frozenset(),
) -> None:
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
            raise StageError(
                f"{workdir / name} was made with other settings or inputs than this run's; "
                f"run --stage {name} (or --stage all) with the same --config/--set first"
            )
        if code_changed(up, marker):
            note = code_note(marker, stage_code(up))
            if rerun_changed_code:
                raise StageError(
                    f"{workdir / name} was made by other code than this run's ({note}); run --stage "
                    f"{name} --rerun-changed-code (or --stage all --rerun-changed-code) first"
                )
            if name not in reported:
                logger.warning(
                    "stage %s: its input %s was made by other code (%s); --rerun-changed-code reruns such stages",
                    stage.name,
                    name,
                    note,
                )


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


def reusable(
    stage: Stage, marker: dict | None, key: str | None, *, force: bool = False, rerun_changed_code: bool = False
) -> bool:
    """Whether a complete marker's outputs are reused: same key, no ``force``, and (with
    ``rerun_changed_code``) made by this process's code."""
    if force or key is None or marker is None or marker.get("key") != key:
        return False
    return not (rerun_changed_code and code_changed(stage, marker))


def running_state(
    stage: Stage, folder: Path, key: str | None, force: bool, rerun_changed_code: bool = False
) -> dict | None:
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


def context(
    stage: Stage,
    params: Params,
    workdir: Path,
    stages: tuple[Stage, ...],
    out: Path,
    record,
    data: str,
    *,
    resuming: bool,
) -> Context:
    """The :class:`Context` of a stage writing into ``out`` (chief: its folder; worker: its scratch folder)."""
    inputs = {up: workdir / up for up in active_upstream(stage, params, stages)}
    inputs.update({up: workdir / up for up in available_optional(stage, params, workdir, stages)})
    return Context(
        params=params,
        workdir=workdir,
        out=out,
        inputs=inputs,
        record=record,
        data_name=data,
        resuming=resuming,
        outputs={up: dict(registry.get(up, stages).outputs) for up in inputs},
        settings=stage.settings_of(params),
    )
