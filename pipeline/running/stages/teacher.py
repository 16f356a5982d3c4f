"""``teacher``: train the distillation teachers and store their logits for the training clips.

A teacher is the report's network made wider (``distill.teacher.channels``, ``hidden_units``),
trained by the same recipe and code as the student (:func:`pipeline.running.task.fit`:
same data, optimizer and checkpoints, time shift), without the device augmentations unless
``distill.teacher.device_augmentations`` (issue 24: under a short budget they cost a teacher more
than they give), and with SpecAugment++ as the student has it unless ``distill.teacher.specaugment``
says otherwise (issue 24: a 60-epoch teacher without it over-fitted to below its student).
``distill.teacher.members`` teachers with seeds ``seed + 1000 * k`` form an ensemble whose logits
are averaged (CP-JKU, DCASE2022-23).
The stored ``logits.npz`` names its classes, so it is itself an importable teacher
(``distill.teacher.logits``) for other runs.

The teachers' logits are computed once, on the clean training clips (no augmentation), and
stored in ``teacher/logits.npz``; the runner keys this stage by the teacher settings, so a
second run reuses the stored logits and a change of teacher settings recomputes them. Stored
targets of the clean clip (rather than the teacher run on each augmented batch) cost one
inference pass instead of one per student step, and keep the student's step as cheap as
without distillation; the student still sees its augmentations, and the clean clip's soft label
is what the augmentations are meant to preserve (Schmid et al. 2022 do the same).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from evaluate import metrics as dm
from pipeline.core import files, seeds
from pipeline.core.config import Params
from pipeline.core.hashing import stat_file_digest
from pipeline.core.labels import CLASSES
from pipeline.data import inputs
from pipeline.data.teacher_logits import TeacherLogitsError, read_teacher_logits
from pipeline.running import task
from pipeline.running.stages.base import (
    DEVICE_AUGMENTATIONS,
    Context,
    PrefixedRecorder,
    StageError,
    clips,
    derived_settings,
    load_index,
    validation_split,
)

logger = logging.getLogger(__name__)


def member_changes(params: Params, member: int) -> dict[str, str]:
    """What ensemble member ``member`` (0-based) changes in the run's settings (dotted key -> value)."""
    t = params.distill.teacher
    changes = {
        "model.channels": str(list(t.channels)),
        "model.hidden_units": str(t.hidden_units),
        "seed": str(seeds.stream_seed(params.seed, "teacher", member + 1)),  # seed + 1000 * (member + 1)
        "train.epochs": str(t.epochs or params.train.epochs),
        "distill.enabled": "false",
    }
    if not t.device_augmentations:
        changes.update({f"{section}.enabled": "false" for section in DEVICE_AUGMENTATIONS})
    if t.specaugment is not None:
        changes["augment.specaugment.enabled"] = str(t.specaugment).lower()
        if not t.specaugment:  # a teacher runs no TTA, and the masks mode would need SpecAugment++
            changes["augment.tta.enabled"] = "false"
    return changes


def teacher_params(params: Params, member: int) -> Params:
    """The parameter tree of ensemble member ``member`` (0-based): wider network, own seed, and without the
    device augmentations unless ``distill.teacher.device_augmentations``."""
    return params.replace(**member_changes(params, member))


def member_settings(settings: dict, member: Params, changes: dict[str, str]) -> dict:
    """The stage's settings as a member uses them (:func:`pipeline.running.stages.base.derived_settings`)."""
    return derived_settings(settings, member, changes)


def teacher_unused(params: Params) -> tuple[str, ...]:
    """Settings of the teacher stage's record that a run with ``params`` does not use (left out of its key).

    An imported teacher (``distill.teacher.logits``) is a file read: no network, front end, augmentation or
    training setting shapes it. Teachers trained without the device augmentations do not use their settings,
    so a change of ``augment.device_response`` or ``augment.freq_mixstyle`` (a search over the student's
    augmentations, say) reuses the teachers.
    """
    if params.distill.teacher.logits is not None:
        return ("audio", "model", "augment", "train")
    return () if params.distill.teacher.device_augmentations else DEVICE_AUGMENTATIONS


def logits_of(model, frame: pd.DataFrame, root, params: Params) -> np.ndarray:
    """``[N, K]`` logits of the clean clips of ``frame``, in order (batches of ``train.batch_size``, a
    setting the stage depends on anyway)."""
    step = tf.function(lambda wave: model(wave, training=False), reduce_retracing=True)
    ds = inputs.eval_dataset(frame, root, params.audio, params.data, batch_size=params.train.batch_size)
    return np.concatenate([step(wave).numpy() for wave, _ in ds]).astype(np.float32)


def teacher_facts(params: Params) -> dict | None:
    """The imported logits file's digest (``distill.teacher.logits``): part of the stage's key, so an edited
    file is read again; None when the teachers are trained here."""
    path = params.distill.teacher.logits
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        return {"logits": f"missing: {file}"}
    return {"logits": stat_file_digest(file)}


def _store(ctx: Context, tr: pd.DataFrame, ev: pd.DataFrame, logits: np.ndarray, members, eval_logits) -> dict:
    """Write ``logits.npz`` (the training clips' ensemble logits) and ``metrics.json``; score on ``ev``."""
    with files.atomic_path(ctx.out / "logits.npz") as tmp:
        with open(tmp, "wb") as fh:
            # ``classes`` makes the file an importable teacher (distill.teacher.logits) for other runs
            np.savez(
                fh,
                filenames=tr.filename.to_numpy(dtype=str),
                classes=np.asarray(CLASSES, dtype=str),
                logits=logits,
                members=members,
            )
    headline: dict = {}
    if eval_logits is not None:
        ensemble = tf.nn.softmax(eval_logits).numpy().astype(np.float64)
        m = dm.compute_metrics(ev.label.to_numpy(), ensemble, ev.device.to_numpy())
        headline = {
            "teacher_macro_accuracy": m["overall"]["macro_accuracy"],
            "teacher_log_loss": m["overall"]["log_loss"],
        }
        if "unseen" in m["per_device_group"]:
            headline["teacher_unseen_macro_accuracy"] = m["per_device_group"]["unseen"]["macro_accuracy"]
        ctx.record.metrics(headline)
    imported = ctx.params.distill.teacher.logits
    facts = {"members": int(members.shape[0]) if imported is None else 0, "imported": imported, **headline}
    files.write_json(ctx.out / "metrics.json", facts)
    ctx.record.artifact(ctx.out / "metrics.json")
    return headline


def _imported(ctx: Context, tr: pd.DataFrame, ev: pd.DataFrame) -> dict:
    """The teacher of ``distill.teacher.logits``: read, checked, stored as a trained ensemble's would be."""
    path = ctx.params.distill.teacher.logits
    try:
        table = read_teacher_logits(path, tr.filename.tolist())
    except TeacherLogitsError as exc:
        raise StageError(str(exc)) from None
    logits = np.stack([table[f] for f in tr.filename])
    scored = all(f in table for f in ev.filename) and len(ev) > 0
    eval_logits = np.stack([table[f] for f in ev.filename]) if scored else None
    ctx.record.tags({"teacher.imported": str(path)})
    headline = _store(ctx, tr, ev, logits, logits[None], eval_logits)
    logger.info(
        "teacher: imported logits for %d training clips from %s; %s",
        len(tr),
        path,
        f"on the evaluate split: macro accuracy {headline['teacher_macro_accuracy']:.3f}"
        if scored
        else "the file has no logits for every evaluate clip: the teacher is not scored",
    )
    return {"logits": ctx.out / "logits.npz", **headline}


def teacher(ctx: Context) -> dict:
    """Train each teacher (or import their logits), store the training clips' logits; score the ensemble."""
    params = ctx.params
    if params.distill.teacher.logits is not None:
        index, _, _ = load_index(ctx)
        return _imported(ctx, clips(index, "train", params), clips(index, "evaluate", params, labelled=True))
    if params.model.name != "asc":
        raise StageError(
            f"distillation teachers are wider versions of the report's network (model.name=asc); "
            f"got model.name={params.model.name}"
        )
    index, root, _ = load_index(ctx)
    tr = clips(index, "train", params)
    ev = clips(index, "evaluate", params, labelled=True)  # the ensemble's reported figures
    val = clips(index, validation_split(params), params, labelled=True)  # what its members validate on
    train_logits, eval_logits = [], []
    for k in range(params.distill.teacher.members):
        changes = member_changes(params, k)
        member = params.replace(**changes)
        name = f"teacher{k + 1}"
        logger.info(
            "teacher %d of %d: channels %s, seed %d, %d epochs",
            k + 1,
            params.distill.teacher.members,
            list(member.model.channels),
            member.seed,
            member.train.epochs,
        )
        model, _ = task.fit(
            member,
            ctx.out / name,
            tr,
            val,
            root,
            PrefixedRecorder(ctx.record, f"{name}_"),
            resuming=ctx.resuming,
            log_model=False,
            resume_from=task.resume_folder(params, ctx.workdir, "teacher", name),
            settings=member_settings(ctx.settings, member, changes),
        )
        train_logits.append(logits_of(model, tr, root, member))
        eval_logits.append(logits_of(model, ev, root, member))
        member_m = dm.compute_metrics(
            ev.label.to_numpy(), tf.nn.softmax(eval_logits[-1]).numpy().astype(np.float64), ev.device.to_numpy()
        )
        ctx.record.metrics({f"{name}_macro_accuracy": member_m["overall"]["macro_accuracy"]})

    logits = np.mean(train_logits, axis=0)  # [N, K]: the ensemble
    headline = _store(ctx, tr, ev, logits, np.stack(train_logits), np.mean(eval_logits, axis=0))
    logger.info(
        "teacher ensemble (%d): evaluate-split macro accuracy %.3f, log loss %.3f",
        params.distill.teacher.members,
        headline["teacher_macro_accuracy"],
        headline["teacher_log_loss"],
    )
    return {"logits": ctx.out / "logits.npz", **headline}
