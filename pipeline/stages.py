"""Pipeline stages: each a plain function of (params, workdir) -> outputs under the workdir.

=========  ==========================================  ======================================
stage      reads                                       writes (under ``workdir``)
=========  ==========================================  ======================================
prepare    the dataset (``data.source``)               prepare/index.csv, summary.json/.csv
train      prepare/                                    train/model.keras, best.keras,
                                                       history.json, curves.png, checkpoints/
evaluate   prepare/, train/model.keras                 evaluate/metrics.json, per_device.csv,
                                                       per_class.csv, predictions*.csv, plots
compress   prepare/, train/model.keras                 compress/model_int8.tflite, frontend.tflite,
                                                       metrics.json
report     prepare/, evaluate/, compress/ (optional)   report/report.md, report.html, plots
=========  ==========================================  ======================================

Every stage runs inside its own nested MLflow run (:func:`run_stages` opens the parent),
writes files atomically and finishes by writing its ``_SUCCESS.json`` marker; a stage
refuses inputs whose marker is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline import data as tau
from pipeline.core import files
from pipeline import tracking
from pipeline.core.config import Params

logger = logging.getLogger(__name__)

STAGES = ("prepare", "train", "evaluate", "compress", "report")


class StageError(RuntimeError):
    """A stage cannot run (missing inputs from an earlier stage, ...)."""


def _digest(obj) -> str:
    """SHA-256 (16 hex) of a JSON-able object: the key of settings and inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DataSource:
    root: Path
    name: str  # "synthetic" or the dataset directory's name


def resolve_data(params: Params, workdir: Path) -> DataSource:
    """The dataset directory: the built-in synthetic set (generated once) or a TAU22 path."""
    if params.data.source == "synthetic":
        from pipeline import synthetic

        syn = params.data.synthetic
        facts = {"n_clips": syn.n_clips, "n_cities": syn.n_cities, "seed": params.seed,
                 "sample_rate_hz": params.audio.sample_rate_hz, "clip_seconds": params.audio.clip_seconds}
        key = _digest(facts)[:10]
        root = workdir / "data" / f"synthetic-{syn.n_clips}-{key}"
        synthetic.generate(root, n_clips=syn.n_clips, seed=params.seed, sample_rate_hz=params.audio.sample_rate_hz,
                           clip_seconds=params.audio.clip_seconds, n_cities=syn.n_cities, workers=syn.workers,
                           progress=True)
        return DataSource(root, "synthetic")
    root = Path(params.data.source).expanduser()
    return DataSource(root, root.resolve().name)


def data_name(params: Params) -> str:
    """``synthetic`` for the built-in set (also when given by path), else the dataset folder's name."""
    if params.data.source == "synthetic":
        return "synthetic"
    root = Path(params.data.source).expanduser().resolve()
    from pipeline import synthetic

    return "synthetic" if (root / synthetic.MARKER).is_file() else root.name


# --------------------------------------------------------------------------- prepare


def prepare(params: Params, workdir: Path) -> dict:
    """Read and validate the dataset; write ``prepare/index.csv`` and the summary.

    Returns:
      ``{"index": path, "summary": path, "fingerprint": str, "root": path}``.
    """
    import mlflow

    out = workdir / "prepare"
    files.clear_marker(out)
    source = resolve_data(params, workdir)
    logger.info("reading dataset %s", source.root)
    index = tau.read_index(source.root)
    fallbacks = tau.fallback_counts(index, params.audio.sample_rate_hz, params.audio.clip_samples)
    for name, count in fallbacks.items():
        if count:
            logger.warning("%d clip(s) will be %s to %d Hz mono, %d samples", count, name,
                           params.audio.sample_rate_hz, params.audio.clip_samples)
    fp = tau.fingerprint(index)
    summary = tau.summarise(index)
    table: pd.DataFrame = summary.pop("table")
    summary.update({"root": str(source.root.resolve()), "fingerprint": fp, "fallbacks": fallbacks})

    with files.atomic_path(out / "index.csv") as tmp:
        index.to_csv(tmp, index=False)
    pivot = table.pivot_table(index=["split", "scene_label"], columns="device", values="clips",
                              fill_value=0, aggfunc="sum")
    with files.atomic_path(out / "summary.csv") as tmp:
        pivot.to_csv(tmp)
    files.write_json(out / "summary.json", summary)

    mlflow.set_tags({"dataset.path": str(source.root.resolve()), "dataset.fingerprint": fp})
    mlflow.log_metrics({f"clips_{split}": n for split, n in summary["clips_per_split"].items()})
    mlflow.log_metrics({f"fallback_{k}": v for k, v in fallbacks.items()})
    for name in ("index.csv", "summary.csv", "summary.json"):
        mlflow.log_artifact(str(out / name), artifact_path="prepare")
    files.mark_complete(out, fingerprint=fp, root=str(source.root.resolve()))
    logger.info("prepare: %d clips (%s), fingerprint %s", len(index),
                ", ".join(f"{k} {v}" for k, v in summary["clips_per_split"].items()), fp)
    return {"index": out / "index.csv", "summary": out / "summary.json", "fingerprint": fp,
            "root": source.root}


def load_prepared(workdir: Path) -> tuple[pd.DataFrame, Path, str]:
    """The index written by ``prepare`` (refusing an incomplete one), its data root and fingerprint."""
    out = workdir / "prepare"
    marker = files.read_marker(out)
    if marker is None:
        raise StageError(f"{out} is missing or incomplete: run --stage prepare first")
    index = pd.read_csv(out / "index.csv", dtype={"filename": str, "device": str})
    return index, Path(marker["root"]), marker["fingerprint"]


# --------------------------------------------------------------------------- train

TRAIN_SECTIONS = ("seed", "audio", "data", "model", "augment", "train")


def train_fingerprint(params: Params) -> str:
    """What the trained model depends on (TTA settings excluded: they only affect evaluation)."""
    tree = params.to_dict()
    tree["augment"].pop("tta")
    return _digest({k: tree[k] for k in TRAIN_SECTIONS})


def train(params: Params, workdir: Path) -> dict:
    """Train on fold1_train, validate each epoch on fold1_evaluate; resumable.

    Returns:
      ``{"model": path, "best": path, "history": dict, "run_id": str}``.
    """
    import mlflow

    from evaluate import complexity, plots
    from models import asc
    from pipeline import inputs, training

    index, root, data_fp = load_prepared(workdir)
    out = workdir / "train"
    files.clear_marker(out)
    out.mkdir(parents=True, exist_ok=True)
    fp = train_fingerprint(params)
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("fingerprint") not in (None, fp) or state.get("data_fingerprint") not in (None, data_fp):
        logger.info("train: settings or data changed since the last checkpoint; starting afresh")
        for stale in ("checkpoints", "history.json", "best.keras"):
            target = out / stale
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    files.write_json(state_path, {"fingerprint": fp, "data_fingerprint": data_fp,
                                  "run_id": mlflow.active_run().info.run_id})

    training.seed_everything(params.seed, params.train.deterministic)
    tr = index[index.split == "train"].reset_index(drop=True)
    ev = index[index.split == "evaluate"].reset_index(drop=True)
    if params.data.max_train_clips:
        tr = tr.sample(n=min(len(tr), params.data.max_train_clips), random_state=params.seed).reset_index(drop=True)
    if params.data.max_eval_clips:
        ev = ev.sample(n=min(len(ev), params.data.max_eval_clips), random_state=params.seed).reset_index(drop=True)
    if len(ev) == 0:
        raise StageError("the evaluate split is empty: nothing to validate on")

    strategy = training.strategy_for(params.train)
    steps = int(np.ceil(len(tr) / params.train.batch_size))
    with strategy.scope():
        model = asc.build_model(params)
        optimizer = training.make_optimizer(params.train, steps)
        training.compile_model(model, optimizer)
    cost = complexity.keras_complexity(asc.get_classifier(model))
    mlflow.log_metrics({"model_params": cost["params"], "model_trainable_params": cost["trainable_params"],
                        "model_macs": cost["macs"], "model_int8_bytes_estimate": cost["size_bytes"]})
    logger.info("model %s: %d parameters, %.2f M MACs per clip", params.model.name, cost["params"],
                cost["macs"] / 1e6)

    with strategy.scope():
        manager = training.CheckpointManager(out / "checkpoints", model, optimizer)
        # Build the optimizer's slots before restoring, so every saved object has its match.
        optimizer.build(model.trainable_variables)
    start = manager.restore()
    history, best_epoch = training.load_history(out / "history.json")
    history = training.trim_history(history, start)
    best_val = min(history["val_loss"]) if start and history.get("val_loss") else None
    if start == 0 or best_epoch is None or best_epoch > start:
        # best.keras came from an epoch the restored checkpoint does not include (or from another run):
        # drop it; only epochs of this run that beat the kept history's best can write it again.
        (out / "best.keras").unlink(missing_ok=True)
    if start:
        logger.info("train: resuming at epoch %d of %d", start + 1, params.train.epochs)
        mlflow.set_tag("resumed_at_epoch", str(start))
    else:
        files.write_text(out / "params.yaml", params.to_yaml())
        mlflow.log_artifact(str(out / "params.yaml"))
    train_ds, steps = inputs.train_dataset(tr, root, params.audio, params.data, batch_size=params.train.batch_size,
                                           seed=params.seed, start_epoch=start, epochs=params.train.epochs)
    val_ds = inputs.eval_dataset(ev, root, params.audio, params.data, batch_size=params.evaluate.batch_size)
    callback = training.EpochEnd(manager, out / "best.keras", out / "history.json", history,
                                 params.train.epochs, best_val)
    callback.best_epoch = best_epoch if (out / "best.keras").is_file() else None
    if start < params.train.epochs:
        training.fit(params, model, train_ds, val_ds, steps, start, [callback])

    with files.atomic_path(out / "model.keras") as tmp:
        model.save(tmp)
    curves = plots.plot_training_curves(callback.history, out / "curves.png")
    mlflow.log_artifact(str(out / "model.keras"), artifact_path="checkpoints/final")
    if (out / "best.keras").is_file():
        mlflow.log_artifact(str(out / "best.keras"), artifact_path="checkpoints/best")
    mlflow.log_artifact(str(curves))
    mlflow.log_artifact(str(out / "history.json"))
    _log_mlflow_model(model, params)
    files.mark_complete(out, fingerprint=fp, data_fingerprint=data_fp)
    final = {k: v[-1] for k, v in callback.history.items() if v}
    logger.info("train: done; final val_accuracy %.3f val_loss %.4f", final.get("val_accuracy", float("nan")),
                final.get("val_loss", float("nan")))
    return {"model": out / "model.keras", "best": out / "best.keras", "history": callback.history,
            "run_id": mlflow.active_run().info.run_id}


def _log_mlflow_model(model, params: Params) -> None:
    """The model in MLflow's tensorflow flavour, with an input signature (waveform in, logits out)."""
    import mlflow
    from mlflow.models import infer_signature

    wave = np.zeros((1, params.audio.clip_samples), np.float32)
    signature = infer_signature(wave, model(wave, training=False).numpy())
    try:
        mlflow.tensorflow.log_model(model, name="model", signature=signature)
    except Exception as exc:  # noqa: BLE001 - the .keras file is logged regardless
        logger.warning("MLflow tensorflow flavour failed (%s); the .keras checkpoint is logged instead", exc)


def train_run_id(workdir: Path) -> str | None:
    state = workdir / "train" / "state.json"
    return json.loads(state.read_text()).get("run_id") if state.is_file() else None


# --------------------------------------------------------------------------- evaluate


def load_trained(workdir: Path):
    """The trained full model (refusing an incomplete train stage)."""
    import tf_keras

    import augment  # noqa: F401 - registers the custom layers
    from models import asc  # noqa: F401

    out = workdir / "train"
    if files.read_marker(out) is None:
        raise StageError(f"{out} is missing or incomplete: run --stage train first")
    return tf_keras.models.load_model(out / "model.keras")


def predict(model, params: Params, index: pd.DataFrame, root: Path, *, tta: bool) -> np.ndarray:
    """Class probabilities ``[N, K]`` for the clips of ``index``, in order; with TTA when asked."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    from augment import tta as tta_lib
    from models import asc
    from pipeline import inputs

    frontend = asc.frontend_model(model)
    classifier = asc.get_classifier(model)
    t = params.augment.tta
    if tta:
        view = tta_lib.make_tta_model(asc.tta_classifier(model, params), time_shift=t.time_shift,
                                      specaugment=t.specaugment, seed=params.seed)

        @tf.function(reduce_retracing=True)
        def step(wave):
            return tta_lib.tta_probabilities(view, frontend(wave, training=False), n_copies=t.n_copies,
                                             chunk_copies=t.chunk_copies)
    else:
        @tf.function(reduce_retracing=True)
        def step(wave):
            return tf.nn.softmax(classifier(frontend(wave, training=False), training=False))

    ds = inputs.eval_dataset(index, root, params.audio, params.data, batch_size=params.evaluate.batch_size)
    steps = int(np.ceil(len(index) / params.evaluate.batch_size))
    out = [step(wave).numpy() for wave, _ in tqdm(ds, total=steps, desc="predict (TTA)" if tta else "predict",
                                                   unit="batch", mininterval=2.0)]
    return np.concatenate(out).astype(np.float64)


def _experiment_points(params: Params) -> list[dict]:
    """(name, size, accuracy) of the finished evaluate runs of the experiment, for the trade-off plot."""
    import mlflow

    exp = mlflow.get_experiment_by_name(params.tracking.experiment)
    if exp is None:
        return []
    runs = mlflow.search_runs([exp.experiment_id], filter_string="tags.stage = 'evaluate' and status = 'FINISHED'",
                              max_results=200, output_format="list")
    points = []
    for run in runs:
        if run.data.tags.get("reused") == "true":  # a reuse repeats another run's figures
            continue
        m = run.data.metrics
        if "macro_accuracy" in m and "model_int8_bytes_estimate" in m:
            points.append({"name": run.data.tags.get("mlflow.runName", run.info.run_id[:8]).split(": ")[-1],
                           "size_bytes": m["model_int8_bytes_estimate"], "accuracy": m["macro_accuracy"],
                           "macs": m.get("model_macs")})
    return points


def evaluate(params: Params, workdir: Path) -> dict:
    """DCASE metrics on the evaluate split (and test split when labelled), with and without TTA."""
    import mlflow

    from evaluate import complexity, metrics as dm, plots
    from models import asc

    index, root, data_fp = load_prepared(workdir)
    model = load_trained(workdir)
    out = workdir / "evaluate"
    files.clear_marker(out)
    out.mkdir(parents=True, exist_ok=True)
    cost = complexity.keras_complexity(asc.get_classifier(model))
    result: dict = {"model": params.model.name, "config": params.name, "data": data_name(params),
                    "data_fingerprint": data_fp,
                    "complexity": {k: cost[k] for k in ("params", "trainable_params", "size_bytes", "macs",
                                                         "within_limits")},
                    "tta": {"n_copies": params.augment.tta.n_copies, "time_shift": params.augment.tta.time_shift,
                            "specaugment": params.augment.tta.specaugment},
                    "splits": {}}
    headline = {}
    for split in params.evaluate.splits:
        part = index[(index.split == split) & (index.label >= 0)].reset_index(drop=True)
        if params.data.max_eval_clips and split == "evaluate":
            part = part.sample(n=min(len(part), params.data.max_eval_clips),
                               random_state=params.seed).reset_index(drop=True)
        if len(part) == 0:
            logger.warning("evaluate: split %r has no labelled clips; skipped", split)
            continue
        variants = {"plain": False, "tta": True} if params.augment.tta.enabled else {"plain": False}
        result["splits"][split] = {}
        for variant, use_tta in variants.items():
            probs = predict(model, params, part, root, tta=use_tta)
            m = dm.compute_metrics(part.label.to_numpy(), probs, part.device.to_numpy())
            result["splits"][split][variant] = m
            suffix = "" if (split, variant) == ("evaluate", "plain") else f"_{split}_{variant}".replace(
                "_evaluate", "")
            tables = dm.write_tables(m, out / f"tables{suffix}")
            for kind, path in tables.items():
                target = out / f"{kind}{suffix}.csv"
                Path(path).replace(target)
                mlflow.log_artifact(str(target))
            (out / f"tables{suffix}").rmdir()
            with files.atomic_path(out / f"predictions{suffix}.csv") as tmp:
                dm.predictions_frame(part.filename.tolist(), part.label.to_numpy(), probs).to_csv(tmp, index=False)
            mlflow.log_artifact(str(out / f"predictions{suffix}.csv"))
            prefix = "" if variant == "plain" else "tta_"
            prefix = prefix if split == "evaluate" else f"{split}_{prefix}"
            flat = dm.flatten_for_mlflow(m, prefix)
            mlflow.log_metrics(flat)
            headline.update(flat)
            logger.info("evaluate %s (%s): accuracy %.3f macro %.3f log loss %.3f | unseen devices %s",
                        split, variant, m["overall"]["accuracy"], m["overall"]["macro_accuracy"],
                        m["overall"]["log_loss"],
                        f"{m['per_device_group']['unseen']['macro_accuracy']:.3f}"
                        if "unseen" in m["per_device_group"] else "n/a")
    if not result["splits"]:
        raise StageError("evaluate: no labelled clips in the splits " + ", ".join(params.evaluate.splits))
    mlflow.log_metrics({"model_params": cost["params"], "model_macs": cost["macs"],
                        "model_int8_bytes_estimate": cost["size_bytes"]})

    main = result["splits"].get("evaluate") or next(iter(result["splits"].values()))
    plain = main["plain"]
    pngs = [
        plots.plot_confusion_matrix(plain["confusion_matrix"], list(plain["class_names"]), out / "confusion_matrix.png",
                                    title=f"Confusion matrix ({params.model.name}, {data_name(params)})"),
        plots.plot_device_accuracy(plain["per_device"], out / "device_accuracy.png",
                                   title=f"Accuracy per device ({params.model.name}, {data_name(params)})"),
    ]
    history_file = workdir / "train" / "history.json"
    if history_file.is_file():
        pngs.append(plots.plot_training_curves(json.loads(history_file.read_text())["history"],
                                               out / "training_curves.png"))
    points = _experiment_points(params)
    points.append({"name": f"{params.model.name}-{params.name} (this run)", "size_bytes": cost["size_bytes"],
                   "accuracy": plain["overall"]["macro_accuracy"], "macs": cost["macs"]})
    pngs.append(plots.plot_size_vs_accuracy(points, out / "size_vs_accuracy.png"))
    for png in pngs:
        mlflow.log_artifact(str(png), artifact_path="plots")
    files.write_json(out / "metrics.json", result)
    mlflow.log_artifact(str(out / "metrics.json"))
    files.mark_complete(out, data_fingerprint=data_fp, train=files.read_marker(workdir / "train"))
    return {"metrics": out / "metrics.json", "headline": headline}


# --------------------------------------------------------------------------- compress


def _logmels(frontend, index: pd.DataFrame, root: Path, params: Params) -> np.ndarray:
    from pipeline import inputs

    ds = inputs.eval_dataset(index, root, params.audio, params.data, batch_size=params.evaluate.batch_size)
    return np.concatenate([frontend(wave, training=False).numpy() for wave, _ in ds])


def compress(params: Params, workdir: Path) -> dict:
    """Prune and/or QAT and/or PTQ the trained classifier, export int8 TFLite, evaluate what ships."""
    import mlflow

    from evaluate import complexity
    from evaluate import compress as cz
    from evaluate import metrics as dm
    from models import asc
    from pipeline import inputs, training

    c = params.compress
    index, root, data_fp = load_prepared(workdir)
    model = load_trained(workdir)
    out = workdir / "compress"
    files.clear_marker(out)
    out.mkdir(parents=True, exist_ok=True)
    training.seed_everything(params.seed + 1000, params.train.deterministic)

    tr = index[index.split == "train"].reset_index(drop=True)
    ev = index[(index.split == "evaluate") & (index.label >= 0)].reset_index(drop=True)
    if params.data.max_train_clips:
        tr = tr.sample(n=min(len(tr), params.data.max_train_clips), random_state=params.seed).reset_index(drop=True)
    if params.data.max_eval_clips:
        ev = ev.sample(n=min(len(ev), params.data.max_eval_clips), random_state=params.seed).reset_index(drop=True)
    frontend_layer = asc.frontend_layer(model)
    frontend = asc.frontend_model(model)
    classifier = asc.export_classifier(model, params)
    clip = params.audio.clip_samples
    steps = int(np.ceil(len(tr) / params.train.batch_size))

    def data(epochs: int, offset: int):
        ds, _ = inputs.train_dataset(tr, root, params.audio, params.data, batch_size=params.train.batch_size,
                                     seed=params.seed + offset, start_epoch=0, epochs=epochs)
        return ds

    result: dict = {"steps": [], "model": params.model.name, "data_fingerprint": data_fp}
    eval_logmel = _logmels(frontend, ev, root, params)
    y, devices = ev.label.to_numpy(), ev.device.to_numpy()

    def score(probs):
        return dm.compute_metrics(y, probs, devices)

    def keras_probs(model_):
        return tf.nn.softmax(model_.predict(eval_logmel, batch_size=64, verbose=0)).numpy().astype(np.float64)

    # The trained float classifier, before anything changes its weights (pruning wraps the same layers).
    float_probs = keras_probs(classifier)
    result["float"] = score(float_probs)
    pruned = False
    if c.prune:
        classifier, sparsity = cz.prune(cz.copy_model(classifier), frontend_layer, data(c.prune_epochs, 101), steps,
                                        epochs=c.prune_epochs, target_sparsity=c.target_sparsity,
                                        learning_rate=c.fine_tune_learning_rate, clip_samples=clip)
        pruned = True
        result["steps"].append("prune")
        result["sparsity_per_kernel"] = sparsity
        result["sparsity"] = cz.overall_sparsity(sparsity)
        result["pruned_float"] = score(keras_probs(classifier))["overall"]
        mlflow.log_metrics({"sparsity": result["sparsity"],
                            "pruned_float_macro_accuracy": result["pruned_float"]["macro_accuracy"]})
        logger.info("compress: pruned to %.1f%% zeros; float macro accuracy %.3f -> %.3f", 100 * result["sparsity"],
                    result["float"]["overall"]["macro_accuracy"], result["pruned_float"]["macro_accuracy"])

    rep_waves = inputs.representative_waveforms(tr, root, params.audio, c.representative_clips, params.seed)
    representative = frontend(rep_waves, training=False).numpy()

    ptq_bytes = None
    if c.ptq or not c.qat:
        ptq_bytes = cz.to_tflite(classifier, representative, c.input_type, c.output_type)
        result["steps"].append("ptq")
    if c.qat:
        qat = cz.quantize_aware(classifier, frontend_layer, data(c.qat_epochs, 202), steps, epochs=c.qat_epochs,
                                learning_rate=c.fine_tune_learning_rate, clip_samples=clip, pruned=pruned)
        shipped = cz.to_tflite(qat, representative, c.input_type, c.output_type)
        result["steps"].append("qat")
        if pruned:
            result["sparsity_after_qat"] = cz.overall_sparsity(cz.variable_sparsity(qat))
    else:
        shipped = ptq_bytes

    cz.write_bytes(out / "model_int8.tflite", shipped)
    cz.write_bytes(out / "frontend.tflite", cz.frontend_tflite(frontend))
    int8_probs = cz.TFLiteClassifier(shipped).probabilities(eval_logmel)
    result["int8"] = score(int8_probs)
    if c.qat and ptq_bytes is not None:
        cz.write_bytes(out / "model_int8_ptq.tflite", ptq_bytes)
        result["ptq"] = score(cz.TFLiteClassifier(ptq_bytes).probabilities(eval_logmel))["overall"]
    tfl = complexity.tflite_complexity(out / "model_int8.tflite")
    result["tflite"] = {k: tfl[k] for k in ("params", "size_bytes", "macs", "within_limits") if k in tfl}
    result["tflite"]["file_bytes"] = len(shipped)
    result["gzip_bytes"] = cz.gzip_size(shipped)
    fa, ia = result["float"]["overall"]["macro_accuracy"], result["int8"]["overall"]["macro_accuracy"]
    result["accuracy_drop"] = fa - ia
    result["argmax_agreement"] = float(np.mean(float_probs.argmax(1) == int8_probs.argmax(1)))

    mlflow.log_metrics({"float_macro_accuracy": fa, "int8_macro_accuracy": ia, "int8_accuracy_drop": fa - ia,
                        "int8_log_loss": result["int8"]["overall"]["log_loss"],
                        "int8_size_bytes": result["tflite"]["size_bytes"], "int8_macs": result["tflite"]["macs"],
                        "int8_gzip_bytes": result["gzip_bytes"], "int8_argmax_agreement": result["argmax_agreement"]})
    mlflow.log_metrics(dm.flatten_for_mlflow(result["int8"], "int8_"))
    files.write_json(out / "metrics.json", result)
    for name in ("model_int8.tflite", "frontend.tflite", "metrics.json"):
        mlflow.log_artifact(str(out / name))
    if (out / "model_int8_ptq.tflite").is_file():
        mlflow.log_artifact(str(out / "model_int8_ptq.tflite"))
    files.mark_complete(out, data_fingerprint=data_fp, compress=params.fingerprint("compress"))
    logger.info("compress: int8 TFLite %d bytes (NeSsi), %.2f M MACs, macro accuracy %.3f (float %.3f)",
                result["tflite"]["size_bytes"], result["tflite"]["macs"] / 1e6, ia, fa)
    return {"tflite": out / "model_int8.tflite", "metrics": out / "metrics.json"}


# --------------------------------------------------------------------------- report


def report(params: Params, workdir: Path) -> dict:
    """``report/report.md`` and ``report.html`` from the stage outputs, logged to MLflow."""
    import mlflow

    from evaluate import report as rep

    for stage in ("prepare", "evaluate"):
        if files.read_marker(workdir / stage) is None:
            raise StageError(f"{workdir / stage} is missing or incomplete: run --stage {stage} first")
    out = workdir / "report"
    files.clear_marker(out)
    result = rep.build_report(workdir, params.to_yaml(), out)
    mlflow.log_artifacts(str(out), artifact_path="report")
    files.mark_complete(out)
    logger.info("report: %s", result["markdown"])
    return result


# --------------------------------------------------------------------------- orchestration

_FUNCTIONS = {"prepare": prepare, "train": train, "evaluate": evaluate, "compress": compress, "report": report}


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _listing_digest(directory: Path) -> str | None:
    """Digest of a folder's file names, sizes and modification times (no file is read)."""
    if not directory.is_dir():
        return None
    h = hashlib.sha256()
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        st = entry.stat()
        h.update(f"{entry.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


MAIN_OUTPUT = {"prepare": "index.csv", "train": "model.keras", "evaluate": "metrics.json",
               "compress": "model_int8.tflite", "report": "report.md"}
UPSTREAM = {"train": ("prepare",), "evaluate": ("prepare", "train"), "compress": ("prepare", "train"),
            "report": ("prepare", "evaluate")}


def check_upstream(params: Params, workdir: Path, stage: str) -> None:
    """Refuse inputs that are missing, incomplete or made with other settings than ``params``."""
    for up in UPSTREAM.get(stage, ()):
        marker = files.read_marker(workdir / up)
        if marker is None:
            raise StageError(f"{workdir / up} is missing or incomplete: run --stage {up} first")
        if marker.get("key") != stage_key(params, workdir, up):
            raise StageError(f"{workdir / up} was made with other settings or inputs than this run's; "
                             f"run --stage {up} (or --stage all) with the same --config/--set first")


def stage_key(params: Params, workdir: Path, stage: str) -> str | None:
    """What a stage's outputs depend on; equal keys mean the outputs can be reused (None: always run)."""
    tree = params.to_dict()
    if stage == "prepare":
        facts = {"source": params.data.source, "audio": [params.audio.sample_rate_hz, params.audio.clip_seconds]}
        if params.data.source == "synthetic":
            facts.update(synthetic=[params.data.synthetic.n_clips, params.data.synthetic.n_cities], seed=params.seed)
        else:
            root = Path(params.data.source).expanduser()
            facts["files"] = [(rel, p.stat().st_size, p.stat().st_mtime_ns) for rel in
                              ("meta.csv", *tau.SPLIT_FILES.values()) if (p := root / rel).is_file()]
            facts["audio_listing"] = _listing_digest(root / "audio")
        return _digest(facts)
    prepared = files.read_marker(workdir / "prepare") or {}
    if stage == "train":
        return _digest({"train": train_fingerprint(params), "data": prepared.get("fingerprint")})
    model_sha = (files.read_marker(workdir / "train") or {}).get("model_sha")
    if stage == "evaluate":
        return _digest({"model": model_sha, "data": prepared.get("fingerprint"), "evaluate": tree["evaluate"],
                        "tta": tree["augment"], "audio": tree["audio"], "limit": params.data.max_eval_clips,
                        "seed": params.seed})
    if stage == "compress":
        return _digest({"model": model_sha, "data": prepared.get("fingerprint"), "compress": tree["compress"],
                        "train": tree["train"], "dataset": tree["data"], "seed": params.seed})
    return None


def run_stages(params: Params, workdir: Path, stages: list[str], *, force: bool = False) -> dict[str, dict]:
    """Run ``stages`` in order under one MLflow parent run, one nested run per stage.

    A stage whose outputs are complete (``_SUCCESS.json``) for the same :func:`stage_key` is
    reused, not rerun: it still gets a nested MLflow run, tagged ``reused=true``, and says so
    in the log. ``force`` reruns every stage.
    """
    unknown = [s for s in stages if s not in _FUNCTIONS]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; available: {list(_FUNCTIONS)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    name = data_name(params)
    results: dict[str, dict] = {}
    label = ",".join(stages)
    with tracking.parent_run(params, name, label):
        for stage in stages:
            key = stage_key(params, workdir, stage)
            marker = files.read_marker(workdir / stage)
            outputs_there = (workdir / stage / MAIN_OUTPUT[stage]).is_file()
            if not force and key is not None and marker is not None and marker.get("key") == key and outputs_there:
                logger.info("stage %s: reusing the complete outputs in %s (same settings and inputs; "
                            "--force reruns it)", stage, workdir / stage)
                with tracking.stage_run(params, name, stage, extra_tags={"reused": "true"}):
                    import mlflow

                    mlflow.log_dict(marker, "reused_marker.json")
                    if marker.get("run_id"):
                        mlflow.set_tag("reused_from_run", marker["run_id"])
                        _log_headline(marker["run_id"], stage)
                results[stage] = {"reused": True}
                _log_headline(marker.get("run_id"), stage)
                if stage == "prepare":
                    _tag_dataset(workdir)
                continue
            logger.info("stage %s", stage)
            if force or stage != "train":
                # Start clean: no output of an earlier run with other settings survives next to new ones.
                shutil.rmtree(workdir / stage, ignore_errors=True)
            run_id = _resumable_run(params, workdir, stage)
            with tracking.stage_run(params, name, stage, run_id=run_id) as stage_mlflow_run:
                check_upstream(params, workdir, stage)
                results[stage] = _FUNCTIONS[stage](params, workdir)
            _log_headline(stage_mlflow_run.info.run_id, stage)
            if stage == "prepare":
                _tag_dataset(workdir)
            marker = files.read_marker(workdir / stage) or {}
            marker["key"] = key
            marker["run_id"] = stage_mlflow_run.info.run_id
            if stage == "train":
                marker["model_sha"] = _sha256(workdir / "train" / "model.keras")
            files.write_json(workdir / stage / files.MARKER, marker)
    return results


HEADLINE = {
    "evaluate": ("macro_accuracy", "log_loss", "tta_macro_accuracy", "tta_log_loss", "group_unseen_macro_accuracy",
                 "model_params", "model_macs", "model_int8_bytes_estimate"),
    "compress": ("int8_macro_accuracy", "int8_log_loss", "int8_size_bytes", "int8_macs", "int8_accuracy_drop"),
}


def _tag_dataset(workdir: Path) -> None:
    """Dataset path and fingerprint as tags of the parent run."""
    import mlflow

    marker = files.read_marker(workdir / "prepare") or {}
    if marker.get("fingerprint"):
        mlflow.set_tags({"dataset.path": marker.get("root", ""), "dataset.fingerprint": marker["fingerprint"]})


def _log_headline(source_run_id: str | None, stage: str) -> None:
    """Copy a stage run's headline metrics onto the active run (the parent, or a reusing stage run)."""
    import mlflow

    keys = HEADLINE.get(stage)
    if not keys or source_run_id is None or mlflow.active_run() is None:
        return
    try:
        metrics = mlflow.MlflowClient().get_run(source_run_id).data.metrics
    except mlflow.exceptions.MlflowException:
        logger.warning("MLflow run %s of stage %s not found; headline metrics not copied", source_run_id, stage)
        return
    mlflow.log_metrics({k: metrics[k] for k in keys if k in metrics})


def summary(params: Params, workdir: Path) -> str:
    """A short closing summary: where the report is, headline metrics, int8 size and MACs, the UI command."""
    workdir = Path(workdir)
    lines = [f"Outputs in {workdir.resolve()}"]
    report_md = workdir / "report" / "report.md"
    if report_md.is_file():
        lines.append(f"  report:   {report_md.resolve()} (and report.html)")
    ev_path = workdir / "evaluate" / "metrics.json"
    if ev_path.is_file() and files.read_marker(workdir / "evaluate") is not None:
        ev = json.loads(ev_path.read_text())
        split = ev["splits"].get("evaluate") or next(iter(ev["splits"].values()))
        plain = split["plain"]["overall"]
        line = (f"  evaluate: macro accuracy {plain['macro_accuracy']:.1%}, log loss {plain['log_loss']:.3f}")
        if "tta" in split:
            line += (f"; with TTA ({ev['tta']['n_copies']} copies) {split['tta']['overall']['macro_accuracy']:.1%}, "
                     f"{split['tta']['overall']['log_loss']:.3f}")
        lines.append(line + (" (synthetic data, not TAU22)" if ev.get("data") == "synthetic" else ""))
    cz_path = workdir / "compress" / "metrics.json"
    if cz_path.is_file() and files.read_marker(workdir / "compress") is not None:
        cz = json.loads(cz_path.read_text())
        t = cz["tflite"]
        lines.append(f"  int8:     {workdir.resolve() / 'compress' / 'model_int8.tflite'}: {t['size_bytes']:,} bytes "
                     f"(NeSsi), {t['macs'] / 1e6:.2f} M MACs, within DCASE2022 limits: "
                     f"{'yes' if t.get('within_limits') else 'no'}; macro accuracy "
                     f"{cz['int8']['overall']['macro_accuracy']:.1%} (float {cz['float']['overall']['macro_accuracy']:.1%})")
    uri = params.tracking.uri
    root = params.tracking.artifact_root
    lines.append(f"  MLflow:   mlflow ui --backend-store-uri {uri} --default-artifact-root {root} "
                 f"(experiment '{params.tracking.experiment}')")
    return "\n".join(lines)


def _resumable_run(params: Params, workdir: Path, stage: str) -> str | None:
    """The MLflow run of an interrupted train stage with the same settings (to log into it again)."""
    if stage != "train":
        return None
    state_path = workdir / "train" / "state.json"
    if not state_path.is_file() or files.read_marker(workdir / "train") is not None:
        return None
    state = json.loads(state_path.read_text())
    if state.get("fingerprint") != train_fingerprint(params) or not (workdir / "train/checkpoints/latest.json").is_file():
        return None
    run_id = state.get("run_id")
    try:
        import mlflow

        mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - the run is gone (store moved or deleted): log into a new one
        logger.warning("train: MLflow run %s of the interrupted run is not in this store; starting a new run",
                       run_id)
        return None
    return run_id
