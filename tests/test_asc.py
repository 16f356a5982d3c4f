"""The report's network: parameter count, structure, golden outputs, save/load, export."""

import os

import numpy as np
import pytest
import tf_keras

from evaluate import complexity
from models import asc
from pipeline.core import config
from tests.layer_testing import run_layer_test

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "asc_default.npz")


def _deterministic_weights(model, seed=0):
    """Seeded weights independent of Keras' initialisers (golden outputs must not move with them)."""
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.weights:
        shape, name = tuple(w.shape), w.name
        if "moving_variance" in name or "gamma" in name:
            weights.append(rng.uniform(0.5, 1.5, shape))
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            weights.append(rng.standard_normal(shape) / np.sqrt(max(fan_in, 1)))
    model.set_weights([w.astype("float32") for w in weights])


def _golden_inputs(samples=44100):
    rng = np.random.default_rng(1234)
    t = np.arange(samples) / 44100
    return {
        "silence": np.zeros((1, samples), "float32"),
        "noise": (0.1 * rng.standard_normal((1, samples))).astype("float32"),
        "sine": (0.5 * np.sin(2 * np.pi * 1000 * t))[None].astype("float32"),
    }


def test_paper_network_parameters_match_the_report():
    params = config.load("paper")
    model = asc.build_model(params)
    classifier = asc.get_classifier(model)
    total = classifier.count_params()
    trainable = int(sum(np.prod(w.shape) for w in classifier.trainable_weights))
    # hand count: input BN 4*256; blocks 448+256+1704, 8960+512+3368, 2 x (17152+512+3368);
    # head 16512 + 1290
    assert total == 1024 + 2408 + 12840 + 2 * 21032 + 16512 + 1290 == 76138
    assert trainable == 74666
    assert abs(total - 75562) / 75562 < 0.02
    assert model.count_params() == total  # front end and augmentations have no weights
    names = [layer.name for layer in classifier.layers]
    for block in ("block1", "block2", "block3", "block4"):
        assert [f"{block}_{part}" in names for part in ("sepconv", "bn", "relu", "attention", "pool")] == [True] * 5
    assert classifier.output_shape == (None, 10)
    assert classifier.input_shape == (None, 44, 256, 1)


def test_macs_of_the_paper_network_by_hand():
    params = config.load("paper")
    cost = complexity.keras_complexity(asc.get_classifier(asc.build_model(params)))
    rows = {r["name"]: r["macs"] for r in cost["layers"]}
    # block 2 separable conv at 22 x 128 positions: pointwise 64->128, two depthwise 3-tap
    assert rows["block2_sepconv"] == 22 * 128 * (64 * 128 + 2 * 3 * 128)
    assert rows["head_dense1"] == 128 * 128 and rows["logits"] == 128 * 10
    assert cost["macs"] == sum(rows.values())


def test_dcase22_config_fits_both_limits():
    params = config.load("dcase22")
    cost = complexity.keras_complexity(asc.get_classifier(asc.build_model(params)))
    assert cost["params"] <= complexity.MAX_BYTES
    assert cost["macs"] <= complexity.MAX_MACS
    assert cost["within_limits"]


def test_time_freq_pooling_layer():
    x = np.arange(2 * 3 * 4 * 5, dtype="float32").reshape(2, 3, 4, 5)
    out = run_layer_test(asc.TimeFreqPooling, {}, (2, 3, 4, 5), (2, 5), input_data=x, trainable=False)
    freq_mean = x.mean(axis=2)
    np.testing.assert_allclose(out, freq_mean.mean(axis=1) + freq_mean.max(axis=1), rtol=1e-6)


def _small_params(**over):
    base = ["audio.n_mels=32", "audio.clip_seconds=0.5", "model.channels=[8, 8, 16, 16]", "model.hidden_units=16"]
    return config.load(None, base + [f"{k}={v}" for k, v in over.items()])


def test_full_model_save_load_roundtrip(tmp_path):
    params = _small_params()
    model = asc.build_model(params)
    x = _golden_inputs(params.audio.clip_samples)["noise"]
    before = model(x, training=False).numpy()
    model.save(tmp_path / "m.keras")
    loaded = tf_keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(x, training=False).numpy(), before, atol=1e-5)
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]


def test_augmentation_is_identity_at_inference_and_active_in_training():
    params = _small_params()
    model = asc.build_model(params)
    x = np.repeat(_golden_inputs(params.audio.clip_samples)["noise"], 4, axis=0)
    a = model(x, training=False).numpy()
    b = model(x, training=False).numpy()
    np.testing.assert_array_equal(a, b)
    c = model(x, training=True).numpy()
    assert not np.allclose(a, c)


def test_export_classifier_has_no_augmentation_and_same_outputs():
    params = _small_params()
    model = asc.build_model(params)
    _deterministic_weights(model)
    plain = asc.export_classifier(model, params)
    kinds = {type(layer).__name__ for layer in plain.layers}
    assert "SpecAugmentPP" not in kinds and "TimeShift" not in kinds
    logmel = asc.frontend_model(model)(_golden_inputs(params.audio.clip_samples)["sine"]).numpy()
    np.testing.assert_allclose(
        plain(logmel, training=False).numpy(), asc.get_classifier(model)(logmel, training=False).numpy(), atol=1e-5
    )


def test_golden_outputs():
    """Logits of the default network with seeded weights on silence, noise and a sine.

    Regenerate (after an intended change of the network) with:
      ASC_REGENERATE_GOLDEN=1 python -m pytest tests/test_asc.py -k golden
    That run rewrites the file and fails on purpose; rerun without the variable to check the new outputs.
    """
    params = config.load()
    model = asc.build_model(params)
    _deterministic_weights(model, seed=7)
    got = {k: model(v, training=False).numpy() for k, v in _golden_inputs().items()}
    if os.environ.get("ASC_REGENERATE_GOLDEN"):
        np.savez(GOLDEN, **got)
        # fail, never skip: a run with the variable set must not pass as if the outputs had been checked
        pytest.fail(
            f"golden outputs regenerated in {GOLDEN}: review the change, then rerun without ASC_REGENERATE_GOLDEN"
        )
    ref = np.load(GOLDEN)
    for key in ("silence", "noise", "sine"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-4, err_msg=key)
    assert not np.allclose(ref["silence"], ref["sine"])


def test_regenerating_the_golden_file_fails_instead_of_skipping(tmp_path, monkeypatch):
    """With ASC_REGENERATE_GOLDEN set the test rewrites the file and fails, so no change passes unreviewed."""
    monkeypatch.setenv("ASC_REGENERATE_GOLDEN", "1")
    monkeypatch.setitem(globals(), "GOLDEN", str(tmp_path / "golden.npz"))
    with pytest.raises(pytest.fail.Exception, match="golden outputs regenerated"):
        test_golden_outputs()
    written, shipped = (
        np.load(tmp_path / "golden.npz"),
        np.load(os.path.join(os.path.dirname(__file__), "golden", "asc_default.npz")),
    )
    for key in ("silence", "noise", "sine"):
        np.testing.assert_allclose(written[key], shipped[key], rtol=1e-4, atol=1e-4, err_msg=key)


def test_all_augmentations_on_trains_with_decreasing_loss(tiny_dataset):
    """The network with time shift and SpecAugment++ (mm) at all five positions learns the synthetic data."""
    from pipeline.data import inputs
    from pipeline.data import tau as data
    from pipeline.running import training

    params = _small_params(
        **{
            "augment.specaugment.positions": "[input, block1, block2, block3, block4]",
            "augment.specaugment.mode": "mm",
            "train.learning_rate": "3e-3",
            "train.schedule": "constant",
            "audio.clip_seconds": "1.0",
        }
    )
    training.seed_everything(3)
    model = asc.build_model(params)
    kinds = [type(layer).__name__ for layer in model.layers + asc.get_classifier(model).layers]
    assert kinds.count("SpecAugmentPP") == 5 and kinds.count("TimeShift") == 1
    index = data.read_index(tiny_dataset)
    train = index[index.split == "train"].reset_index(drop=True)
    ds, steps = inputs.train_dataset(
        train, tiny_dataset, params.audio, params.data, batch_size=8, seed=3, start_epoch=0, epochs=10
    )
    training.compile_model(model, training.make_optimizer(params.train, steps, epochs=10))
    # 10 epochs: with no zero-width mask left, block 4's 1-frame time mask covers ~25% of its 2 frames
    history = model.fit(ds, epochs=10, steps_per_epoch=steps, verbose=0).history["loss"]
    assert history[-1] < history[0] - 0.1, history
