"""DCASE2025 device-specific models: the ``specialize`` stage, the evaluate stage's side-by-side figures
and one int8 model per device from compress."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_overrides

from pipeline.core import config
from pipeline.core.config import ConfigError
from pipeline.running import runner, task
from pipeline.running.stages import get
from pipeline.running.stages.specialize import device_changes, specialize_unused


def test_settings_and_what_fine_tuning_changes():
    params = config.load(None, ["specialize.enabled=true", "specialize.devices=[a,s2]", "specialize.epochs=3"])
    assert params.specialize.devices == ("a", "s2")
    changes = device_changes(params, "s2")
    assert changes["train.epochs"] == "3" and changes["distill.enabled"] == "false"
    assert changes["augment.freq_mixstyle.enabled"] == "false"  # they imitate other devices
    assert changes["seed"] != device_changes(params, "a")["seed"]  # each device its own random stream
    keep = config.load(None, ["specialize.device_augmentations=true"])
    assert "augment.freq_mixstyle.enabled" not in device_changes(keep, "a")
    assert "augment.device_response" in specialize_unused(params)
    assert not get("specialize").when(config.load(None)) and get("specialize").when(params)
    with pytest.raises(ConfigError, match=r"specialize\.devices: unknown value\(s\) \['s4'\]"):
        config.load(None, ["specialize.devices=[a,s4]"])  # unseen devices have no training clips
    with pytest.raises(ConfigError, match="specialize.layers"):
        config.load(None, ["specialize.layers=conv"])


@pytest.mark.parametrize(
    "which, expected",
    [("head", ["head_dense1", "logits"]), ("batchnorm", ["input_bn", "block1_bn", "block1_attention"])],
)
def test_freeze_leaves_only_the_chosen_layers_trainable(which, expected):
    from models import asc

    params = config.load(None, ["model.channels=[8,8,8,8]", "audio.n_mels=32"])
    classifier = asc.get_classifier(asc.build_model(params))
    names = task.freeze(classifier, which)
    assert names[: len(expected)] == expected
    for layer in classifier.layers:
        assert bool(layer.trainable_weights) == (layer.name in names), layer.name
    if which == "batchnorm":  # CoordAttention's own batch norm trains, its convolutions do not
        attention = classifier.get_layer("block1_attention")
        assert attention.trainable_weights and all(
            "gamma" in w.name or "beta" in w.name for w in attention.trainable_weights
        )
    with pytest.raises(ValueError, match="expected 'batchnorm' or 'head'"):
        task.freeze(classifier, "conv")


@pytest.mark.slow
def test_specialized_models_are_fine_tuned_copies_reported_side_by_side_and_compressed(tmp_path, tiny_dataset):
    extra = {
        "train.epochs": 1,
        "specialize.enabled": "true",
        "specialize.devices": "[a,s1]",
        "specialize.epochs": 1,
        "specialize.layers": "batchnorm",
        "compress.prune": "false",
        "compress.qat": "false",
        "augment.tta.enabled": "false",
    }
    params = config.load(None, tiny_overrides(tmp_path, tiny_dataset, **extra))
    runner.run_stages(params, tmp_path, ["prepare", "train", "specialize", "evaluate", "compress"], track=False)
    models = json.loads((tmp_path / "specialize/models.json").read_text())
    assert models["devices"] == {"a": "a/model.keras", "s1": "s1/model.keras"}
    general = task.load(tmp_path / "train/model.keras").get_layer("classifier")
    tuned = task.load(tmp_path / "specialize/a/model.keras").get_layer("classifier")
    moved = []  # only batch-norm weights moved (specialize.layers=batchnorm), CoordAttention's inner one too
    for layer in general.layers:
        other = tuned.get_layer(layer.name)
        for var, w0, w1 in zip(layer.weights, layer.get_weights(), other.get_weights(), strict=True):
            if not np.array_equal(w0, w1):
                moved.append((layer.name, var.name))
    assert moved and all(any(k in n for k in ("gamma", "beta", "moving_")) for _, n in moved), moved
    assert {"input_bn", "block1_attention"} <= {layer for layer, _ in moved}, moved
    metrics = json.loads((tmp_path / "evaluate/metrics.json").read_text())
    ds = metrics["device_specific"]
    index = pd.read_csv(tmp_path / "prepare/index.csv")
    n_a = int(((index.split == "evaluate") & (index.device == "A")).sum())
    assert ds["devices"]["a"]["n"] == n_a > 0
    row = ds["devices"]["a"]
    assert row["gain"] == pytest.approx(row["specialized"] - row["general"])
    general_a = metrics["splits"]["evaluate"]["plain"]["per_device"]["A"]["macro_accuracy"]
    assert row["general"] == pytest.approx(general_a)
    # the system's figures: unseen devices keep the general model's
    unseen = metrics["splits"]["evaluate"]["plain"]["per_device_group"]["unseen"]["macro_accuracy"]
    assert ds["per_device_group"]["unseen"]["macro_accuracy"] == pytest.approx(unseen)
    table = pd.read_csv(tmp_path / "evaluate/device_specific.csv")
    assert list(table.device) == ["a", "s1"] and (tmp_path / "evaluate/device_specific.png").is_file()
    compressed = json.loads((tmp_path / "compress/metrics.json").read_text())["devices"]
    assert set(compressed) == {"a", "s1"}
    for device, row in compressed.items():
        assert (tmp_path / f"compress/devices/{device}/model_int8.tflite").is_file()
        assert row["within_limits"] and row["macs"] > 0 and row["size_bytes"] > 0
    # the package carries them: the DCASE2025 API picks a device's own model, the general one otherwise
    from pipeline.inference import asc_infer

    shipped = asc_infer.load_model(tmp_path / "compress/package")
    assert sorted(shipped.devices) == ["a", "s1"]
    assert asc_infer.get_model_for_device(shipped, "a").device == "a"
    assert asc_infer.get_model_for_device(shipped, "s5") is shipped
