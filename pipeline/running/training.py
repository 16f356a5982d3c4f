"""Training machinery: seeding, optimizer and schedule, resumable checkpoints, per-epoch metrics.

Checkpoints hold the model's weights, the optimizer's state, the epoch and the state of every
random generator of the model (dropout, time shift, SpecAugment++), so a run killed at any
point and restarted with the same command resumes at the last complete epoch and ends with
the same weights as an uninterrupted run. Each checkpoint is written to ``epoch-NNNN.tmp/`` and
renamed to ``epoch-NNNN/`` when complete; ``latest.json`` (written atomically, last) names it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from pipeline.core import files
from pipeline.core.config import Params, TrainParams
from pipeline.scaling import distributed

logger = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TensorFlow; make Keras layers use checkpointable generators."""
    random.seed(seed)
    np.random.seed(seed)
    tf_keras.utils.set_random_seed(seed)
    tf_keras.backend.experimental.enable_tf_random_generator()
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def strategy_for(train: TrainParams) -> tf.distribute.Strategy:
    """``default``: the current (single-device) strategy; ``mirrored``: all local GPUs (or the CPU);
    ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the workers of TF_CONFIG
    (:mod:`pipeline.scaling.distributed`).

    ``train.batch_size`` is the global batch: the strategy splits it over the replicas, so
    each of R replicas sees ``batch_size / R`` clips per step and the learning rate stays as set.
    """
    if train.strategy == "multi_worker":
        return distributed.strategy(train)
    if train.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        logger.info(
            "MirroredStrategy over %d replica(s); global batch %d", strategy.num_replicas_in_sync, train.batch_size
        )
        return strategy
    return tf.distribute.get_strategy()


def make_optimizer(
    train: TrainParams, steps_per_epoch: int, learning_rate: float | None = None, epochs: int | None = None
):
    """AdamW (or Adam/SGD) with cosine annealing from ``learning_rate`` to ``min_learning_rate``."""
    lr = learning_rate if learning_rate is not None else train.learning_rate
    total = max(1, steps_per_epoch * (epochs if epochs is not None else train.epochs))
    if train.schedule == "cosine":
        schedule = tf_keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr, decay_steps=total, alpha=min(1.0, train.min_learning_rate / lr)
        )
    else:
        schedule = lr
    if train.optimizer == "adamw":
        return tf_keras.optimizers.AdamW(learning_rate=schedule, weight_decay=train.weight_decay)
    if train.optimizer == "adam":
        return tf_keras.optimizers.Adam(learning_rate=schedule)
    return tf_keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, weight_decay=train.weight_decay or None)


def current_learning_rate(optimizer) -> float:
    lr = optimizer.learning_rate
    if isinstance(lr, tf_keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(optimizer.iterations)
    return float(tf.convert_to_tensor(lr).numpy())


def random_generators(model: tf_keras.Model) -> dict[str, tf.random.Generator]:
    """Every ``tf.random.Generator`` of the model's layers, keyed by layer path (for checkpoints)."""
    gens: dict[str, tf.random.Generator] = {}

    def walk(layer, prefix):
        rng = getattr(layer, "_random_generator", None)
        if rng is not None:
            rng._maybe_init()
            gen = getattr(rng, "_generator", None)
            if gen is not None:
                gens[prefix + layer.name] = gen
        for sub in getattr(layer, "layers", []) or []:
            walk(sub, prefix + layer.name + "/")

    for layer in model.layers:
        walk(layer, "")
    return gens


class CheckpointManager:
    """Atomic per-epoch checkpoints of model, optimizer, epoch and random generator states."""

    def __init__(
        self, directory: Path, model: tf_keras.Model, optimizer, keep: int = 2, restore_from: Path | None = None
    ):
        """``restore_from``: the folder whose checkpoints :meth:`restore` reads (default ``directory``;
        a non-chief worker saves into its scratch folder and restores the chief's checkpoints)."""
        self.directory = Path(directory)
        self.restore_from = Path(restore_from) if restore_from is not None else self.directory
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        rngs = random_generators(model)
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch, rngs=dict(rngs))
        self.keep = keep
        self.n_generators = len(rngs)

    def latest(self) -> Path | None:
        marker = self.restore_from / "latest.json"
        if not marker.is_file():
            return None
        name = json.loads(marker.read_text())["checkpoint"]
        path = self.restore_from / name
        return path if path.is_dir() else None

    def restore(self) -> int:
        """Restore the latest complete checkpoint; returns the number of epochs already done."""
        path = self.latest()
        if path is None:
            return 0
        self.checkpoint.read(str(path / "ckpt")).assert_existing_objects_matched()
        logger.info("resumed from %s (epoch %d done)", path, int(self.epoch.numpy()))
        return int(self.epoch.numpy())

    def save(self, epochs_done: int) -> Path:
        self.epoch.assign(epochs_done)
        name = f"epoch-{epochs_done:04d}"
        tmp = self.directory / f"{name}.tmp"
        final = self.directory / name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.checkpoint.write(str(tmp / "ckpt"))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        files.write_json(self.directory / "latest.json", {"checkpoint": name, "epoch": epochs_done})
        for old in sorted(self.directory.glob("epoch-*")):
            if old.name != name and (
                old.name.endswith(".tmp") or int(old.name.split("-")[1].split(".")[0]) <= epochs_done - self.keep
            ):
                shutil.rmtree(old, ignore_errors=True)
        return final


class EpochEnd(tf_keras.callbacks.Callback):
    """After each epoch: metrics (through ``log_metrics``), one log line, the best model, the history, the checkpoint.

    ``log_metrics(metrics: dict, step: int)`` receives the epoch's Keras logs plus
    ``learning_rate``, ``epoch_seconds`` (training steps + validation), ``train_seconds`` and
    ``validation_seconds``; the stage passes its recorder's ``metrics``. (The benchmarks time this
    callback's own work from outside: ``benchmarks/_train_timing.py``.)
    """

    def __init__(
        self,
        manager: CheckpointManager,
        best_path: Path,
        history_path: Path,
        history: dict[str, list[float]],
        total_epochs: int,
        best_val: float | None,
        log_metrics=None,
    ):
        super().__init__()
        self.log_metrics = log_metrics  # log_metrics(metrics: dict, step: int), e.g. the stage's recorder
        self.manager = manager
        self.best_path = best_path
        self.history_path = history_path
        self.history = history
        self.total_epochs = total_epochs
        self.best_val = best_val
        self.best_epoch: int | None = None
        self._start = self._test_start = self._test_end = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._test_start = self._test_end = 0.0

    def on_test_begin(self, logs=None):
        self._test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self._test_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        logs = dict(logs or {})
        logs["learning_rate"] = current_learning_rate(self.model.optimizer)
        logs["epoch_seconds"] = now - self._start  # training steps + validation
        # the training steps end where validation begins (Keras validates right after the last step)
        logs["train_seconds"] = (self._test_start or now) - self._start
        logs["validation_seconds"] = self._test_end - self._test_start if self._test_start else 0.0
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        if self.log_metrics is not None:
            self.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch + 1)
        logger.info(
            "epoch %d/%d: loss %.4f accuracy %.3f val_loss %.4f val_accuracy %.3f lr %.2e "
            "(%.1f s: steps %.1f s, validation %.1f s)",
            epoch + 1,
            self.total_epochs,
            logs.get("loss", float("nan")),
            logs.get("accuracy", float("nan")),
            logs.get("val_loss", float("nan")),
            logs.get("val_accuracy", float("nan")),
            logs["learning_rate"],
            logs["epoch_seconds"],
            logs["train_seconds"],
            logs["validation_seconds"],
        )
        val = logs.get("val_loss")
        if val is not None and (self.best_val is None or val < self.best_val):
            self.best_val = float(val)
            self.best_epoch = epoch + 1
            with files.atomic_path(self.best_path) as tmp:
                self.model.save(tmp)
        files.write_json(
            self.history_path, {"history": self.history, "best_val_loss": self.best_val, "best_epoch": self.best_epoch}
        )
        self.manager.save(epoch + 1)  # last: a checkpoint implies the history and best model above


def weights_digest(model: tf_keras.Model) -> str:
    """SHA-256 (first 16 hex digits) of all the model's weights, in order: equal digests, equal weights.

    Under a multi-worker strategy every worker must call it (reading batch-norm statistics is a collective).
    """
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def load_history(path: Path) -> tuple[dict[str, list[float]], int | None]:
    """The per-epoch history and the epoch of ``best.keras`` (None when unknown)."""
    if not path.is_file():
        return {}, None
    data = json.loads(path.read_text())
    return data["history"], data.get("best_epoch")


def trim_history(history: dict[str, list[float]], epochs_done: int) -> dict[str, list[float]]:
    """History rows beyond the restored checkpoint (an epoch that ended after the last checkpoint)."""
    return {k: v[:epochs_done] for k, v in history.items()}


def compile_model(model: tf_keras.Model, optimizer, loss=None, metrics=None) -> None:
    """Compile for training: cross-entropy on logits and accuracy, unless ``loss``/``metrics`` are given."""
    model.compile(
        optimizer=optimizer,
        loss=loss or tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics or [tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def fit(params: Params, model, train_ds, val_ds, steps: int, start_epoch: int, callbacks) -> None:
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=params.train.epochs,
        initial_epoch=start_epoch,
        steps_per_epoch=steps,
        callbacks=callbacks,
        verbose=1 if params.train.progress_bar else 2,
    )
