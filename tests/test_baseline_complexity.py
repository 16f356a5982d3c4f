"""Tests of models.baseline and evaluate.complexity against the DCASE2022 baseline's published
figures (marmoi/dcase2022_task1_baseline README, NeSsi's table: 46,246 Keras parameters, 46,512
bytes as int8 TFLite, per-operator MACs 1,599,360 / 25,589,760 / 32,000 / 2,007,040 / 2,560 /
3,200 / 1,000, total 29,234,920) and against hand-computed counts on tiny models."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from evaluate import complexity
from evaluate.complexity import (
    MAX_BYTES,
    MAX_MACS,
    keras_complexity,
    rules,
    tflite_complexity,
)
from evaluate.compress import to_int8_tflite
from models import layers as layers_module
from models.baseline import build_baseline, build_baseline_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Published per-layer figures of the DCASE2022 baseline (README "Network summary", NeSsi table).
BASELINE_PARAMS = {
    "conv1": 800,
    "bn1": 64,
    "conv2": 12_560,
    "bn2": 64,
    "conv3": 25_120,
    "bn3": 128,
    "dense1": 6_500,
    "logits": 1_010,
}
# Hand-computed MACs, fully connected layers by their kernel's input size (macs_dense_corrected).
BASELINE_MACS = {
    "conv1": 1_599_360,
    "conv2": 25_589_760,
    "pool1": 32_000,
    "conv3": 2_007_040,
    "pool2": 2_560,
    "dense1": 6_400,  # 64 x 100
    "logits": 1_000,
}
# The official (NeSsi) figures: dense1 counts the last axis of its 4-D input, 32 x 100.
NESSI_MACS = {**BASELINE_MACS, "dense1": 3_200}
NESSI_TOTAL, CORRECTED_TOTAL = 29_234_920, 29_238_120
BASELINE_BYTES = {"conv1": 848, "conv2": 12_608, "conv3": 25_216, "dense1": 6_800, "logits": 1_040}


def _randomize(model, seed=1):
    """Non-zero weights everywhere (the converter drops all-zero Dense biases)."""
    rng = np.random.default_rng(seed)
    values = []
    for variable, value in zip(model.weights, model.get_weights(), strict=True):
        if "variance" in variable.name or "gamma" in variable.name:
            values.append(rng.uniform(0.5, 1.5, value.shape).astype("float32"))
        else:
            values.append((0.1 * rng.standard_normal(value.shape)).astype("float32"))
    model.set_weights(values)
    return model


def _calibration(model, n=10, seed=0):
    shape = (n,) + tuple(model.input_shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _rows(result):
    return {row["name"]: row for row in result["layers"]}


@pytest.fixture(scope="module")
def baseline_classifier():
    return _randomize(build_baseline_classifier())


@pytest.fixture(scope="module")
def baseline_tflite(baseline_classifier):
    return to_int8_tflite(baseline_classifier, _calibration(baseline_classifier))


# ----------------------------------------------------------------------------- models.baseline


def test_baseline_classifier_parameters_and_shapes():
    model = build_baseline_classifier()
    assert model.count_params() == 46_246
    assert model.input_shape == (None, 51, 40, 1)
    assert model.output_shape == (None, 10)
    for name, params in BASELINE_PARAMS.items():
        assert model.get_layer(name).count_params() == params, name
    assert model.get_layer("pool1").output_shape == (None, 10, 8, 16)
    assert model.get_layer("pool2").output_shape == (None, 1, 2, 32)
    assert model.get_layer("flatten").output_shape == (None, 64)
    assert model.get_layer("logits").get_config()["activation"] == "linear"  # logits, no softmax
    assert build_baseline_classifier(n_classes=3).output_shape == (None, 3)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"n_frames": 0}, "n_frames"),
        ({"n_classes": 2.5}, "n_classes"),
        ({"n_mels": 10}, "n_mels=10"),
    ],
)
def test_baseline_classifier_rejects_bad_sizes(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        build_baseline_classifier(**kwargs)


def test_full_baseline_has_front_end_and_nested_classifier():
    model = build_baseline()
    front = model.get_layer("log_mel")
    config = front.get_config()
    assert (config["n_fft"], config["win_length"], config["hop_length"]) == (2048, 1764, 882)
    assert (config["n_mels"], config["window"], config["sample_rate"]) == (40, "hamming", 44100)
    classifier = model.get_layer("classifier")
    assert isinstance(classifier, tf_keras.Model)
    assert classifier.input_shape == (None, 51, 40, 1)
    assert classifier.count_params() == model.count_params() == 46_246
    wave = 0.1 * np.random.default_rng(3).standard_normal((2, 44100)).astype("float32")
    logits = model(wave, training=False).numpy()
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    # The nested classifier on the front end's output gives the same logits.
    np.testing.assert_allclose(classifier(front(wave)).numpy(), logits, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- Keras-side counting


def test_baseline_keras_complexity_matches_published_figures(baseline_classifier):
    result = keras_complexity(baseline_classifier)
    rows = _rows(result)
    for name, macs in BASELINE_MACS.items():
        assert rows[name]["macs_dense_corrected"] == macs, name
        assert rows[name]["macs"] == NESSI_MACS[name], name
    for name in ("bn1", "bn2", "bn3", "relu1", "dropout1", "flatten"):
        assert rows[name]["macs"] == rows[name]["macs_dense_corrected"] == 0, name
    assert result["macs_dense_corrected"] == CORRECTED_TOTAL == 29_238_120
    assert result["macs"] == NESSI_TOTAL
    assert result["params"] == 46_246
    assert result["trainable_params"] == 46_118 and result["non_trainable_params"] == 128
    for name, size in BASELINE_BYTES.items():
        assert rows[name]["size_bytes"] == size, name
    assert result["size_bytes"] == 46_512
    assert rows["pool1"]["output_shape"] == "[10, 8, 16]"
    assert result["within_limits"] is True


def _tiny_model(time=None):
    layers = tf_keras.layers
    inputs = tf_keras.Input((time, 5, 2))  # [B, 6, 5, 2]
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)  # [B, 6, 5, 4]
    x = layers.DepthwiseConv2D((3, 1), dilation_rate=(2, 1), padding="same", depth_multiplier=2, name="dw")(
        x
    )  # [B, 6, 5, 8]
    x = layers.BatchNormalization(name="bn_folded")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.BatchNormalization(name="bn_alone")(x)  # after a ReLU: not folded
    x = layers.MaxPooling2D((2, 2), name="maxpool")(x)  # [B, 3, 2, 8]
    x = layers.AveragePooling2D((3, 1), name="avgpool")(x)  # [B, 1, 2, 8]
    x = layers.GlobalAveragePooling2D(name="gap")(x)  # [B, 8]
    outputs = layers.Dense(3, name="dense")(x)  # [B, 3]
    return tf_keras.Model(inputs, outputs, name="tiny")


# Hand-computed: (MACs, params, int8 bytes) per layer of _tiny_model at T = 6.
TINY = {
    "conv": (6 * 5 * 4 * 3 * 3 * 2, 3 * 3 * 2 * 4 + 4, 3 * 3 * 2 * 4 + 4 * 4),
    "dw": (6 * 5 * 8 * 3 * 1, 3 * 4 * 2 + 8, 3 * 4 * 2 + 4 * 8),
    "bn_folded": (0, 4 * 8, 0),
    "relu": (0, 0, 0),
    "bn_alone": (0, 4 * 8, 2 * 8),
    "maxpool": (3 * 2 * 8 * 2 * 2, 0, 0),
    "avgpool": (1 * 2 * 8 * 3 * 1, 0, 0),
    "gap": (1 * 2 * 8, 0, 0),
    "dense": (8 * 3, 8 * 3 + 3, 8 * 3 + 4 * 3),
}


def test_keras_complexity_hand_computed_tiny_model():
    result = keras_complexity(_tiny_model(time=6))
    rows = _rows(result)
    for name, (macs, params, size) in TINY.items():
        row = rows[name]
        assert (row["macs"], row["params"], row["size_bytes"]) == (macs, params, size), name
    assert result["macs"] == sum(v[0] for v in TINY.values()) == 2160 + 720 + 192 + 48 + 16 + 24
    assert result["params"] == sum(v[1] for v in TINY.values())
    assert result["size_bytes"] == sum(v[2] for v in TINY.values())
    assert rows["dw"]["output_shape"] == "[6, 5, 8]"


def test_keras_complexity_input_shape_for_unknown_time_and_nested_models():
    dynamic = _tiny_model(time=None)
    with pytest.raises(ValueError, match="input_shape"):
        keras_complexity(dynamic)
    fixed = keras_complexity(dynamic, input_shape=(6, 5, 2))
    assert fixed["macs"] == sum(v[0] for v in TINY.values())
    # Nested: rows are prefixed with the inner model's name, counts unchanged.
    inner = _tiny_model(time=6)
    inputs = tf_keras.Input((6, 5, 2))
    outer = tf_keras.Model(inputs, inner(tf_keras.layers.Activation("linear", name="pre")(inputs)))
    result = keras_complexity(outer)
    assert _rows(result)["tiny/conv"]["macs"] == TINY["conv"][0]
    assert result["macs"] == sum(v[0] for v in TINY.values())


def test_keras_complexity_counts_traced_ops_of_custom_layers():
    inputs = tf_keras.Input((4, 6, 3))
    mean_f = tf_keras.layers.Lambda(lambda t: tf.reduce_mean(t, axis=2, keepdims=True), name="mean_f")(inputs)
    product = tf_keras.layers.Multiply(name="product")([inputs, mean_f, inputs])
    outputs = tf_keras.layers.Lambda(lambda t: tf.reduce_max(t * 0.5, axis=1), name="max_t")(product)
    rows = _rows(keras_complexity(tf_keras.Model(inputs, outputs)))
    assert rows["mean_f"]["macs"] == 4 * 6 * 3  # reads every element
    assert rows["product"]["macs"] == 2 * 4 * 6 * 3  # three operands: two multiplications each
    assert rows["max_t"]["macs"] == 4 * 6 * 3  # the multiplication by a constant is free


def test_keras_complexity_sees_through_pruning_wrappers():
    import tensorflow_model_optimization as tfmot

    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(build_baseline_classifier(), pruning_schedule=schedule)
    result = keras_complexity(pruned)
    # Same MACs and int8 bytes (masks are not parameters of the exported model, BN still folds).
    assert (result["size_bytes"], result["macs_dense_corrected"]) == (46_512, 29_238_120)
    assert result["macs"] == NESSI_TOTAL
    assert _rows(result)["prune_low_magnitude_conv2"]["macs"] == BASELINE_MACS["conv2"]


# ------------------------------------------------------------------------ TFLite-side counting


def test_baseline_tflite_size_and_macs(baseline_tflite, baseline_classifier, tmp_path):
    result = tflite_complexity(baseline_tflite)
    assert result["size_bytes"] == 46_512
    assert result["structural_bytes"] == 8  # the Flatten's RESHAPE shape operand, not a parameter
    assert result["params"] == 46_246 - 4 * (16 + 16 + 32)  # BN folded into the convolutions
    assert result["macs_dense_corrected"] == 29_238_120
    assert result["macs"] == NESSI_TOTAL
    by_type = {}
    for row in result["layers"]:
        by_type.setdefault(row["type"], []).append(row)
    assert [r["macs"] for r in by_type["CONV_2D"]] == [1_599_360, 25_589_760, 2_007_040]
    assert [r["size_bytes"] for r in by_type["CONV_2D"]] == [848, 12_608, 25_216]
    assert [r["macs"] for r in by_type["MAX_POOL_2D"]] == [32_000, 2_560]
    assert [r["macs_dense_corrected"] for r in by_type["FULLY_CONNECTED"]] == [6_400, 1_000]
    assert [r["macs"] for r in by_type["FULLY_CONNECTED"]] == [3_200, 1_000]
    assert [r["size_bytes"] for r in by_type["FULLY_CONNECTED"]] == [6_800, 1_040]
    keras = keras_complexity(baseline_classifier)
    assert (keras["size_bytes"], keras["macs"]) == (result["size_bytes"], result["macs"])
    assert keras["macs_dense_corrected"] == result["macs_dense_corrected"]
    # The same count from a file path.
    path = tmp_path / "baseline.tflite"
    path.write_bytes(baseline_tflite)
    from_file = tflite_complexity(str(path))
    assert (from_file["size_bytes"], from_file["macs"]) == (result["size_bytes"], result["macs"])


def test_cli_reports_nessi_figures_of_the_baseline_exactly(baseline_tflite, tmp_path, capsys):
    """The default output is NeSsi's table of the baseline's published TFLite, operator by operator
    (the RESHAPE of today's converter, absent from the 2022 file, counts nothing)."""
    path = tmp_path / "model_task1.tflite"
    path.write_bytes(baseline_tflite)
    assert complexity.main([str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    types = [r["type"] for r in result["layers"]]
    assert types == [
        "CONV_2D",
        "CONV_2D",
        "MAX_POOL_2D",
        "CONV_2D",
        "MAX_POOL_2D",
        "RESHAPE",
        "FULLY_CONNECTED",
        "FULLY_CONNECTED",
    ]
    macs = [r["macs"] for r in result["layers"] if r["type"] != "RESHAPE"]
    assert macs == [1_599_360, 25_589_760, 32_000, 2_007_040, 2_560, 3_200, 1_000]
    sizes = [r["size_bytes"] for r in result["layers"] if r["type"] != "RESHAPE"]
    assert sizes == [848, 12_608, 0, 25_216, 0, 6_800, 1_040]
    assert (result["macs"], result["size_bytes"]) == (29_234_920, 46_512) == (sum(macs), sum(sizes))
    assert result["macs_dense_corrected"] == 29_234_920 + 3_200
    assert result["within_limits"] is True


def _tensor(shape, producer=None, constant=False, type_="INT8"):
    t = rules.Tensor(shape=list(shape), type=type_, constant=constant)
    t.producer = producer
    return t


def _dense(x):
    kernel = _tensor([100, 64], constant=True)
    return rules.Operator("FULLY_CONNECTED", [x, kernel, None], [_tensor([1, 100])])


def test_nessi_fully_connected_rule():
    pooled = _tensor([1, 2, 1, 32], producer=rules.Operator("MAX_POOL_2D", [], []))
    # The 2022 converter's graph (the published file): the 4-D tensor straight into the layer.
    assert rules.operator_macs(_dense(pooled)) == (3_200, 6_400)
    # Today's: a RESHAPE flattens it first; NeSsi's figure looks through it.
    flat = _tensor([1, 64])
    shape = _tensor([2], constant=True, type_="INT32")
    flat.producer = rules.Operator("RESHAPE", [pooled, shape], [flat])
    assert rules.operator_macs(_dense(flat)) == (3_200, 6_400)
    # A genuinely 2-D input (e.g. after global pooling): both conventions agree.
    gap = _tensor([1, 64], producer=rules.Operator("MEAN", [], []))
    assert rules.operator_macs(_dense(gap)) == (6_400, 6_400)


def test_limit_check_uses_the_official_figures():
    result = {"size_bytes": MAX_BYTES, "macs": MAX_MACS, "macs_dense_corrected": MAX_MACS + 3_200}
    assert rules.within_limits(result) is True
    assert rules.within_limits({**result, "macs": MAX_MACS + 1}) is False
    assert rules.within_limits({**result, "size_bytes": MAX_BYTES + 1}) is False


def test_baseline_tflite_is_full_integer_and_runs(baseline_tflite):
    interpreter = tf.lite.Interpreter(model_content=baseline_tflite)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert list(inp["shape"]) == [1, 51, 40, 1] and list(out["shape"]) == [1, 10]
    interpreter.set_tensor(inp["index"], np.zeros(inp["shape"], np.int8))
    interpreter.invoke()
    assert interpreter.get_tensor(out["index"]).shape == (1, 10)


def test_tiny_model_tflite_agrees_with_keras():
    model = _randomize(_tiny_model(time=6), seed=2)
    keras = keras_complexity(model)
    # Fixed batch 1: one dilated DEPTHWISE_CONV_2D with the batch norm folded into it.
    static = tflite_complexity(to_int8_tflite(model, _calibration(model, n=8), batch_size=1))
    counts = (static["size_bytes"], static["macs"])
    assert counts == (keras["size_bytes"], keras["macs"]) == (196, 3160)
    types = [r["type"] for r in static["layers"]]
    assert "SPACE_TO_BATCH_ND" not in types and types.count("MUL") == 1  # only bn_alone's
    (dw,) = [r for r in static["layers"] if r["type"] == "DEPTHWISE_CONV_2D"]
    assert (dw["macs"], dw["size_bytes"]) == (TINY["dw"][0], TINY["dw"][2])
    # Dynamic batch: SPACE_TO_BATCH_ND on a batch of 2 (T = 6 needs no extra padding), the
    # same MACs; the dw bias (an int8 ADD) and bn_folded (MUL + ADD) stay unfused: 3 x 8 bytes.
    dynamic = tflite_complexity(to_int8_tflite(model, _calibration(model, n=8)))
    (dw,) = [r for r in dynamic["layers"] if r["type"] == "DEPTHWISE_CONV_2D"]
    assert dw["output_shape"] == "[2, 3, 5, 8]" and dw["macs"] == TINY["dw"][0]
    assert dynamic["macs"] == keras["macs"]
    assert dynamic["size_bytes"] == keras["size_bytes"] + 3 * 8


def test_tflite_complexity_rejects_non_tflite_bytes():
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        tflite_complexity(b"this is not a flatbuffer at all")


def test_to_int8_tflite_rejects_bad_inputs(baseline_classifier):
    with pytest.raises(ValueError, match="empty"):
        to_int8_tflite(baseline_classifier, [])
    with pytest.raises(ValueError, match="rank"):
        to_int8_tflite(baseline_classifier, [np.zeros((51, 40), np.float32)])
    with pytest.raises(ValueError, match="batch_size"):
        to_int8_tflite(baseline_classifier, _calibration(baseline_classifier, n=2), batch_size=0)


# ------------------------------------------------------------ project layers (models.layers)


def _block_model(shape, layer):
    inputs = tf_keras.Input(shape)
    return tf_keras.Model(inputs, layer(inputs))


def test_separable_block_hand_computed():
    t, f, c_in, filters = 4, 6, 3, 8
    block = layers_module.SeparableBlock(filters, name="sep")
    (row,) = keras_complexity(_block_model((t, f, c_in), block))["layers"]
    pointwise = t * f * filters * c_in
    depthwise = 2 * t * f * filters * 3  # (3, 1) and (1, 3) kernels, dilation changes nothing
    assert row["macs"] == pointwise + depthwise == 1728
    assert row["params"] == c_in * filters + 3 * filters + 3 * filters == 72
    # int8: three kernels at 1 byte, and the converter's int32 bias for each convolution.
    assert row["size_bytes"] == 72 + 3 * 4 * filters


def test_coord_attention_hand_computed():
    t, f, c = 4, 6, 16
    mip = max(8, c // 32)
    layer = layers_module.CoordAttention(name="att")
    (row,) = keras_complexity(_block_model((t, f, c), layer))["layers"]
    pools = 2 * t * f * c  # mean over F and mean over T each read T*F*C
    shared = (t + f) * c * mip
    back = (t + f) * mip * c  # conv_time on T positions + conv_freq on F positions
    products = 2 * t * f * c  # x * a_t * a_f
    assert row["macs"] == pools + shared + back + products == 4096
    assert row["params"] == (c * mip + mip) + 4 * mip + 2 * (mip * c + c) == 456
    # BN folded into the shared conv; biases int32.
    assert row["size_bytes"] == (c * mip + 4 * mip) + 2 * (mip * c + 4 * c) == 544


def test_project_layers_tflite_agrees_with_keras():
    inputs = tf_keras.Input((4, 6, 3))
    x = layers_module.SeparableBlock(16, name="sep")(inputs)  # [B, 4, 6, 16]
    x = tf_keras.layers.BatchNormalization(name="bn")(x)  # after an add: MUL + ADD in TFLite
    x = tf_keras.layers.ReLU(name="relu")(x)
    x = layers_module.CoordAttention(name="att")(x)
    x = tf_keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = _randomize(tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="dense")(x)), seed=4)
    keras = keras_complexity(model)
    assert _rows(keras)["bn"]["size_bytes"] == 2 * 16
    result = tflite_complexity(to_int8_tflite(model, _calibration(model, n=8)))
    assert result["size_bytes"] == keras["size_bytes"]
    assert result["macs"] == keras["macs"]


# -------------------------------------------------------------------------------------- CLI


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "evaluate.complexity", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_json_on_tflite_and_keras(tmp_path, baseline_tflite, capsys):
    tflite_path = tmp_path / "baseline_int8.tflite"
    tflite_path.write_bytes(baseline_tflite)
    keras_path = tmp_path / "baseline.keras"
    build_baseline().save(keras_path)

    done = _cli(str(tflite_path), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    counts = (result["params"], result["size_bytes"], result["macs_dense_corrected"])
    assert counts == (45_990, 46_512, 29_238_120)
    assert result["macs"] == NESSI_TOTAL
    assert result["within_limits"] is True
    assert len(result["layers"]) == 8

    done = _cli(str(keras_path), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # The nested classifier is counted, not the front end.
    counts = (result["params"], result["size_bytes"], result["macs_dense_corrected"])
    assert counts == (46_246, 46_512, 29_238_120)
    assert result["macs"] == NESSI_TOTAL
    assert result["model"] == "classifier" and result["within_limits"] is True
    assert result["limits"] == {"max_bytes": MAX_BYTES, "max_macs": MAX_MACS}

    # The table (in-process: one interpreter start less).
    assert complexity.main([str(tflite_path)]) == 0
    table = capsys.readouterr().out
    assert "46,512 bytes" in table and "29,238,120" in table and "29,234,920" in table
    assert "within DCASE2022 limits: yes" in table
    assert "MAX_POOL_2D" in table and "32,000" in table


def test_cli_missing_and_unreadable_files(tmp_path, capsys):
    missing = tmp_path / "nope.tflite"
    assert complexity.main([str(missing)]) != 0
    assert f"{missing}: no such file" in capsys.readouterr().err
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    assert complexity.main([str(garbage), "--json"]) != 0
    err = capsys.readouterr().err
    assert str(garbage) in err and "not a TFLite flatbuffer" in err
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip file")
    assert complexity.main([str(broken)]) != 0
    assert "cannot load the Keras model" in capsys.readouterr().err
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    assert complexity.main([str(other)]) != 0
    assert "expected a .tflite or .keras file" in capsys.readouterr().err


def test_limits():
    assert (MAX_BYTES, MAX_MACS) == (128_000, 30_000_000)
