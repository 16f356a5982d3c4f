"""The package as an MLflow pyfunc model: registry versions, round trips and a real ``mlflow models serve``.

Uses the session fixture ``shipped_workdir`` (prepare, train, compress once on the tiny set, tracked in
``workdir/mlflow.db``): its compress run logged the package and registered a version of ``asc-scene-classifier``
(version 1 in a fresh store). One ``mlflow models serve`` process (the module fixture ``served``) answers every
served test. Bad files (issue #21, items 4, 8 and 12) fail their own row only, in process and served.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.inference import asc_infer, serving
from pipeline.inference import registry as model_registry
from pipeline.running import stages as registry
from pipeline.running.stages.base import MemoryRecorder, PrefixedRecorder
from pipeline.scaling.launch import free_ports
from tests.tflite_reference import reference_probabilities

SERVE_DEADLINE_S = 180.0
# In-process pyfunc vs the runtime API: the same code on the same TFLite files -> the same numbers.
SAME_CODE_ATOL = 1e-12
# Served vs in-process: JSON carries float64 as shortest round-trip decimals -> exact up to parsing.
JSON_ATOL = 1e-12
# A file refused from its header (a 10 MHz sample rate) is answered at once: ms in process; HTTP adds little.
AT_ONCE_S = 2.0
# an absolute path (POSIX or Windows) anywhere in a served answer
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[\w.@+~-]+/)+|\b[A-Za-z]:\\")


def _clips() -> list[bytes]:
    """Three recordings the runtime must adapt: 48 kHz stereo 1.6 s, 16 kHz mono 0.3 s, 22.05 kHz mono 2.5 s."""
    rng = np.random.default_rng(3)
    t48 = np.arange(int(1.6 * 48000)) / 48000
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 300 * t48), 0.2 * rng.standard_normal(t48.size)], axis=1)
    short = 0.3 * rng.standard_normal(int(0.3 * 16000))
    t22 = np.arange(int(2.5 * 22050)) / 22050
    chirp = 0.5 * np.sin(2 * np.pi * (200 + 400 * t22) * t22)
    return [serving.wav_bytes(stereo, 48000), serving.wav_bytes(short, 16000), serving.wav_bytes(chirp, 22050)]


def _float_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """A mono 32-bit IEEE-float WAV file holding ``samples`` as they are (no clipping)."""
    data = np.asarray(samples, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


BAD_FILES = {  # name: (the bytes, words of the reader's reason)
    "garbage": (b"RIFX this is not a wav file at all", "not a RIFF/WAVE file (corrupt or wrong format)"),
    "truncated": (_clips()[1][:3000], "truncated: header announces"),
    "float 1e30": (_float_wav(np.full(8000, 1e30), 16000), "samples far beyond full scale"),
    # a 12 KB WAV whose header claims 10 MHz (issue #21 item 8: it drove memory to gigabytes)
    "10 MHz": (
        serving.wav_bytes(0.1 * np.ones(6000), 10_000_000),
        "sample rate 10000000 Hz is outside the supported 1000..384000 Hz",
    ),
}


def _reason(model, data: bytes) -> str:
    """How the package's WAV reader words what is wrong with ``data``."""
    with pytest.raises(asc_infer.InputError) as failed:
        asc_infer.predict(model, asc_infer.load_inputs([data], model))
    return failed.value.reason


def _assert_failed_row(row: pd.Series, labels, error: str) -> None:
    assert row["error"] == error
    assert np.isnan(row[labels].to_numpy(float)).all(), row[labels]
    assert row["scene"] == "" and row["windows"] == 0
    assert "Traceback" not in row["error"] and not ABSOLUTE_PATH.search(row["error"])


def _assert_same_row(got: pd.Series, want: pd.Series, labels, atol: float) -> None:
    np.testing.assert_allclose(got[labels].to_numpy(float), want[labels].to_numpy(float), rtol=0, atol=atol)
    assert (got["scene"], got["windows"], got["error"]) == (want["scene"], want["windows"], "")


def _registered(workdir: Path) -> dict:
    """The register stage's ``registered.json`` (its run, the version, the compress run it took the package from)."""
    return json.loads((workdir / "register" / "registered.json").read_text())


def shipped_version(client, params, workdir: Path) -> str:
    """The registry version of the shipped workdir's register run."""
    run_id = _registered(workdir)["run_id"]
    found = [
        str(v.version)
        for v in client.search_model_versions(f"name='{params.tracking.registered_model}'")
        if v.run_id == run_id
    ]
    assert len(found) == 1, f"register run {run_id} registered versions {found}"
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


def test_register_run_registered_version_with_metrics_as_tags(store):
    workdir, params, client = store
    name = params.tracking.registered_model
    assert name == "asc-scene-classifier"
    versions = client.search_model_versions(f"name='{name}'")
    marker = _registered(workdir)
    ours = [v for v in versions if v.run_id == marker["run_id"]]
    assert len(ours) == 1, [(v.version, v.run_id) for v in versions]  # exactly one version per register run
    version = ours[0]
    assert str(version.version) == marker["version"]
    assert version.tags["run_id"] == marker["run_id"]
    compressed = json.loads((workdir / "compress" / "_SUCCESS.json").read_text())["run_id"]
    assert version.tags["compress_run_id"] == marker["compress_run_id"] == compressed
    shipped = json.loads((workdir / "compress" / "package" / "asc_infer" / "model" / "metrics.json").read_text())
    overall = shipped["int8"]["overall"]
    assert float(version.tags["int8_macro_accuracy"]) == pytest.approx(overall["macro_accuracy"], abs=5e-5)
    assert float(version.tags["int8_log_loss"]) == pytest.approx(overall["log_loss"], abs=5e-5)
    cost = json.loads((workdir / "compress" / "package" / "asc_infer" / "model" / "complexity.json").read_text())
    assert int(version.tags["int8_size_bytes"]) == cost["size_bytes"]
    assert int(version.tags["int8_macs"]) == cost["macs"]
    assert version.tags["config"] == params.name and version.tags["data"] == registry.data_name(params)
    assert marker["run_id"] in version.description and "airport" in version.description


@pytest.fixture(scope="module")
def pyfunc(store):
    """The shipped registry version, loaded in process (``mlflow.pyfunc.load_model``)."""
    import mlflow

    workdir, params, client = store
    return mlflow.pyfunc.load_model(
        f"models:/{params.tracking.registered_model}/{shipped_version(client, params, workdir)}"
    )


@pytest.fixture(scope="module")
def runtime_model(store):
    """The shipped package's model, loaded with this project's ``asc_infer`` (the same code)."""
    workdir, _, _ = store
    return asc_infer.load_model(workdir / "compress" / "package")


def test_pyfunc_in_process_equals_runtime_api(pyfunc, runtime_model):
    model = runtime_model
    clips = _clips()
    assert pyfunc.metadata.get_input_schema().input_names() == ["audio", "device"]
    assert pyfunc.metadata.get_input_schema().required_input_names() == ["audio"]
    assert pyfunc.metadata.get_output_schema().input_names() == ["scene", *model.labels, "windows", "model", "error"]
    got = pyfunc.predict(pd.DataFrame({"audio": clips}))

    recordings = asc_infer.load_inputs(clips, model)
    want = asc_infer.predict(model, recordings)
    assert list(got.columns) == ["scene", *model.labels, "windows", "model", "error"]
    assert got["model"].tolist() == ["general"] * 3  # no device models in this package
    np.testing.assert_allclose(got[model.labels].to_numpy(), want, rtol=0, atol=SAME_CODE_ATOL)
    np.testing.assert_allclose(got[model.labels].to_numpy().sum(axis=1), 1.0, atol=1e-9)
    assert got["scene"].tolist() == [model.labels[i] for i in want.argmax(axis=1)]
    assert got["error"].tolist() == ["", "", ""]
    # 1-s windows at 44.1 kHz; no window runs past the end (the last one is moved back to end there):
    # 1.6 s -> 1 + ceil(0.6) = 2; 0.3 s (shorter than a window) -> 1, the only padded one; 2.5 s -> 1 + ceil(1.5) = 3
    assert [r.samples for r in recordings] == [70560, 13230, 110250]
    assert got["windows"].tolist() == [len(r) for r in recordings] == [2, 1, 3]
    one = serving.wav_bytes(0.4 * np.sin(2 * np.pi * 440 * np.arange(44100) / 44100), 44100)  # 1 s, 44.1 kHz
    np.testing.assert_allclose(
        pyfunc.predict(pd.DataFrame({"audio": [one]}))[model.labels].to_numpy()[0],
        reference_probabilities(model.folder, one),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize("bad", sorted(BAD_FILES))
def test_one_bad_file_fails_its_row_only(pyfunc, runtime_model, bad):
    """Issue #21 items 12, 4, 8: [good, bad, good] -> 3 rows: the good ones as predicted alone, the bad one's reason."""
    labels = runtime_model.labels
    data, words = BAD_FILES[bad]
    good = _clips()
    got = pyfunc.predict(pd.DataFrame({"audio": [good[0], data, good[2]]}))
    assert len(got) == 3 and list(got.columns) == ["scene", *labels, "windows", "model", "error"]
    reason = _reason(runtime_model, data)
    assert words in reason
    _assert_failed_row(got.iloc[1], labels, reason)
    for row, clip in ((0, good[0]), (2, good[2])):
        alone = pyfunc.predict(pd.DataFrame({"audio": [clip]})).iloc[0]
        _assert_same_row(got.iloc[row], alone, labels, SAME_CODE_ATOL)


def test_a_header_claiming_10_mhz_is_answered_at_once(pyfunc, runtime_model):
    """Issue #21 item 8: refused from the header, before anything is allocated (it took 42 s and 5.4 GB)."""
    data, words = BAD_FILES["10 MHz"]
    assert len(data) < 13_000
    started = time.monotonic()
    got = pyfunc.predict(pd.DataFrame({"audio": [data]}))
    seconds = time.monotonic() - started
    assert words in got["error"].iloc[0]
    assert seconds < AT_ONCE_S, f"a 10 MHz header took {seconds:.1f} s"


@pytest.mark.parametrize(
    "error, words",
    [
        (
            MemoryError("Unable to allocate 7.45 GiB for an array with shape (1000000000,) and data type float64"),
            "MemoryError: Unable to allocate 7.45 GiB for an array with shape (1000000000,) and data type float64",
        ),
        (MemoryError(), "MemoryError"),
        (
            RuntimeError("tensorflow/lite/kernels/conv.cc:92 failed; model at /srv/my models/asc/model_int8.tflite"),
            "RuntimeError: <path> failed; model at <path> <path>",
        ),  # every word holding a path separator goes
    ],
)
def test_any_failure_of_one_file_keeps_the_others(pyfunc, runtime_model, monkeypatch, error, words):
    """Issue #21 item 8: a MemoryError (or anything else) on one file: that row's error, the other rows predicted."""
    labels = runtime_model.labels
    good = _clips()
    runtime = pyfunc.unwrap_python_model().runtime
    predict = runtime.predict
    doomed = len(good[1])  # the 0.3-s clip's size in bytes marks the file that fails

    def failing(model, recordings):
        if any(len(r.source.source) == doomed for r in recordings):
            raise error
        return predict(model, recordings)

    monkeypatch.setattr(runtime, "predict", failing)
    got = pyfunc.predict(pd.DataFrame({"audio": good}))
    monkeypatch.undo()
    assert len(got) == 3
    _assert_failed_row(got.iloc[1], labels, words)
    for row in (0, 2):
        alone = pyfunc.predict(pd.DataFrame({"audio": [good[row]]})).iloc[0]
        _assert_same_row(got.iloc[row], alone, labels, SAME_CODE_ATOL)


def test_values_that_are_not_files_fail_their_rows(pyfunc, runtime_model):
    """Text that is not base64, a number, a missing value: row errors; base64 text of a file is that file."""
    labels = runtime_model.labels
    good = _clips()[0]
    got = pyfunc.predict(pd.DataFrame({"audio": [good, "hello world!", 5, None, base64.encodebytes(good).decode()]}))
    assert len(got) == 5
    _assert_failed_row(
        got.iloc[1],
        labels,
        "not base64-encoded audio (Only base64 data is allowed); in JSON each "
        "value of 'audio' is a whole WAV file, base64-encoded",
    )
    _assert_failed_row(
        got.iloc[2], labels, "holds a value of type int, not an audio file (bytes; in JSON a base64-encoded string)"
    )
    _assert_failed_row(
        got.iloc[3], labels, "holds null (no value), not an audio file (bytes; in JSON a base64-encoded string)"
    )
    _assert_same_row(got.iloc[4], got.iloc[0], labels, 0.0)
    assert got["error"].iloc[0] == ""


def test_an_input_without_the_audio_column_is_a_request_error(pyfunc):
    import mlflow

    with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['audio'\]"):
        pyfunc.predict(pd.DataFrame({"sound": [b"RIFF"]}))


def _post(url: str, body: dict) -> dict:
    return json.loads(_post_text(url, body))


def _post_text(url: str, body: dict) -> str:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 200
        return answer.read().decode()


def _encoded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    """``mlflow models serve -m models:/NAME/VERSION --env-manager local`` in a process that cannot import ``pipeline``.

    Yields ``(invocations URL, model URI, the server's folder)``.
    """
    workdir, params, client = store
    uri = f"models:/{params.tracking.registered_model}/{shipped_version(client, params, workdir)}"
    home = tmp_path_factory.mktemp("served")
    shim = home / "shim" / "pipeline"  # proves the served model needs nothing of this project
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("a served model must not import pipeline")\n')
    bindir = str(Path(sys.executable).parent)  # mlflow starts uvicorn by name
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=params.tracking.uri,
        PYTHONPATH=str(shim.parent),
        PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
    )
    (port,) = free_ports(1)
    log = home / "serve.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                uri,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=env,
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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
        yield f"http://127.0.0.1:{port}/invocations", uri, home
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=20)


def test_mlflow_models_serve_answers_like_the_pyfunc(served, pyfunc):
    url, _, _ = served
    clips = _clips()[:2]
    expected = pyfunc.predict(pd.DataFrame({"audio": clips}))
    encoded = [_encoded(c) for c in clips]
    split = _post(url, {"dataframe_split": {"columns": ["audio"], "data": [[e] for e in encoded]}})["predictions"]
    records = _post(url, {"dataframe_records": [{"audio": e} for e in encoded]})["predictions"]
    lines = _post(url, {"dataframe_records": [{"audio": base64.encodebytes(c).decode()} for c in clips]})["predictions"]
    labels = [c for c in expected.columns if c not in ("scene", "windows", "model", "error")]
    for answer in (split, records, lines):
        served_frame = pd.DataFrame(answer)
        assert list(served_frame.columns) == list(expected.columns)
        np.testing.assert_allclose(
            served_frame[labels].to_numpy(float), expected[labels].to_numpy(), rtol=0, atol=JSON_ATOL
        )
        assert served_frame["scene"].tolist() == expected["scene"].tolist()
        assert served_frame["windows"].tolist() == expected["windows"].tolist() == [2, 1]
        assert served_frame["error"].tolist() == ["", ""]
    # the optional device column (DCASE2025): null, a number or an ID this package has no model for is the
    # general model's, not a failed request
    devices = _post(
        url, {"dataframe_split": {"columns": ["audio", "device"], "data": [[encoded[0], "A"], [encoded[1], None]]}}
    )["predictions"]
    served_frame = pd.DataFrame(devices)
    assert served_frame["model"].tolist() == ["general", "general"] and served_frame["error"].tolist() == ["", ""]
    np.testing.assert_allclose(
        served_frame[labels].to_numpy(float), expected[labels].to_numpy(), rtol=0, atol=JSON_ATOL
    )


def _assert_no_server_detail(body: str, *folders) -> None:
    assert "Traceback" not in body and 'File "' not in body
    assert not ABSOLUTE_PATH.search(body), ABSOLUTE_PATH.search(body)
    for folder in (tempfile.gettempdir(), sys.prefix, *folders):
        assert str(folder) not in body


def test_mlflow_models_serve_answers_bad_rows_with_their_reason(served, pyfunc, runtime_model, store):
    """Issue #21 item 12: HTTP 200, the reader's reason in the bad rows, no path, no traceback; the others predicted."""
    url, _, home = served
    workdir, _, _ = store
    labels = runtime_model.labels
    good = _clips()
    garbage, truncated, loud = (BAD_FILES[k][0] for k in ("garbage", "truncated", "float 1e30"))
    rows = [
        _encoded(good[0]),
        _encoded(garbage),
        _encoded(good[2]),
        _encoded(truncated),
        _encoded(b"not a wav"),
        _encoded(loud),
        "hello world!",
        5,
        None,
    ]
    body = _post_text(url, {"dataframe_split": {"columns": ["audio"], "data": [[r] for r in rows]}})
    _assert_no_server_detail(body, home, workdir)
    got = pd.DataFrame(json.loads(body)["predictions"])
    assert len(got) == len(rows) and list(got.columns) == ["scene", *labels, "windows", "model", "error"]
    for row, clip in ((0, good[0]), (2, good[2])):
        _assert_same_row(got.iloc[row], pyfunc.predict(pd.DataFrame({"audio": [clip]})).iloc[0], labels, JSON_ATOL)
    for row, data in ((1, garbage), (3, truncated), (4, b"not a wav"), (5, loud)):
        _assert_failed_row(got.iloc[row], labels, _reason(runtime_model, data))
    assert got["error"].iloc[4] == "not a RIFF/WAVE file (corrupt or wrong format)"
    assert got["error"].iloc[6].startswith("not base64-encoded audio")
    assert got["error"].iloc[7].startswith("holds a value of type int")
    assert got["error"].iloc[8].startswith("holds null")


def test_mlflow_models_serve_refuses_a_request_without_the_audio_column(served):
    url, _, _ = served
    with pytest.raises(urllib.error.HTTPError) as bad:
        _post(url, {"dataframe_records": [{"sound": _encoded(b"RIFF")}]})
    assert bad.value.code == 400
    message = json.loads(bad.value.read())["message"]
    assert "missing inputs ['audio']" in message and "Traceback" not in message


def test_mlflow_models_serve_answers_a_10_mhz_header_at_once(served, pyfunc, runtime_model):
    """Issue #21 item 8: a 12 KB file claiming 10 MHz is refused from its header; the batch keeps its other rows."""
    url, _, _ = served
    labels = runtime_model.labels
    data, words = BAD_FILES["10 MHz"]
    started = time.monotonic()
    body = _post_text(url, {"dataframe_records": [{"audio": _encoded(data)}]})
    seconds = time.monotonic() - started
    assert words in json.loads(body)["predictions"][0]["error"]
    assert seconds < AT_ONCE_S, f"the server took {seconds:.1f} s"
    good = _clips()[0]
    got = pd.DataFrame(
        _post(
            url,
            {"dataframe_records": [{"audio": _encoded(good)}, {"audio": _encoded(data)}, {"audio": _encoded(good)}]},
        )["predictions"]
    )
    alone = pyfunc.predict(pd.DataFrame({"audio": [good]})).iloc[0]
    _assert_same_row(got.iloc[0], alone, labels, JSON_ATOL)
    _assert_same_row(got.iloc[2], alone, labels, JSON_ATOL)
    _assert_failed_row(got.iloc[1], labels, _reason(runtime_model, data))


def test_package_from_registry_round_trips(store, tmp_path):
    workdir, params, client = store
    name = params.tracking.registered_model
    source = workdir / "compress" / "package" / "asc_infer"
    version = shipped_version(client, params, workdir)
    run_id = client.get_model_version(name, version).run_id
    for i, uri in enumerate([f"models:/{name}/{version}", f"runs:/{run_id}/model"]):
        folder = model_registry.package_from_registry(uri, params.tracking.uri, dst=tmp_path / str(i))
        shipped = sorted(
            p.relative_to(source) for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
        fetched = sorted(
            p.relative_to(folder / "asc_infer")
            for p in (folder / "asc_infer").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        )
        assert fetched == shipped, uri
        for rel in shipped:
            assert (folder / "asc_infer" / rel).read_bytes() == (source / rel).read_bytes(), (uri, rel)
    model = asc_infer.load_model(folder)
    assert model.labels == asc_infer.load_model(workdir / "compress" / "package").labels


@pytest.mark.parametrize(
    "uri", ["models:/asc-scene-classifier/99", "models:/no-such-model/1", "models:/asc-scene-classifier@no-such-alias"]
)
def test_missing_model_uri_is_a_clear_error(store, uri, tmp_path, monkeypatch):
    import tempfile

    _, params, _ = store
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(serving.PackageError, match=f"model '{uri}' not found in the MLflow store"):
        model_registry.package_from_registry(uri, params.tracking.uri)
    assert list(tmp_path.iterdir()) == []  # its temporary download folder is gone


def test_not_a_model_uri(tmp_path):
    with pytest.raises(serving.PackageError, match="'work/compress' is not a model URI"):
        model_registry.package_from_registry("work/compress", dst=tmp_path)


def test_second_compress_run_registers_the_next_version(shipped_workdir, tmp_path):
    """A copy of the shipped workdir and its store: compress and register again -> version + 1, alias round trip."""
    import mlflow

    from pipeline.running import runner

    workdir, params = shipped_workdir
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy, symlinks=True)
    tracking = dataclasses.replace(
        params.tracking, uri=f"sqlite:///{copy}/mlflow.db", artifact_root=str(copy / "mlruns"), experiment="tiny-again"
    )
    # PTQ only (no QAT epoch): the second run is about the registry, not about quantization
    again = dataclasses.replace(params, tracking=tracking, compress=dataclasses.replace(params.compress, qat=False))
    client = mlflow.MlflowClient(tracking.uri)
    name = params.tracking.registered_model
    old = {int(v.version): v.run_id for v in client.search_model_versions(f"name='{name}'")}
    before = mlflow.get_tracking_uri()
    try:
        runner.run_stages(again, copy, ["compress", "register"], force=True)
    finally:
        mlflow.set_tracking_uri(before)
    versions = {int(v.version): v for v in client.search_model_versions(f"name='{name}'")}
    new = max(old) + 1
    assert sorted(versions) == [*sorted(old), new]
    marker = _registered(copy)
    assert versions[new].run_id == marker["run_id"] and marker["run_id"] not in old.values()
    assert marker["compress_run_id"] == json.loads((copy / "compress" / "_SUCCESS.json").read_text())["run_id"]
    metrics = json.loads((copy / "compress" / "package" / "asc_infer" / "model" / "metrics.json").read_text())
    assert float(versions[new].tags["int8_macro_accuracy"]) == pytest.approx(
        metrics["int8"]["overall"]["macro_accuracy"], abs=5e-5
    )
    client.set_registered_model_alias(name, "champion", str(new))
    folder = model_registry.package_from_registry(f"models:/{name}@champion", tracking.uri, dst=tmp_path / "fetched")
    assert (folder / "asc_infer" / "model" / "model_int8.tflite").read_bytes() == (
        copy / "compress" / "package" / "asc_infer" / "model" / "model_int8.tflite"
    ).read_bytes()


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
        assert (
            model_registry.log_package(
                workdir / "compress" / "package", run_id=run.info.run_id, registered_model="", tags={"config": "tiny"}
            )
            is None
        )
        got = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(
            pd.DataFrame({"audio": serving.example_clips()})
        )
    finally:
        mlflow.set_tracking_uri(before)
    assert client.search_registered_models() == []
    assert got["windows"].tolist() == [1, 1] and len(got) == 2
