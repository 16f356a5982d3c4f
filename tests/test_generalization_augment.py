"""Tests of the device-generalisation augmentations: Freq-MixStyle and device impulse responses."""

import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf
import tf_keras
from scipy import signal

from augment import DeviceResponse, FreqMixStyle, ImpulseResponseError
from augment.device_response import (
    fft_convolve,
    generate_device_responses,
    peaking_sos,
    shelf_sos,
    soft_clip,
)
from augment.freq_mixstyle import freq_mixstyle, stateless_beta
from augment.impulse_responses import load_impulse_responses
from models import asc
from pipeline.core import config
from tests.layer_testing import run_layer_test

SR = 16000


def _write_ir(folder, name, samples, rate=SR, subtype="FLOAT"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    sf.write(path, np.asarray(samples, np.float64), rate, subtype=subtype)
    return path


def _noise(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# --------------------------------------------------------------------------------------------
# Freq-MixStyle


def _styled_batch(batch=4, frames=20, bins=8, channels=2, seed=0):
    """Log-mel-like input whose bins have different means and spreads per sample."""
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-8, 2, (batch, 1, bins, 1))
    std = rng.uniform(0.2, 3.0, (batch, 1, bins, 1))
    return (mean + std * rng.standard_normal((batch, frames, bins, channels))).astype("float32")


def test_freq_mixstyle_gives_the_mixed_statistics():
    x = _styled_batch()
    partner = np.array([2, 0, 3, 1])
    lam = np.array([0.1, 0.5, 0.9, 0.3], np.float32)
    eps = 1e-6
    out = freq_mixstyle(tf.constant(x), tf.constant(partner), tf.constant(lam), eps).numpy()
    # Hand computation in float64: statistics over time and channels, unbiased variance.
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=(1, 3), keepdims=True)  # [B, 1, F, 1]
    var = x64.var(axis=(1, 3), keepdims=True, ddof=1)
    sig = np.sqrt(var + eps)
    lam4 = lam.astype(np.float64).reshape(-1, 1, 1, 1)
    mu_mix = lam4 * mu + (1 - lam4) * mu[partner]
    sig_mix = lam4 * sig + (1 - lam4) * sig[partner]
    np.testing.assert_allclose(out, (x64 - mu) / sig * sig_mix + mu_mix, rtol=1e-5, atol=1e-5)
    # Per bin, the output's mean and standard deviation are the mixed statistics.
    np.testing.assert_allclose(out.mean(axis=(1, 3), keepdims=True), mu_mix, atol=1e-5)
    np.testing.assert_allclose(
        out.std(axis=(1, 3), keepdims=True, ddof=1), sig_mix * np.sqrt(var / (var + eps)), rtol=1e-5
    )
    # lambda = 1 keeps the sample (up to eps); lambda = 0 gives it the partner's statistics.
    same = freq_mixstyle(tf.constant(x), tf.constant(partner), tf.ones([4]), eps).numpy()
    np.testing.assert_allclose(same, x, atol=1e-4)
    swapped = freq_mixstyle(tf.constant(x), tf.constant(partner), tf.zeros([4]), eps).numpy()
    np.testing.assert_allclose(swapped.mean(axis=(1, 3)), mu[partner][:, 0, :, 0], atol=1e-5)


def test_freq_mixstyle_layer_mixes_with_another_sample():
    x = _styled_batch(batch=6, seed=1)
    out = FreqMixStyle(p=1.0, alpha=0.3, seed=3)(x, training=True).numpy()
    mu = x.astype(np.float64).mean(axis=(1, 3))  # [B, F]
    mu_out = out.astype(np.float64).mean(axis=(1, 3))
    for b in range(len(x)):
        # mu_out = lam mu_b + (1 - lam) mu_j for one partner j != b and one lam in [0, 1].
        fits = []
        for j in range(len(x)):
            if j == b:
                continue
            d = mu[b] - mu[j]
            lam = float(np.dot(mu_out[b] - mu[j], d) / np.dot(d, d))
            fits.append((np.abs(lam * mu[b] + (1 - lam) * mu[j] - mu_out[b]).max(), lam))
        err, lam = min(fits)
        assert err < 1e-4 and -1e-6 <= lam <= 1 + 1e-6, (b, err, lam)


def test_beta_weights_have_the_beta_moments():
    alpha = 0.3
    draws = stateless_beta(tf.constant([4, 2], tf.int64), [20000], alpha).numpy()
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    assert abs(draws.mean() - 0.5) < 0.01
    assert abs(draws.var() - 1.0 / (4 * (2 * alpha + 1))) < 0.01  # 0.156 for alpha 0.3
    assert np.mean((draws < 0.1) | (draws > 0.9)) > 0.4  # U-shaped for alpha < 1


def test_freq_mixstyle_identity_at_inference_and_with_p_zero():
    x = tf.constant(_styled_batch(seed=2))
    layer = FreqMixStyle(p=1.0, seed=1)
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    inputs = tf_keras.Input([20, 8, 2])
    model = tf_keras.Model(inputs, FreqMixStyle(p=1.0)(inputs))
    np.testing.assert_array_equal(model.predict(x.numpy(), verbose=0), x.numpy())
    off = FreqMixStyle(p=0.0, seed=1)
    for _ in range(3):
        np.testing.assert_array_equal(off(x, training=True).numpy(), x.numpy())
    assert not np.allclose(layer(x, training=True).numpy(), x.numpy(), atol=1e-3)


def test_freq_mixstyle_applies_to_a_fraction_p_of_the_batches():
    x = tf.constant(_styled_batch(batch=3, frames=6, bins=4, channels=1, seed=3))
    layer = FreqMixStyle(p=0.3, seed=9)
    step = tf.function(lambda t: layer(t, training=True))
    mixed = [not np.array_equal(step(x).numpy(), x.numpy()) for _ in range(400)]
    assert abs(np.mean(mixed) - 0.3) < 0.07


def test_freq_mixstyle_is_seeded():
    x = tf.constant(_styled_batch(seed=4))
    a, b = FreqMixStyle(p=1.0, seed=5), FreqMixStyle(p=1.0, seed=5)
    first = a(x, training=True).numpy()
    np.testing.assert_array_equal(first, b(x, training=True).numpy())
    assert not np.array_equal(first, a(x, training=True).numpy())  # the next call draws anew
    assert not np.array_equal(first, FreqMixStyle(p=1.0, seed=6)(x, training=True).numpy())


def test_freq_mixstyle_layer_test_and_save_load(tmp_path):
    out = run_layer_test(
        FreqMixStyle,
        {"p": 0.7, "alpha": 0.4, "eps": 1e-5, "seed": 3},
        (4, 12, 8, 1),
        (4, 12, 8, 1),
        tmp_path=tmp_path,
        trainable=False,
    )
    assert out.shape == (4, 12, 8, 1)
    # The augmenting output survives a .keras round trip (a loaded layer restarts from its seed).
    x = _styled_batch(channels=1, seed=5)
    inputs = tf_keras.Input([20, 8, 1])
    model = tf_keras.Model(inputs, FreqMixStyle(p=1.0, seed=8, always_on=True)(inputs))
    first = model(x).numpy()
    assert not np.allclose(first, x, atol=1e-3)
    model.save(tmp_path / "fms.keras")
    loaded = tf_keras.models.load_model(tmp_path / "fms.keras")
    np.testing.assert_allclose(loaded(x).numpy(), first, atol=1e-5)
    assert loaded.layers[-1].get_config() == model.layers[-1].get_config()


@pytest.mark.parametrize(
    "kwargs, name",
    [({"p": 1.5}, "p"), ({"p": -0.1}, "p"), ({"alpha": 0.0}, "alpha"), ({"eps": 0.0}, "eps"), ({"seed": -1}, "seed")],
)
def test_freq_mixstyle_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FreqMixStyle(**kwargs)


# --------------------------------------------------------------------------------------------
# device responses: convolution


@pytest.mark.parametrize("rms_normalize", [False, True])
def test_unit_impulse_leaves_the_clip_unchanged(tmp_path, rms_normalize):
    folder = tmp_path / "irs"
    _write_ir(folder, "unit.wav", [1.0, 0.0, 0.0, 0.0, 0.0])
    x = 0.3 * _noise((3, 4000))
    layer = DeviceResponse(SR, p=1.0, folder=str(folder), rms_normalize=rms_normalize, seed=1)
    np.testing.assert_allclose(layer(x, training=True).numpy(), x, atol=1e-5)
    # Also from a 24-bit PCM file.
    pcm = tmp_path / "pcm"
    _write_ir(pcm, "unit24.wav", np.r_[1.0 - 2**-23, np.zeros(63)], subtype="PCM_24")
    layer = DeviceResponse(SR, p=1.0, folder=str(pcm), rms_normalize=rms_normalize, seed=1)
    np.testing.assert_allclose(layer(x, training=True).numpy(), x, atol=1e-5)


def test_fft_convolution_is_the_cut_linear_convolution():
    x = _noise((3, 1000), seed=1)
    h = _noise((3, 37), seed=2)
    got = fft_convolve(tf.constant(x), tf.constant(h)).numpy()
    want = np.stack([np.convolve(a, b)[:1000] for a, b in zip(x, h, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-4)
    # Unknown lengths (no power-of-two padding) give the same result.
    fn = tf.function(fft_convolve, input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([None, None])])
    np.testing.assert_allclose(fn(x, h).numpy(), want, atol=1e-4)


def _sine_gain(y, x, freq, skip):
    """Amplitude ratio of the ``freq`` component of ``y`` and ``x`` (least squares after ``skip``)."""
    t = np.arange(x.shape[-1])[skip:] / SR
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    amp = [np.hypot(*np.linalg.lstsq(basis, s[skip:], rcond=None)[0]) for s in (y, x)]
    return amp[0] / amp[1]


@pytest.mark.parametrize("taps", [np.array([0.5, 0.5]), signal.firwin(31, 0.25)])
def test_known_fir_filter_gives_its_spectrum(tmp_path, taps):
    folder = tmp_path / "fir"
    _write_ir(folder, "fir.wav", taps)
    layer = DeviceResponse(SR, p=1.0, folder=str(folder), rms_normalize=False, seed=2)
    n = 8192
    # Time domain: the cut linear convolution with the file's taps.
    noise = _noise((4, n), seed=3)
    y = layer(noise, training=True).numpy()
    np.testing.assert_allclose(y, np.stack([np.convolve(r, taps)[:n] for r in noise]), atol=1e-5)
    # White noise: |FFT(out)| / |FFT(in)| follows |H| band by band.
    freqs = np.fft.rfftfreq(n, 1 / SR)
    _, response = signal.freqz(taps, worN=freqs, fs=SR)
    power_out = np.abs(np.fft.rfft(y)) ** 2  # [4, bins]
    power_in = np.abs(np.fft.rfft(noise)) ** 2
    bands = np.array_split(np.arange(1, len(freqs) - 1), 32)
    passband = [b for b in bands if np.abs(response[b]).min() > 0.3]
    assert len(passband) >= 8
    for band in passband:
        est = np.sqrt(power_out[:, band].sum() / power_in[:, band].sum())
        np.testing.assert_allclose(est, np.sqrt(np.mean(np.abs(response[band]) ** 2)), rtol=0.05)
    # Sines: the steady-state gain at each frequency is |H(f)|.
    t = np.arange(n) / SR
    for freq in (200.0, 1000.0, 2000.0, 3000.0, 5000.0, 7000.0):
        x = np.sin(2 * np.pi * freq * t)[None].astype("float32")
        out = layer(x, training=True).numpy()[0]
        gain = np.abs(signal.freqz(taps, worN=[freq], fs=SR)[1][0])
        assert abs(_sine_gain(out, x[0], freq, skip=len(taps)) - gain) < 2e-3, (freq, gain)


def test_soft_clip_is_mild_and_odd():
    y = tf.constant(np.linspace(-3, 3, 601, dtype="float32")[None].repeat(2, axis=0))
    out = soft_clip(y, tf.constant([0.0, 0.5])).numpy()
    np.testing.assert_array_equal(out[0], y.numpy()[0])  # drive 0: linear
    np.testing.assert_allclose(out[1], -out[1][::-1], atol=1e-6)  # odd
    assert np.all(np.abs(out[1]) <= np.abs(y.numpy()[1]) + 1e-6)  # compresses, never expands
    rms = np.sqrt(np.mean(y.numpy()[1] ** 2))
    small = np.abs(y.numpy()[1]) < 0.1 * rms
    np.testing.assert_allclose(out[1][small], y.numpy()[1][small], rtol=0.01)  # linear near 0


def test_rms_normalize_keeps_the_level():
    x = 0.2 * _noise((8, 6000), seed=4)
    y = DeviceResponse(SR, p=1.0, n_generated=8, max_ir_samples=512, seed=3)(x, training=True).numpy()
    np.testing.assert_allclose(np.sqrt(np.mean(y**2, axis=1)), np.sqrt(np.mean(x**2, axis=1)), rtol=1e-4)
    assert not np.allclose(y, x, atol=1e-3)


def test_device_response_applies_to_a_fraction_p_of_the_clips():
    x = _noise((400, 256), seed=5)
    y = DeviceResponse(SR, p=0.4, n_generated=8, max_ir_samples=64, seed=4)(x, training=True).numpy()
    same = np.all(y == x, axis=1)  # untouched clips are bit-exact
    assert abs(1 - same.mean() - 0.4) < 0.07
    assert not np.any(np.all(np.isclose(y[~same], x[~same], atol=1e-4), axis=1))


def test_device_response_identity_at_inference():
    x = _noise((3, 2000), seed=6)
    layer = DeviceResponse(SR, p=1.0, n_generated=4, max_ir_samples=128, seed=5)
    np.testing.assert_array_equal(layer(x).numpy(), x)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
    inputs = tf_keras.Input([2000])
    model = tf_keras.Model(inputs, layer(inputs))
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    assert not np.allclose(layer(x, training=True).numpy(), x, atol=1e-3)


# --------------------------------------------------------------------------------------------
# device responses: impulse-response files


def test_bad_impulse_response_files_are_named(tmp_path):
    folder = tmp_path / "irs"
    _write_ir(folder, "good.wav", [1.0, 0.5])
    (folder / "text.wav").write_text("this is not a wave file")
    (folder / "empty.wav").write_bytes(b"")
    full = _write_ir(folder, "truncated.wav", _noise(2000), subtype="PCM_16")
    with open(full, "rb") as fh:
        data = fh.read()
    with open(full, "wb") as fh:
        fh.write(data[: len(data) // 2])
    (folder / "header_only.wav").write_bytes(data[:30])
    stereo = np.stack([np.r_[1.0, np.zeros(9)], np.r_[0.0, 1.0, np.zeros(8)]], axis=1)
    sf.write(folder / "stereo.wav", stereo, SR, subtype="FLOAT")
    _write_ir(folder / "sub", "silent.wav", np.zeros(16))
    (folder / "notes.txt").write_text("ignored: not a .wav")
    with pytest.raises(ImpulseResponseError) as info:
        DeviceResponse(SR, folder=str(folder))
    message = str(info.value)
    for name, why in [
        ("text.wav", "not a RIFF/WAVE"),
        ("empty.wav", "empty file"),
        ("truncated.wav", "truncated"),
        ("header_only.wav", "unreadable"),
        ("stereo.wav", "channels that differ"),
        ("silent.wav", "silent"),
    ]:
        line = next((line for line in message.splitlines() if name in line), None)
        assert line is not None and why in line, (name, message)
    assert "good.wav" not in message and "notes.txt" not in message
    assert len(info.value.problems) == 6
    with pytest.raises(ImpulseResponseError, match="does not exist"):
        DeviceResponse(SR, folder=str(tmp_path / "missing"))
    (tmp_path / "none").mkdir()
    with pytest.raises(ImpulseResponseError, match="no .wav file"):
        DeviceResponse(SR, folder=str(tmp_path / "none"))


def test_folder_bank_loading(tmp_path):
    folder = tmp_path / "irs"
    _write_ir(folder, "b.wav", [0.5, 0.25])
    _write_ir(folder / "deeper", "a.wav", np.r_[1.0, np.zeros(99)], rate=2 * SR)
    _write_ir(folder, "long.WAV", np.ones(300))
    same = np.tile(np.r_[0.8, -0.2][:, None], (1, 2))
    sf.write(folder / "dual.wav", same, SR, subtype="FLOAT")  # identical channels: accepted
    bank, names = load_impulse_responses(folder, SR, max_samples=128)
    assert names == ["b.wav", os.path.join("deeper", "a.wav"), "dual.wav", "long.WAV"]
    assert bank.shape == (4, 128) and bank.dtype == np.float32
    np.testing.assert_allclose(bank[0, :3], [0.5, 0.25, 0.0])
    assert len(np.trim_zeros(bank[1], "b")) <= 50  # 100 samples at 2 x the rate -> 50
    assert abs(np.argmax(np.abs(bank[1]))) == 0  # onset kept in place by the resampler
    np.testing.assert_allclose(bank[2, :2], [0.8, -0.2], rtol=1e-6)
    assert bank[3, 0] == 1.0 and bank[3, 100] == 1.0 and bank[3, -1] < 0.01  # cut with a fade-out


# --------------------------------------------------------------------------------------------
# device responses: the generator


def test_generated_bank_is_deterministic_and_varied():
    bank, drives = generate_device_responses(16, 44100, 2048, seed=7)
    again, drives_again = generate_device_responses(16, 44100, 2048, seed=7)
    np.testing.assert_array_equal(bank, again)
    np.testing.assert_array_equal(drives, drives_again)
    prefix, _ = generate_device_responses(4, 44100, 2048, seed=7)
    np.testing.assert_array_equal(prefix, bank[:4])  # device k depends on (seed, k) only
    other, _ = generate_device_responses(16, 44100, 2048, seed=8)
    assert not np.allclose(other, bank)
    assert np.all(np.isfinite(bank))
    np.testing.assert_allclose(np.sum(bank.astype(np.float64) ** 2, axis=1), 1.0, rtol=1e-5)  # unit energy
    # Varied magnitude responses: every pair of devices differs, by several dB typically.
    spectrum = 20 * np.log10(np.abs(np.fft.rfft(bank, 8192)) + 1e-12)  # [16, bins]
    freqs = np.fft.rfftfreq(8192, 1 / 44100)
    band = spectrum[:, (freqs > 100) & (freqs < 10000)]
    pairs = np.sqrt(np.mean((band[:, None] - band[None]) ** 2, axis=-1))[np.triu_indices(16, 1)]  # dB RMS
    assert pairs.min() > 1.0 and np.median(pairs) > 3.0, (pairs.min(), np.median(pairs))
    for f in (100.0, 500.0, 1000.0, 4000.0, 10000.0):
        assert spectrum[:, np.argmin(np.abs(freqs - f))].std() > 1.0, f
    # Band limits: much less energy at 20 Hz and 20 kHz than mid-band, for every device.
    mid = spectrum[:, (freqs > 500) & (freqs < 3000)].mean(axis=1)
    assert np.all(spectrum[:, np.argmin(np.abs(freqs - 20))] < mid - 6)
    assert np.all(spectrum[:, np.argmin(np.abs(freqs - 20500))] < mid - 6)
    # About half the devices soft-clip, with drives in [0.1, 0.5].
    assert 0 < np.sum(drives > 0) < 16
    assert np.all((drives == 0) | ((drives >= 0.1) & (drives <= 0.5)))
    # The tail has decayed before the cut.
    assert np.abs(bank[:, -64:]).max() < 1e-3


def test_cookbook_biquads_have_their_gains():
    peak = peaking_sos(1000.0, 6.0, 2.0, 44100)
    _, h = signal.sosfreqz(peak[None], worN=[1000.0, 20.0, 15000.0], fs=44100)
    np.testing.assert_allclose(20 * np.log10(np.abs(h)), [6.0, 0.0, 0.0], atol=0.05)
    low = shelf_sos("low", 200.0, -8.0, 44100)
    _, h = signal.sosfreqz(low[None], worN=[1.0, 200.0, 15000.0], fs=44100)
    np.testing.assert_allclose(20 * np.log10(np.abs(h)), [-8.0, -4.0, 0.0], atol=0.1)
    high = shelf_sos("high", 4000.0, 5.0, 44100)
    _, h = signal.sosfreqz(high[None], worN=[10.0, 4000.0, 22000.0], fs=44100)
    np.testing.assert_allclose(20 * np.log10(np.abs(h)), [0.0, 2.5, 5.0], atol=0.1)


# --------------------------------------------------------------------------------------------
# device responses: layer protocol


def test_device_response_layer_test_generated(tmp_path):
    run_layer_test(
        DeviceResponse,
        {"sample_rate": SR, "p": 0.6, "n_generated": 5, "max_ir_samples": 256, "seed": 2},
        (3, 1000),
        (3, 1000),
        tmp_path=tmp_path,
        trainable=False,
    )
    layer = DeviceResponse(SR, n_generated=5, max_ir_samples=256)
    layer(tf.zeros([1, 1000]))
    assert layer.weights == [] and layer.count_params() == 0  # rebuilt from the config


def test_device_response_layer_test_folder(tmp_path):
    folder = tmp_path / "irs"
    _write_ir(folder, "a.wav", [0.9, 0.3, -0.1])
    _write_ir(folder, "b.wav", signal.firwin(9, 0.3))
    run_layer_test(
        DeviceResponse,
        {"sample_rate": SR, "p": 0.6, "folder": str(folder), "seed": 2},
        (3, 1000),
        (3, 1000),
        tmp_path=tmp_path,
        trainable=False,
    )


def _augmenting_model(layer_kwargs, samples=1500):
    inputs = tf_keras.Input([samples])
    return tf_keras.Model(inputs, DeviceResponse(always_on=True, **layer_kwargs)(inputs))


def test_device_response_save_load_without_the_folder(tmp_path):
    folder = tmp_path / "irs"
    _write_ir(folder, "a.wav", [0.9, 0.3, -0.1])
    _write_ir(folder, "b.wav", signal.firwin(9, 0.3))
    kwargs = {"sample_rate": SR, "p": 1.0, "folder": str(folder), "rms_normalize": False, "seed": 4}
    x = _noise((6, 1500), seed=7)
    model = _augmenting_model(kwargs)
    first = model(x).numpy()
    assert not np.allclose(first, x, atol=1e-3)
    assert model.layers[-1].get_config()["bank_shape"] == [2, 9]
    model.save(tmp_path / "dr.keras")
    shutil.rmtree(folder)  # the bank is in the saved weights
    loaded = tf_keras.models.load_model(tmp_path / "dr.keras")
    np.testing.assert_allclose(loaded(x).numpy(), first, atol=1e-5)
    np.testing.assert_array_equal(loaded.layers[-1].bank, model.layers[-1].bank)
    # The generated bank is rebuilt from the config.
    gen = _augmenting_model({"sample_rate": SR, "p": 1.0, "n_generated": 3, "max_ir_samples": 128, "seed": 4})
    first = gen(x).numpy()
    gen.save(tmp_path / "gen.keras")
    np.testing.assert_allclose(tf_keras.models.load_model(tmp_path / "gen.keras")(x).numpy(), first, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"sample_rate": 0}, "sample_rate"),
        ({"p": 2.0}, "p"),
        ({"n_generated": 0}, "n_generated"),
        ({"max_ir_samples": 0}, "max_ir_samples"),
        ({"rms_normalize": 1}, "rms_normalize"),
        ({"folder": 3}, "folder"),
        ({"bank_shape": [2, 9]}, "bank_shape"),
        ({"seed": -2}, "seed"),
    ],
)
def test_device_response_rejects_bad_arguments(kwargs, name):
    base = {"sample_rate": SR, "n_generated": 2, "max_ir_samples": 16}
    with pytest.raises(ValueError, match=name):
        DeviceResponse(**{**base, **kwargs})


# --------------------------------------------------------------------------------------------
# in the model


def _params(*extra):
    base = [
        "audio.n_mels=32",
        "audio.clip_seconds=0.5",
        "model.channels=[8, 8, 16, 16]",
        "model.hidden_units=16",
        "augment.device_response.max_ir_samples=1024",
        "augment.device_response.n_generated=8",
    ]
    return config.load(None, base + list(extra))


def test_model_places_the_layers_and_stays_clean_at_inference(tmp_path):
    on = _params("augment.device_response.enabled=true", "augment.freq_mixstyle.enabled=true")
    off = _params()
    model, plain = asc.build_model(on), asc.build_model(off)
    names = [layer.name for layer in model.layers]
    assert names[:6] == ["waveform", "device_response", "logmel", "time_shift", "freq_mixstyle", "input_specaugment"]
    assert not {"device_response", "freq_mixstyle"} & {layer.name for layer in plain.layers}
    seeds = {layer.name: layer.seed for layer in model.layers if hasattr(layer, "always_on")}
    assert seeds["device_response"] == on.seed + 17 and seeds["freq_mixstyle"] == on.seed + 13
    assert len(set(seeds.values())) == len(seeds)
    assert model.count_params() == plain.count_params()  # the generated bank is no weight
    plain.set_weights(model.get_weights())
    wave = 0.1 * _noise((4, on.audio.clip_samples), seed=8)
    np.testing.assert_allclose(model(wave, training=False).numpy(), plain(wave, training=False).numpy(), atol=1e-6)
    assert not np.allclose(model(wave, training=True).numpy(), model(wave, training=False).numpy())
    # The front end is the clean one, even in training mode, and holds no augmentation layer.
    front = asc.frontend_model(model)
    assert not any(isinstance(layer, DeviceResponse) for layer in front.layers)
    clean = asc.frontend_model(plain)(wave).numpy()
    np.testing.assert_allclose(front(wave, training=True).numpy(), clean, atol=1e-6)
    np.testing.assert_allclose(asc.frontend_model(model)(wave).numpy(), clean, atol=1e-6)  # twice: no node clash
    # The classifier, its export and a save/load round trip work with the layers in place.
    logmel = front(wave).numpy()
    exported = asc.export_classifier(model, on)
    np.testing.assert_allclose(
        exported(logmel).numpy(), asc.get_classifier(model)(logmel, training=False).numpy(), atol=1e-4
    )
    model.save(tmp_path / "m.keras")
    loaded = tf_keras.models.load_model(tmp_path / "m.keras")
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]
    np.testing.assert_allclose(loaded(wave, training=False).numpy(), model(wave, training=False).numpy(), atol=1e-5)
    np.testing.assert_allclose(asc.frontend_model(loaded)(wave).numpy(), clean, atol=1e-6)


def test_model_with_an_impulse_response_folder(tmp_path):
    folder = tmp_path / "irs"
    _write_ir(folder, "a.wav", signal.firwin(15, 0.2), rate=44100)
    params = _params("augment.device_response.enabled=true", f"augment.device_response.folder={folder}")
    model = asc.build_model(params)
    layer = model.get_layer("device_response")
    assert layer.bank_shape == [1, 15] and layer.folder == str(folder)
    model.save(tmp_path / "m.keras")
    shutil.rmtree(folder)
    loaded = tf_keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.get_layer("device_response").bank, layer.bank)


def test_config_keys_and_defaults():
    p = config.load(None)
    fms, dr = p.augment.freq_mixstyle, p.augment.device_response
    assert (fms.enabled, fms.p, fms.alpha, fms.eps) == (False, 0.6, 0.3, 1e-6)
    assert (dr.enabled, dr.p, dr.folder, dr.n_generated, dr.max_ir_samples, dr.rms_normalize, dr.seed_offset) == (
        False,
        0.4,
        None,
        64,
        4096,
        True,
        0,
    )
    with pytest.raises(config.ConfigError, match="augment.freq_mixstyle.p"):
        config.load(None, ["augment.freq_mixstyle.p=1.5"])
    with pytest.raises(config.ConfigError, match="augment.device_response.max_ir_samples"):
        config.load(None, ["augment.device_response.max_ir_samples=0"])
