"""The deployable package's DCASE2025 API: device-specific models in the package, ``get_model_for_device``,
``load_inputs(file_paths, device_ids, model)`` and ``predict(file_paths, device_ids, model_file_path)``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tf_keras

from evaluate.compress import to_int8_tflite
from pipeline.core.labels import CLASSES
from pipeline.inference import asc_infer
from pipeline.inference.package import build_package

ALWAYS = 3  # the fake s1 model's answer, whatever the input


@pytest.fixture(scope="module")
def package(shipped_workdir, tmp_path_factory):
    """The shipped package rebuilt with two device models: ``a`` (the general classifier itself) and ``s1``
    (a classifier that always answers class 3)."""
    workdir, params = shipped_workdir
    comp = workdir / "compress"
    general = (comp / "model_int8.tflite").read_bytes()
    model_dir = comp / "package" / "asc_infer" / "model"
    shape = tuple(int(d) for d in asc_infer.load_model(model_dir)._cin["shape"][1:])
    x = tf_keras.Input(shape)
    logits = tf_keras.layers.Dense(len(CLASSES), name="logits")(tf_keras.layers.Flatten()(x))
    fixed = tf_keras.Model(x, logits)
    kernel, bias = fixed.get_layer("logits").get_weights()
    # a tiny kernel (an all-zero one has no int8 scale) and a bias that always wins
    tiny = 1e-4 * np.random.default_rng(1).standard_normal(kernel.shape).astype("float32")
    fixed.get_layer("logits").set_weights([tiny, 12.0 * np.eye(len(CLASSES), dtype="float32")[ALWAYS]])
    always = to_int8_tflite(
        fixed, np.random.default_rng(0).standard_normal((8, *shape)).astype("float32"), batch_size=1
    )
    out = tmp_path_factory.mktemp("device-package")
    build_package(
        out,
        frontend_tflite=(comp / "frontend.tflite").read_bytes(),
        classifier_tflite=general,
        params=params,
        metrics=json.loads((model_dir / "metrics.json").read_text()),
        complexity=json.loads((model_dir / "complexity.json").read_text()),
        device_models={"a": {"tflite": general, "macs": 1}, "s1": {"tflite": always, "macs": 2}},
    )
    return out / "package"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("device-clips")
    rng = np.random.default_rng(4)
    paths = []
    for k in range(3):
        path = root / f"clip{k}.wav"
        sf.write(path, (0.1 * rng.standard_normal(44100)).astype("float32"), 44100, subtype="PCM_16")
        paths.append(str(path))
    return paths


def test_the_package_lists_its_device_models(package):
    listing = json.loads((package / "asc_infer/model/devices.json").read_text())
    assert listing == {"a": {"file": "devices/a.tflite", "macs": 1}, "s1": {"file": "devices/s1.tflite", "macs": 2}}
    model = asc_infer.load_model(package)
    assert sorted(model.devices) == ["a", "s1"] and model.device is None
    s1 = asc_infer.get_model_for_device(model, "S1")
    assert s1.device == "s1" and s1 is asc_infer.get_model_for_device(model, "s1")  # loaded once
    assert asc_infer.get_model_for_device(model, "s4") is model  # no model of its own: the general one
    assert asc_infer.get_model_for_device(model, None) is model


def test_predict_routes_each_file_to_its_device_model(package, clips):
    model = asc_infer.load_model(package)
    general = asc_infer.predict(model, clips)
    routed = asc_infer.predict(model, clips, device_ids=["a", "s1", "unknown"])
    np.testing.assert_allclose(routed[0], general[0], rtol=1e-9)  # a: the same classifier
    assert routed[1].argmax() == ALWAYS and routed[1][ALWAYS] > 0.99  # s1: its own model
    np.testing.assert_allclose(routed[2], general[2], rtol=1e-9)  # unknown: the general model
    recs = asc_infer.load_inputs(clips, ["a", "s1", None], model)  # the DCASE2025 argument order
    assert [r.device for r in recs] == ["a", "s1", None]
    np.testing.assert_allclose(asc_infer.predict(model, recs), routed[:2].tolist() + [general[2]], rtol=1e-9)


def test_the_dcase2025_predict_returns_logits_and_the_class_order(package, clips):
    logits, order = asc_infer.predict(clips[:2], ["b", "s1"], str(package))
    assert order == list(CLASSES) and logits.dtype == np.float32 and logits.shape == (2, len(CLASSES))
    model = asc_infer.load_model(package)
    np.testing.assert_allclose(
        asc_infer.softmax(logits), asc_infer.predict(model, clips[:2], device_ids=["b", "s1"]), atol=1e-6
    )
    # the official harness's keyword call (evaluate_submission.py), extra keywords ignored
    by_name, _ = asc_infer.predict(
        file_paths=clips[:2], device_ids=["b", "s1"], model_file_path=str(package), use_cuda=False
    )
    np.testing.assert_array_equal(by_name, logits)
    recs = asc_infer.load_inputs(file_paths=clips[:1], device_ids=["s1"], model=model)
    assert recs[0].device == "s1"
    assert asc_infer.load_model(model_file_path=str(package)).devices == model.devices
    with pytest.raises(ValueError, match=r"device_ids: 1 ID\(s\) for 2 input\(s\)"):
        asc_infer.predict(model, clips[:2], device_ids=["a"])
    with pytest.raises(TypeError, match="one ID per input"):
        asc_infer.predict(model, clips[:1], device_ids="a")


def test_predict_cli_takes_the_device_from_the_list_the_option_or_the_file_name(package, clips, tmp_path):
    from pipeline.inference import predict

    named = tmp_path / "park-lyon-1-2-0-s1.wav"  # the TAU suffix names the device
    named.write_bytes(open(clips[0], "rb").read())
    listing = tmp_path / "list.csv"
    listing.write_text(f"filename,device_id\n{clips[0]},s1\n{clips[1]},a\n")

    def run(*args):
        out = tmp_path / f"p{len(list(tmp_path.glob('p*.csv')))}.csv"
        assert predict.main([*args, "--model", str(package), "--output", str(out), "--log-level", "WARNING"]) == 0
        with open(out, newline="") as fh:
            return {Path(r["file"]).name: r for r in csv.DictReader(fh)}

    rows = run("--list", str(listing))
    first, second = rows[Path(clips[0]).name], rows[Path(clips[1]).name]
    assert (first["model"], first["scene"]) == ("device s1", CLASSES[ALWAYS])
    assert second["model"] == "device a"
    assert run(clips[2], "--device", "S1")[Path(clips[2]).name]["model"] == "device s1"
    assert run(clips[2], "--device", "s6")[Path(clips[2]).name]["model"] == "general"  # no model of its own
    assert run(str(named))[named.name]["model"] == "device s1"
    assert run(clips[2])[Path(clips[2]).name]["model"] == "general"
    bad = tmp_path / "bad.csv"
    bad.write_text("path\nx.wav\n")
    assert predict.main(["--list", str(bad), "--model", str(package), "--output", str(tmp_path / "x.csv")]) == 2


def test_the_served_model_routes_each_row_by_its_device_column(package, clips):
    """The pyfunc model (``serving.PackageModel``) takes an optional ``device`` column: a row whose device has
    its own model runs through it (IDs in any case), any other (unknown, null, NaN, blank) through the general
    model; the answer's ``model`` column says which."""
    import types

    import pandas as pd

    from pipeline.inference import serving

    served = serving.PackageModel()
    served.load_context(types.SimpleNamespace(artifacts={serving.PACKAGE_ARTIFACT: str(package)}))
    audio = [Path(clips[k % 3]).read_bytes() for k in range(6)]
    devices = ["S1", None, "s4", float("nan"), " ", "a"]
    got = served.predict(None, pd.DataFrame({"audio": audio, "device": devices}))
    assert got["model"].tolist() == ["s1", "general", "general", "general", "general", "a"]
    assert got["error"].tolist() == [""] * 6
    model = asc_infer.load_model(package)
    general = asc_infer.predict(model, [clips[k % 3] for k in range(6)])
    labels = list(model.labels)
    assert got["scene"][0] == labels[ALWAYS] and got[labels].to_numpy()[0].argmax() == ALWAYS
    # the rows without a device model of their own, and device a (the general classifier itself), equal the
    # general model's answer
    np.testing.assert_allclose(got[labels].to_numpy()[1:], general[1:], rtol=0, atol=1e-9)
    # without the column every row is the general model's
    plain = served.predict(None, pd.DataFrame({"audio": audio}))
    assert plain["model"].tolist() == ["general"] * 6
    np.testing.assert_allclose(plain[labels].to_numpy(), general, rtol=0, atol=1e-9)
