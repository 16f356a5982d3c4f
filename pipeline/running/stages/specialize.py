"""``specialize``: DCASE2025 device-specific models, one fine-tuned copy of the general model per device.

DCASE2025 Task 1 gives the device ID at inference, and its rules count the limits per model. For each
training device of ``specialize.devices`` a copy of the trained general model (``train/model.keras``)
is fine-tuned on that device's training clips (``specialize.epochs`` at ``specialize.learning_rate``,
``specialize.layers`` trainable; without distillation, and without the device augmentations unless
``specialize.device_augmentations``: they imitate *other* devices). A device without a model of its
own (the unseen S4-S6, any unknown ID) keeps the general model. The evaluate stage puts each device's
figures from both side by side; compress makes one int8 model per device.

Each device's model is the last epoch's (``<device>/model.keras``): its validation curve, on that
device's evaluate-split clips, is shown, never used to choose a model.
"""

from __future__ import annotations

import logging

from pipeline.core import files, seeds
from pipeline.core.config import Params
from pipeline.core.labels import SEEN_DEVICES
from pipeline.running import task
from pipeline.running.stages.base import (
    DEVICE_AUGMENTATIONS,
    Context,
    PrefixedRecorder,
    StageError,
    clips,
    derived_settings,
    load_index,
)

logger = logging.getLogger(__name__)

DEVICES = tuple(d.lower() for d in SEEN_DEVICES)  # fixed order: a device's seed does not depend on the list


def device_changes(params: Params, device: str) -> dict[str, str]:
    """What fine-tuning for ``device`` changes in the run's settings (dotted key -> value text)."""
    s = params.specialize
    changes = {
        "seed": str(seeds.stream_seed(params.seed, "specialize", 1 + DEVICES.index(device))),
        "train.epochs": str(s.epochs),
        "train.learning_rate": str(s.learning_rate),
        "train.min_learning_rate": str(min(params.train.min_learning_rate, s.learning_rate)),
        "distill.enabled": "false",
        # the stage runs on the chief alone (not distributed): its fine-tuning is a one-process job
        "train.strategy": "default",
    }
    if not s.device_augmentations:
        changes.update({f"{section}.enabled": "false" for section in DEVICE_AUGMENTATIONS})
    return changes


def specialize_unused(params: Params) -> tuple[str, ...]:
    """Settings the stage's record names that a run with ``params`` does not use (left out of its key)."""
    return ("distill.enabled", "distill.temperature", "distill.weight") + (
        () if params.specialize.device_augmentations else DEVICE_AUGMENTATIONS
    )


def specialize(ctx: Context) -> dict:
    """Fine-tune one copy of the general model per device; write ``models.json`` and ``metrics.json``."""
    params = ctx.params
    s = params.specialize
    index, root, _ = load_index(ctx)
    train_all = clips(index, "train", params)
    eval_all = clips(index, "evaluate", params, labelled=True)
    general = ctx.input("train", "model")
    present = sorted(d.lower() for d in set(train_all.device))
    missing = [d for d in s.devices if d.upper() not in set(train_all.device)]
    if missing:
        raise StageError(
            f"specialize.devices: {', '.join(missing)} have no clip in the training split "
            f"(it has {', '.join(present) or 'no clip'})"
        )
    models, metrics = {}, {"devices": {}, "layers": s.layers, "epochs": s.epochs}
    for k, device in enumerate(s.devices, 1):
        tr = train_all[train_all.device == device.upper()].reset_index(drop=True)
        ev = eval_all[eval_all.device == device.upper()].reset_index(drop=True)
        val = ev if len(ev) else tr  # curves only: the model is the last epoch's
        changes = device_changes(params, device)
        member = params.replace(**changes)
        logger.info(
            "specialize %d of %d: device %s, %d training clips, %d epochs, lr %g, layers %s",
            k,
            len(s.devices),
            device,
            len(tr),
            s.epochs,
            s.learning_rate,
            s.layers,
        )
        _, history = task.fit(
            member,
            ctx.out / device,
            tr,
            val,
            root,
            PrefixedRecorder(ctx.record, f"{device}_"),
            resuming=ctx.resuming,
            log_model=False,
            settings=derived_settings(ctx.settings, member, changes),
            init_from=general,
            layers=s.layers,
        )
        models[device] = f"{device}/{task.MODEL_FILE}"
        accuracy = history.get("val_accuracy") or [float("nan")]
        metrics["devices"][device] = {
            "train_clips": len(tr),
            "validation_clips": len(val),
            "validated_on": "evaluate" if len(ev) else "train",
            "final_val_accuracy": float(accuracy[-1]),
        }
    files.write_json(ctx.out / "models.json", {"general": "../train/model.keras", "devices": models})
    files.write_json(ctx.out / "metrics.json", metrics)
    ctx.record.artifact(ctx.out / "models.json")
    ctx.record.artifact(ctx.out / "metrics.json")
    return {"models": ctx.out / "models.json", "metrics": ctx.out / "metrics.json"}


def summary_lines(folder, params: Params) -> list[str]:
    """The closing summary's lines: where the device models are."""
    return [f"  device models: {folder} ({', '.join(params.specialize.devices)})"]
