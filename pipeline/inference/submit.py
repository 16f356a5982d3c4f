"""``python -m pipeline.submit``: a DCASE Task 1 submission folder from a finished run.

::

    python -m pipeline.submit WORKDIR --data EVAL_DIR [--out submission] [--label Lastname_INST_task1_1]

Reads the list of files to classify from ``EVAL_DIR/evaluation_setup/fold1_test.csv`` (an evaluation
set, or the development set's ``fold1_test``), classifies each with the run's deployable package
(``WORKDIR/compress/package``: the int8 model, and with DCASE2025 device-specific models each file's
device model) and writes, under ``--out``:

- ``<label>.output.csv``: the official results file, tab-separated: ``filename``, ``scene_label``
  (the most probable class) and one score column per class, the class probabilities, in the official
  class order (airport, bus, metro, metro_station, park, public_square, shopping_mall,
  street_pedestrian, street_traffic, tram), one row per listed file in list order; ``filename`` as the
  DCASE baselines write it (the listed name without its ``audio/`` folder);
- ``<label>.meta.yaml``: the system description with what the run knows filled in (parameters, MACs,
  model size, per-device and per-class development accuracy, the code version, the MLflow run) and the
  fields only people know (authors, affiliation) marked ``FILL IN``;
- ``<label>/``: the inference package.

The results file is written last (after the package and the meta YAML, each put in place whole), and an
earlier one is removed first: a run that fails part-way leaves no results file beside a wrong package.

Device IDs come from a ``device_id`` (DCASE2025 evaluation lists) or ``source_label`` column, else from
the TAU file-name suffix (``...-s1.wav``); a file without one uses the general model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.core import files
from pipeline.core.labels import CLASSES
from pipeline.inference import asc_infer
from pipeline.inference.predict_files import UsageError
from pipeline.inference.predict_models import resolve_model

logger = logging.getLogger("pipeline.submit")

LIST = "evaluation_setup/fold1_test.csv"
LABEL_PATTERN = re.compile(r"^[A-Za-z]+_[A-Za-z0-9]+_task1_[1-4]$")
FILL = "FILL IN"


def results_columns() -> list[str]:
    """The official results file's header: filename, scene_label, then one column per class in class order."""
    return ["filename", "scene_label", *CLASSES]


def device_of(filename: str) -> str | None:
    """The device of a TAU file name (``audio/airport-lisbon-1000-40000-0-s1.wav`` -> ``s1``), or None."""
    return asc_infer.device_from_filename(filename)


def read_list(eval_dir: Path) -> pd.DataFrame:
    """The files to classify (``filename``, ``device``), from ``EVAL_DIR/evaluation_setup/fold1_test.csv``.

    Raises:
      UsageError: no list, no ``filename`` column, repeated names, or listed files that do not exist.
    """
    path = eval_dir / LIST
    if not path.is_file():
        raise UsageError(f"--data {eval_dir}: no {LIST} (the list of files to classify)")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise UsageError(f"{path}: cannot read it as a tab-separated list: {e}") from None
    if "filename" not in table.columns:
        raise UsageError(f"{path}: no 'filename' column (columns: {list(table.columns)})")
    if table.empty:
        raise UsageError(f"{path}: lists no file")
    repeated = table.filename[table.filename.duplicated()].tolist()
    if repeated:
        raise UsageError(f"{path}: {len(repeated)} file(s) listed twice, e.g. {repeated[0]}")
    missing = [f for f in table.filename if not (eval_dir / f).is_file()]
    if missing:
        raise UsageError(f"{path}: {len(missing)} listed file(s) do not exist under {eval_dir}, e.g. {missing[0]}")
    column = next((c for c in ("device_id", "source_label") if c in table.columns), None)
    devices = table[column].str.strip().str.lower() if column else table.filename.map(device_of)
    return pd.DataFrame({"filename": table.filename, "device": devices.replace({"": None})})


def classify(model: asc_infer.Model, eval_dir: Path, listed: pd.DataFrame, progress: bool = True) -> np.ndarray:
    """float64 ``[n_files, n_classes]`` probabilities, each file through its device's model (or the general)."""
    from tqdm.auto import tqdm

    rows = []
    for name, device in tqdm(
        zip(listed.filename, listed.device, strict=True),
        total=len(listed),
        desc="submit",
        unit="file",
        disable=not progress,
    ):
        chosen = asc_infer.get_model_for_device(model, device) if device else model
        rows.append(asc_infer.predict(chosen, [str(eval_dir / name)])[0])
    return np.asarray(rows, np.float64)


def results_frame(listed: pd.DataFrame, probs: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """The official results table (see :func:`results_columns`)."""
    if list(labels) != list(CLASSES):
        raise ValueError(f"the model's classes {labels} are not the official order {list(CLASSES)}")
    out = pd.DataFrame({"filename": [Path(f).name if f.startswith("audio/") else f for f in listed.filename]})
    out["scene_label"] = [labels[i] for i in probs.argmax(axis=1)]
    for k, label in enumerate(labels):
        out[label] = probs[:, k]
    return out


def meta(label: str, workdir: Path, model: asc_infer.Model) -> dict:
    """The system meta YAML as a dict: the run's facts filled in, the rest marked :data:`FILL`."""
    ev_file = workdir / "evaluate" / "metrics.json"
    ev = json.loads(ev_file.read_text()) if ev_file.is_file() else {}
    plain = ev.get("splits", {}).get("evaluate", {}).get("plain", {})
    cx = model.complexity
    info = model.info
    marker = files.read_marker(workdir / "train") or {}
    run_id = info.get("train_run_id") or marker.get("run_id")  # the shipped model's run first

    def figures(m: dict) -> dict:  # DCASE accuracy: class-averaged where the figure has classes
        if not m:
            return {}
        acc = m.get("macro_accuracy", m.get("accuracy"))
        return {"accuracy": round(100 * float(acc), 2), "logloss": round(float(m["log_loss"]), 4)}

    results = {}
    if plain:
        results["general"] = {
            "overall": figures(plain.get("overall", {})),
            "class_wise": {c: figures(m) for c, m in plain.get("overall", {}).get("per_class", {}).items()},
            "device_wise": {d.lower(): figures(m) for d, m in plain.get("per_device", {}).items()},
        }
    special = ev.get("device_specific")
    if special:
        results["device_specific"] = {
            "overall": figures(special["overall"]),
            "device_wise": {d.lower(): figures(m) for d, m in special.get("per_device", {}).items()},
        }
    devices = model.devices
    return {
        "submission": {
            "label": label,
            "name": FILL,
            "abbreviation": FILL,
            "authors": [
                {"lastname": FILL, "firstname": FILL, "email": FILL, "corresponding": True, "affiliation": FILL}
            ],
        },
        "system": {
            "source_code": FILL,
            "description": {
                "input_sampling_rate": f"{model.sample_rate / 1000:g}kHz",
                "acoustic_features": "log-mel energies",
                "machine_learning_method": f"CNN ({info.get('model')})",
                "framework": "keras/tensorflow",
                "complexity_management": "weight quantization (int8)",
                "device_information": "per-device end-to-end fine-tuning" if devices else "none",
                "num_models_at_inference": 1 + len(devices),
            },
            "complexity": {  # the most complex model's figures, as the DCASE2025 template asks
                "total_model_size": max(
                    [int(cx["size_bytes"]), *(int(d.get("size_bytes", 0)) for d in devices.values())]
                ),
                "total_parameters": int(cx["params"]),
                "macs": max([int(cx["macs"]), *(int(d.get("macs", 0)) for d in devices.values())]),
                "counted_by": cx.get("counted_by", "NeSsi rules (evaluate.complexity)"),
            },
            "code_version": info.get("project", {}),
            "mlflow_run_id": run_id,
            "config": info.get("config"),
        },
        "results": {"development_dataset": results or FILL},
    }


def submit(workdir: Path, eval_dir: Path, out: Path, label: str, tracking_uri: str, progress: bool = True) -> Path:
    """Write the submission folder (see the module doc); returns the results file."""
    if not LABEL_PATTERN.match(label):
        raise UsageError(f"--label {label!r}: the DCASE form is Lastname_INST_task1_N (N = 1..4)")
    engine, package = resolve_model(str(workdir), None, tracking_uri)  # a stale package is refused
    if engine != "int8":
        raise UsageError(f"{workdir}: the submission is the int8 package (compress/package); run --stage compress")
    if not (Path(workdir) / "evaluate" / "metrics.json").is_file():
        logger.warning(
            "submit: %s has no evaluate/metrics.json: the meta YAML's development results are left FILL IN "
            "(run --stage evaluate first)",
            workdir,
        )
    model = asc_infer.load_model(package)
    listed = read_list(eval_dir)
    logger.info("submit: %d file(s) from %s with %s", len(listed), eval_dir / LIST, package)
    probs = classify(model, eval_dir, listed, progress)
    table = results_frame(listed, probs, model.labels)
    out.mkdir(parents=True, exist_ok=True)
    results = out / f"{label}.output.csv"
    # The results file is written last, so its presence means a complete folder: an earlier one goes first,
    # the package is copied beside its place and renamed onto it, then the meta YAML, then the results.
    results.unlink(missing_ok=True)
    _replace_folder(Path(package), out / label)
    files.write_text(out / f"{label}.meta.yaml", yaml.safe_dump(meta(label, Path(workdir), model), sort_keys=False))
    with files.atomic_path(results) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6f")
    return results


def _replace_folder(source: Path, target: Path) -> None:
    """Copy ``source`` to a temporary folder next to ``target``, then put it in ``target``'s place: a copy
    that fails (a full disk) leaves no half folder under ``target``'s name."""
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(source, staged, dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        if staged.exists():
            shutil.rmtree(staged)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.submit", description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", type=Path, help="a run's workdir (compress/package, evaluate/metrics.json)")
    p.add_argument("--data", type=Path, required=True, help=f"the set to classify (holds {LIST})")
    p.add_argument("--out", type=Path, default=Path("submission"), help="the submission folder (default submission/)")
    p.add_argument("--label", default="Lastname_INST_task1_1", help="Lastname_INST_task1_N (the file names)")
    p.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path = submit(args.workdir, args.data, args.out, args.label, args.tracking_uri, not args.no_progress)
    except (UsageError, asc_infer.InputError) as e:
        sys.stderr.write(f"submit: {e}\n")
        return 2 if isinstance(e, UsageError) else 1
    except OSError as e:  # a full disk, a folder without write permission: nothing is left half-written
        sys.stderr.write(f"submit: {e}\n")
        return 1
    sys.stdout.write(f"wrote {path}, {args.out / (args.label + '.meta.yaml')} and {args.out / args.label}/\n")
    return 0
