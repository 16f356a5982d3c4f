"""Tests of models.layers (SeparableBlock, CoordAttention) and models.quantize (QAT configs)."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from models import quantize
from models.layers import CoordAttention, SeparableBlock, hard_swish
from pipeline.core import checks
from tests.layer_testing import run_layer_test

SHAPE = (2, 8, 16, 4)  # [B, T, F, C]
NO_DELEGATES = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


# ----------------------------------------------------------------------------- NumPy references


def depthwise_reference(x, kernel, axis, dilation):
    """Dilated depthwise convolution of ``x`` [B, T, F, C] along ``axis`` (1 or 2), stride 1,
    zero "same" padding; ``kernel`` is [k, C] (odd k)."""
    k = kernel.shape[0]
    pad = dilation * (k - 1) // 2
    widths = [(0, 0)] * 4
    widths[axis] = (pad, pad)
    padded = np.pad(x, widths)
    n = x.shape[axis]
    out = np.zeros_like(x)
    for i in range(k):
        out += kernel[i] * np.take(padded, np.arange(i * dilation, i * dilation + n), axis=axis)
    return out


def separable_reference(x, pointwise, kernel_time, kernel_freq, time_dilation, freq_dilation):
    hidden = x @ pointwise  # [B, T, F, filters]
    return depthwise_reference(hidden, kernel_time, 1, time_dilation) + depthwise_reference(
        hidden, kernel_freq, 2, freq_dilation
    )


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def coord_attention_reference(x, weights, training=False, eps=1e-5):
    """Hou et al.'s formulation with an explicit concatenation, as written in the paper."""
    w_r, b_r, gamma, beta, w_t, b_t, w_f, b_f, moving_mean, moving_var = weights
    time = x.shape[1]
    z_t = x.mean(axis=2)  # [B, T, C]
    z_f = x.mean(axis=1)  # [B, F, C]
    z = np.concatenate([z_t, z_f], axis=1)  # [B, T+F, C]
    y = z @ w_r.reshape(w_r.shape[-2:]) + b_r  # [B, T+F, mip]
    if training:
        mean, var = y.mean(axis=(0, 1)), y.var(axis=(0, 1))
    else:
        mean, var = moving_mean, moving_var
    y = gamma * (y - mean) / np.sqrt(var + eps) + beta
    y = y * np.clip(y + 3.0, 0.0, 6.0) / 6.0  # h-swish
    y_t, y_f = y[:, :time], y[:, time:]
    a_t = sigmoid(y_t @ w_t.reshape(w_t.shape[-2:]) + b_t)  # [B, T, C]
    a_f = sigmoid(y_f @ w_f.reshape(w_f.shape[-2:]) + b_f)  # [B, F, C]
    return x * a_t[:, :, None, :] * a_f[:, None, :, :], mean


def _randomise_coord_attention(layer, rng):
    """Non-trivial values for every weight, BatchNorm statistics included."""
    values = []
    for w in layer.get_weights():
        v = rng.standard_normal(w.shape).astype("float32") * 0.5
        values.append(v)
    # get_weights order: conv_reduce k/b, bn gamma/beta, conv_time k/b, conv_freq k/b,
    # bn moving_mean/variance.
    values[8] = rng.standard_normal(values[8].shape).astype("float32") * 0.3
    values[9] = rng.uniform(0.5, 2.0, values[9].shape).astype("float32")
    layer.set_weights(values)
    return values


# ----------------------------------------------------------------------------- SeparableBlock


def test_separable_block_layer_test(tmp_path):
    out = run_layer_test(
        SeparableBlock,
        {"filters": 8, "kernel_regularizer": {"class_name": "L2", "config": {"l2": 1e-4}}},
        SHAPE,
        expected_output_shape=(2, 8, 16, 8),
        tmp_path=tmp_path,
    )
    assert np.std(out) > 0


def test_separable_block_weights_and_parameter_count():
    layer = SeparableBlock(8, time_kernel=5, freq_kernel=3, kernel_regularizer="l2", name="sep")
    layer(tf.zeros((1, 8, 16, 4)))
    names = [w.name for w in layer.weights]
    assert names == [
        "sep/pointwise/kernel:0",
        "sep/depthwise_time/depthwise_kernel:0",
        "sep/depthwise_freq/depthwise_kernel:0",
    ]
    assert [tuple(w.shape) for w in layer.weights] == [(1, 1, 4, 8), (5, 1, 8, 1), (1, 3, 8, 1)]
    assert layer.count_params() == 4 * 8 + 5 * 8 + 3 * 8  # 96
    assert SeparableBlock(8).compute_output_shape((None, 8, 16, 4)) == (None, 8, 16, 8)
    assert len(layer.losses) == 3  # one regularizer per kernel
    # The report network's first block (1 input channel, 64 filters) and a 128->128 block.
    first = SeparableBlock(64)
    first.build((None, 44, 256, 1))
    inner = SeparableBlock(128)
    inner.build((None, 22, 128, 128))
    assert first.count_params() == 1 * 64 + 6 * 64
    assert inner.count_params() == 128 * 128 + 6 * 128


def test_separable_block_hand_computed_5x5():
    # Pointwise weight 2, time kernel [1, 10, 100] dilated by 2, frequency kernel [0, 0, 0]
    # except for the centre tap 1000.
    layer = SeparableBlock(1)
    x = np.arange(25, dtype="float32").reshape(1, 5, 5, 1)  # x[t, f] = 5 t + f
    layer.build(x.shape)
    layer.set_weights(
        [
            np.full((1, 1, 1, 1), 2.0, "float32"),
            np.array([1.0, 10.0, 100.0], "float32").reshape(3, 1, 1, 1),
            np.array([0.0, 1000.0, 0.0], "float32").reshape(1, 3, 1, 1),
        ]
    )
    y = layer(x).numpy()[0, :, :, 0]
    # y[t, f] = 2 * (x[t-2, f] + 10 x[t, f] + 100 x[t+2, f] + 1000 x[t, f]), zero outside.
    assert y[0, 0] == 2 * (0 + 10 * 0 + 100 * 10 + 1000 * 0)  # 2000
    assert y[2, 3] == 2 * (3 + 10 * 13 + 100 * 23 + 1000 * 13)  # 30866
    assert y[4, 4] == 2 * (14 + 10 * 24 + 0 + 1000 * 24)  # 48508
    xt = x[0, :, :, 0]
    expected = np.zeros((5, 5))
    for t in range(5):
        for f in range(5):
            up = xt[t - 2, f] if t >= 2 else 0.0
            down = xt[t + 2, f] if t + 2 < 5 else 0.0
            expected[t, f] = 2 * (up + 10 * xt[t, f] + 100 * down + 1000 * xt[t, f])
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("time_kernel,freq_kernel,time_dilation,freq_dilation", [(3, 3, 2, 2), (5, 3, 1, 3)])
def test_separable_block_matches_numpy(time_kernel, freq_kernel, time_dilation, freq_dilation):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 9, 3)).astype("float32")
    layer = SeparableBlock(4, time_kernel, freq_kernel, time_dilation, freq_dilation)
    y = layer(x).numpy()
    pointwise, k_time, k_freq = (w.numpy() for w in layer.weights)
    expected = separable_reference(
        x,
        pointwise.reshape(3, 4),
        k_time.reshape(time_kernel, 4),
        k_freq.reshape(freq_kernel, 4),
        time_dilation,
        freq_dilation,
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"filters": 0}, "filters"),
        ({"filters": 2.5}, "filters"),
        ({"filters": True}, "filters"),
        ({"filters": 8, "time_kernel": 2}, "time_kernel"),
        ({"filters": 8, "freq_kernel": -3}, "freq_kernel"),
        ({"filters": 8, "time_dilation": 0}, "time_dilation"),
        ({"filters": 8, "freq_dilation": "2"}, "freq_dilation"),
    ],
)
def test_separable_block_argument_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SeparableBlock(**kwargs)


def test_shared_argument_checks():
    """The one set of argument checks (pipeline.core.checks): name first, bad value last."""
    assert checks.check_int("n", np.int64(3), 1) == 3 and type(checks.check_int("n", np.int64(3))) is int
    for bad in (True, 2.0, "3", 0):
        with pytest.raises(ValueError, match=rf"^n must be an integer >= 1, got {bad!r}$"):
            checks.check_int("n", bad, 1)
    with pytest.raises(ValueError, match=r"^k must be an odd integer >= 1, got 4$"):
        checks.check_int("k", 4, 1, odd=True)
    assert checks.check_real("x", 2) == 2.0 and type(checks.check_real("x", 2)) is float
    with pytest.raises(ValueError, match=r"^x must be a finite number > 0, got 0.0$"):
        checks.check_real("x", 0.0, exclusive=True)
    for bad in (float("nan"), float("inf"), -0.5, False, None):
        with pytest.raises(ValueError, match=r"^x must be a finite number >= 0, got "):
            checks.check_real("x", bad)
    assert checks.check_bool("b", False) is False
    with pytest.raises(ValueError, match=r"^b must be True or False, got 1$"):
        checks.check_bool("b", 1)
    assert checks.check_choice("m", "zm", ("zm", "mm")) == "zm"
    assert checks.check_choice("m", None, ("zm",), allow_none=True) is None
    with pytest.raises(ValueError, match=r"^m must be None or one of \('zm',\), got 'x'$"):
        checks.check_choice("m", "x", ("zm",), allow_none=True)
    with pytest.raises(ValueError, match=r"^m must be one of \('zm',\), got None$"):
        checks.check_choice("m", None, ("zm",))


def test_argument_checks_import_no_tensorflow():
    code = "import sys, pipeline.core.checks; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_layers_reject_non_4d_input():
    with pytest.raises(ValueError, match="batch, time, freq, channels"):
        SeparableBlock(4)(tf.zeros((2, 8, 16)))
    with pytest.raises(ValueError, match="batch, time, freq, channels"):
        CoordAttention()(tf.zeros((2, 8, 16)))


# ----------------------------------------------------------------------------- CoordAttention


def test_coord_attention_layer_test(tmp_path):
    out = run_layer_test(
        CoordAttention,
        {"reduction": 2, "min_channels": 2},
        SHAPE,
        expected_output_shape=SHAPE,
        tmp_path=tmp_path,
    )
    assert np.std(out) > 0


@pytest.mark.parametrize(
    "channels,reduction,min_channels,mip",
    [(8, 32, 8, 8), (64, 32, 8, 8), (128, 32, 8, 8), (512, 32, 8, 16), (12, 4, 2, 3)],
)
def test_coord_attention_parameter_count(channels, reduction, min_channels, mip):
    layer = CoordAttention(reduction, min_channels)
    layer.build((None, 6, 10, channels))
    assert layer.mip == mip
    expected = channels * mip + mip + 4 * mip + 2 * (mip * channels + channels)
    assert layer.count_params() == expected
    non_trainable = sum(int(np.prod(w.shape)) for w in layer.non_trainable_weights)
    assert non_trainable == 2 * mip  # BN moving mean and variance
    assert sorted("/".join(w.name.split("/")[-2:]) for w in layer.weights) == sorted(
        [
            "conv_reduce/kernel:0",
            "conv_reduce/bias:0",
            "bn/gamma:0",
            "bn/beta:0",
            "bn/moving_mean:0",
            "bn/moving_variance:0",
            "conv_time/kernel:0",
            "conv_time/bias:0",
            "conv_freq/kernel:0",
            "conv_freq/bias:0",
        ]
    )


def test_coord_attention_report_sizes():
    # C = 64 and C = 128 with the defaults: mip = 8.
    assert _count(CoordAttention(), 64) == 64 * 8 + 8 + 32 + 2 * (8 * 64 + 64) == 1704
    assert _count(CoordAttention(), 128) == 128 * 8 + 8 + 32 + 2 * (8 * 128 + 128) == 3368


def _count(layer, channels):
    layer.build((None, 5, 8, channels))
    return layer.count_params()


def test_coord_attention_matches_paper_formulation_inference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 7, 6)).astype("float32")
    layer = CoordAttention(reduction=2, min_channels=2)  # mip = 3
    layer.build(x.shape)
    weights = _randomise_coord_attention(layer, rng)
    y = layer(x, training=False).numpy()
    expected, _ = coord_attention_reference(x, weights, training=False)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # Same in a graph and with unknown T and F (reduce_mean / dynamic reshape fallback).
    inputs = tf_keras.Input((None, None, 6))
    dynamic = tf_keras.Model(inputs, CoordAttention(reduction=2, min_channels=2)(inputs))
    dynamic.layers[-1].set_weights(weights)
    assert dynamic.layers[-1].pool_freq is None and dynamic.layers[-1].pool_time is None
    np.testing.assert_allclose(dynamic.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_coord_attention_training_uses_concatenation_statistics():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5, 9, 6)).astype("float32") + 0.5
    layer = CoordAttention(reduction=2, min_channels=2)
    layer.build(x.shape)
    weights = _randomise_coord_attention(layer, rng)
    y = layer(x, training=True).numpy()
    expected, batch_mean = coord_attention_reference(x, weights, training=True)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    # Moving mean updated with Keras momentum 0.9 (PyTorch's 0.1) from the concatenation's mean.
    np.testing.assert_allclose(layer.bn.moving_mean.numpy(), 0.9 * weights[8] + 0.1 * batch_mean, rtol=1e-5, atol=1e-6)


def test_hard_swish_values():
    x = np.array([-4.0, -3.0, -1.0, 0.0, 1.0, 3.0, 5.0], "float32")
    np.testing.assert_allclose(hard_swish(tf.constant(x)).numpy(), [0.0, 0.0, -1 / 3, 0.0, 2 / 3, 3.0, 5.0], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"reduction": 0}, "reduction"),
        ({"reduction": 1.5}, "reduction"),
        ({"min_channels": -1}, "min_channels"),
        ({"min_channels": None}, "min_channels"),
    ],
)
def test_coord_attention_argument_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CoordAttention(**kwargs)


def test_coord_attention_rejects_unknown_channels():
    with pytest.raises(ValueError, match="channel"):
        CoordAttention().build((None, 8, 16, None))


# ----------------------------------------------------------------------------- TFMOT and TFLite


def _tiny_model(batch_norm=False, seed=0):
    """Input -> SeparableBlock [-> BN -> ReLU] -> CoordAttention -> GAP -> Dense(5)."""
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input(SHAPE[1:])
    x = SeparableBlock(8)(inputs)
    if batch_norm:
        x = tf_keras.layers.BatchNormalization()(x)
        x = tf_keras.layers.ReLU()(x)
    x = CoordAttention(reduction=4, min_channels=4)(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    # Large output weights: logits spread well beyond one step of an untrained [-6, 6] range.
    init = tf_keras.initializers.RandomNormal(stddev=4.0)
    dense = tf_keras.layers.Dense(5, kernel_initializer=init)
    return tf_keras.Model(inputs, dense(x))


def _inputs(n, seed=0):
    """Inputs whose per-channel offsets and scales vary, so logits differ between samples."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + SHAPE[1:]) * rng.uniform(0.5, 2.0, (n, 1, 1, 4))
    return (x + rng.uniform(-1.0, 1.0, (n, 1, 1, 4))).astype("float32")


def _convert(model, representative=None):
    """int8-in/int8-out TFLite model of ``model`` traced at batch 1."""
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec((1,) + SHAPE[1:], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is not None:
        converter.representative_dataset = lambda: ([sample[None]] for sample in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def _run_tflite(content, x):
    interpreter = tf.lite.Interpreter(model_content=content, experimental_op_resolver_type=NO_DELEGATES)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    outputs = []
    for sample in x:
        q = np.clip(np.round(sample[None] / in_scale + in_zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q)
        interpreter.invoke()
        logits = interpreter.get_tensor(out["index"]).astype("float32")
        outputs.append((logits - out_zero) * out_scale)
    ops = [d["op_name"] for d in interpreter._get_ops_details()]
    return np.concatenate(outputs), ops, interpreter.get_tensor_details()


def test_layers_are_prunable():
    model = _tiny_model()
    sep, att = model.layers[1], model.layers[2]
    assert isinstance(sep, tfmot.sparsity.keras.PrunableLayer)
    assert isinstance(att, tfmot.sparsity.keras.PrunableLayer)
    assert [w.name.split("/", 1)[1] for w in sep.get_prunable_weights()] == ["pointwise/kernel:0"]
    assert [w.name.split("/", 1)[1] for w in att.get_prunable_weights()] == [
        "conv_reduce/kernel:0",
        "conv_time/kernel:0",
        "conv_freq/kernel:0",
    ]

    sparsity = tfmot.sparsity.keras
    pruned = sparsity.prune_low_magnitude(
        model, pruning_schedule=sparsity.ConstantSparsity(0.5, begin_step=0, frequency=1)
    )
    pruned.compile(
        optimizer=tf_keras.optimizers.SGD(1e-2), loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = _inputs(4)
    pruned.fit(x, np.arange(4) % 5, batch_size=2, epochs=1, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(pruned)
    sep, att = stripped.layers[1], stripped.layers[2]
    assert type(sep) is SeparableBlock and type(att) is CoordAttention

    def zero_fraction(var):
        return float(np.mean(var.numpy() == 0.0))

    assert zero_fraction(sep.pointwise.kernel) == pytest.approx(0.5, abs=0.05)
    for conv in (att.conv_reduce, att.conv_time, att.conv_freq):
        assert zero_fraction(conv.kernel) == pytest.approx(0.5, abs=0.05)
    # Depthwise kernels are left dense (as TFMOT's registry does for DepthwiseConv2D).
    assert zero_fraction(sep.depthwise_time.depthwise_kernel) == 0.0
    assert zero_fraction(sep.depthwise_freq.depthwise_kernel) == 0.0


def test_post_training_int8_conversion():
    model = _tiny_model()
    x = _inputs(24, seed=5)
    content = _convert(model, representative=_inputs(16, seed=6))
    got, ops, tensors = _run_tflite(content, x)
    expected = model.predict(x, verbose=0)
    assert len(set(expected.argmax(axis=1))) > 1  # the check below can fail
    # Measured: argmax agreement 23/24, mean error 2.3% and max error 18% of the logit range.
    assert np.mean(got.argmax(axis=1) == expected.argmax(axis=1)) >= 0.8
    assert np.mean(np.abs(got - expected)) < 0.06 * np.ptp(expected)
    assert np.max(np.abs(got - expected)) < 0.3 * np.ptp(expected)
    assert set(ops) == {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "ADD",
        "AVERAGE_POOL_2D",
        "RESHAPE",
        "CONCATENATION",
        "HARD_SWISH",
        "SPLIT_V",
        "LOGISTIC",
        "MUL",
        "MEAN",
        "FULLY_CONNECTED",
    }, ops  # no TRANSPOSE, no SPACE_TO_BATCH_ND (dilations fused at batch 1), no Flex ops
    assert ops.count("MEAN") == 1  # only the model's GlobalAveragePooling2D
    assert {np.dtype(t["dtype"]) for t in tensors} <= {np.dtype(np.int8), np.dtype(np.int32)}


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_quantization_aware_training_and_int8_conversion(tmp_path):
    model = _tiny_model(batch_norm=True)
    annotated = quantize.annotate_model(model)
    with tfmot.quantization.keras.quantize_scope(quantize.quantize_scope_objects()):
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    wrappers = {type(w.layer).__name__: w for w in qat.layers if hasattr(w, "layer")}
    configs = {name: type(w.quantize_config) for name, w in wrappers.items()}
    assert configs["SeparableBlock"] is quantize.SeparableBlockQuantizeConfig
    assert configs["CoordAttention"] is quantize.CoordAttentionQuantizeConfig
    assert configs["BatchNormalization"] is quantize.OutputQuantizeConfig
    for wrapper in wrappers.values():  # prefixed quantizer variables do not collide
        names = [w.name for w in wrapper.weights if w.name.startswith(wrapper.name + "/")]
        assert len(names) == len(set(names)), names
    names = [w.name.split("/")[-1] for w in wrappers["SeparableBlock"].weights]
    assert "depthwise_time_depthwise_kernel_min:0" in names

    x = _inputs(8, seed=7)
    y = np.arange(8) % 5
    qat.compile(
        optimizer=tf_keras.optimizers.Adam(1e-3), loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    before = [w.numpy().copy() for w in wrappers["SeparableBlock"].layer.trainable_weights]
    history = qat.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = wrappers["SeparableBlock"].layer.trainable_weights
    assert all(not np.array_equal(b, a.numpy()) for b, a in zip(before, after, strict=True))
    # The per-channel depthwise range has one entry per channel and was set by training.
    dw_max = [w for w in wrappers["SeparableBlock"].weights if "depthwise_time_depthwise_kernel_max" in w.name]
    assert dw_max[0].shape == (8,) and not np.allclose(dw_max[0].numpy(), 6.0)

    # Fake quantization is active in inference: the QAT model differs slightly from float.
    float_out = model.predict(x, verbose=0)
    qat_out = qat.predict(x, verbose=0)
    assert 0 < np.max(np.abs(qat_out - float_out)) < 0.2 * np.ptp(float_out)

    # Legacy .h5 round trip inside the scope (TFMOT's QuantizeLayer cannot load from .keras).
    path = str(tmp_path / "qat.h5")
    qat.save(path)
    with tfmot.quantization.keras.quantize_scope(quantize.quantize_scope_objects()):
        loaded = tf_keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat_out, atol=1e-6)

    # Full-int8 TFLite; the standalone BN's MUL range comes from the representative set.
    content = _convert(qat, representative=_inputs(8, seed=8))
    got, ops, tensors = _run_tflite(content, x)
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops and "TRANSPOSE" not in ops
    assert {"HARD_SWISH", "AVERAGE_POOL_2D", "DEPTHWISE_CONV_2D", "LOGISTIC"} <= set(ops)
    # The fake-quantizers sit where TFLite has int8 tensors, so the int8 model follows the
    # QAT model closely (measured: mean error 0.4%, max 6% of the logit range, argmax 8/8).
    assert len(set(qat_out.argmax(axis=1))) > 1
    assert np.mean(np.abs(got - qat_out)) < 0.02 * np.ptp(qat_out)
    assert np.max(np.abs(got - qat_out)) < 0.15 * np.ptp(qat_out)
    assert np.mean(got.argmax(axis=1) == qat_out.argmax(axis=1)) >= 0.75
    assert {np.dtype(t["dtype"]) for t in tensors} <= {np.dtype(np.int8), np.dtype(np.int32)}
    # Depthwise kernels ([1, 3, 1, 8] and [1, 1, 3, 8] in TFLite) are quantized per channel.
    kernels = [t for t in tensors if list(t["shape"]) in ([1, 3, 1, 8], [1, 1, 3, 8])]
    assert len(kernels) == 2
    assert all(len(t["quantization_parameters"]["scales"]) == 8 for t in kernels)


def test_quantize_config_lookup_and_scope():
    config_for = quantize.quantize_config_for
    assert type(config_for(SeparableBlock(4))) is quantize.SeparableBlockQuantizeConfig
    assert type(config_for(CoordAttention())) is quantize.CoordAttentionQuantizeConfig
    assert config_for(tf_keras.layers.Dense(3)) is None
    objects = quantize.quantize_scope_objects()
    for name in (
        "SeparableBlockQuantizeConfig",
        "asc>CoordAttentionQuantizeConfig",
        "asc>SeparableBlock",
        "CoordAttention",
    ):
        assert name in objects
    config = tf_keras.saving.serialize_keras_object(quantize.SeparableBlockQuantizeConfig())
    restored = tf_keras.saving.deserialize_keras_object(config)
    assert type(restored) is quantize.SeparableBlockQuantizeConfig
