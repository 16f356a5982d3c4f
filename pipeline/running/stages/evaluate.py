"""``evaluate``: DCASE metrics on the evaluate split (and a labelled test split), with and without TTA.

Variants: ``plain`` (one pass per clip) and one per TTA mode of ``augment.tta.modes`` (see
:mod:`augment.tta`): the first mode's outputs keep the names ``tta`` (``predictions_tta.csv``,
``tta_macro_accuracy``), each further mode is ``tta_<mode>`` (``predictions_tta_masks.csv``,
``tta_masks_macro_accuracy``). Each TTA mode's cost is recorded next to its accuracy: MACs per
clip = ``n_copies`` x the classifier's MACs (DCASE's count, which leaves out the front end; TTA
runs the front end once per clip), in ``metrics.json`` under ``tta.modes`` and as the MLflow
metrics ``<variant>_macs_per_clip``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from evaluate import challenge_plots, complexity, plots
from evaluate import metrics as dm
from models import asc
from pipeline.core import files
from pipeline.core.config import Params
from pipeline.data import inputs
from pipeline.running import task
from pipeline.running.stages.base import Context, StageError, clips, held_out_devices, load_index

logger = logging.getLogger(__name__)


def predict(model, params: Params, index: pd.DataFrame, root: Path, *, tta: str | None = None) -> np.ndarray:
    """Class probabilities ``[N, K]`` for the clips of ``index``, in order; with TTA in mode ``tta`` when given."""
    frontend = asc.frontend_model(model)
    classifier = asc.get_classifier(model)
    if tta:
        predictor = asc.tta_predictor(model, params, tta)

        @tf.function(reduce_retracing=True)
        def step(wave):
            return predictor.probabilities(frontend(wave, training=False))
    else:

        @tf.function(reduce_retracing=True)
        def step(wave):
            return tf.nn.softmax(classifier(frontend(wave, training=False), training=False))

    ds = inputs.eval_dataset(index, root, params.audio, params.data, batch_size=params.evaluate.batch_size)
    steps = int(np.ceil(len(index) / params.evaluate.batch_size))
    out = [
        step(wave).numpy()
        for wave, _ in tqdm(
            ds, total=steps, desc=f"predict (TTA {tta})" if tta else "predict", unit="batch", mininterval=2.0
        )
    ]
    return np.concatenate(out).astype(np.float64)


def _experiment_points(ctx: Context) -> list[dict]:
    """(name, size, accuracy) of the finished evaluate runs of the experiment, for the trade-off plot."""
    points = []
    for run in ctx.record.finished_runs("evaluate"):
        if run["tags"].get("reused") == "true":  # a reuse repeats another run's figures
            continue
        m = run["metrics"]
        if "macro_accuracy" in m and "model_int8_bytes_estimate" in m:
            points.append(
                {
                    "name": run["name"].split(": ")[-1],
                    "size_bytes": m["model_int8_bytes_estimate"],
                    "accuracy": m["macro_accuracy"],
                    "macs": m.get("model_macs"),
                }
            )
    return points


def tta_variants(params: Params) -> dict[str, str]:
    """``{variant: TTA mode}`` the evaluate stage runs: ``tta`` for the first mode, ``tta_<mode>`` for the others."""
    if not params.augment.tta.enabled:
        return {}
    modes = params.augment.tta.modes
    return {("tta" if i == 0 else f"tta_{mode}"): mode for i, mode in enumerate(modes)}


def tta_cost(classifier_macs: int, n_copies: int) -> dict:
    """MACs per clip of TTA with ``n_copies`` copies: ``n_copies`` classifier passes (front end once, not counted)."""
    macs = int(n_copies) * int(classifier_macs)
    return {
        "n_copies": int(n_copies),
        "classifier_macs": int(classifier_macs),
        "macs_per_clip": macs,
        "within_macs_limit": macs <= complexity.MAX_MACS,
    }


def device_specific(
    params: Params, part: pd.DataFrame, general_probs: np.ndarray, root: Path, models_file: Path
) -> dict:
    """Each device with its own model (``specialize/models.json``): the general and the specialized model's
    figures on that device's evaluate-split clips side by side, and the DCASE2025 system's figures over
    the whole split (the device's model where it has one, the general model for every other device).

    Returns:
      ``{"devices": {device: {n, general, specialized, gain, general_log_loss, specialized_log_loss}},
      "overall": ..., "per_device_group": ..., "per_device": ...}`` (macro accuracies).
    """
    spec = json.loads(Path(models_file).read_text())["devices"]
    combined = np.array(general_probs, copy=True)
    rows = {}
    for device, rel in spec.items():
        mask = (part.device == device.upper()).to_numpy()
        if not mask.any():
            rows[device] = {"n": 0, "general": None, "specialized": None, "gain": None}
            continue
        sub = part[mask]
        probs = predict(task.load(Path(models_file).parent / rel), params, sub, root)
        combined[mask] = probs
        y, dev = sub.label.to_numpy(), sub.device.to_numpy()
        g = dm.compute_metrics(y, general_probs[mask], dev)["overall"]
        s = dm.compute_metrics(y, probs, dev)["overall"]
        rows[device] = {
            "n": int(mask.sum()),
            "general": g["macro_accuracy"],
            "specialized": s["macro_accuracy"],
            "gain": s["macro_accuracy"] - g["macro_accuracy"],
            "general_log_loss": g["log_loss"],
            "specialized_log_loss": s["log_loss"],
        }
        logger.info(
            "evaluate: device %s: general %.3f, specialized %.3f (%+.3f) on %d clips",
            device,
            g["macro_accuracy"],
            s["macro_accuracy"],
            rows[device]["gain"],
            rows[device]["n"],
        )
    system = dm.compute_metrics(part.label.to_numpy(), combined, part.device.to_numpy())
    return {
        "devices": rows,
        "overall": system["overall"],
        "per_device_group": system["per_device_group"],
        "per_device": system["per_device"],
    }


def _suffix(split: str, variant: str) -> str:
    """File suffix of a split/variant's tables: '' for the evaluate split without TTA."""
    return "" if (split, variant) == ("evaluate", "plain") else f"_{split}_{variant}".replace("_evaluate", "")


def evaluate(ctx: Context) -> dict:
    """Metrics, tables, predictions and plots of the trained model on the labelled splits."""
    params, out = ctx.params, ctx.out
    index, root, data_fp = load_index(ctx)
    model = task.load(ctx.input("train", "model"))
    cost = complexity.keras_complexity(asc.get_classifier(model))
    result: dict = {
        "model": params.model.name,
        "config": params.name,
        "data": ctx.data_name,
        "data_fingerprint": data_fp,
        "complexity": {k: cost[k] for k in ("params", "trainable_params", "size_bytes", "macs", "within_limits")},
        "splits": {},
    }
    tta = tta_variants(params)
    result["tta"] = {
        "enabled": params.augment.tta.enabled,
        "n_copies": params.augment.tta.n_copies,
        "mask_fill": params.augment.tta.mask_fill,
        "macs_counted": "classifier MACs x n_copies per clip (the front end runs once and, as in "
        "the DCASE count, is not counted)",
        "modes": {
            mode: {"variant": variant, **tta_cost(cost["macs"], params.augment.tta.n_copies)}
            for variant, mode in tta.items()
        },
    }
    if tta:
        ctx.record.tags(
            {
                "tta.modes": ",".join(tta.values()),
                "tta.variants": ",".join(f"{variant}={mode}" for variant, mode in tta.items()),
            }
        )
    headline = {}
    held = held_out_devices(params)  # pseudo-unseen training devices: their figures next to the real unseen ones
    result["held_out_devices"] = list(held)
    if params.data.train_split is not None:  # a DCASE2024 subset: what share of the training split trained
        result["training_data"] = {
            "train_split": params.data.train_split,
            "train_clips": len(clips(index, "train", params)),
            "training_split_clips": int((index.split == "train").sum()),
        }
    for split in (*params.evaluate.splits, *(("validation",) if held else ())):
        part = clips(index, split, params, labelled=True)
        if len(part) == 0:
            logger.warning("evaluate: split %r has no labelled clips; skipped", split)
            continue
        variants = {"plain": None, **tta}
        result["splits"][split] = {}
        for variant, mode in variants.items():
            probs = predict(model, params, part, root, tta=mode)
            m = dm.compute_metrics(part.label.to_numpy(), probs, part.device.to_numpy())
            result["splits"][split][variant] = m
            if (split, variant) == ("evaluate", "plain"):
                general = (part, probs)
            suffix = _suffix(split, variant)
            tables = dm.write_tables(m, out / f"tables{suffix}")
            for kind, path in tables.items():
                target = out / f"{kind}{suffix}.csv"
                Path(path).replace(target)
                ctx.record.artifact(target)
            (out / f"tables{suffix}").rmdir()
            with files.atomic_path(out / f"predictions{suffix}.csv") as tmp:
                dm.predictions_frame(part.filename.tolist(), part.label.to_numpy(), probs).to_csv(tmp, index=False)
            ctx.record.artifact(out / f"predictions{suffix}.csv")
            prefix = "" if variant == "plain" else f"{variant}_"
            prefix = prefix if split == "evaluate" else f"{split}_{prefix}"
            flat = dm.flatten_for_mlflow(m, prefix)
            ctx.record.metrics(flat)
            headline.update(flat)
            logger.info(
                "evaluate %s (%s): accuracy %.3f macro %.3f log loss %.3f | unseen devices %s",
                split,
                variant if mode is None else f"{variant}: TTA {mode}",
                m["overall"]["accuracy"],
                m["overall"]["macro_accuracy"],
                m["overall"]["log_loss"],
                f"{m['per_device_group']['unseen']['macro_accuracy']:.3f}"
                if "unseen" in m["per_device_group"]
                else "n/a",
            )
    if not result["splits"]:
        raise StageError("evaluate: no labelled clips in the splits " + ", ".join(params.evaluate.splits))
    models_file = ctx.input("specialize", "models", missing_ok=True)
    if models_file is not None and models_file.is_file() and "evaluate" in result["splits"]:
        result["device_specific"] = device_specific(params, *general, root, models_file)
        ds = result["device_specific"]
        flat = {
            "device_specific_macro_accuracy": ds["overall"]["macro_accuracy"],
            "device_specific_log_loss": ds["overall"]["log_loss"],
            **{f"{d}_specialized_gain": r["gain"] for d, r in ds["devices"].items() if r.get("gain") is not None},
        }
        ctx.record.metrics(flat)
        headline.update(flat)
        with files.atomic_path(out / "device_specific.csv") as tmp:
            pd.DataFrame([{"device": d, **r} for d, r in ds["devices"].items()]).to_csv(tmp, index=False)
        ctx.record.artifact(out / "device_specific.csv")
        if any(row["n"] for row in ds["devices"].values()):
            ctx.record.artifact(
                challenge_plots.plot_general_vs_specialized(
                    ds["devices"], out / "device_specific.png", title=f"({ctx.data_name})"
                )
            )
        else:
            logger.warning("evaluate: no specialized device has evaluate clips: no device_specific.png")
    ctx.record.metrics(
        {"model_params": cost["params"], "model_macs": cost["macs"], "model_int8_bytes_estimate": cost["size_bytes"]}
    )

    main = result["splits"].get("evaluate") or next(iter(result["splits"].values()))
    for mode, entry in result["tta"]["modes"].items():
        variant = entry["variant"]
        overall = main[variant]["overall"]
        entry.update({k: overall[k] for k in ("accuracy", "macro_accuracy", "log_loss")})
        entry["splits"] = {
            split: {k: r[variant]["overall"][k] for k in ("accuracy", "macro_accuracy", "log_loss")}
            for split, r in result["splits"].items()
        }
        cost_metrics = {f"{variant}_macs_per_clip": entry["macs_per_clip"], f"{variant}_n_copies": entry["n_copies"]}
        ctx.record.metrics(cost_metrics)
        headline.update(cost_metrics)
        logger.info(
            "evaluate: TTA %s (%s) %d copies: macro accuracy %.3f (plain %.3f), %s MACs per clip "
            "(%d x %s; DCASE limit %s)",
            mode,
            variant,
            entry["n_copies"],
            overall["macro_accuracy"],
            main["plain"]["overall"]["macro_accuracy"],
            f"{entry['macs_per_clip']:,}",
            entry["n_copies"],
            f"{cost['macs']:,}",
            f"{complexity.MAX_MACS:,}",
        )
    plain = main["plain"]
    title = f"({params.model.name}, {ctx.data_name})"
    pngs = [
        plots.plot_confusion_matrix(
            plain["confusion_matrix"],
            list(plain["class_names"]),
            out / "confusion_matrix.png",
            title=f"Confusion matrix {title}",
        ),
        plots.plot_device_accuracy(
            plain["per_device"], out / "device_accuracy.png", title=f"Accuracy per device {title}"
        ),
    ]
    history_file = ctx.input("train", "history", missing_ok=True)
    if history_file is not None and history_file.is_file():
        pngs.append(
            plots.plot_training_curves(json.loads(history_file.read_text())["history"], out / "training_curves.png")
        )
    points = _experiment_points(ctx)
    points.append(
        {
            "name": f"{params.model.name}-{params.name} (this run)",
            "size_bytes": cost["size_bytes"],
            "accuracy": plain["overall"]["macro_accuracy"],
            "macs": cost["macs"],
        }
    )
    pngs.append(plots.plot_size_vs_accuracy(points, out / "size_vs_accuracy.png"))
    for png in pngs:
        ctx.record.artifact(png, "plots")
    files.write_json(out / "metrics.json", result)
    ctx.record.artifact(out / "metrics.json")
    return {"metrics": out / "metrics.json", "headline": headline}


def summary_lines(folder: Path, params: Params) -> list[str]:
    """The closing summary's line of a complete ``evaluate`` folder: macro accuracy and log loss (and with TTA).

    Args:
      folder: the stage's complete folder.
      params: the run's parameter tree.

    Returns:
      One line.
    """
    ev = json.loads((folder / "metrics.json").read_text())
    split = ev["splits"].get("evaluate") or next(iter(ev["splits"].values()))
    plain = split["plain"]["overall"]
    line = f"  evaluate: macro accuracy {plain['macro_accuracy']:.1%}, log loss {plain['log_loss']:.3f}"
    if "tta" in split:
        line += (
            f"; with TTA ({ev['tta']['n_copies']} copies) {split['tta']['overall']['macro_accuracy']:.1%}, "
            f"{split['tta']['overall']['log_loss']:.3f}"
        )
    return [line + (" (synthetic data, not TAU22)" if ev.get("data") == "synthetic" else "")]
