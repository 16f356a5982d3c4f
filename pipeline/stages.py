"""Pipeline stages: each a plain function of (params, workdir) -> outputs under the workdir.

=========  ==========================================  ======================================
stage      reads                                       writes (under ``workdir``)
=========  ==========================================  ======================================
prepare    the dataset (``data.source``)               prepare/index.csv, summary.json/.csv
=========  ==========================================  ======================================

Every stage runs inside its own nested MLflow run (:func:`run_stages` opens the parent),
writes files atomically and finishes by writing its ``_SUCCESS.json`` marker; a stage
refuses inputs whose marker is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline import data as tau
from pipeline import files, tracking
from pipeline.config import Params

logger = logging.getLogger(__name__)

STAGES = ("prepare",)


class StageError(RuntimeError):
    """A stage cannot run (missing inputs from an earlier stage, ...)."""


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
        key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:10]
        root = workdir / "data" / f"synthetic-{syn.n_clips}-{key}"
        synthetic.generate(root, n_clips=syn.n_clips, seed=params.seed, sample_rate_hz=params.audio.sample_rate_hz,
                           clip_seconds=params.audio.clip_seconds, n_cities=syn.n_cities, workers=syn.workers,
                           progress=True)
        return DataSource(root, "synthetic")
    root = Path(params.data.source).expanduser()
    return DataSource(root, root.resolve().name)


def data_name(params: Params) -> str:
    return "synthetic" if params.data.source == "synthetic" else Path(params.data.source).expanduser().resolve().name


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


# --------------------------------------------------------------------------- orchestration

_FUNCTIONS = {"prepare": prepare}


def run_stages(params: Params, workdir: Path, stages: list[str]) -> dict[str, dict]:
    """Run ``stages`` in order under one MLflow parent run, one nested run per stage."""
    unknown = [s for s in stages if s not in _FUNCTIONS]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; available: {list(_FUNCTIONS)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    name = data_name(params)
    results: dict[str, dict] = {}
    label = "all" if len(stages) > 1 else stages[0]
    with tracking.parent_run(params, name, label):
        for stage in stages:
            logger.info("stage %s", stage)
            with tracking.stage_run(params, name, stage):
                results[stage] = _FUNCTIONS[stage](params, workdir)
    return results
