"""``train``: fit the network on fold1_train, validating each epoch on fold1_evaluate; resumable.

With ``distill.enabled`` the network is a student trained on the teacher stage's stored logits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tf_keras

import augment  # noqa: F401 - registers the augmentation layers for loading models
from evaluate import complexity, plots
from models import asc, distill
from pipeline import inputs, training
from pipeline.core import files
from pipeline.core.config import Params
from pipeline.stages.base import Context, Recorder, StageError, clips, load_index

logger = logging.getLogger(__name__)


def fit_network(params: Params, out: Path, tr: pd.DataFrame, ev: pd.DataFrame, root: Path, record: Recorder, *,
                resuming: bool, targets: np.ndarray | None = None, log_model: bool = True,
                resume_from: Path | None = None):
    """Build, train and save one network as ``params`` says; resumes from ``out/checkpoints``.

    Used by the ``train`` stage (the student) and the ``teacher`` stage (each ensemble member).

    Args:
      params: the parameter tree of this network (a teacher's has its own channels and seed).
      out: its folder: ``model.keras``, ``best.keras``, ``history.json``, ``curves.png``, checkpoints.
      tr, ev: training and validation clips (rows of the prepare index); ``root`` their folder.
      record: where metrics and artifacts go.
      resuming: restore the last checkpoint in ``out`` (the runner says whether it may).
      targets: ``[len(tr), 1 + K]`` distillation targets (label, teacher logits), or None.
      log_model: also log the model in MLflow's tensorflow flavour.
      resume_from: the folder whose checkpoints and history a resumed run reads (default ``out``;
        a non-chief worker of a multi-worker run writes into its scratch ``out`` and resumes
        from the chief's folder).

    Returns:
      ``(model, history)``; with ``train.strategy=multi_worker`` the model is the saved
      ``model.keras`` loaded outside the strategy (usable on this worker alone).
    """
    out.mkdir(parents=True, exist_ok=True)
    resume_from = Path(resume_from) if resume_from is not None else out
    training.seed_everything(params.seed, params.train.deterministic)
    strategy = training.strategy_for(params.train)
    multi_worker = params.train.strategy == "multi_worker"
    steps = int(np.ceil(len(tr) / params.train.batch_size))
    with strategy.scope():
        model = asc.build_model(params)
        optimizer = training.make_optimizer(params.train, steps)
        if targets is None:
            training.compile_model(model, optimizer)
        else:
            d = params.distill
            training.compile_model(model, optimizer, loss=distill.DistillationLoss(d.temperature, d.weight),
                                   metrics=[distill.LabelAccuracy(name="accuracy")])
    if not multi_worker:  # multi-worker: counted on the saved model (converting live variables needs collectives)
        _log_complexity(params, model, record)

    with strategy.scope():
        manager = training.CheckpointManager(out / "checkpoints", model, optimizer,
                                             restore_from=resume_from / "checkpoints")
        # Build the optimizer's slots before restoring, so every saved object has its match.
        optimizer.build(model.trainable_variables)
    start = manager.restore() if resuming else 0
    history, best_epoch = training.load_history(resume_from / "history.json") if start else ({}, None)
    history = training.trim_history(history, start)
    best_val = min(history["val_loss"]) if start and history.get("val_loss") else None
    if start == 0 or best_epoch is None or best_epoch > start:
        # best.keras came from an epoch the restored checkpoint does not include: drop it; only
        # epochs of this run that beat the kept history's best can write it again.
        (out / "best.keras").unlink(missing_ok=True)
    if start:
        logger.info("resuming %s at epoch %d of %d", out.name, start + 1, params.train.epochs)
        record.tags({"resumed_at_epoch": str(start)})
    else:
        files.write_text(out / "params.yaml", params.to_yaml())
        record.artifact(out / "params.yaml")
    if multi_worker:
        train_ds = _distributed_train_dataset(strategy, params, tr, root, start, targets)
    else:
        train_ds, steps = inputs.train_dataset(tr, root, params.audio, params.data,
                                               batch_size=params.train.batch_size, seed=params.seed,
                                               start_epoch=start, epochs=params.train.epochs, targets=targets)
    val_ds = inputs.eval_dataset(ev, root, params.audio, params.data, batch_size=params.evaluate.batch_size)
    callback = training.EpochEnd(manager, out / "best.keras", out / "history.json", history,
                                 params.train.epochs, best_val, log_metrics=record.metrics)
    callback.best_epoch = best_epoch if (out / "best.keras").is_file() else None
    if start < params.train.epochs:
        training.fit(params, model, train_ds, val_ds, steps, start, [callback])

    with files.atomic_path(out / "model.keras") as tmp:
        model.save(tmp)
    digest = training.weights_digest(model)  # every worker: reading batch-norm statistics is a collective
    logger.info("%s: weights digest %s", out.name, digest)
    record.tags({"weights_digest": digest})
    if multi_worker:  # from here on a plain copy, outside the strategy: logging it needs no peers
        model = tf_keras.models.load_model(out / "model.keras")
        _log_complexity(params, model, record)
    curves = plots.plot_training_curves(callback.history, out / "curves.png")
    record.artifact(out / "model.keras", "checkpoints/final")
    if (out / "best.keras").is_file():
        record.artifact(out / "best.keras", "checkpoints/best")
    record.artifact(curves)
    record.artifact(out / "history.json")
    if log_model:
        record.model(model, np.zeros((1, params.audio.clip_samples), np.float32))
    final = {k: v[-1] for k, v in callback.history.items() if v}
    logger.info("%s: done; final val_accuracy %.3f val_loss %.4f", out.name, final.get("val_accuracy", float("nan")),
                final.get("val_loss", float("nan")))
    return model, callback.history


def _shared(ctx: Context, *parts: str) -> Path | None:
    """Where a multi-worker run's checkpoints are read from: the chief's folder under the shared workdir
    (a non-chief worker's ``ctx.out`` is its private scratch folder); None (= ``ctx.out``) otherwise."""
    if ctx.params.train.strategy != "multi_worker":
        return None
    return ctx.workdir.joinpath(*parts)


def _log_complexity(params: Params, model, record: Recorder) -> None:
    cost = complexity.keras_complexity(asc.get_classifier(model))
    record.metrics({"model_params": cost["params"], "model_trainable_params": cost["trainable_params"],
                    "model_macs": cost["macs"], "model_int8_bytes_estimate": cost["size_bytes"]})
    logger.info("model %s %s: %d parameters, %.2f M MACs per clip", params.model.name, list(params.model.channels),
                cost["params"], cost["macs"] / 1e6)


def _distributed_train_dataset(strategy, params: Params, tr: pd.DataFrame, root: Path, start: int,
                               targets: np.ndarray | None):
    """Each worker's share of every global batch (:func:`pipeline.inputs.train_dataset` with ``shard``).

    The input function runs once per worker (``input_pipeline_id`` of ``num_input_pipelines``);
    with R local replicas the worker's slice is cut into R per-replica slices, taken in turn.
    """
    import tensorflow as tf

    from pipeline import distributed

    batch = params.train.batch_size
    distributed.check_batch(batch, len(tr), strategy.num_replicas_in_sync)

    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = strategy.num_replicas_in_sync // context.num_input_pipelines
        parts = [inputs.train_dataset(tr, root, params.audio, params.data, batch_size=batch, seed=params.seed,
                                      start_epoch=start, epochs=params.train.epochs, targets=targets,
                                      shard=(context.input_pipeline_id * local + r,
                                             context.num_input_pipelines * local))[0]
                 for r in range(local)]
        if local == 1:
            return parts[0]
        ds = tf.data.Dataset.choose_from_datasets(parts, tf.data.Dataset.range(local).repeat())
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options)

    return strategy.distribute_datasets_from_function(per_worker)


def distillation_targets(ctx: Context, tr: pd.DataFrame) -> np.ndarray:
    """``[len(tr), 1 + K]`` targets: each clip's label and the teacher ensemble's stored logits."""
    stored = np.load(ctx.inputs["teacher"] / "logits.npz", allow_pickle=False)
    row = {name: i for i, name in enumerate(stored["filenames"].tolist())}
    missing = [f for f in tr.filename if f not in row]
    if missing:
        raise StageError(f"{ctx.inputs['teacher'] / 'logits.npz'} has no teacher logits for {len(missing)} training "
                         f"clip(s), e.g. {missing[0]}: run --stage teacher with this run's settings")
    logits = stored["logits"][[row[f] for f in tr.filename]]
    return distill.pack_targets(tr.label.to_numpy(), logits)


def train(ctx: Context) -> dict:
    """Train the network (the student, when distillation is on); resumes an interrupted run.

    Returns:
      ``{"model": path, "best": path, "history": dict}``.
    """
    params = ctx.params
    index, root, _ = load_index(ctx)
    tr = clips(index, "train", params)
    ev = clips(index, "evaluate", params)
    if len(ev) == 0:
        raise StageError("the evaluate split is empty: nothing to validate on")
    widths = asc.specaugment_widths(params)
    ctx.record.tags({f"specaugment.width.{pos}": f"time {t}, freq {f}" for pos, (t, f) in widths.items()})
    targets = distillation_targets(ctx, tr) if params.distill.enabled else None
    if targets is not None:
        logger.info("train: distilling from %d teacher(s) at T=%.1f, weight %.2f", params.distill.teacher.members,
                    params.distill.temperature, params.distill.weight)
    _, history = fit_network(params, ctx.out, tr, ev, root, ctx.record, resuming=ctx.resuming, targets=targets,
                             resume_from=_shared(ctx, "train"))
    return {"model": ctx.out / "model.keras", "best": ctx.out / "best.keras", "history": history}


def load_model(ctx: Context) -> tf_keras.Model:
    """The trained full model (waveform in, logits out) from the train stage's folder."""
    return tf_keras.models.load_model(ctx.inputs["train"] / "model.keras")
