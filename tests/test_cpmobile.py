"""The DCASE2024/2025 baseline network (simplified CP-Mobile, ``model.name=cpmobile``) against its
published figures: 61,148 parameters and 29,419,156 MACs (CPJKU/dcase2024_task1_baseline README,
per layer; torchinfo counts), the PyTorch code's padding and pooling, save/load, QAT and int8."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
import tf_keras

from evaluate.complexity import keras_complexity, tflite_complexity
from evaluate.compress import to_int8_tflite
from models import cpmobile
from models.frontend import mel_filterbank
from pipeline.core import config
from pipeline.core.config import ConfigError

# The published per-layer parameters (README table of the baseline; hand-checked: conv weights + BN
# gamma and beta), by this port's layer-name prefix.
PUBLISHED_PARAMS = {
    "in_c0": 88,
    "in_c1": 2_368,
    **{f"b{k}_exp": 2_176 for k in (1, 2, 3, 4)},
    **{f"b{k}_dw": 704 for k in (1, 2, 3, 4)},
    **{f"b{k}_proj": 2_112 for k in (1, 2, 3)},
    "b4_proj": 3_696,
    "b5_exp": 6_960,
    "b5_dw": 1_320,
    "b5_proj": 6_832,
    "b6_exp": 6_960,
    "b6_dw": 1_320,
    "b6_proj": 12_688,
    "head": 1_060,
}
# The published per-layer MACs (torchinfo: convolution weights x output positions + 2 x channels per BN).
PUBLISHED_MACS = {
    "in_c0": 304_144,
    "in_c1": 2_506_816,
    **{f"b{k}_exp": 2_228_352 for k in (1, 2, 3)},
    **{f"b{k}_dw": 626_816 for k in (1, 2)},
    **{f"b{k}_proj": 2_228_288 for k in (1, 2)},
    "b3_dw": 331_904,
    "b3_proj": 1_179_712,
    "b4_exp": 1_179_776,
    "b4_dw": 166_016,
    "b4_proj": 1_032_304,
    "b5_exp": 1_935_600,
    "b5_dw": 311_280,
    "b5_proj": 1_935_472,
    "b6_exp": 1_935_600,
    "b6_dw": 311_280,
    "b6_proj": 3_594_448,
    "head": 299_520 + 20,
}


def _group(name: str) -> str:
    return "head" if name.startswith("head") else name.rsplit("_", 1)[0]


@pytest.fixture(scope="module")
def classifier():
    return cpmobile.build_cpmobile_classifier()


def test_channels_and_parameters_match_the_published_network(classifier):
    assert cpmobile.stage_channels() == [32, 32, 56, 104]
    assert [cpmobile.make_divisible(v) for v in (32 * 2.1, 56 * 2.1, 57.6, 103.68)] == [64, 120, 56, 104]
    assert sum(PUBLISHED_PARAMS.values()) == cpmobile.PUBLISHED_PARAMS == 61_148
    assert cpmobile.trainable_params(classifier) == 61_148
    assert classifier.count_params() == 61_148 + 2_708  # + BN moving mean and variance (PyTorch buffers)
    per_group: dict[str, int] = {}
    for layer in classifier.layers:
        n = sum(w.shape.num_elements() for w in layer.trainable_weights)
        if n:
            per_group[_group(layer.name)] = per_group.get(_group(layer.name), 0) + n
    assert per_group == PUBLISHED_PARAMS
    assert classifier.input_shape == (None, 65, 256, 1) and classifier.output_shape == (None, 10)
    # The README's shapes (C x F x T), time first here.
    shapes = {layer.name: layer.output_shape[1:] for layer in classifier.layers}
    assert shapes["in_c1_relu"] == (17, 64, 32) and shapes["b3_relu"] == (9, 64, 32)
    assert shapes["b4_relu"] == (9, 32, 56) and shapes["b6_relu"] == (9, 32, 104)


def test_macs_differ_from_the_published_count_only_by_the_counting_rules(classifier):
    """This project's rules count pooling (the shortcut's and the head's averages) and fold batch norm
    into the convolutions; torchinfo counts 2 x channels per batch norm and no pooling."""
    assert sum(PUBLISHED_MACS.values()) == cpmobile.PUBLISHED_MACS == 29_419_156
    rows = {row["name"]: row for row in keras_complexity(classifier)["layers"]}
    conv = {}
    for name, row in rows.items():
        if row["type"] in ("Conv2D", "DepthwiseConv2D"):
            conv[_group(name)] = row["macs"]
    bn = {_group(layer.name): 2 * layer.gamma.shape[0] for layer in classifier.layers if "_bn" in layer.name}
    assert {g: conv[g] + bn[g] for g in conv} == PUBLISHED_MACS  # every layer: convolution + 2C
    assert sum(bn.values()) == 2_708
    pools = {n: r["macs"] for n, r in rows.items() if r["type"] == "AveragePooling2D"}
    assert pools == {"b3_shortcut_pool": 9 * 64 * 32 * 9, "head_pool": 9 * 32 * 10}  # 165,888 and 2,880
    total = keras_complexity(classifier)["macs"]
    assert total == 29_419_156 - 2_708 + 165_888 + 2_880 == 29_585_216


def test_padding_and_the_pooled_shortcut_follow_pytorch():
    """PyTorch pads strided 3x3 convolutions by one zero on every side and its AvgPool2d counts the
    padded zeros; Keras' ``same`` would pad only after an even size and average over real cells."""
    x = tf_keras.Input((6, 6, 1))
    y = cpmobile._conv_bn(x, 1, 3, (2, 2), "t", relu=False)
    m = tf_keras.Model(x, y)
    m.get_layer("t_conv").set_weights([np.ones((3, 3, 1, 1), np.float32)])
    m.get_layer("t_bn").set_weights([np.ones(1), np.zeros(1), np.zeros(1), np.ones(1) - 1e-5])
    out = m(np.ones((1, 6, 6, 1), np.float32)).numpy()[0, :, :, 0]
    np.testing.assert_allclose(out[0], [4, 6, 6], rtol=1e-5)  # top row: one padded row above (PyTorch)
    inp = tf_keras.Input((4, 4, 32))
    block = tf_keras.Model(inp, cpmobile._block(inp, 32, 32, 2.1, (2, 1), "s"))
    pool = tf_keras.Model(block.input, block.get_layer("s_shortcut_pool").output)
    got = pool(np.ones((1, 4, 4, 32), np.float32)).numpy()[0, :, :, 0]
    np.testing.assert_allclose(got[0], [4 / 9, 6 / 9, 6 / 9, 4 / 9], rtol=1e-6)  # zeros in the average


def test_save_load_round_trip(classifier, tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 65, 256, 1)).astype("float32")
    path = tmp_path / "cpmobile.keras"
    classifier.save(path)
    again = tf_keras.models.load_model(path)
    np.testing.assert_allclose(again(x).numpy(), classifier(x).numpy(), atol=1e-5)


def test_qat_and_int8_within_the_limits(classifier):
    from evaluate.compress import _annotate
    from models import quantize

    with tfmot.quantization.keras.quantize_scope(quantize.quantize_scope_objects()):
        qat = tfmot.quantization.keras.quantize_apply(_annotate(classifier))
    x = np.random.default_rng(1).standard_normal((4, 65, 256, 1)).astype("float32")
    assert qat(x).shape == (4, 10)
    tflite = to_int8_tflite(classifier, x, batch_size=1)
    result = tflite_complexity(tflite)
    assert result["within_limits"]
    assert result["macs"] == 29_585_216  # the Keras count, batch norm folded
    assert result["size_bytes"] < 128_000


def test_config_and_the_torchaudio_front_end():
    p = config.load("dcase24-baseline")
    assert (p.audio.sample_rate_hz, p.audio.frames, p.audio.n_mels, p.model.name) == (32000, 65, 256, "cpmobile")
    with pytest.raises(ConfigError, match=r"augment\.specaugment\.positions: model\.name=cpmobile masks only"):
        config.load(None, ["model.name=cpmobile"])  # the default config masks after every block too
    with pytest.raises(ConfigError, match="at least 16 frames"):
        config.load("dcase24-baseline", ["audio.hop_length=4000"])
    librosa = pytest.importorskip("librosa")
    ours = mel_filterbank(32000, 4096, 256, htk=True, norm=None)
    ref = librosa.filters.mel(sr=32000, n_fft=4096, n_mels=256, htk=True, norm=None)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert ours.max() == pytest.approx(1.0, abs=0.02)  # peak-1 triangles, torchaudio's norm=None


@pytest.mark.slow
def test_the_dcase24_recipe_trains_and_evaluates(tmp_path, tiny_dataset):
    """prepare -> train -> evaluate with ``--config dcase24-baseline`` (32 kHz: the 44.1 kHz clips are
    resampled) at a tiny width (int8 conversion of the full network: test_qat_and_int8_within_the_limits)."""
    import json

    from conftest import tiny_overrides

    from pipeline.running import runner

    overrides = tiny_overrides(tmp_path, tiny_dataset, **{"train.epochs": 1, "model.base_channels": 8})
    overrides = [o for o in overrides if not o.startswith(("model.channels", "model.hidden_units"))]
    params = config.load("dcase24-baseline", overrides)
    runner.run_stages(params, tmp_path, ["prepare", "train", "evaluate"], track=False)
    evaluated = json.loads((tmp_path / "evaluate/metrics.json").read_text())
    assert 0.0 <= evaluated["splits"]["evaluate"]["plain"]["overall"]["macro_accuracy"] <= 1.0
    assert evaluated["complexity"]["trainable_params"] < cpmobile.PUBLISHED_PARAMS  # the narrow variant
    model = tf_keras.models.load_model(tmp_path / "train/model.keras")
    classifier = model.get_layer("classifier")
    assert classifier.get_layer("b6_proj_conv").filters == cpmobile.stage_channels(8)[-1]
    assert classifier.input_shape == (None, 65, 32, 1)  # 65 frames at 32 kHz, hop 500
