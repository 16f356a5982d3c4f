"""The register stage: the Model Registry follows its own settings; compress is reused.

Uses a copy of the session fixture ``shipped_workdir`` (prepare, train, compress, register on the
tiny set) with a fresh MLflow store in ``tmp_path``: no training here, only the registry step.
"""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.core import config
from pipeline.inference import registry as model_registry
from pipeline.running import runner
from pipeline.running import stages as registry
from pipeline.running.stages.base import Context, MemoryRecorder, StageError
from pipeline.running.stages.register import package_digest, register


def _marker(folder):
    return json.loads((folder / "_SUCCESS.json").read_text())


@pytest.fixture
def copy(shipped_workdir, tmp_path):
    """The shipped workdir copied, its settings pointed at an empty store in ``tmp_path``; MLflow's URI restored."""
    import mlflow

    workdir, params = shipped_workdir
    target = tmp_path / "w"
    shutil.copytree(workdir, target, symlinks=True)
    before = mlflow.get_tracking_uri()
    yield target, params, f"sqlite:///{tmp_path}/store.db", tmp_path / "artifacts"
    mlflow.set_tracking_uri(before)


def _with(params, uri, artifacts, name):
    return config.apply_overrides(
        params,
        [
            f"tracking.uri={uri}",
            f"tracking.artifact_root={artifacts}",
            "tracking.experiment=registry",
            f"tracking.registered_model='{name}'",
        ],
    )


def test_changing_the_registered_model_reruns_register_alone(copy):
    """Issue #21 item 5: a new name used to register nothing (compress reused); now register reruns and registers it."""
    import mlflow

    workdir, params, uri, artifacts = copy
    client = mlflow.MlflowClient(uri)
    trained = _marker(workdir / "train")

    first = runner.run_stages(_with(params, uri, artifacts, "scenes-a"), workdir, ["compress", "register"])
    assert first["compress"] == {"reused": True} and "reused" not in first["register"]
    (a1,) = client.search_model_versions("name='scenes-a'")

    second = runner.run_stages(_with(params, uri, artifacts, "scenes-b"), workdir, ["compress", "register"])
    assert second["compress"] == {"reused": True} and "reused" not in second["register"]
    (b1,) = client.search_model_versions("name='scenes-b'")
    assert len(client.search_model_versions("name='scenes-a'")) == 1
    # the version names its training run and comes from the register stage's own run
    assert b1.tags["train_output"] == trained["output"] and b1.tags["train_run_id"] == trained["run_id"]
    assert trained["output"] and trained["run_id"]
    marker = _marker(workdir / "register")
    assert b1.run_id == marker["run_id"] != a1.run_id
    assert client.get_run(b1.run_id).data.tags["stage"] == "register"
    assert b1.tags["package_digest"] == package_digest(workdir / "compress" / "package")
    assert b1.tags["compress_run_id"] == _marker(workdir / "compress")["run_id"]
    shipped = json.loads((workdir / "compress" / "package" / "asc_infer" / "model" / "metrics.json").read_text())
    assert float(b1.tags["int8_macro_accuracy"]) == pytest.approx(
        shipped["int8"]["overall"]["macro_accuracy"], abs=5e-5
    )
    written = json.loads((workdir / "register" / "registered.json").read_text())
    assert written["registered_model"] == "scenes-b" and written["version"] == str(b1.version) == "1"
    assert written["model_uri"] == "models:/scenes-b/1" and written["run_id"] == b1.run_id
    summary = runner.summary(_with(params, uri, artifacts, "scenes-b"), workdir, second)
    assert "registry: models:/scenes-b/1 (python -m pipeline.predict FILES --model models:/scenes-b/1" in summary

    third = runner.run_stages(_with(params, uri, artifacts, "scenes-b"), workdir, ["compress", "register"])
    assert third == {"compress": {"reused": True}, "register": {"reused": True}}
    assert len(client.search_model_versions("name='scenes-b'")) == 1  # no new version for the same package


def test_empty_name_logs_the_pyfunc_without_registering(copy, tmp_path):
    import mlflow

    workdir, params, uri, artifacts = copy
    runner.run_stages(_with(params, uri, artifacts, ""), workdir, ["register"])
    assert mlflow.MlflowClient(uri).search_registered_models() == []
    written = json.loads((workdir / "register" / "registered.json").read_text())
    assert written["registered_model"] is None and written["version"] is None
    assert written["model_uri"] == f"runs:/{_marker(workdir / 'register')['run_id']}/model"
    fetched = model_registry.package_from_registry(written["model_uri"], uri, dst=tmp_path / "fetched")
    source = workdir / "compress" / "package" / "asc_infer" / "model" / "model_int8.tflite"
    assert (fetched / "asc_infer" / "model" / "model_int8.tflite").read_bytes() == source.read_bytes()


def _context(params, workdir, out, recorder):
    out.mkdir(parents=True, exist_ok=True)
    return Context(
        params=params,
        workdir=workdir,
        out=out,
        inputs={"compress": workdir / "compress"},
        record=recorder,
        data_name=registry.data_name(params),
        outputs={"compress": registry.get("compress").outputs},
    )


def test_register_reads_the_tags_from_the_package(shipped_workdir, tmp_path):
    """Without MLflow: the recorder gets the package and the tags compress used to compute, plus the provenance."""
    workdir, params = shipped_workdir
    recorder = MemoryRecorder()
    result = register(_context(params, workdir, tmp_path / "register", recorder))
    ((path, tags),) = recorder.packages
    assert path == workdir / "compress" / "package"
    model_dir = path / "asc_infer" / "model"
    cost = json.loads((model_dir / "complexity.json").read_text())
    info = json.loads((model_dir / "model.json").read_text())
    assert tags["int8_size_bytes"] == str(cost["size_bytes"]) and tags["int8_macs"] == str(cost["macs"])
    assert tags["int8_params"] == str(cost["params"]) and tags["within_limits"] in ("true", "false")
    assert tags["config"] == params.name and tags["model"] == params.model.name
    assert tags["data"] == registry.data_name(params)
    assert tags["train_output"] == info["train_output"] == _marker(workdir / "train")["output"]
    written = json.loads(result["registered"].read_text())
    assert written["version"] is None and written["model_uri"] is None and written["tags"] == tags


def test_an_incomplete_package_is_refused_naming_the_file(shipped_workdir, tmp_path):
    workdir, params = shipped_workdir
    broken = tmp_path / "w"
    shutil.copytree(workdir / "compress", broken / "compress", symlinks=True)
    (broken / "compress" / "package" / "asc_infer" / "model" / "complexity.json").unlink()
    with pytest.raises(StageError, match=r"complexity\.json is missing.*rerun --stage compress"):
        register(_context(params, broken, tmp_path / "register", MemoryRecorder()))
    shutil.rmtree(broken / "compress" / "package" / "asc_infer")
    with pytest.raises(StageError, match=r"holds no package \(no asc_infer/__init__\.py\)"):
        register(_context(params, broken, tmp_path / "register", MemoryRecorder()))
