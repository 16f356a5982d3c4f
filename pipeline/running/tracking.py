"""MLflow tracking: one parent run per CLI invocation, one nested run per stage (used by the runner only).

The store defaults to ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/``
(MLflow 3 deprecates the file store); ``tracking.uri`` points a team at its server.
A stage that raises ends its run FAILED with the traceback logged as ``error.txt``; one stopped on
purpose (:class:`Stopped`, e.g. a search pruning a trial) ends its run and the parent run KILLED,
tagged ``stopped`` with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import socket
import subprocess
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.config import Params
from pipeline.core.lock import file_lock
from pipeline.running.stages.base import MemoryRecorder, Recorder

logger = logging.getLogger(__name__)


class Stopped(Exception):
    """Raised to stop a run early on purpose (not a failure): its MLflow runs end KILLED, tagged ``stopped``.

    The runner's ``observe`` hook raises a subclass to end a stage while it works (a search's
    pruned trial); the message is the reason, kept in the ``stopped`` tag of the stage's run and
    of the parent run.
    """


PACKAGES = (
    "tensorflow",
    "tf-keras",
    "tensorflow-io",
    "tensorflow-model-optimization",
    "mlflow",
    "numpy",
    "asc-pipeline",
)


def _mlflow():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
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


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise store creation between processes: two runs starting at once on a fresh sqlite
    store both tried to create its tables ("table experiments already exists")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db.parent / f".{db.name}.lock"):  # blocks until the other run has created the store
        yield


def setup(params: Params) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    mlflow = _mlflow()
    uri = params.tracking.uri
    with _store_lock(uri):
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(params.tracking.experiment)
        if exp is None:
            exp_id = client.create_experiment(
                params.tracking.experiment, artifact_location=_artifact_location(params.tracking.artifact_root)
            )
        else:
            exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def process_alive(pid: int) -> bool:
    """True when process ``pid`` of this host is alive (or not ours to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_stale_runs(client, experiment_id: str) -> list[str]:
    """Mark KILLED the runs left RUNNING by a process of this host that is gone (SIGKILL, power loss).

    Runs carry ``process.host`` and ``process.pid`` tags; runs of other hosts, and of live
    processes, are left alone. Returns the ids of the runs marked.
    """
    host = socket.gethostname()
    marked = []
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`process.host` = '{host}'",
        max_results=1000,
    )
    for run in runs:
        pid = run.data.tags.get("process.pid", "")
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            client.set_tag(run.info.run_id, "ended_by", f"a later run: process {pid} on {host} was gone")
            client.set_terminated(run.info.run_id, status="KILLED")
            marked.append(run.info.run_id)
    if marked:
        logger.warning(
            "MLflow: marked %d run(s) KILLED that a dead process had left RUNNING: %s", len(marked), ", ".join(marked)
        )
    return marked


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
        "process.pid": str(os.getpid()),
        "process.host": socket.gethostname(),
    }
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
    for name, version in package_versions().items():
        tags[f"version.{name}"] = version
    return tags


class MlflowRecorder(Recorder):
    """A stage's records into its (active) MLflow run."""

    def __init__(self, run_id: str, experiment: str, registered_model: str = ""):
        super().__init__(run_id)
        self.experiment = experiment
        self.registered_model = registered_model
        self.registered_versions: list[str] = []

    def _log_metrics(self, values, step):
        _mlflow().log_metrics(values, step=step)

    def _log_tags(self, values):
        _mlflow().set_tags(values)

    def artifact(self, path, folder=None):
        _mlflow().log_artifact(str(path), artifact_path=folder)

    def dict(self, obj, name):
        _mlflow().log_dict(obj, name)

    def model(self, model, example_input):
        """The model in MLflow's tensorflow flavour, with an input signature (waveform in, logits out)."""
        mlflow = _mlflow()
        from mlflow.models import infer_signature

        signature = infer_signature(example_input, model(example_input, training=False).numpy())
        try:
            mlflow.tensorflow.log_model(model, name="model", signature=signature)
        except Exception as exc:
            logger.warning("MLflow tensorflow flavour failed (%s); the .keras checkpoint is logged instead", exc)

    def package(self, path, tags):
        """The package as a pyfunc model in this run, registered as a new version of ``registered_model``.

        Returns:
          ``{"model_uri": "models:/NAME/VERSION" (or the logged model's ``runs:/RUN_ID/model`` when
          ``registered_model`` is empty), "logged_model_uri": "runs:/RUN_ID/model", "version": str | None}``.

        Raises:
          RuntimeError: logging or registering failed (the message names the package and the model name).
        """
        super().package(path, tags)
        from pipeline.inference import registry, serving

        try:
            version = registry.log_package(
                Path(path), run_id=self.run_id, registered_model=self.registered_model, tags=tags
            )
        except Exception as exc:
            target = f"registering it as '{self.registered_model}'" if self.registered_model else "(no registering)"
            raise RuntimeError(
                f"logging the package {path} as an MLflow model {target} failed: {exc} "
                f"(tracking.registered_model='' logs without registering)"
            ) from exc
        logged = f"runs:/{self.run_id}/{serving.MODEL_NAME}"
        if version is None:
            return {"model_uri": logged, "logged_model_uri": logged, "version": None}
        self.registered_versions.append(version)
        return {
            "model_uri": f"models:/{self.registered_model}/{version}",
            "logged_model_uri": logged,
            "version": version,
        }

    def finished_runs(self, stage):
        mlflow = _mlflow()
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is None:
            return []
        runs = mlflow.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.stage = '{stage}' and status = 'FINISHED'",
            max_results=200,
            output_format="list",
        )
        return [
            {
                "name": r.data.tags.get("mlflow.runName", r.info.run_id[:8]),
                "metrics": dict(r.data.metrics),
                "tags": dict(r.data.tags),
                "params": dict(r.data.params),
            }
            for r in runs
        ]


class MlflowTracker:
    """The runner's MLflow side: one parent run per invocation, one nested run per stage."""

    def __init__(self, params: Params, data_name: str):
        self.params = params
        self.data_name = data_name

    @contextlib.contextmanager
    def parent(self, label: str) -> Iterator[object]:
        """The invocation's parent run, with the flattened Params and the base tags."""
        mlflow = _mlflow()
        experiment_id = setup(self.params)
        end_stale_runs(mlflow.MlflowClient(), experiment_id)
        tags = base_tags(self.params, self.data_name)
        tags["stages"] = label
        with mlflow.start_run(run_name=run_name(self.params, self.data_name), tags=tags) as run:
            mlflow.log_params(self.params.flat())
            logger.info(
                "MLflow parent run %s (experiment '%s', store %s)",
                run.info.run_id,
                self.params.tracking.experiment,
                self.params.tracking.uri,
            )
            self.parent_id = run.info.run_id
            try:
                yield run
            except Stopped as exc:  # ended here, so the context manager does not mark it FAILED
                mlflow.set_tag("stopped", str(exc)[:5000])
                mlflow.end_run(status="KILLED")
                raise

    def parent_metrics(self, values: dict) -> None:
        if values:
            _mlflow().MlflowClient().log_batch(self.parent_id, metrics=[_metric(k, v) for k, v in values.items()])

    def parent_tags(self, values: dict) -> None:
        client = _mlflow().MlflowClient()
        for k, v in values.items():
            client.set_tag(self.parent_id, k, v)

    def run_exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            _mlflow().MlflowClient().get_run(run_id)
        except Exception:
            return False
        return True

    @contextlib.contextmanager
    def stage(self, stage: str, *, run_id: str | None = None, tags: dict | None = None) -> Iterator[MlflowRecorder]:
        """A nested run for one stage; FAILED (KILLED on Ctrl-C) with ``error.txt`` when the body raises.

        ``run_id`` continues an existing run (a resumable stage after an interruption).
        """
        mlflow = _mlflow()
        all_tags = base_tags(self.params, self.data_name)
        all_tags.update({"stage": stage, **(tags or {})})
        kwargs: dict = {"nested": mlflow.active_run() is not None}
        if run_id is not None:
            kwargs["run_id"] = run_id
        else:
            kwargs["run_name"] = f"{stage}: {run_name(self.params, self.data_name)}"
        run = mlflow.start_run(**kwargs, tags=all_tags)
        if run_id is None:
            mlflow.log_params(self.params.flat())
        logger.info("MLflow %s run %s", stage, run.info.run_id)
        try:
            yield MlflowRecorder(
                run.info.run_id, self.params.tracking.experiment, registered_model=self.params.tracking.registered_model
            )
        except Stopped as exc:
            mlflow.set_tag("stopped", str(exc)[:5000])
            mlflow.end_run(status="KILLED")
            raise
        except BaseException as exc:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "error.txt"
                path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                try:
                    mlflow.log_artifact(str(path))
                except Exception:  # never mask the original error
                    logger.exception("could not log the traceback to MLflow")
            mlflow.end_run(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        else:
            mlflow.end_run(status="FINISHED")


def _metric(key: str, value: float):
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


class MemoryTracker:
    """The runner without MLflow: every stage records into a :class:`MemoryRecorder` (tests, notebooks)."""

    def __init__(self):
        self.stages: dict[str, MemoryRecorder] = {}
        self.parent_records = MemoryRecorder("parent")

    @contextlib.contextmanager
    def parent(self, label: str):
        yield self.parent_records

    def parent_metrics(self, values: dict) -> None:
        self.parent_records.metrics(values)

    def parent_tags(self, values: dict) -> None:
        self.parent_records.tags(values)

    def run_exists(self, run_id: str | None) -> bool:
        return False

    @contextlib.contextmanager
    def stage(self, stage: str, *, run_id: str | None = None, tags: dict | None = None):
        recorder = MemoryRecorder(f"memory-{stage}")
        recorder.tags(tags or {})
        self.stages[stage] = recorder
        yield recorder
