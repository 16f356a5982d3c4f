"""The package as an MLflow pyfunc model: registry versions, round trips and a real ``mlflow models serve``.

Uses the session fixture ``shipped_workdir`` (prepare, train, compress once on the tiny set, tracked
in ``workdir/mlflow.db``): its compress run logged the package and registered a version of
``asc-scene-classifier`` (version 1 in a fresh store).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import asc_infer, serving
from pipeline import stages as registry
from pipeline.launch import free_ports
from pipeline.stages.base import MemoryRecorder, PrefixedRecorder

SERVE_DEADLINE_S = 180.0
# In-process pyfunc vs the runtime API: the same code on the same TFLite files -> the same numbers.
SAME_CODE_ATOL = 1e-12
# Served vs in-process: JSON carries float64 as shortest round-trip decimals -> exact up to parsing.
JSON_ATOL = 1e-12


def _clips() -> list[bytes]:
    """Three recordings the runtime must adapt: 48 kHz stereo 1.6 s, 16 kHz mono 0.3 s, 22.05 kHz mono 2.5 s."""
    rng = np.random.default_rng(3)
    t48 = np.arange(int(1.6 * 48000)) / 48000
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 300 * t48), 0.2 * rng.standard_normal(t48.size)], axis=1)
    short = 0.3 * rng.standard_normal(int(0.3 * 16000))
    t22 = np.arange(int(2.5 * 22050)) / 22050
    chirp = 0.5 * np.sin(2 * np.pi * (200 + 400 * t22) * t22)
    return [serving.wav_bytes(stereo, 48000), serving.wav_bytes(short, 16000), serving.wav_bytes(chirp, 22050)]


def shipped_version(client, params, workdir: Path) -> str:
    """The registry version of the shipped workdir's compress run."""
    run_id = json.loads((workdir / "compress" / "_SUCCESS.json").read_text())["run_id"]
    found = [str(v.version) for v in client.search_model_versions(f"name='{params.tracking.registered_model}'")
             if v.run_id == run_id]
    assert len(found) == 1, f"compress run {run_id} registered versions {found}"
    return found[0]


@pytest.fixture(scope="module")
def store(shipped_workdir):
    """The shipped workdir's MLflow store as the current tracking URI (restored afterwards)."""
    import mlflow

    workdir, params = shipped_workdir
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(params.tracking.uri)
    yield workdir, params, mlflow.MlflowClient(params.tracking.uri)
    mlflow.set_tracking_uri(before)


def test_recorders_keep_and_pass_on_packages(tmp_path):
    inner = MemoryRecorder()
    outer = PrefixedRecorder(inner, "teacher1_")
    outer.package(tmp_path / "package", {"int8_macs": 123, "config": "tiny"})
    assert inner.packages == [(tmp_path / "package", {"int8_macs": "123", "config": "tiny"})]
    assert outer.packages == inner.packages


def test_compress_run_registered_version_with_metrics_as_tags(store):
    workdir, params, client = store
    name = params.tracking.registered_model
    assert name == "asc-scene-classifier"
    versions = client.search_model_versions(f"name='{name}'")
    marker = json.loads((workdir / "compress" / "_SUCCESS.json").read_text())
    ours = [v for v in versions if v.run_id == marker["run_id"]]
    assert len(ours) == 1, [(v.version, v.run_id) for v in versions]  # exactly one version per compress run
    version = ours[0]
    assert version.tags["run_id"] == marker["run_id"]
    shipped = json.loads((workdir / "compress" / "package" / "asc_infer" / "model" / "metrics.json").read_text())
    overall = shipped["int8"]["overall"]
    assert float(version.tags["int8_macro_accuracy"]) == pytest.approx(overall["macro_accuracy"], abs=5e-5)
    assert float(version.tags["int8_log_loss"]) == pytest.approx(overall["log_loss"], abs=5e-5)
    cost = json.loads((workdir / "compress" / "package" / "asc_infer" / "model" / "complexity.json").read_text())
    assert int(version.tags["int8_size_bytes"]) == cost["size_bytes"]
    assert int(version.tags["int8_macs"]) == cost["macs"]
    assert version.tags["config"] == params.name and version.tags["data"] == registry.data_name(params)
    assert marker["run_id"] in version.description and "airport" in version.description


def test_pyfunc_in_process_equals_runtime_api(store):
    import mlflow

    workdir, params, client = store
    clips = _clips()
    version = shipped_version(client, params, workdir)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{params.tracking.registered_model}/{version}")
    assert pyfunc.metadata.get_input_schema().input_names() == ["audio"]
    got = pyfunc.predict(pd.DataFrame({"audio": clips}))

    model = asc_infer.load_model(workdir / "compress" / "package")
    recordings = asc_infer.load_inputs(clips, model)
    want = asc_infer.predict(model, recordings)
    assert list(got.columns) == ["scene", *model.labels, "windows"]
    np.testing.assert_allclose(got[model.labels].to_numpy(), want, rtol=0, atol=SAME_CODE_ATOL)
    np.testing.assert_allclose(got[model.labels].to_numpy().sum(axis=1), 1.0, atol=1e-9)
    assert got["scene"].tolist() == [model.labels[i] for i in want.argmax(axis=1)]
    # 1.6 s at 44.1 kHz in 1-s windows -> 2; 0.3 s -> 1 (padded); 2.5 s -> 3
    assert got["windows"].tolist() == [len(r) for r in recordings] == [2, 1, 3]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def test_mlflow_models_serve_answers_like_the_pyfunc(store, tmp_path):
    """``mlflow models serve -m models:/NAME/VERSION --env-manager local`` in a process that cannot import ``pipeline``."""
    import mlflow

    workdir, params, client = store
    uri = f"models:/{params.tracking.registered_model}/{shipped_version(client, params, workdir)}"
    clips = _clips()[:2]
    expected = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"audio": clips}))

    shim = tmp_path / "shim" / "pipeline"  # proves the served model needs nothing of this project
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("a served model must not import pipeline")\n')
    bindir = str(Path(sys.executable).parent)  # mlflow starts uvicorn by name
    env = dict(os.environ, MLFLOW_TRACKING_URI=params.tracking.uri, PYTHONPATH=str(shim.parent),
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    (port,) = free_ports(1)
    log = tmp_path / "serve.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager",
                                   "local", "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=tmp_path,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if server.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() - started > SERVE_DEADLINE_S:
                pytest.fail(f"mlflow models serve not up after {SERVE_DEADLINE_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        encoded = [base64.b64encode(c).decode("ascii") for c in clips]
        split = _post(f"http://127.0.0.1:{port}/invocations",
                      {"dataframe_split": {"columns": ["audio"], "data": [[e] for e in encoded]}})["predictions"]
        records = _post(f"http://127.0.0.1:{port}/invocations",
                        {"dataframe_records": [{"audio": e} for e in encoded]})["predictions"]
        with pytest.raises(urllib.error.HTTPError) as bad:
            _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [{"audio": "bm90IGEgd2F2"}]})
        assert bad.value.code == 400
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=20)
    labels = [c for c in expected.columns if c not in ("scene", "windows")]
    for answer in (split, records):
        served = pd.DataFrame(answer)
        assert list(served.columns) == list(expected.columns)
        np.testing.assert_allclose(served[labels].to_numpy(float), expected[labels].to_numpy(), rtol=0,
                                   atol=JSON_ATOL)
        assert served["scene"].tolist() == expected["scene"].tolist()
        assert served["windows"].tolist() == expected["windows"].tolist() == [2, 1]


def test_package_from_registry_round_trips(store, tmp_path):
    workdir, params, client = store
    name = params.tracking.registered_model
    source = workdir / "compress" / "package" / "asc_infer"
    version = shipped_version(client, params, workdir)
    run_id = client.get_model_version(name, version).run_id
    for i, uri in enumerate([f"models:/{name}/{version}", f"runs:/{run_id}/model"]):
        folder = serving.package_from_registry(uri, params.tracking.uri, dst=tmp_path / str(i))
        shipped = sorted(p.relative_to(source) for p in source.rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts)
        fetched = sorted(p.relative_to(folder / "asc_infer") for p in (folder / "asc_infer").rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts)
        assert fetched == shipped, uri
        for rel in shipped:
            assert (folder / "asc_infer" / rel).read_bytes() == (source / rel).read_bytes(), (uri, rel)
    model = asc_infer.load_model(folder)
    assert model.labels == asc_infer.load_model(workdir / "compress" / "package").labels


@pytest.mark.parametrize("uri", ["models:/asc-scene-classifier/99", "models:/no-such-model/1",
                                 "models:/asc-scene-classifier@no-such-alias"])
def test_missing_model_uri_is_a_clear_error(store, uri, tmp_path, monkeypatch):
    import tempfile

    _, params, _ = store
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(serving.PackageError, match=f"model '{uri}' not found in the MLflow store"):
        serving.package_from_registry(uri, params.tracking.uri)
    assert list(tmp_path.iterdir()) == []  # its temporary download folder is gone


def test_not_a_model_uri(tmp_path):
    with pytest.raises(serving.PackageError, match="'work/compress' is not a model URI"):
        serving.package_from_registry("work/compress", dst=tmp_path)


def test_second_compress_run_registers_the_next_version(shipped_workdir, tmp_path):
    """A copy of the shipped workdir and its store: one more compress run -> version + 1, alias round trip."""
    import mlflow

    from pipeline import runner

    workdir, params = shipped_workdir
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy, symlinks=True)
    tracking = dataclasses.replace(params.tracking, uri=f"sqlite:///{copy}/mlflow.db",
                                   artifact_root=str(copy / "mlruns"), experiment="tiny-again")
    # PTQ only (no QAT epoch): the second run is about the registry, not about quantization
    again = dataclasses.replace(params, tracking=tracking, compress=dataclasses.replace(params.compress, qat=False))
    client = mlflow.MlflowClient(tracking.uri)
    name = params.tracking.registered_model
    old = {int(v.version): v.run_id for v in client.search_model_versions(f"name='{name}'")}
    before = mlflow.get_tracking_uri()
    try:
        runner.run_stages(again, copy, ["compress"], force=True)
    finally:
        mlflow.set_tracking_uri(before)
    versions = {int(v.version): v for v in client.search_model_versions(f"name='{name}'")}
    new = max(old) + 1
    assert sorted(versions) == [*sorted(old), new]
    marker = json.loads((copy / "compress" / "_SUCCESS.json").read_text())
    assert versions[new].run_id == marker["run_id"] and marker["run_id"] not in old.values()
    metrics = json.loads((copy / "compress" / "package" / "asc_infer" / "model" / "metrics.json").read_text())
    assert float(versions[new].tags["int8_macro_accuracy"]) == pytest.approx(
        metrics["int8"]["overall"]["macro_accuracy"], abs=5e-5)
    client.set_registered_model_alias(name, "champion", str(new))
    folder = serving.package_from_registry(f"models:/{name}@champion", tracking.uri, dst=tmp_path / "fetched")
    assert ((folder / "asc_infer" / "model" / "model_int8.tflite").read_bytes()
            == (copy / "compress" / "package" / "asc_infer" / "model" / "model_int8.tflite").read_bytes())


def test_empty_registered_model_logs_without_registering(shipped_workdir, tmp_path):
    import mlflow

    workdir, _ = shipped_workdir
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("solo", artifact_location=(tmp_path / "mlruns").as_uri())
    run = client.create_run(experiment)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        assert serving.log_package(workdir / "compress" / "package", run_id=run.info.run_id, registered_model="",
                                   tags={"config": "tiny"}) is None
        got = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(
            pd.DataFrame({"audio": serving.example_clips()}))
    finally:
        mlflow.set_tracking_uri(before)
    assert client.search_registered_models() == []
    assert got["windows"].tolist() == [1, 1] and len(got) == 2
