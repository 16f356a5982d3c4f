"""Tests of augment/: SpecAugment++, time shifting and test-time augmentation."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import augment
from augment import TTA, SpecAugmentPP, TimeShift
from augment.tta import AUGMENTATION_LAYERS as AUGMENTATION
from augment.tta import TTA_MODES
from pipeline.core.config import SpecAugmentParams, TTAParams
from tests.layer_testing import run_layer_test

# --------------------------------------------------------------------------------------------
# helpers


def stripe_of(masked: np.ndarray):
    """(width, start) of the masked positions of a 1-D boolean array; asserts contiguity."""
    where = np.flatnonzero(masked)
    if where.size == 0:
        return 0, None
    assert where[-1] - where[0] + 1 == where.size, f"masked positions not contiguous: {where}"
    return int(where.size), int(where[0])


def zero_mask(layer, shape, calls=1):
    """Boolean masks (True = zeroed) of ``calls`` augmenting calls on an input of ones."""
    x = tf.ones(shape)
    return [layer(x, training=True).numpy() == 0.0 for _ in range(calls)]


def tiny_classifier(seed=0, time_std=3.0, mode="mm", frames=16, bins=8):
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input([frames, bins, 1])
    x = TimeShift(std_frames=time_std, seed=1)(inputs)
    x = SpecAugmentPP(4, 3, mode=mode, seed=2)(x)
    x = tf_keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = SpecAugmentPP(2, 2, mode=mode, seed=3)(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf_keras.layers.Dense(3)(x)
    return tf_keras.Model(inputs, outputs, name="tiny")


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# identity at inference and the activity switch


@pytest.mark.parametrize(
    "make",
    [
        lambda: SpecAugmentPP(5, 4, n_time_masks=2, n_freq_masks=2, mode="zm"),
        lambda: SpecAugmentPP(5, 4, mode="mm"),
        lambda: SpecAugmentPP(5, 4, mode="cm"),
        lambda: TimeShift(std_frames=10.0),
    ],
)
def test_identity_at_inference(make):
    x = tf.random.stateless_normal([4, 12, 10, 2], seed=[1, 2])
    layer = make()
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(tf.function(lambda t: layer(t))(x).numpy(), x.numpy())
    # In a model: predict() and a plain call run in inference mode.
    inputs = tf_keras.Input([None, None, 2])
    model = tf_keras.Model(inputs, make()(inputs))
    np.testing.assert_array_equal(model.predict(x.numpy(), verbose=0), x.numpy())
    np.testing.assert_array_equal(model(x).numpy(), x.numpy())
    # The same layer does augment in training mode (so the checks above can fail).
    assert not np.array_equal(layer(x, training=True).numpy(), x.numpy())


def test_augment_flag_and_always_on():
    x = tf.random.stateless_normal([4, 12, 10, 1], seed=[3, 4])
    layer = SpecAugmentPP(6, 5, mode="zm", seed=1)
    assert not np.array_equal(layer(x, training=False, augment=True).numpy(), x.numpy())
    np.testing.assert_array_equal(layer(x, training=True, augment=False).numpy(), x.numpy())
    always = SpecAugmentPP(6, 5, mode="zm", seed=1, always_on=True)
    assert not np.array_equal(always(x).numpy(), x.numpy())
    assert not np.array_equal(always(x, training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(always(x, augment=False).numpy(), x.numpy())
    # always_on=True is the same as augment=True on every call (same seed, same draws).
    ref = SpecAugmentPP(6, 5, mode="zm", seed=1)
    on = SpecAugmentPP(6, 5, mode="zm", seed=1, always_on=True)
    for _ in range(2):
        np.testing.assert_array_equal(on(x).numpy(), ref(x, augment=True).numpy())
    # A symbolic training flag goes through tf.cond.
    shift = TimeShift(5.0, seed=2)
    fn = tf.function(lambda t, flag: shift(t, training=flag))
    np.testing.assert_array_equal(fn(x, tf.constant(False)).numpy(), x.numpy())
    assert not np.array_equal(fn(x, tf.constant(True)).numpy(), x.numpy())


def test_no_weights():
    inputs = tf_keras.Input([None, None, 1])
    x = TimeShift(seed=1)(inputs)
    x = SpecAugmentPP(3, 3, seed=2)(x)
    model = tf_keras.Model(inputs, x)
    model(tf.ones([2, 8, 8, 1]), training=True)  # the generators exist now
    assert model.weights == [] and model.count_params() == 0
    assert all(layer.get_weights() == [] for layer in model.layers)


# --------------------------------------------------------------------------------------------
# SpecAugment++ masks: widths and starts


@pytest.mark.parametrize("axis", ["time", "freq"])
def test_stripe_width_and_start_distribution(axis):
    n, frames, bins, max_width = 2000, 20, 16, 8
    if axis == "time":
        layer = SpecAugmentPP(max_width, 0, n_time_masks=1, n_freq_masks=0, mode="zm", seed=11)
    else:
        layer = SpecAugmentPP(0, max_width, n_time_masks=0, n_freq_masks=1, mode="zm", seed=12)
    (mask,) = zero_mask(layer, [n, frames, bins, 1])
    mask = mask[..., 0]  # [n, T, F]
    if axis == "time":
        assert np.all(mask.all(axis=2) == mask.any(axis=2)), "a time stripe spans all bins"
        line, length = mask.any(axis=2), frames
    else:
        assert np.all(mask.all(axis=1) == mask.any(axis=1)), "a frequency stripe spans all frames"
        line, length = mask.any(axis=1), bins
    widths, starts = zip(*(stripe_of(row) for row in line), strict=True)
    widths = np.array(widths)
    # width ~ U{0..8}: every value, nothing else, mean 4 (sd 2.58, standard error 0.06).
    counts = np.bincount(widths, minlength=max_width + 1)
    assert counts.size == max_width + 1 and counts.min() > 0
    np.testing.assert_allclose(counts / n, 1.0 / (max_width + 1), atol=0.03)
    assert abs(widths.mean() - max_width / 2) < 0.25
    # start ~ U{0..length - width}: both ends reached for each width, centred on average.
    nonzero = widths > 0
    starts = np.array([s for s in starts if s is not None])
    assert np.all(starts + widths[nonzero] <= length)
    for w in range(1, max_width + 1):
        s = starts[widths[nonzero] == w]
        assert s.min() == 0 and s.max() == length - w, (w, s.min(), s.max())
    relative = starts / (length - widths[nonzero])
    assert abs(relative.mean() - 0.5) < 0.03


def test_stripe_width_clipped_to_axis():
    n, frames = 2000, 4
    layer = SpecAugmentPP(10, 0, n_freq_masks=0, mode="zm", seed=5)
    (mask,) = zero_mask(layer, [n, frames, 3, 1])
    widths = mask[..., 0].any(axis=2).sum(axis=1)
    assert widths.max() == frames
    # width = min(U{0..10}, 4): P(width == 4) = 7/11.
    assert abs(np.mean(widths == frames) - 7 / 11) < 0.04
    for w in range(frames):
        assert abs(np.mean(widths == w) - 1 / 11) < 0.025


def test_several_masks_are_a_union():
    n, frames, max_width = 2000, 30, 6
    layer = SpecAugmentPP(max_width, 0, n_time_masks=3, n_freq_masks=0, mode="zm", seed=8)
    (mask,) = zero_mask(layer, [n, frames, 2, 1])
    masked = mask[..., 0].any(axis=2)  # [n, T]
    # Reference expectation of the union size by NumPy simulation of the same distribution.
    rng = np.random.default_rng(0)
    sims = 100_000
    width = rng.integers(0, max_width + 1, size=(sims, 3))
    start = np.floor(rng.random((sims, 3)) * (frames - width + 1)).astype(int)
    t = np.arange(frames)
    union = ((t >= start[..., None]) & (t < (start + width)[..., None])).any(axis=1).sum(axis=1)
    sizes = masked.sum(axis=1)
    assert sizes.max() <= 3 * max_width
    se = union.std() / np.sqrt(n)
    assert abs(sizes.mean() - union.mean()) < 4 * se, (sizes.mean(), union.mean())
    # Some samples show disjoint stripes (more than one run of masked frames).
    runs = (np.diff(masked.astype(int), axis=1) == 1).sum(axis=1) + masked[:, 0]
    assert runs.max() >= 2


# --------------------------------------------------------------------------------------------
# SpecAugment++ fills: mixture masking and cutting


def constant_batch(batch=6, frames=12, bins=10, channels=2):
    values = 10.0 * (np.arange(batch) + 1)
    x = np.broadcast_to(values[:, None, None, None], (batch, frames, bins, channels))
    return values, tf.constant(x, tf.float32)


@pytest.mark.parametrize("mode", ["mm", "cm"])
def test_mixture_and_cutting_fill_from_partner(mode):
    values, x = constant_batch()
    zm = SpecAugmentPP(4, 3, n_time_masks=1, n_freq_masks=1, mode="zm", seed=21)
    mixed = SpecAugmentPP(4, 3, n_time_masks=1, n_freq_masks=1, mode=mode, seed=21)
    identified = 0
    for _ in range(4):
        region = zm(x, training=True).numpy() == 0.0  # same seed -> same stripes in every mode
        out = mixed(x, training=True).numpy()
        partners = []
        for i, v in enumerate(values):
            np.testing.assert_array_equal(out[i][~region[i]], v)  # original outside
            inside = out[i][region[i]]
            if inside.size == 0:
                partners.append(None)
                continue
            assert np.all(inside == inside[0]), "one partner fills the whole region"
            j = int(np.argmin(np.abs((2 * inside[0] - v if mode == "mm" else inside[0]) - values)))
            expected = 0.5 * (v + values[j]) if mode == "mm" else values[j]
            np.testing.assert_allclose(inside, expected, rtol=1e-6)
            assert j != i, "the partner is another sample"
            partners.append(j)
            identified += 1
        known = [p for p in partners if p is not None]
        assert len(set(known)) == len(known), "partners form a permutation"
    assert identified >= 15


def test_partner_is_a_uniform_derangement():
    from augment.specaugment import random_partners

    counts = np.zeros((5, 5))
    for k in range(600):
        partner = random_partners(tf.constant([7, k], tf.int64), 5).numpy()
        assert sorted(partner) == list(range(5)) and np.all(partner != np.arange(5))
        counts[np.arange(5), partner] += 1
    off_diagonal = counts[~np.eye(5, dtype=bool)] / 600
    np.testing.assert_allclose(off_diagonal, 0.25, atol=0.07)


@pytest.mark.parametrize("mode", ["mm", "cm"])
def test_batch_of_one_mixture_is_identity(mode):
    x = tf.random.stateless_normal([1, 12, 10, 3], seed=[5, 6])
    layer = SpecAugmentPP(6, 6, mode=mode, seed=3)
    for _ in range(3):
        np.testing.assert_allclose(layer(x, training=True).numpy(), x.numpy(), rtol=1e-6)


def test_mixture_gradient_reaches_partner():
    values, x = constant_batch(batch=2, frames=8, bins=6, channels=1)
    layer = SpecAugmentPP(8, 0, n_freq_masks=0, mode="mm", seed=4)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, training=True)
        loss = tf.reduce_sum(out[0])
    grad = tape.gradient(loss, x).numpy()
    masked = out.numpy()[0, :, 0, 0] != values[0]
    # Inside the stripe sample 0 is 0.5*(x0 + x1): gradient 0.5 to both; outside 1 to x0 only.
    np.testing.assert_allclose(grad[0, masked], 0.5)
    np.testing.assert_allclose(grad[0, ~masked], 1.0)
    np.testing.assert_allclose(grad[1, masked], 0.5)
    np.testing.assert_allclose(grad[1, ~masked], 0.0)


# --------------------------------------------------------------------------------------------
# time shift


def test_time_shift_rolls_with_wraparound():
    batch, frames, bins, channels = 16, 40, 3, 2
    t, f, c = np.meshgrid(np.arange(frames), np.arange(bins), np.arange(channels), indexing="ij")
    ramp = (100.0 * t + 10.0 * f + c).astype(np.float32)  # [T, F, C]
    x = np.broadcast_to(ramp, (batch, frames, bins, channels))
    out = TimeShift(std_frames=8.0, seed=3)(tf.constant(x), training=True).numpy()
    shifts = []
    for b in range(batch):
        eta = (-int(round(out[b, 0, 0, 0] / 100.0))) % frames  # out[b, 0] = x[(0 - eta) mod T]
        np.testing.assert_array_equal(out[b], np.roll(ramp, eta, axis=0))
        shifts.append(eta)
    assert len(set(shifts)) > 3 and any(s not in (0,) for s in shifts)


def test_roll_direction_convention():
    from augment.shift import roll_time

    x = np.arange(3 * 7, dtype=np.float32).reshape(3, 7, 1)
    out = roll_time(tf.constant(x), tf.constant([2, -3, 9])).numpy()
    # out[:, t] = x[:, (t - eta) mod T]: a positive shift moves the content later, as np.roll.
    np.testing.assert_array_equal(out[0, :, 0], [5, 6, 0, 1, 2, 3, 4])
    for b, eta in enumerate([2, -3, 9]):
        np.testing.assert_array_equal(out[b], np.roll(x[b], eta, axis=0))


def test_time_shift_distribution():
    n, frames, std = 4000, 256, 10.0
    ramp = np.arange(frames, dtype=np.float32)[None, :, None, None]
    ramp = np.broadcast_to(ramp, (n, frames, 1, 1))
    out = TimeShift(std_frames=std, seed=9)(tf.constant(ramp), training=True).numpy()
    eta = (-out[:, 0, 0, 0].astype(int)) % frames
    eta = np.where(eta > frames // 2, eta - frames, eta)  # back to a signed shift, |eta| < 128
    rolled = (np.arange(frames)[None, :] - eta[:, None]) % frames
    np.testing.assert_array_equal(out[:, :, 0, 0], rolled)
    expected_std = np.sqrt(std**2 + 1.0 / 12.0)  # rounding adds a uniform(-1/2, 1/2) error
    assert abs(eta.std() / expected_std - 1.0) < 0.05
    assert abs(eta.mean()) < 0.6  # standard error 0.16
    assert abs(np.mean(eta == 0) - 0.0399) < 0.015  # P(|N(0, 10)| < 0.5)


def test_time_shift_on_waveforms_and_zero_std():
    x = tf.reshape(tf.range(2 * 50, dtype=tf.float32), [2, 50])
    out = TimeShift(std_frames=20.0, seed=1)(x, training=True).numpy()
    for b in range(2):
        eta = int(-(out[b, 0] - 50 * b)) % 50
        np.testing.assert_array_equal(out[b], np.roll(x.numpy()[b], eta))
    np.testing.assert_array_equal(TimeShift(0.0)(x, training=True).numpy(), x.numpy())


# --------------------------------------------------------------------------------------------
# seeding


@pytest.mark.parametrize(
    "make",
    [
        lambda s: SpecAugmentPP(5, 4, n_time_masks=2, mode="mm", seed=s),
        lambda s: TimeShift(6.0, seed=s),
    ],
)
def test_same_seed_same_sequence_and_steps_differ(make):
    x = tf.random.stateless_normal([8, 20, 12, 1], seed=[9, 9])
    first = [make(3)(x, training=True).numpy()]
    a, b = make(3), make(3)
    seq_a = [a(x, training=True).numpy() for _ in range(3)]
    graph_b = tf.function(lambda t: b(t, training=True))
    seq_b = [graph_b(x).numpy() for _ in range(3)]  # graph calls advance the same stream
    for u, v in zip(seq_a, seq_b, strict=True):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(first[0], seq_a[0])
    assert not np.array_equal(seq_a[0], seq_a[1]) and not np.array_equal(seq_a[1], seq_a[2])
    assert not np.array_equal(make(4)(x, training=True).numpy(), seq_a[0])


def test_models_same_seed_and_keras_round_trip(tmp_path):
    x = tf.random.stateless_normal([6, 16, 8, 1], seed=[1, 1])
    model_a, model_b = tiny_classifier(seed=0), tiny_classifier(seed=0)
    path = os.path.join(str(tmp_path), "tiny.keras")
    model_a.save(path)
    loaded = tf_keras.models.load_model(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model_a.layers]
    # Inference is deterministic and unchanged by the round trip.
    np.testing.assert_allclose(loaded(x).numpy(), model_a(x).numpy(), rtol=1e-5, atol=1e-6)
    # Training-mode draws: fresh models with the same seeds agree step by step; a loaded model
    # restarts its streams from the seeds (the generator state is not saved as a weight).
    for _ in range(2):
        out_a = model_a(x, training=True).numpy()
        np.testing.assert_array_equal(model_b(x, training=True).numpy(), out_a)
        np.testing.assert_allclose(loaded(x, training=True).numpy(), out_a, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# config checks and the layer round trip


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(max_time_width=-1, max_freq_width=2), "max_time_width"),
        (dict(max_time_width=2, max_freq_width=1.5), "max_freq_width"),
        (dict(max_time_width=2, max_freq_width=2, n_time_masks=-1), "n_time_masks"),
        (dict(max_time_width=2, max_freq_width=2, n_freq_masks=True), "n_freq_masks"),
        (dict(max_time_width=2, max_freq_width=2, mode="xm"), "mode"),
        (dict(max_time_width=2, max_freq_width=2, seed=-3), "seed"),
        (dict(max_time_width=2, max_freq_width=2, always_on="yes"), "always_on"),
    ],
)
def test_specaugment_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SpecAugmentPP(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(std_frames=-1.0), "std_frames"),
        (dict(std_frames=float("nan")), "std_frames"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_time_shift_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TimeShift(**kwargs)


def test_specaugment_from_params():
    settings = SpecAugmentParams(
        mode="cm", time_width_fraction=0.25, freq_width_fraction=0.1, n_time_masks=2, n_freq_masks=0
    )
    layer = SpecAugmentPP.from_params(settings, 44, 256, seed=3, name="masks", always_on=True)
    got = (
        layer.max_time_width,
        layer.max_freq_width,
        layer.n_time_masks,
        layer.n_freq_masks,
        layer.mode,
        layer.seed,
        layer.name,
        layer.always_on,
    )
    assert got == (11, 26, 2, 0, "cm", 3, "masks", True)  # 26 = round(0.1 * 256)


@pytest.mark.parametrize("mode", ["zm", "mm", "cm"])
def test_specaugment_layer_round_trip(mode, tmp_path):
    init = dict(max_time_width=4, max_freq_width=3, n_time_masks=2, n_freq_masks=1, mode=mode, seed=7)
    out = run_layer_test(SpecAugmentPP, init, (3, 10, 8, 2), (3, 10, 8, 2), tmp_path=tmp_path, trainable=False)
    data = np.random.default_rng(0).standard_normal((3, 10, 8, 2)).astype("float32")
    np.testing.assert_array_equal(out, data)  # identity at inference
    config = SpecAugmentPP(**init, always_on=True).get_config()
    assert SpecAugmentPP.from_config(config).get_config() == config and config["always_on"] is True


def test_time_shift_layer_round_trip(tmp_path):
    out = run_layer_test(
        TimeShift, dict(std_frames=4.0, seed=2), (3, 10, 8, 1), (3, 10, 8, 1), tmp_path=tmp_path, trainable=False
    )
    data = np.random.default_rng(0).standard_normal((3, 10, 8, 1)).astype("float32")
    np.testing.assert_array_equal(out, data)  # identity at inference
    config = TimeShift(std_frames=4.0, seed=2, always_on=True).get_config()
    assert TimeShift.from_config(config).get_config() == config


# --------------------------------------------------------------------------------------------
# test-time augmentation


def test_tta_without_augmentation_layers_is_plain_softmax():
    model = augment.make_tta_model(tiny_classifier(), time_shift=False, specaugment=False)  # Identity layers
    x = tf.random.stateless_normal([7, 16, 8, 1], seed=[2, 3]).numpy()
    for mode in TTA_MODES:
        probs = TTA(model, TTAParams(n_copies=3), mode=mode).predict(x, batch_size=4)
        np.testing.assert_allclose(probs, softmax(model(x).numpy()), rtol=1e-5, atol=1e-6)
        assert probs.shape == (7, 3) and probs.dtype == np.float32


def test_tta_modes_match_the_config_choices():
    from pipeline.core.config import Params

    field = {f.name: f for f in __import__("dataclasses").fields(TTAParams)}["modes"]
    assert tuple(field.metadata["choices"]) == tuple(TTA_MODES)
    assert set(Params().augment.tta.modes) <= set(TTA_MODES)
    assert TTA_MODES["shift"] == {"time_shift": True, "specaugment": False}
    assert TTA_MODES["masks"] == {"time_shift": False, "specaugment": True}


@pytest.mark.parametrize("mode", ["shift", "masks"])
def test_tta_is_mean_of_individual_augmented_passes(mode):
    model = tiny_classifier()
    x = tf.random.stateless_normal([5, 16, 8, 1], seed=[4, 5]).numpy()
    options = dict(**TTA_MODES[mode], specaugment_mode="zm", seed=5)
    view = augment.make_tta_model(model, **options)
    passes = np.stack([softmax(view(x, training=False).numpy()) for _ in range(4)])  # [4, B, K]
    tta = TTA(model, TTAParams(n_copies=4, chunk_copies=1), seed=5, mode=mode, specaugment_mode="zm")
    assert tta.mode == mode
    assert augment.count_augmentation_layers(tta.view, active_only=True) == (1 if mode == "shift" else 2)
    probs = tta.predict(x, batch_size=5)
    np.testing.assert_allclose(probs, passes.mean(axis=0), rtol=1e-5, atol=1e-6)
    # The copies really differ from each other and from the plain prediction.
    assert np.abs(passes[0] - passes[1]).max() > 1e-4
    assert np.abs(probs - softmax(model(x).numpy())).max() > 1e-4


def test_tta_chunks_and_batches():
    model = tiny_classifier()
    x = tf.random.stateless_normal([6, 16, 8, 1], seed=[6, 7]).numpy()
    options = dict(time_shift=False, specaugment=True, specaugment_mode=None, seed=2)
    settings = TTAParams(n_copies=5, chunk_copies=2, modes=("masks",))

    def fresh():
        return TTA(model, settings, seed=2, specaugment_mode=None)

    probs = fresh().predict(x, batch_size=4)
    # Reference: a fresh view, copy-major tiles of 2, 2 and 1 copies per batch, in order.
    view = augment.make_tta_model(model, **options)
    expected = []
    for batch in (x[:4], x[4:]):
        total = 0.0
        for copies in (2, 2, 1):
            out = softmax(view(np.concatenate([batch] * copies), training=False).numpy())
            total = total + out.reshape(copies, len(batch), 3).sum(axis=0)
        expected.append(total / 5)
    np.testing.assert_allclose(probs, np.concatenate(expected), rtol=1e-5, atol=1e-6)
    # The graph-safe core gives the same numbers on the first batch.
    tta = fresh()
    core = tf.function(lambda t: tta.probabilities(t))
    np.testing.assert_allclose(core(x[:4]).numpy(), probs[:4], rtol=1e-5, atol=1e-6)
    # A batched dataset of (x, y) gives the same result as the array.
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(6))).batch(4)
    from_dataset = fresh().predict(dataset)
    np.testing.assert_allclose(from_dataset, probs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["shift", "masks"])
def test_tta_repeatable_and_seeded(mode):
    model = tiny_classifier()
    x = tf.random.stateless_normal([4, 16, 8, 1], seed=[8, 9]).numpy()
    settings = TTAParams(n_copies=6, chunk_copies=3)
    first = TTA(model, settings, seed=1, mode=mode).predict(x, batch_size=4)
    again = TTA(model, settings, seed=1, mode=mode).predict(x, batch_size=4)
    other = TTA(model, settings, seed=2, mode=mode).predict(x, batch_size=4)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-5
    np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-5)


def test_tta_view_shares_weights_and_leaves_model_alone(tmp_path):
    model = tiny_classifier()
    x = tf.random.stateless_normal([3, 16, 8, 1], seed=[1, 2]).numpy()
    before = model(x).numpy()
    view = augment.make_tta_model(model, time_shift=True, specaugment=False)
    kinds = [type(layer).__name__ for layer in view.layers]
    assert kinds == ["InputLayer", "TimeShift", "Identity", "Conv2D", "Identity", "GlobalAveragePooling2D", "Dense"]
    assert view.layers[1].always_on and view.layers[1].seed != model.layers[1].seed
    assert view.layers[3] is model.layers[3] and view.layers[6] is model.layers[6]
    assert augment.count_augmentation_layers(view, active_only=True) == 1
    # Shared, not copied: changing the original's weights changes the view.
    kernel = model.layers[6].kernel
    kernel.assign(kernel * 2.0)
    off = augment.make_tta_model(model, time_shift=False)
    np.testing.assert_allclose(off(x).numpy(), model(x).numpy(), rtol=1e-6)
    # The original is untouched: identity augmentations at inference, and it still saves.
    kernel.assign(kernel / 2.0)
    np.testing.assert_allclose(model(x).numpy(), before, rtol=1e-6)
    assert not model.layers[1].always_on
    path = os.path.join(str(tmp_path), "m.keras")
    model.save(path)
    assert len(tf_keras.models.load_model(path).layers) == len(model.layers)


def test_tta_nested_model_and_errors():
    inner_in = tf_keras.Input([16, 8, 1])
    h = SpecAugmentPP(3, 3, mode="mm", seed=4)(inner_in)
    h = tf_keras.layers.GlobalAveragePooling2D()(h)
    inner = tf_keras.Model(inner_in, tf_keras.layers.Dense(3)(h), name="classifier")
    outer_in = tf_keras.Input([16, 8, 1])
    outer = tf_keras.Model(outer_in, inner(TimeShift(seed=1)(outer_in)), name="full")
    view = augment.make_tta_model(outer, time_shift=True, specaugment=True)
    assert augment.count_augmentation_layers(view, active_only=True) == 2
    nested = [layer for layer in view.layers if isinstance(layer, tf_keras.Model)][0]
    assert nested is not inner and nested.layers[1].mode == "zm"
    assert nested.layers[-1] is inner.layers[-1]  # shared Dense
    x = tf.random.stateless_normal([2, 16, 8, 1], seed=[3, 3])
    assert not np.allclose(view(x).numpy(), outer(x).numpy())

    class Sub(tf_keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ValueError, match="subclassed"):
        augment.make_tta_model(Sub())
    with pytest.raises(ValueError, match="n_copies"):
        TTA(outer, TTAParams(n_copies=0)).predict(x.numpy())
    with pytest.raises(ValueError, match="specaugment_mode"):
        TTA(outer, TTAParams(), specaugment_mode="bad")
    with pytest.raises(ValueError, match="mode.*flip"):
        TTA(outer, TTAParams(), mode="flip")
    assert TTA(outer, TTAParams(modes=("masks", "shift"))).mode == "masks"  # default: the first mode
    # The SpecAugment++ fill of the copies is augment.tta.mask_fill unless the caller says otherwise.
    for fill in ("zm", "mm", "cm"):
        view = TTA(outer, TTAParams(mask_fill=fill), mode="masks").view
        assert [m.mode for m in view.submodules if isinstance(m, SpecAugmentPP)] == [fill]
    view = TTA(outer, TTAParams(mask_fill="mm"), mode="masks", specaugment_mode=None).view
    assert [m.mode for m in view.submodules if isinstance(m, SpecAugmentPP)] == ["mm"]  # the layer's own


# --------------------------------------------------------------------------------------------
# training with augmentation in the graph


def test_tiny_model_trains_with_augmentation():
    rng = np.random.default_rng(0)
    n, frames, bins = 96, 16, 12
    labels = np.arange(n) % 3
    x = rng.normal(0.0, 0.3, size=(n, frames, bins, 1)).astype("float32")
    x += (labels - 1.0)[:, None, None, None]  # class c: mean level c - 1 (survives pooling)
    tf_keras.utils.set_random_seed(1)
    inputs = tf_keras.Input([frames, bins, 1])
    h = TimeShift(std_frames=2.0, seed=1)(inputs)
    h = SpecAugmentPP(3, 2, mode="mm", seed=2)(h)
    h = tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = SpecAugmentPP(2, 2, mode="mm", seed=3)(h)
    h = tf_keras.layers.GlobalAveragePooling2D()(h)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3)(h))
    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-2),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, labels, batch_size=16, epochs=6, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    accuracy = np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == labels)
    assert accuracy > 0.8, accuracy


# --------------------------------------------------------------------------------------------
# SpecAugment++ widths: no configured mask is zero-width


def test_max_width_raises_zero_to_one_only_when_masks_are_requested():
    from augment.specaugment import max_width, max_widths

    assert [max_width(0.1, n) for n in (44, 22, 11, 5, 2)] == [4, 2, 1, 1, 1]  # round(): 4, 2, 1, 0, 0
    assert [max_width(0.1, n) for n in (128, 64, 32, 16, 8)] == [13, 6, 3, 2, 1]
    assert max_width(0.1, 5, n_masks=0) == 0  # no masks on this axis: nothing to raise
    assert max_width(0.0, 5) == 0  # an explicit 0 is not raised (the config refuses it with masks)
    assert max_width(1.0, 2) == 2
    settings = SpecAugmentParams(time_width_fraction=0.1, freq_width_fraction=0.1)
    assert max_widths(settings, 2, 8) == (1, 1)
    layer = SpecAugmentPP.from_params(settings, 2, 8, seed=0)
    assert (layer.max_time_width, layer.max_freq_width) == (1, 1)


def _config_params():
    from pathlib import Path

    from pipeline.core import config

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert files, "no configs/*.yaml"
    return [("defaults", config.from_dict({}))] + [(f.stem, config.load(f)) for f in files]


@pytest.mark.parametrize("name, params", _config_params(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_configured_mask_is_zero_width(name, params):
    from models import asc

    s = params.augment.specaugment
    widths = asc.specaugment_widths(params)
    assert list(widths) == [p for p in asc.SPECAUGMENT_POSITIONS if p in s.positions and s.enabled], name
    for position, (time_width, freq_width) in widths.items():
        assert time_width >= 1 or s.n_time_masks == 0, (name, position, time_width)
        assert freq_width >= 1 or s.n_freq_masks == 0, (name, position, freq_width)
    # The layers of the built network (input and hidden) are the ones listed, none zero-width.
    model = asc.build_model(params)
    layers = {m.name.replace("_specaugment", ""): m for m in model.submodules if isinstance(m, SpecAugmentPP)}
    assert {k: (v.max_time_width, v.max_freq_width) for k, v in layers.items()} == widths, name


def test_specaugment_widths_of_the_default_config(caplog):
    import logging

    from models import asc
    from pipeline.core import config

    with caplog.at_level(logging.INFO, logger="models.asc"):
        widths = asc.specaugment_widths(config.load())  # 44 frames, 128 mel bins
    # round(0.1 * 5) = round(0.1 * 2) = 0 frames after blocks 3 and 4: raised to 1.
    assert widths == {"input": (4, 13), "block1": (2, 6), "block2": (1, 3), "block3": (1, 2), "block4": (1, 1)}
    assert "block4" in caplog.text and "raised to 1" in caplog.text
    assert (
        asc.specaugment_widths(config.load(None, ["augment.specaugment.enabled=false", "augment.tta.modes=shift"]))
        == {}
    )


# --------------------------------------------------------------------------------------------
# TTA modes on the project's network


@pytest.fixture(scope="module")
def asc_model():
    from models import asc
    from pipeline.core import config

    params = config.load(
        None,
        [
            "audio.n_mels=32",
            "model.channels=[8, 8, 16, 16]",
            "model.hidden_units=16",
            "augment.tta.n_copies=3",
            "augment.tta.chunk_copies=3",
        ],
    )
    tf_keras.utils.set_random_seed(0)
    model = asc.build_model(params)
    wave = tf.random.stateless_normal([6, params.audio.clip_samples], seed=[1, 2]) * 0.1
    logmel = asc.frontend_model(model)(wave, training=False)
    return params, model, logmel


def test_shift_mode_is_the_previous_time_shift_tta(asc_model):
    """Same probabilities as before the modes: time shift on, every SpecAugment++ off, same seeds."""
    from models import asc

    params, model, logmel = asc_model
    classifier = asc.get_classifier(model)
    inputs = tf_keras.Input(shape=tuple(logmel.shape[1:]), name="logmel_input")
    x = asc._time_shift(params, "tta_time_shift")(inputs)
    x = asc._specaugment_layer(params, "input", logmel.shape[1], logmel.shape[2], name="tta_input_specaugment")(x)
    before = tf_keras.Model(inputs, classifier(x), name="tta_classifier")  # the former tta_classifier
    old = TTA(before, params.augment.tta, seed=params.seed, mode="shift").probabilities(logmel).numpy()
    tta = asc.tta_predictor(model, params, "shift")
    np.testing.assert_array_equal(tta.probabilities(logmel).numpy(), old)
    assert augment.count_augmentation_layers(tta.view, active_only=True) == 1
    assert asc.tta_predictor(model, params).mode == "shift"  # the first of augment.tta.modes


def test_masks_mode_copies_differ_and_are_seeded(asc_model):
    from models import asc

    params, model, logmel = asc_model
    tta = asc.tta_predictor(model, params, "masks")
    # Every SpecAugment++ of training is on (input + 4 hidden), zero-filled; no time shift.
    active = [m for m in tta.view.submodules if isinstance(m, AUGMENTATION) and m.always_on]
    assert len(active) == 5 and all(isinstance(m, SpecAugmentPP) and m.mode == "zm" for m in active)
    copies = np.stack([tta.view(logmel, training=False).numpy() for _ in range(4)])  # [4, B, K]
    assert all(np.abs(copies[i] - copies[i + 1]).max() > 1e-6 for i in range(3))
    plain = asc.get_classifier(model)(logmel, training=False).numpy()
    first = asc.tta_predictor(model, params, "masks").probabilities(logmel).numpy()
    again = asc.tta_predictor(model, params, "masks").probabilities(logmel).numpy()
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - softmax(plain)).max() > 1e-7
    other = (
        TTA(asc.tta_classifier(model, params, "masks"), params.augment.tta, seed=params.seed + 1, mode="masks")
        .probabilities(logmel)
        .numpy()
    )
    assert np.abs(first - other).max() > 1e-7


def test_masks_mode_fills_input_stripes_with_the_input_batchnorm_mean(asc_model):
    from models import asc

    params, model, logmel = asc_model
    bn = asc.get_classifier(model).get_layer("input_bn")
    saved = bn.moving_mean.numpy()
    try:
        centre = np.linspace(-9.0, -1.0, saved.shape[0]).astype("float32")
        bn.moving_mean.assign(centre)
        view = augment.make_tta_model(
            asc.tta_classifier(model, params, "masks"), time_shift=False, specaugment=True, seed=3
        )
        add_back = view.layers[-2]  # shared with the unaugmented model: its last node is the view's
        probe = tf_keras.Model(view.inputs, add_back.get_output_at(len(add_back.inbound_nodes) - 1))
        out = probe(logmel, training=False).numpy()[..., 0]  # [B, T, M]
        x = logmel.numpy()[..., 0]
        masked = ~np.isclose(out, x, rtol=0, atol=1e-4)
        assert masked.any() and not masked.all()
        filled = np.broadcast_to(centre, out.shape)
        np.testing.assert_allclose(out[masked], filled[masked], rtol=0, atol=1e-5)
    finally:
        bn.moving_mean.assign(saved)
