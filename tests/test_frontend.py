"""Tests of models.frontend.LogMel against librosa 0.11 (a test-only dependency)."""

import math

import librosa
import numpy as np
import pytest
import scipy.signal
import tensorflow as tf
import tf_keras

from models.frontend import LogMel, hz_to_mel, mel_filterbank, mel_to_hz, split_tf32
from tests.layer_testing import run_layer_test

SR = 44100
# The project's front end (the report's) and the DCASE2022 baseline's (40 ms hamming, 20 ms hop).
PROJECT = dict(n_fft=2048, win_length=None, hop_length=1024, n_mels=256, window="hann")
BASELINE = dict(n_fft=2048, win_length=1764, hop_length=882, n_mels=40, window="hamming")
SETTINGS = {"project": PROJECT, "baseline": BASELINE}


def _signals():
    t = np.arange(SR) / SR
    return {
        "sine": (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32),
        "noise": (0.1 * np.random.default_rng(1234).standard_normal(SR)).astype(np.float32),
        "chirp": (0.5 * scipy.signal.chirp(t, f0=100.0, t1=1.0, f1=15000.0)).astype(np.float32),
    }


SIGNALS = _signals()


def _librosa_mel(y, cfg, *, pad_mode="reflect", htk=False, center=True, power=2.0, fmin=0.0, fmax=None):
    """librosa's mel spectrogram, transposed to [frames, n_mels]."""
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=SR,
        n_fft=cfg["n_fft"],
        hop_length=cfg["hop_length"],
        win_length=cfg["win_length"],
        window=cfg["window"],
        center=center,
        pad_mode=pad_mode,
        power=power,
        n_mels=cfg["n_mels"],
        fmin=fmin,
        fmax=fmax,
        htk=htk,
        norm="slaney",
    )
    return mel.T


def _loud(mel):
    """Bins whose librosa dB value is within 80 dB of the maximum."""
    db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    return db > db.max() - 80.0


def _run(layer, y):
    out = layer(tf.constant(y[None]), training=False).numpy()
    assert out.dtype == np.float32
    return out[0, ..., 0]  # [frames, n_mels]


# --- agreement with librosa -------------------------------------------------------------------


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_natural_log_matches_librosa(setting, pad_mode, signal):
    cfg = SETTINGS[setting]
    y = SIGNALS[signal]
    ref = _librosa_mel(y, cfg, pad_mode=pad_mode)
    out = _run(LogMel(sample_rate=SR, pad_mode=pad_mode, **cfg), y)
    assert out.shape == ref.shape == ({"project": 44, "baseline": 51}[setting], cfg["n_mels"])
    mask = _loud(ref)
    assert mask.sum() >= 100  # enough bins compared
    diff = np.abs(out - np.log(ref + 1e-10))[mask]
    assert diff.max() < 1e-3, diff.max()


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_db_matches_librosa_power_to_db(setting, signal):
    cfg = SETTINGS[setting]
    y = SIGNALS[signal]
    ref = _librosa_mel(y, cfg)
    ref_db = librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=None)
    out = _run(LogMel(sample_rate=SR, log="db", **cfg), y)
    mask = _loud(ref)
    assert np.abs(out - ref_db)[mask].max() < 0.01
    # top_db clipping (one example: librosa's whole-array max is the example's max). Clipping
    # is 1-Lipschitz, so the whole array must agree, clipped floor included.
    clipped_ref = librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=80.0)
    clipped = _run(LogMel(sample_rate=SR, log="db", top_db=80.0, **cfg), y)
    assert np.abs(clipped - clipped_ref).max() < 0.01
    assert clipped.min() >= clipped.max() - 80.0 - 1e-3
    if not mask.all():  # something was clipped: the floor is exactly top_db under the peak
        assert clipped.min() == pytest.approx(clipped.max() - 80.0, abs=1e-3)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_htk_matches_librosa(setting):
    cfg = SETTINGS[setting]
    y = SIGNALS["chirp"]
    ref = _librosa_mel(y, cfg, htk=True)
    out = _run(LogMel(sample_rate=SR, mel_scale="htk", **cfg), y)
    mask = _loud(ref)
    assert np.abs(out - np.log(ref + 1e-10))[mask].max() < 1e-3
    # HTK and Slaney filters differ: the test above could not pass with the wrong scale.
    slaney = _run(LogMel(sample_rate=SR, **cfg), y)
    assert np.abs(slaney - out)[mask].max() > 0.1


def test_magnitude_uncentred_band_limited_match_librosa():
    cfg = BASELINE
    y = SIGNALS["noise"]
    ref = _librosa_mel(y, cfg, center=False, power=1.0, fmin=50.0, fmax=16000.0)
    layer = LogMel(sample_rate=SR, center=False, power=1.0, fmin=50.0, fmax=16000.0, log="none", **cfg)
    out = _run(layer, y)
    assert out.shape == ref.shape == (1 + (SR - 2048) // 882, 40)
    np.testing.assert_allclose(out, ref, rtol=2e-4, atol=1e-7 * ref.max())


def test_mel_filterbank_and_scales_match_librosa():
    freqs = np.array([0.0, 20.0, 440.0, 999.0, 1000.0, 1001.0, 8000.0, 22050.0])
    for htk in (False, True):
        mels = librosa.hz_to_mel(freqs, htk=htk)
        np.testing.assert_allclose(hz_to_mel(freqs, htk=htk), mels, rtol=1e-12)
        np.testing.assert_allclose(mel_to_hz(mels, htk=htk), librosa.mel_to_hz(mels, htk=htk), rtol=1e-12)
        cases = [(2048, 256, 0.0, None), (2048, 40, 0.0, None), (1024, 64, 50.0, 14000.0)]
        for n_fft, n_mels, fmin, fmax in cases:
            ref = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk)
            ours = mel_filterbank(SR, n_fft, n_mels, fmin=fmin, fmax=fmax, htk=htk)
            assert ours.shape == ref.shape == (n_mels, n_fft // 2 + 1)
            np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


# --- golden outputs (YAMNet style) -------------------------------------------------------------


def test_silence_is_log_offset_everywhere():
    for offset, shape in ((1e-10, [2, SR]), (1e-6, [1, 8820])):
        out = LogMel(log_offset=offset)(tf.zeros(shape)).numpy()
        # Every bin holds one and the same value, log(offset) to float32 precision: TensorFlow's
        # vectorised float32 log may be one ulp off the correctly rounded value (it is for 1e-10:
        # -23.025852 against -23.02585), so "exactly" means identical bins within one ulp.
        values = np.unique(out)
        assert values.size == 1
        truth = math.log(float(np.float32(offset)))
        assert abs(float(values[0]) - truth) <= abs(np.spacing(np.float32(truth)))
    assert out.shape == (1, 9, 256, 1)
    db = LogMel(log="db")(tf.zeros([1, 8820])).numpy()
    np.testing.assert_allclose(db, -100.0, atol=1e-4)
    assert not np.any(LogMel(log="none")(tf.zeros([1, 8820])).numpy())


@pytest.mark.parametrize(
    "kwargs, seconds, frames, mels",
    [
        ({}, 1, 44, 256),
        ({}, 10, 431, 256),
        (BASELINE, 1, 51, 40),
        (BASELINE, 10, 501, 40),
    ],
)
def test_output_shapes(kwargs, seconds, frames, mels):
    layer = LogMel(**kwargs)
    n = seconds * SR
    assert layer.output_frames(n) == frames
    out = layer(tf.zeros([2, n]) + 0.01)
    assert tuple(out.shape) == (2, frames, mels, 1)
    assert tuple(layer.compute_output_shape((None, n))) == (None, frames, mels, 1)


@pytest.mark.filterwarnings("ignore:n_fft=2048 is too large")
def test_output_frames_follows_librosa_count():
    layer = LogMel()
    uncentred = LogMel(center=False)
    assert [layer.output_frames(n) for n in (1024 * 4 - 1, 1024 * 4, 8820)] == [4, 5, 9]
    assert uncentred.output_frames(SR) == 42
    assert uncentred.output_frames(2048) == 1
    with pytest.raises(ValueError, match="n_samples"):
        uncentred.output_frames(2047)
    for n in (1100, 2047, 2048, 8820):
        expected = librosa.stft(np.zeros(n, np.float32), n_fft=2048, hop_length=1024).shape[-1]
        assert layer.output_frames(n) == expected == layer(tf.zeros([1, n])).shape[1]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["audio.clip_seconds=0.5", "audio.hop_length=512"],
        ["audio.center=false"],
        ["audio.center=false", "audio.clip_seconds=2.5", "audio.n_fft=1024", "audio.hop_length=300"],
    ],
)
def test_params_frames_match_the_front_end(overrides):
    """``AudioParams.frames`` (what the models are built for) is the front end's frame count."""
    from models import asc
    from pipeline.core import config

    audio = config.load(None, overrides).audio
    layer = asc.frontend(config.load(None, overrides))
    assert audio.frames == layer.output_frames(audio.clip_samples)
    assert layer(tf.zeros([1, audio.clip_samples])).shape[1] == audio.frames


def test_from_seconds_baseline_settings():
    layer = LogMel.from_seconds(SR, 0.04, 0.02, n_mels=40, window="hamming")
    assert (layer.n_fft, layer.win_length, layer.hop_length) == (2048, 1764, 882)
    assert layer.output_frames(SR) == 51
    layer = LogMel.from_seconds(16000, 0.025, 0.010)
    assert (layer.n_fft, layer.win_length, layer.hop_length) == (512, 400, 160)
    assert LogMel.from_seconds(SR, 2048 / SR, 0.01).n_fft == 2048
    with pytest.raises(ValueError, match="n_fft"):
        LogMel.from_seconds(SR, 0.04, 0.02, n_fft=4096)
    with pytest.raises(ValueError, match="hop_seconds"):
        LogMel.from_seconds(SR, 0.04, 0.0)


def test_dynamic_length_input():
    inputs = tf_keras.Input(shape=(None,))
    outputs = LogMel(**BASELINE)(inputs)
    assert tuple(outputs.shape) == (None, None, 40, 1)
    model = tf_keras.Model(inputs, outputs)
    for n in (8820, 20000):
        x = np.random.default_rng(n).standard_normal((2, n)).astype(np.float32)
        out = model(x).numpy()
        assert out.shape == (2, 1 + n // 882, 40, 1)
        np.testing.assert_allclose(out, LogMel(**BASELINE)(x).numpy(), atol=1e-5)


def test_mixed_precision_policy_keeps_float32():
    try:
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
        layer = LogMel(**BASELINE)
        out = layer(tf.constant(SIGNALS["chirp"][None, :8820]))
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.float32
    reference = LogMel(**BASELINE)(SIGNALS["chirp"][None, :8820]).numpy()
    np.testing.assert_allclose(out.numpy(), reference, atol=1e-5)


# --- TensorFloat-32-safe mel projection -------------------------------------------------------


def _tf32(a):
    """Round float32 values to TensorFloat-32 (10 mantissa bits, round to nearest even)."""
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & ~np.uint64(0x1FFF)
    return bits.astype(np.uint32).view(np.float32)


def test_split_tf32_is_exact_and_tf32_representable():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(10000) * 10.0 ** rng.uniform(-8, 8, 10000)).astype(np.float32)
    for hi, lo in (split_tf32(x), [t.numpy() for t in split_tf32(tf.constant(x))]):
        assert hi.dtype == lo.dtype == np.float32
        assert not np.any(hi.view(np.uint32) & 0x1FFF)  # 13 low mantissa bits are zero
        exact_sum = hi.astype(np.float64) + lo.astype(np.float64)
        np.testing.assert_array_equal(exact_sum, x.astype(np.float64))
        assert np.all(np.abs(lo) <= np.abs(x) * 2.0**-11)


def test_split_matmul_restores_float32_accuracy_under_tf32():
    layer = LogMel()
    y = SIGNALS["noise"][:8820]
    stft = librosa.stft(y, n_fft=2048, hop_length=1024, pad_mode="reflect")  # [F, T]
    power = np.abs(stft).T ** 2  # [T, F]
    mel = layer._mel_np  # [F, n_mels]
    exact = power.astype(np.float64) @ mel.astype(np.float64)
    loud = exact > exact.max() * 1e-8

    def tf32_matmul(a, b):
        return _tf32(a).astype(np.float64) @ _tf32(b).astype(np.float64)

    plain = tf32_matmul(power, mel)
    (p_hi, p_lo), (m_hi, m_lo) = split_tf32(power.astype(np.float32)), split_tf32(mel)
    split = tf32_matmul(p_hi, m_hi) + tf32_matmul(p_hi, m_lo) + tf32_matmul(p_lo, m_hi)
    assert np.abs(np.log(plain / exact))[loud].max() > 1e-4  # TF32 alone would cost accuracy
    assert np.abs(np.log(split / exact))[loud].max() < 1e-5
    # The graph path with the split forced on agrees with the single matmul (float32 on CPU).
    forced = LogMel()
    forced.split_matmul = True
    x = tf.constant(y[None])
    np.testing.assert_allclose(forced(x).numpy(), layer(x).numpy(), atol=1e-5)


# --- argument checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name, bad",
    [
        ({"sample_rate": 0}, "sample_rate", 0),
        ({"sample_rate": "44100"}, "sample_rate", "44100"),
        ({"n_fft": 0}, "n_fft", 0),
        ({"n_fft": 2048.0}, "n_fft", 2048.0),
        ({"win_length": 4096}, "win_length", 4096),
        ({"win_length": 0}, "win_length", 0),
        ({"hop_length": -1}, "hop_length", -1),
        ({"hop_length": True}, "hop_length", True),
        ({"n_mels": 0}, "n_mels", 0),
        ({"fmin": -1.0}, "fmin", -1.0),
        ({"fmax": 30000.0}, "fmax", 30000.0),
        ({"fmin": 8000.0, "fmax": 4000.0}, "fmin", 8000.0),
        ({"fmin": 22050.0}, "fmin", 22050.0),
        ({"window": "blackman"}, "window", "blackman"),
        ({"center": "yes"}, "center", "yes"),
        ({"pad_mode": "edge"}, "pad_mode", "edge"),
        ({"power": 0.0}, "power", 0.0),
        ({"mel_scale": "mel"}, "mel_scale", "mel"),
        ({"log": "log10"}, "log", "log10"),
        ({"log_offset": 0.0}, "log_offset", 0.0),
        ({"log": "db", "top_db": -10.0}, "top_db", -10.0),
        ({"top_db": 80.0}, "top_db", 80.0),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name, bad):
    with pytest.raises(ValueError, match=rf"^{name} ") as info:
        LogMel(**kwargs)
    assert repr(bad) in str(info.value)


def test_bad_input_shapes_raise():
    with pytest.raises(ValueError, match="samples"):
        LogMel()(tf.zeros([2, 3, 8820]))
    with pytest.raises(ValueError, match="reflect"):
        LogMel()(tf.zeros([1, 1024]))
    with pytest.raises(ValueError, match="n_samples"):
        LogMel(center=False)(tf.zeros([1, 1000]))


# --- Keras plumbing ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, dict(BASELINE, log="db", top_db=80.0, pad_mode="constant")])
def test_run_layer_test(kwargs, tmp_path):
    layer = LogMel(**kwargs)
    frames = layer.output_frames(8820)
    out = run_layer_test(
        LogMel,
        kwargs,
        (2, 8820),
        (2, frames, layer.n_mels, 1),
        tmp_path=tmp_path,
        trainable=False,
    )
    assert np.ptp(out) > 1.0
    layer(tf.zeros([1, 8820]))
    assert layer.count_params() == 0 and not layer.weights


def test_trains_inside_a_model_and_adds_no_parameters():
    inputs = tf_keras.Input(shape=(8820,))
    features = LogMel(**BASELINE)(inputs)
    pooled = tf_keras.layers.GlobalAveragePooling2D()(features)
    outputs = tf_keras.layers.Dense(3)(pooled)
    model = tf_keras.Model(inputs, outputs)
    assert model.count_params() == 3 * 1 + 3  # only the Dense: the mel matrix is a constant
    model.compile(optimizer=tf_keras.optimizers.SGD(1e-3), loss="mse")
    x = np.random.default_rng(0).standard_normal((4, 8820)).astype(np.float32)
    before = model.get_weights()[0].copy()
    history = model.fit(x, np.zeros((4, 3), np.float32), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(before, model.get_weights()[0])


def test_float_tflite_conversion_agrees_with_keras():
    inputs = tf_keras.Input(shape=(8820,), batch_size=1, name="waveform")
    features = LogMel(name="features")(inputs)
    pooled = tf_keras.layers.GlobalAveragePooling2D()(features)
    logits = tf_keras.layers.Dense(2, kernel_initializer="ones", name="logits")(pooled)
    model = tf_keras.Model(inputs, [features, logits])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # Builtins only: the layer needs no SELECT_TF_OPS (RFFT lowers to RFFT2D, pad to MIRROR_PAD).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner()
    for name in ("noise", "chirp"):
        x = SIGNALS[name][None, :8820]
        got = runner(waveform=x)
        want_features, want_logits = (t.numpy() for t in model(x))
        assert got["features"].shape == want_features.shape == (1, 9, 256, 1)
        np.testing.assert_allclose(got["logits"], want_logits, atol=1e-4, rtol=1e-5)
        diff = np.abs(got["features"] - want_features)[0, ..., 0]
        # TFLite's RFFT2D works in float64 inside, TensorFlow's rfft in float32: bins far below
        # the peak differ by float32 FFT round-off (the chirp's bins 120 dB down by ~0.02).
        # Within 60 dB of the peak they agree to 1e-4, within 80 dB to librosa's 1e-3.
        ref = _librosa_mel(x[0], PROJECT)
        db = librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=None)
        assert diff[db > db.max() - 60.0].max() < 1e-4
        assert diff[db > db.max() - 80.0].max() < 1e-3
        if name == "noise":  # no deep spectral valleys: every bin agrees
            assert diff.max() < 1e-4
