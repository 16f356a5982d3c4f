"""The training task: build a network, fit it (resumable checkpoints), load a trained one.

Model Garden's ``Task`` is the model: one place knows how a network is built
(:func:`build_model`), trained (:func:`fit`) and read back (:func:`load`). The stages that train
(``train``, ``teacher``) and the stages that use a trained network (``evaluate``, ``compress``)
call this module; no stage imports another stage. It knows nothing of the runner: a stage passes
its folders, its recorder (a :class:`pipeline.running.stages.base.Recorder`) and whether it resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tf_keras
import yaml

import augment  # noqa: F401 - registers the augmentation layers for loading models
from evaluate import complexity, plots
from models import asc, distill
from pipeline.core import dotted, files
from pipeline.core.config import Params
from pipeline.data import inputs
from pipeline.running import training
from pipeline.scaling import distributed

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"  # the trained full model (waveform in, logits out) in a training folder


def build_model(params: Params) -> tf_keras.Model:
    """The network ``params`` describes (untrained): :func:`models.asc.build_model`.

    Args:
      params: the parameter tree (``model``, ``audio``, ``augment`` sections).

    Returns:
      The full Keras model, waveform in and logits out.
    """
    return asc.build_model(params)


def _params_yaml(params: Params, settings: dict | None) -> str:
    """``params.yaml`` next to the model: a config file holding ``settings`` (dotted path -> value), nested
    as the config sections are (``config.load`` reads it; unset keys take their defaults), or the whole tree."""
    if settings is None:
        return params.to_yaml()
    tree: dict = {}
    for path, value in settings.items():
        dotted.put(tree, path, value)
    return yaml.safe_dump(tree, sort_keys=False)


def fit(
    params: Params,
    out: Path,
    tr: pd.DataFrame,
    ev: pd.DataFrame,
    root: Path,
    record,
    *,
    resuming: bool,
    targets: np.ndarray | None = None,
    log_model: bool = True,
    resume_from: Path | None = None,
    settings: dict | None = None,
    init_from: Path | None = None,
    layers: str = "all",
):
    """Build, train and save one network as ``params`` says; resumes from ``out/checkpoints``.

    Used by the ``train`` stage (the student) and the ``teacher`` stage (each ensemble member).

    Args:
      params: the parameter tree of this network (a teacher's has its own channels and seed).
      out: its folder: ``model.keras``, ``best.keras``, ``history.json``, ``curves.png``, checkpoints.
      tr, ev: training and validation clips (rows of the prepare index); ``root`` their folder.
      record: where metrics and artifacts go (a :class:`pipeline.running.stages.base.Recorder`).
      resuming: restore the last checkpoint in ``out`` (the runner says whether it may).
      targets: ``[len(tr), 1 + K]`` distillation targets (label, teacher logits), or None.
      log_model: also log the model in MLflow's tensorflow flavour.
      resume_from: the folder whose checkpoints and history a resumed run reads (default ``out``;
        a non-chief worker of a multi-worker run writes into its scratch ``out`` and resumes
        from the chief's folder: :func:`resume_folder`).
      settings: the settings the stage's outputs depend on (``ctx.settings``: dotted path ->
        value), written to ``params.yaml`` as a config file; None writes the whole tree.
      init_from: a trained model (``model.keras``) whose classifier weights this one starts from
        (fine-tuning: the ``specialize`` stage); None starts from a fresh initialisation.
      layers: what trains: ``all``, ``batchnorm`` (the batch norms only) or ``head`` (the layers
        after the last feature block: :func:`freeze`).

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
        model = build_model(params)
        if init_from is not None:
            asc.get_classifier(model).set_weights(asc.get_classifier(load(init_from)).get_weights())
        if layers != "all":
            freeze(asc.get_classifier(model), layers)
        optimizer = training.make_optimizer(params.train, steps)
        if targets is None:
            training.compile_model(model, optimizer)
        else:
            d = params.distill
            training.compile_model(
                model,
                optimizer,
                loss=distill.DistillationLoss(d.temperature, d.weight),
                metrics=[distill.LabelAccuracy(name="accuracy")],
            )
    if not multi_worker:  # multi-worker: counted on the saved model (converting live variables needs collectives)
        _log_complexity(params, model, record)

    with strategy.scope():
        manager = training.CheckpointManager(
            out / "checkpoints", model, optimizer, restore_from=resume_from / "checkpoints"
        )
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
        files.write_text(out / "params.yaml", _params_yaml(params, settings))
        record.artifact(out / "params.yaml")
    if multi_worker:
        train_ds = _distributed_train_dataset(strategy, params, tr, root, start, targets)
    else:
        train_ds, steps = inputs.train_dataset(
            tr,
            root,
            params.audio,
            params.data,
            batch_size=params.train.batch_size,
            seed=params.seed,
            start_epoch=start,
            epochs=params.train.epochs,
            targets=targets,
        )
    val_ds = inputs.eval_dataset(ev, root, params.audio, params.data, batch_size=params.train.batch_size)
    callback = training.EpochEnd(
        manager,
        out / "best.keras",
        out / "history.json",
        history,
        params.train.epochs,
        best_val,
        log_metrics=record.metrics,
    )
    callback.best_epoch = best_epoch if (out / "best.keras").is_file() else None
    if start < params.train.epochs:
        training.fit(params, model, train_ds, val_ds, steps, start, [callback])

    if layers != "all":  # a frozen layer is a training detail: the saved model is a plain one
        for layer in asc.get_classifier(model).layers:
            layer.trainable = True
    with files.atomic_path(out / MODEL_FILE) as tmp:
        model.save(tmp)
    digest = training.weights_digest(model)  # every worker: reading batch-norm statistics is a collective
    logger.info("%s: weights digest %s", out.name, digest)
    record.tags({"weights_digest": digest})
    if multi_worker:  # from here on a plain copy, outside the strategy: logging it needs no peers
        model = tf_keras.models.load_model(out / MODEL_FILE)
        _log_complexity(params, model, record)
    curves = plots.plot_training_curves(callback.history, out / "curves.png")
    record.artifact(out / MODEL_FILE, "checkpoints/final")
    if (out / "best.keras").is_file():
        record.artifact(out / "best.keras", "checkpoints/best")
    record.artifact(curves)
    record.artifact(out / "history.json")
    if log_model:
        record.model(model, np.zeros((1, params.audio.clip_samples), np.float32))
    final = {k: v[-1] for k, v in callback.history.items() if v}
    logger.info(
        "%s: done; final val_accuracy %.3f val_loss %.4f",
        out.name,
        final.get("val_accuracy", float("nan")),
        final.get("val_loss", float("nan")),
    )
    return model, callback.history


HEAD_LAYERS = ("logits", "dense1")  # with every layer named head_*: the networks' heads


def freeze(classifier: tf_keras.Model, layers: str) -> list[str]:
    """Leave only ``layers`` of ``classifier`` trainable: ``batchnorm`` (every BatchNormalization, those
    nested in a layer too, e.g. CoordAttention's) or ``head`` (layers named ``head_*``, ``logits``, the
    DCASE2022 baseline's ``dense1``). Returns the names of the classifier's layers that keep trainable
    weights.

    Raises:
      ValueError: an unknown choice, or a network with no such layer.
    """
    bn = tf_keras.layers.BatchNormalization

    def nested(layer):
        return [sub for sub in layer._flatten_layers(include_self=False) if sub.weights]

    kept = []
    for layer in classifier.layers:
        if not layer.weights:
            continue
        if layers == "batchnorm":
            inner = [sub for sub in nested(layer) if isinstance(sub, bn)]
            if isinstance(layer, bn) or inner:
                layer.trainable = True
                for sub in nested(layer):  # inside a container: only its batch norms train
                    sub.trainable = isinstance(sub, bn)
                kept.append(layer.name)
            else:
                layer.trainable = False
        elif layers == "head":
            layer.trainable = layer.name.startswith("head") or layer.name in HEAD_LAYERS
            kept += [layer.name] if layer.trainable else []
        else:
            raise ValueError(f"layers: expected 'batchnorm' or 'head', got {layers!r}")
    if not kept:
        raise ValueError(f"layers={layers!r}: the network {classifier.name!r} has no such layer with weights")
    return kept


def load(folder: Path) -> tf_keras.Model:
    """The trained full model (waveform in, logits out) saved by :func:`fit` in ``folder``.

    Args:
      folder: a training folder (the ``train`` stage's), or the path of its ``model.keras``.

    Returns:
      The Keras model.
    """
    folder = Path(folder)
    return tf_keras.models.load_model(folder if folder.suffix == ".keras" else folder / MODEL_FILE)


def resume_folder(params: Params, workdir: Path, *parts: str) -> Path | None:
    """Where a multi-worker run's checkpoints are read from: the chief's folder under the shared workdir.

    A non-chief worker's output folder is its private scratch folder, so it resumes from the
    chief's ``workdir/<parts>``.

    Args:
      params: the run's parameter tree (``train.strategy``).
      workdir: the shared working directory.
      parts: the folder under ``workdir`` (``"train"``, or ``"teacher", "teacher1"``).

    Returns:
      ``workdir/<parts>`` under ``train.strategy=multi_worker``; None (= the output folder) otherwise.
    """
    if params.train.strategy != "multi_worker":
        return None
    return Path(workdir).joinpath(*parts)


def _log_complexity(params: Params, model, record) -> None:
    cost = complexity.keras_complexity(asc.get_classifier(model))
    record.metrics(
        {
            "model_params": cost["params"],
            "model_trainable_params": cost["trainable_params"],
            "model_macs": cost["macs"],
            "model_int8_bytes_estimate": cost["size_bytes"],
        }
    )
    logger.info(
        "model %s %s: %d parameters, %.2f M MACs per clip",
        params.model.name,
        list(params.model.channels),
        cost["params"],
        cost["macs"] / 1e6,
    )


def _distributed_train_dataset(
    strategy, params: Params, tr: pd.DataFrame, root: Path, start: int, targets: np.ndarray | None
):
    """Each worker's share of every global batch (:func:`pipeline.data.inputs.train_dataset` with ``shard``).

    The input function runs once per worker (``input_pipeline_id`` of ``num_input_pipelines``);
    with R local replicas the worker's slice is cut into R per-replica slices, taken in turn.
    """
    import tensorflow as tf

    batch = params.train.batch_size
    distributed.check_batch(batch, len(tr), strategy.num_replicas_in_sync)

    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = strategy.num_replicas_in_sync // context.num_input_pipelines
        parts = [
            inputs.train_dataset(
                tr,
                root,
                params.audio,
                params.data,
                batch_size=batch,
                seed=params.seed,
                start_epoch=start,
                epochs=params.train.epochs,
                targets=targets,
                shard=(context.input_pipeline_id * local + r, context.num_input_pipelines * local),
            )[0]
            for r in range(local)
        ]
        if local == 1:
            return parts[0]
        ds = tf.data.Dataset.choose_from_datasets(parts, tf.data.Dataset.range(local).repeat())
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options)

    return strategy.distribute_datasets_from_function(per_worker)
