"""``compress``: prune, quantization-aware training and int8 TFLite export (TFMOT); evaluate what ships."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from evaluate import complexity
from evaluate import compress as cz
from evaluate import metrics as dm
from evaluate.complexity.rules import MAX_BYTES, MAX_MACS
from models import asc
from pipeline.core import files, seeds
from pipeline.core.config import Params
from pipeline.data import inputs
from pipeline.inference.package import build_package
from pipeline.running import task, training
from pipeline.running.stages.base import Context, clips, load_index

logger = logging.getLogger(__name__)


def _logmels(frontend, index: pd.DataFrame, root: Path, params: Params) -> np.ndarray:
    ds = inputs.eval_dataset(index, root, params.audio, params.data, batch_size=params.evaluate.batch_size)
    return np.concatenate([frontend(wave, training=False).numpy() for wave, _ in ds])


def compress(ctx: Context) -> dict:
    """Prune and/or QAT and/or PTQ the trained classifier, export int8 TFLite, evaluate what ships."""
    params, out = ctx.params, ctx.out
    c = params.compress
    index, root, data_fp = load_index(ctx)
    model = task.load(ctx.input("train", "model"))
    training.seed_everything(seeds.stream_seed(params.seed, "compress"), params.train.deterministic)
    tr = clips(index, "train", params)
    ev = clips(index, "evaluate", params, labelled=True)
    frontend_layer = asc.frontend_layer(model)
    frontend = asc.frontend_model(model)
    classifier = asc.export_classifier(model, params)
    clip = params.audio.clip_samples
    steps = int(np.ceil(len(tr) / params.train.batch_size))

    def data(epochs: int, stream: str):
        ds, _ = inputs.train_dataset(
            tr,
            root,
            params.audio,
            params.data,
            batch_size=params.train.batch_size,
            seed=seeds.stream_seed(params.seed, stream),
            start_epoch=0,
            epochs=epochs,
        )
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
        classifier, sparsity = cz.prune(
            cz.copy_model(classifier),
            frontend_layer,
            data(c.prune_epochs, "compress.prune_data"),
            steps,
            epochs=c.prune_epochs,
            target_sparsity=c.target_sparsity,
            learning_rate=c.fine_tune_learning_rate,
            clip_samples=clip,
        )
        pruned = True
        result["steps"].append("prune")
        result["sparsity_per_kernel"] = sparsity
        result["sparsity"] = cz.overall_sparsity(sparsity)
        result["pruned_float"] = score(keras_probs(classifier))["overall"]
        ctx.record.metrics(
            {"sparsity": result["sparsity"], "pruned_float_macro_accuracy": result["pruned_float"]["macro_accuracy"]}
        )
        logger.info(
            "compress: pruned to %.1f%% zeros; float macro accuracy %.3f -> %.3f",
            100 * result["sparsity"],
            result["float"]["overall"]["macro_accuracy"],
            result["pruned_float"]["macro_accuracy"],
        )

    rep_waves = inputs.representative_waveforms(tr, root, params.audio, c.representative_clips, params.seed)
    representative = frontend(rep_waves, training=False).numpy()

    ptq_bytes = None
    if c.ptq or not c.qat:
        ptq_bytes = cz.to_tflite(classifier, representative, c.input_type, c.output_type)
        result["steps"].append("ptq")
    if c.qat:
        qat = cz.quantize_aware(
            classifier,
            frontend_layer,
            data(c.qat_epochs, "compress.qat_data"),
            steps,
            epochs=c.qat_epochs,
            learning_rate=c.fine_tune_learning_rate,
            clip_samples=clip,
            pruned=pruned,
        )
        shipped = cz.to_tflite(qat, representative, c.input_type, c.output_type)
        result["steps"].append("qat")
        if pruned:
            result["sparsity_after_qat"] = cz.overall_sparsity(cz.variable_sparsity(qat))
    else:
        shipped = ptq_bytes

    cz.write_bytes(out / "model_int8.tflite", shipped)
    frontend_bytes = cz.frontend_tflite(frontend)
    cz.write_bytes(out / "frontend.tflite", frontend_bytes)
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

    ctx.record.metrics(
        {
            "float_macro_accuracy": fa,
            "int8_macro_accuracy": ia,
            "int8_accuracy_drop": fa - ia,
            "int8_log_loss": result["int8"]["overall"]["log_loss"],
            "int8_size_bytes": result["tflite"]["size_bytes"],
            "int8_macs": result["tflite"]["macs"],
            "int8_gzip_bytes": result["gzip_bytes"],
            "int8_argmax_agreement": result["argmax_agreement"],
        }
    )
    ctx.record.metrics(dm.flatten_for_mlflow(result["int8"], "int8_"))
    files.write_json(out / "metrics.json", result)
    for name in ("model_int8.tflite", "frontend.tflite", "metrics.json"):
        ctx.record.artifact(out / name)
    if (out / "model_int8_ptq.tflite").is_file():
        ctx.record.artifact(out / "model_int8_ptq.tflite")
    logger.info(
        "compress: int8 TFLite %d bytes (NeSsi), %.2f M MACs, macro accuracy %.3f (float %.3f)",
        result["tflite"]["size_bytes"],
        result["tflite"]["macs"] / 1e6,
        ia,
        fa,
    )
    models_file = ctx.input("specialize", "models", missing_ok=True)
    if models_file is not None and models_file.is_file():
        result["devices"] = _device_models(ctx, models_file, tr, ev, root, frontend, eval_logmel)
        files.write_json(out / "metrics.json", result)
    package = _ship(ctx, result, frontend_bytes, shipped)
    return {"tflite": out / "model_int8.tflite", "metrics": out / "metrics.json", "package": package}


def _device_models(ctx: Context, models_file: Path, tr, ev, root: Path, frontend, eval_logmel) -> dict:
    """One int8 TFLite model per device model of the specialize stage (post-training quantization, calibrated
    on that device's training clips), each checked against the limits on its own (the DCASE2025 rule):
    ``compress/devices/<device>/model_int8.tflite``. Returns per device its size, MACs, limit check and
    int8 macro accuracy on the device's evaluate clips."""
    params, out = ctx.params, ctx.out
    c = params.compress
    spec = json.loads(Path(models_file).read_text())["devices"]
    rows = {}
    for device, rel in spec.items():
        model = task.load(Path(models_file).parent / rel)
        classifier = asc.export_classifier(model, params)
        mine = tr[tr.device == device.upper()]
        waves = inputs.representative_waveforms(mine, root, params.audio, c.representative_clips, params.seed)
        tflite = cz.to_tflite(classifier, frontend(waves, training=False).numpy(), c.input_type, c.output_type)
        path = out / "devices" / device / "model_int8.tflite"
        cz.write_bytes(path, tflite)
        cost = complexity.tflite_complexity(path)
        row = {k: cost[k] for k in ("params", "size_bytes", "macs", "within_limits")}
        mask = (ev.device == device.upper()).to_numpy()
        if mask.any():
            probs = cz.TFLiteClassifier(tflite).probabilities(eval_logmel[mask])
            sub = ev[mask]
            row["int8_macro_accuracy"] = dm.compute_metrics(sub.label.to_numpy(), probs, sub.device.to_numpy())[
                "overall"
            ]["macro_accuracy"]
        rows[device] = row
        ctx.record.artifact(path, f"devices/{device}")
        ctx.record.metrics(
            {f"{device}_int8_size_bytes": row["size_bytes"], f"{device}_int8_macs": row["macs"]}
            | ({f"{device}_int8_macro_accuracy": row["int8_macro_accuracy"]} if "int8_macro_accuracy" in row else {})
        )
        logger.info(
            "compress: device %s: int8 %d bytes, %.2f M MACs, %s the limits",
            device,
            row["size_bytes"],
            row["macs"] / 1e6,
            "within" if row["within_limits"] else "NOT within",
        )
    bad = [d for d, r in rows.items() if not r["within_limits"]]
    if bad:
        logger.warning("compress: device model(s) %s exceed the DCASE limits (checked per model)", ", ".join(bad))
    ctx.record.metrics({"device_models_within_limits": float(not bad)})
    return rows


def _ship(ctx: Context, result: dict, frontend_bytes: bytes, classifier_bytes: bytes) -> Path:
    """Write the deployable package (``package/``, ``package.tar.gz``) and log the archive as an artifact."""
    params, out = ctx.params, ctx.out
    cost = dict(
        result["tflite"],
        limits={"max_bytes": MAX_BYTES, "max_macs": MAX_MACS},
        counted_by="NeSsi rules on model_int8.tflite (evaluate.complexity)",
    )
    metrics = {
        "split": "evaluate",
        "int8": result["int8"],
        "float_overall": result["float"]["overall"],
        "accuracy_drop": result["accuracy_drop"],
        "argmax_agreement": result["argmax_agreement"],
        "steps": result["steps"],
        "data_fingerprint": result["data_fingerprint"],
    }
    trained = ctx.marker("train")
    provenance = {"train_output": trained.get("output"), "train_run_id": trained.get("run_id")}
    device_models = {
        device: {"tflite": (out / "devices" / device / "model_int8.tflite").read_bytes(), **figures}
        for device, figures in result.get("devices", {}).items()
    }
    package = build_package(
        out,
        frontend_tflite=frontend_bytes,
        classifier_tflite=classifier_bytes,
        params=params,
        metrics=metrics,
        complexity=cost,
        provenance=provenance,
        device_models=device_models or None,
    )
    ctx.record.artifact(out / "package.tar.gz")
    # The MLflow model and its registry version are the register stage's (its own settings and run).
    return package


def summary_lines(folder: Path, params: Params) -> list[str]:
    """The closing summary's lines of a complete ``compress`` folder: the int8 model and the package.

    Args:
      folder: the stage's complete folder (``workdir/compress``).
      params: the run's parameter tree.

    Returns:
      The ``int8`` line, and the ``package`` line when the package was built.
    """
    cz = json.loads((folder / "metrics.json").read_text())
    t = cz["tflite"]
    lines = [
        f"  int8:     {folder.parent.resolve() / folder.name / 'model_int8.tflite'}: {t['size_bytes']:,} bytes "
        f"(NeSsi), {t['macs'] / 1e6:.2f} M MACs, within DCASE2022 limits: "
        f"{'yes' if t.get('within_limits') else 'no'}; macro accuracy "
        f"{cz['int8']['overall']['macro_accuracy']:.1%} (float {cz['float']['overall']['macro_accuracy']:.1%})"
    ]
    if (folder / "package").is_dir():
        lines.append(
            f"  package:  {(folder / 'package').resolve()} (classify recordings: python -m pipeline.predict "
            f"FILES --model {folder.parent})"
        )
    return lines
