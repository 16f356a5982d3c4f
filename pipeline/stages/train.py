"""``train``: fit the network on fold1_train, validating each epoch on fold1_evaluate; resumable."""

from __future__ import annotations

import logging

import numpy as np
import tf_keras

import augment  # noqa: F401 - registers the augmentation layers for loading models
from evaluate import complexity, plots
from models import asc
from pipeline import inputs, training
from pipeline.core import files
from pipeline.stages.base import Context, StageError, clips, load_index

logger = logging.getLogger(__name__)


def train(ctx: Context) -> dict:
    """Train; an interrupted run with the same settings resumes from its last checkpoint.

    Returns:
      ``{"model": path, "best": path, "history": dict}``.
    """
    params, out = ctx.params, ctx.out
    index, root, _ = load_index(ctx)
    training.seed_everything(params.seed, params.train.deterministic)
    tr = clips(index, "train", params)
    ev = clips(index, "evaluate", params)
    if len(ev) == 0:
        raise StageError("the evaluate split is empty: nothing to validate on")

    strategy = training.strategy_for(params.train)
    steps = int(np.ceil(len(tr) / params.train.batch_size))
    with strategy.scope():
        model = asc.build_model(params)
        optimizer = training.make_optimizer(params.train, steps)
        training.compile_model(model, optimizer)
    cost = complexity.keras_complexity(asc.get_classifier(model))
    ctx.record.metrics({"model_params": cost["params"], "model_trainable_params": cost["trainable_params"],
                        "model_macs": cost["macs"], "model_int8_bytes_estimate": cost["size_bytes"]})
    logger.info("model %s: %d parameters, %.2f M MACs per clip", params.model.name, cost["params"],
                cost["macs"] / 1e6)

    with strategy.scope():
        manager = training.CheckpointManager(out / "checkpoints", model, optimizer)
        # Build the optimizer's slots before restoring, so every saved object has its match.
        optimizer.build(model.trainable_variables)
    start = manager.restore() if ctx.resuming else 0
    history, best_epoch = training.load_history(out / "history.json") if start else ({}, None)
    history = training.trim_history(history, start)
    best_val = min(history["val_loss"]) if start and history.get("val_loss") else None
    if start == 0 or best_epoch is None or best_epoch > start:
        # best.keras came from an epoch the restored checkpoint does not include: drop it; only
        # epochs of this run that beat the kept history's best can write it again.
        (out / "best.keras").unlink(missing_ok=True)
    if start:
        logger.info("train: resuming at epoch %d of %d", start + 1, params.train.epochs)
        ctx.record.tags({"resumed_at_epoch": str(start)})
    else:
        files.write_text(out / "params.yaml", params.to_yaml())
        ctx.record.artifact(out / "params.yaml")
    train_ds, steps = inputs.train_dataset(tr, root, params.audio, params.data, batch_size=params.train.batch_size,
                                           seed=params.seed, start_epoch=start, epochs=params.train.epochs)
    val_ds = inputs.eval_dataset(ev, root, params.audio, params.data, batch_size=params.evaluate.batch_size)
    callback = training.EpochEnd(manager, out / "best.keras", out / "history.json", history,
                                 params.train.epochs, best_val, log_metrics=ctx.record.metrics)
    callback.best_epoch = best_epoch if (out / "best.keras").is_file() else None
    if start < params.train.epochs:
        training.fit(params, model, train_ds, val_ds, steps, start, [callback])

    with files.atomic_path(out / "model.keras") as tmp:
        model.save(tmp)
    curves = plots.plot_training_curves(callback.history, out / "curves.png")
    ctx.record.artifact(out / "model.keras", "checkpoints/final")
    if (out / "best.keras").is_file():
        ctx.record.artifact(out / "best.keras", "checkpoints/best")
    ctx.record.artifact(curves)
    ctx.record.artifact(out / "history.json")
    ctx.record.model(model, np.zeros((1, params.audio.clip_samples), np.float32))
    final = {k: v[-1] for k, v in callback.history.items() if v}
    logger.info("train: done; final val_accuracy %.3f val_loss %.4f", final.get("val_accuracy", float("nan")),
                final.get("val_loss", float("nan")))
    return {"model": out / "model.keras", "best": out / "best.keras", "history": callback.history}


def load_model(ctx: Context) -> tf_keras.Model:
    """The trained full model (waveform in, logits out) from the train stage's folder."""
    return tf_keras.models.load_model(ctx.inputs["train"] / "model.keras")
