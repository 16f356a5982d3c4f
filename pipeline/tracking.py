"""MLflow tracking: one parent run per CLI invocation, one nested run per stage.

The store defaults to ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/``
(MLflow 3 deprecates the file store); ``tracking.uri`` points a team at its server.
A stage that raises ends its run FAILED with the traceback logged as ``error.txt``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import subprocess
import tempfile
import traceback
from pathlib import Path
from typing import Iterator

from pipeline.core.config import Params

logger = logging.getLogger(__name__)

PACKAGES = ("tensorflow", "tf-keras", "tensorflow-io", "tensorflow-model-optimization", "mlflow",
            "numpy", "asc-pipeline")


def _mlflow():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _artifact_location(root: str) -> str:
    if "://" in root:
        return root
    return Path(root).resolve().as_uri()


def setup(params: Params) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    mlflow = _mlflow()
    uri = params.tracking.uri
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(params.tracking.experiment)
    if exp is None:
        exp_id = client.create_experiment(params.tracking.experiment,
                                          artifact_location=_artifact_location(params.tracking.artifact_root))
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def run_name(params: Params, data_name: str) -> str:
    if params.tracking.run_name:
        return params.tracking.run_name
    return f"{params.model.name}-{params.name}-{data_name}-seed{params.seed}"


def base_tags(params: Params, data_name: str) -> dict[str, str]:
    tags = {
        "model": params.model.name,
        "config": params.name,
        "data": data_name,
        "seed": str(params.seed),
        "data.source": params.data.source,
    }
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
    for name, version in package_versions().items():
        tags[f"version.{name}"] = version
    return tags


@contextlib.contextmanager
def parent_run(params: Params, data_name: str, stage: str) -> Iterator[object]:
    """The invocation's parent run, with the flattened Params and the base tags."""
    mlflow = _mlflow()
    setup(params)
    tags = base_tags(params, data_name)
    tags["stages"] = stage
    with mlflow.start_run(run_name=run_name(params, data_name), tags=tags) as run:
        mlflow.log_params(params.flat())
        logger.info("MLflow parent run %s (experiment '%s', store %s)", run.info.run_id,
                    params.tracking.experiment, params.tracking.uri)
        yield run


@contextlib.contextmanager
def stage_run(params: Params, data_name: str, stage: str, *, run_id: str | None = None,
              extra_tags: dict | None = None) -> Iterator[object]:
    """A nested run for one stage; FAILED with ``error.txt`` when the body raises.

    ``run_id`` resumes an existing run (the train stage does so after an interruption).
    """
    mlflow = _mlflow()
    tags = base_tags(params, data_name)
    tags.update({"stage": stage, **(extra_tags or {})})
    parent = mlflow.active_run()
    kwargs = dict(nested=parent is not None)
    if run_id is not None:
        kwargs["run_id"] = run_id
    else:
        kwargs["run_name"] = f"{stage}: {run_name(params, data_name)}"
    run = mlflow.start_run(**kwargs, tags=tags)
    if run_id is None:
        mlflow.log_params(params.flat())
    logger.info("MLflow %s run %s", stage, run.info.run_id)
    try:
        yield run
    except BaseException as exc:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "error.txt"
            path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            try:
                mlflow.log_artifact(str(path))
            except Exception:  # noqa: BLE001 - never mask the original error
                logger.exception("could not log the traceback to MLflow")
        mlflow.end_run(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def log_dict_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow = _mlflow()
    clean = {k: float(v) for k, v in metrics.items() if v is not None}
    if clean:
        mlflow.log_metrics(clean, step=step)
