"""The deployable package in MLflow's Model Registry: log it as a pyfunc model, register it, get it back.

Every call of :func:`log_package` with a model name registers a new version of that model with the given
tags (metrics, complexity, config, data) plus ``run_id``, and a description. The logged model's code is
:mod:`pipeline.inference.serving` alone (models from code: MLflow copies that one file into the model), so
this module, which the served model never needs, lives apart from it. :func:`package_from_registry` turns
``models:/NAME/VERSION``, ``models:/NAME@alias`` or ``runs:/RUN_ID/model`` back into a local package folder.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
import pandas as pd

from pipeline.inference import serving
from pipeline.inference.serving import (
    AUDIO_COLUMN,
    MAX_TAG_CHARS,
    MODEL_NAME,
    PACKAGE_ARTIFACT,
    PackageError,
    _model_dir,
    _runtime,
    example_clips,
    signature,
)

logger = logging.getLogger(__name__)


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


INTERPRETER_DISTRIBUTIONS = {
    "ai_edge_litert": "ai-edge-litert",
    "tflite_runtime": "tflite-runtime",
    "tensorflow.lite": "tensorflow",
}


def requirements(model) -> list[str]:
    """Pinned pip requirements: mlflow, numpy and the TFLite interpreter that runs ``model`` here.

    Args:
      model: a loaded runtime model (``model.runtime`` names its interpreter module).
    """
    reqs = []
    for dist in ("mlflow", "numpy", INTERPRETER_DISTRIBUTIONS.get(model.runtime, model.runtime)):
        version = _installed(dist)
        if version is None:
            raise PackageError(f"'{dist}' (needed to load the package) is not installed in this environment")
        reqs.append(f"{dist}=={version}")
    return reqs


def _description(model, tags: Mapping[str, str], run_id: str) -> str:
    parts = [
        (
            f"Acoustic scene classifier (deployable package: TFLite front end + int8 classifier), "
            f"{len(model.labels)} classes ({', '.join(model.labels)}), {model.sample_rate} Hz, "
            f"windows of {model.window_samples} samples; logged by run {run_id}."
        )
    ]
    shown = [f"{k}={v}" for k, v in tags.items() if k != "run_id"]
    if shown:
        parts.append("Tags: " + ", ".join(shown) + ".")
    parts.append(
        "Input: a column 'audio' of whole WAV files (bytes; base64 in JSON) and optionally 'device' (each "
        "file's device ID). Output: 'scene', one probability per class, 'windows', 'model' (the device model "
        "that scored the file, or 'general'), 'error' (empty, or why that file failed: its row only)."
    )
    return " ".join(parts)


def log_package(package_dir: Path, *, run_id: str, registered_model: str, tags: Mapping[str, str]) -> str | None:
    """Log a package folder as a pyfunc model of run ``run_id``; register a new version of ``registered_model``.

    The store is MLflow's current tracking URI (the runner's ``tracking.uri``); the logged model
    goes into the run's experiment whether or not that run is the active one.

    Args:
      package_dir: the folder written by :func:`pipeline.inference.package.build_package` (holds ``asc_infer/``).
      run_id: the MLflow run the model belongs to (the register stage's run).
      registered_model: Model Registry name; empty: log without registering.
      tags: set on the model version (and the logged model); ``run_id`` is added.

    Returns:
      The new version (as a string), or ``None`` when ``registered_model`` is empty.
    """
    package_dir = Path(package_dir)
    runtime = _runtime(package_dir)
    model = runtime.load_model(_model_dir(package_dir))
    all_tags = {str(k): str(v) for k, v in tags.items()}
    all_tags["run_id"] = run_id
    long = [k for k, v in all_tags.items() if len(v) > MAX_TAG_CHARS]
    if long:
        raise PackageError(f"tag(s) {long} of package {package_dir} exceed MLflow's {MAX_TAG_CHARS} characters")
    clips = example_clips()
    example = pd.DataFrame({AUDIO_COLUMN: clips})
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        tags=all_tags,
        params=dict(run.data.params),
    )
    # "Models from code": this very file is the model's code (no pickle); it needs only the
    # standard library, mlflow, numpy and pandas where the model is loaded, not ``pipeline``.
    info = mlflow.models.Model.log(
        artifact_path=None,
        name=MODEL_NAME,
        flavor=mlflow.pyfunc,
        run_id=run_id,
        python_model=str(Path(serving.__file__).resolve()),  # the model's code: serving.py alone
        artifacts={PACKAGE_ARTIFACT: str(package_dir)},
        signature=signature(model.labels),
        input_example=example,
        pip_requirements=requirements(model),
        model_id=logged.model_id,
    )
    logger.info("logged the package %s as pyfunc model %s (run %s)", package_dir, info.model_uri, run_id)
    if not registered_model:
        return None
    try:
        client.create_registered_model(
            registered_model, description="Acoustic scene classifier packages (one version per register run)"
        )
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = client.create_model_version(
        registered_model,
        source=info.model_uri,
        run_id=run_id,
        tags=all_tags,
        description=_description(model, all_tags, run_id),
        model_id=info.model_id,
    )
    logger.info(
        "registered %s version %s (models:/%s/%s)", registered_model, version.version, registered_model, version.version
    )
    return str(version.version)


def package_from_registry(uri: str, tracking_uri: str | None = None, dst: Path | None = None) -> Path:
    """A logged package back as a local folder (what ``asc_infer.load_model`` and the predict CLI read).

    Args:
      uri: ``models:/NAME/VERSION``, ``models:/NAME@alias``, ``models:/NAME/latest`` or
        ``runs:/RUN_ID/model``.
      tracking_uri: the store (tracking and Model Registry); ``None``: MLflow's current URIs.
      dst: download into this folder (created); ``None``: a new temporary folder.

    Returns:
      The package folder (holds ``asc_infer/`` and ``asc_infer/model/``).

    Raises:
      PackageError: the URI names no model, or the model holds no package.
    """
    if not uri.startswith(("models:/", "runs:/")):
        raise PackageError(
            f"'{uri}' is not a model URI: expected models:/NAME/VERSION, models:/NAME@alias "
            f"or runs:/RUN_ID/{MODEL_NAME}"
        )
    created = dst is None
    target = Path(tempfile.mkdtemp(prefix="asc-package-")) if created else Path(dst)
    target.mkdir(parents=True, exist_ok=True)
    try:
        return _download_package(uri, tracking_uri, target)
    except BaseException:
        if created:  # leave no empty temporary folder behind
            shutil.rmtree(target, ignore_errors=True)
        raise


def _download_package(uri: str, tracking_uri: str | None, target: Path) -> Path:
    # MLflow resolves models:/ names with the *global* registry URI whatever download_artifacts is
    # given, so the store is made the current tracking URI (hence registry) for the download only.
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    try:
        with _use_tracking_uri(tracking_uri) if tracking_uri else contextlib.nullcontext():
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{uri.rstrip('/')}/artifacts/{PACKAGE_ARTIFACT}", dst_path=str(target)
            )
    except mlflow.exceptions.MlflowException as exc:
        store = tracking_uri or mlflow.get_tracking_uri()
        raise PackageError(f"model '{uri}' not found in the MLflow store {store}: {exc.message}") from exc
    folder = Path(local)
    if not (folder / "asc_infer" / "__init__.py").is_file():
        raise PackageError(f"model '{uri}' holds no package (no {PACKAGE_ARTIFACT}/asc_infer/__init__.py)")
    return folder
