"""The polyphase resampler (pipeline.inference.asc_infer.resample): quality against soxr HQ, exactness of the
streaming window, the filter's gains, and the tf.data path (pipeline.data.inputs) against NumPy.

Quality figures, measured on 1-s inputs resampled to 44.1 kHz (dB; the bounds asserted below are a
few dB under them). "soxr" = SNR of our output against ``soxr.resample(x, orig, 44100, "HQ")``;
"exact" = SNR of our output against the analytic sine at the output times. ``EDGE`` = 200 output
samples (4.5 ms) are left out at each end: there the input starts/stops abruptly (zeros outside),
and the two resamplers' different filters ring differently within their half-lengths (ours: 68
output samples at 48 kHz, 136 at 22.05 kHz, 187 at 16 kHz).

==================  =========================  =======================  ==========================
input rate          sines <= 0.5 Nyquist (*)   sines 0.7 - 0.9 Nyq.     noise band-limited to 0.8
==================  =========================  =======================  ==========================
48 kHz              soxr >= 113.8, exact 114   soxr 61.6-90.5, exact 98  soxr 88.6
22.05 kHz           soxr >= 113.5, exact 113   soxr 98.6-128, exact 98   soxr 114.9
16 kHz              soxr >= 113.6, exact 113   soxr 61.7-97, exact 98    soxr 92.2
==================  =========================  =======================  ==========================

(*) Nyquist of the lower of the two rates. Above 0.7 Nyquist the difference to soxr is soxr's own
pass-band roll-off: soxr HQ against the exact sine measures 61.7 dB at 0.9 Nyquist and 74.3 dB at
0.8, while ours stays above 98 dB. Stop-band: tones from 22.05 to 24 kHz in a 48 kHz input come
out at most -100.6 dB (bound: -95 dB); images of 16 kHz and 22.05 kHz inputs up-sampled to
44.1 kHz, at most -111.8 dB below the tone (bound: -100 dB).
"""

import numpy as np
import pytest
import soundfile as sf
import soxr
import tensorflow as tf

from pipeline.data import inputs
from pipeline.inference.asc_infer import resample as rs
from pipeline.inference.asc_infer import wavfile
from pipeline.inference.asc_infer.resample import Resampler

TARGET = 44100
EDGE = 200
COMMON = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 192000)


def _snr(got, ref):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((got.astype(np.float64) - ref) ** 2))


def _inner(y):
    return y[EDGE : len(y) - EDGE]


def _sine(rate, freq, n, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


@pytest.mark.parametrize("orig", [48000, 22050, 16000])
def test_sines_against_soxr_hq_and_the_exact_sine(orig):
    r = Resampler(orig, TARGET)
    nyq = min(orig, TARGET) / 2
    for frac, soxr_bound in [(100 / nyq, 105), (0.05, 105), (0.25, 105), (0.5, 105), (0.8, 70), (0.9, 58)]:
        freq = frac * nyq
        x = _sine(orig, freq, orig)
        y = r(x)
        ref = soxr.resample(x, orig, TARGET, quality="HQ")
        assert len(y) == len(ref) == r.output_length(orig)
        exact = _sine(TARGET, freq, len(y)).astype(np.float64)
        snr_soxr, snr_exact = _snr(_inner(y), _inner(ref)), _snr(_inner(y), _inner(exact))
        assert snr_soxr > soxr_bound, (orig, freq, snr_soxr)
        assert snr_exact > 95, (orig, freq, snr_exact)


@pytest.mark.parametrize("orig", [48000, 22050, 16000])
def test_band_limited_noise_against_soxr_hq(orig):
    # white noise with every FFT bin above 0.8 x the lower Nyquist frequency set to zero
    rng = np.random.default_rng(0)
    spec = np.fft.rfft(rng.standard_normal(orig))
    spec[np.fft.rfftfreq(orig, 1 / orig) > 0.8 * min(orig, TARGET) / 2] = 0
    x = (0.1 * np.fft.irfft(spec, orig)).astype(np.float32)
    y = Resampler(orig, TARGET)(x)
    ref = soxr.resample(x, orig, TARGET, quality="HQ")
    assert _snr(_inner(y), _inner(ref)) > 84


def test_stop_band_of_downsampling():
    r = Resampler(48000, TARGET)
    for freq in np.linspace(22050, 23990, 25):
        y = r(_sine(48000, freq, 48000, amp=1.0))
        level = 20 * np.log10(np.sqrt(np.mean(_inner(y).astype(np.float64) ** 2)) / np.sqrt(0.5))
        assert level < -95, (freq, level)


@pytest.mark.parametrize("orig", [16000, 22050])
def test_images_of_upsampling(orig):
    r = Resampler(orig, TARGET)
    n = 32768
    for freq in (300.0, 0.3 * orig / 2, 0.7 * orig / 2, 0.9 * orig / 2):
        y = r(_sine(orig, freq, orig))[1000 : 1000 + n]
        spec = np.abs(np.fft.rfft(y * np.kaiser(n, 20)))
        image = spec[np.fft.rfftfreq(n, 1 / TARGET) > orig / 2].max()
        assert 20 * np.log10(image / spec.max()) < -100, freq


def test_identity_when_rates_are_equal():
    r = Resampler(TARGET, TARGET)
    x = np.random.default_rng(1).standard_normal(1001).astype(np.float32)
    assert (r.up, r.down, r.pad_left) == (1, 1, 0) and r.matrix.tolist() == [[1.0]]
    np.testing.assert_array_equal(r(x), x)
    np.testing.assert_array_equal(r.window(lambda a, b: x[a:b], len(x), 990, 50), x[990:])


@pytest.mark.parametrize("orig", COMMON)
@pytest.mark.parametrize("target", [16000, 32000, 44100, 48000])
def test_common_rates_are_accepted_with_unit_dc_gain(orig, target):
    r = Resampler(orig, target)
    assert r.matrix.dtype == np.float32 and r.matrix.shape == (r.frame_len, r.up)
    np.testing.assert_allclose(r.matrix.sum(axis=0), 1.0, atol=1e-5)  # every phase passes DC unchanged
    assert r.up * orig == r.down * target


@pytest.mark.parametrize("orig", [48000, 22050, 16000, 8000])
def test_dc_gain_and_output_length(orig):
    r = Resampler(orig, TARGET)
    for n_in in (1, 7, 159, 160, 161, orig // 3 + 1):
        y = r(np.ones(n_in, np.float32))
        assert len(y) == r.output_length(n_in) == -(-n_in * TARGET // orig)  # ceil (soxr rounds)
    y = r(np.ones(orig, np.float32))
    edge = -(-r.pad_left * r.up // r.down) + 1  # the filter's half length in output samples (8 kHz: 372)
    np.testing.assert_allclose(y[edge:-edge], 1.0, atol=2e-6)


@pytest.mark.parametrize("orig", [48000, 22050, 16000, 96000])
def test_window_equals_the_full_call_and_reads_only_near_the_window(orig):
    rng = np.random.default_rng(orig)
    x = rng.standard_normal(5 * orig + 17).astype(np.float32)  # several chunks of output
    r = Resampler(orig, TARGET)
    full = r(x)
    n_out = len(full)
    chunk_in = rs.CHUNK_OUTPUT // r.up * r.down + r.frame_len  # input samples one chunk reads
    windows = [(0, 10), (0, n_out), (n_out - 5, 100), (n_out + 3, 10), (12345, 0)]
    windows += [(int(s), int(c)) for s, c in zip(rng.integers(0, n_out, 12), rng.integers(1, 60000, 12), strict=True)]
    for start, count in windows:
        reads = []

        def read(a, b, reads=reads):
            assert 0 <= a <= b <= len(x)
            reads.append((a, b))
            return x[a:b]

        got = r.window(read, len(x), start, count)
        np.testing.assert_array_equal(got, full[start : start + count])
        read_total = sum(b - a for a, b in reads)
        assert read_total <= min(count, n_out) * orig / TARGET + 2 * chunk_in + 1, (start, count, read_total)


def test_refused_ratios_and_bad_arguments_are_named():
    with pytest.raises(ValueError, match="44100 Hz -> 44056 Hz"):
        Resampler(44100, 44056)
    with pytest.raises(ValueError, match="orig_rate must be a positive integer"):
        Resampler(0, 44100)
    with pytest.raises(ValueError, match="target_rate must be a positive integer.*44100.0"):
        Resampler(48000, 44100.0)
    with pytest.raises(ValueError, match=r"1-D signal, got shape \(10, 2\)"):
        Resampler(48000, 44100)(np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match="out_start must be an integer >= 0, got -1"):
        Resampler(48000, 44100).window(lambda a, b: np.zeros(b - a), 100, -1, 5)


@pytest.mark.parametrize("orig", [48000, 22050, 16000, 8000])
def test_tensorflow_path_equals_numpy(orig):
    # float32 sums of ~150-300 products in another order: measured max difference 1.2e-6 (10 ulp at 1.0)
    r = Resampler(orig, TARGET)
    x = np.random.default_rng(2).uniform(-1, 1, 30011).astype(np.float32)
    np.testing.assert_allclose(inputs.polyphase_resample(tf.constant(x), r).numpy(), r(x), atol=3e-6, rtol=0)
    np.testing.assert_allclose(
        inputs.polyphase_resample(tf.constant(x), r, max_out=5000).numpy(), r(x)[:5000], atol=3e-6, rtol=0
    )
    # the run-time switch over several source rates picks the right design
    got = inputs.resample(
        tf.constant(x), tf.constant(orig, tf.int64), target_rate=TARGET, source_rates=(8000, 16000, 22050, 48000)
    ).numpy()
    np.testing.assert_allclose(got, r(x), atol=3e-6, rtol=0)


def test_tf_data_load_clip_equals_numpy_reader_and_resampler(tmp_path):
    x = np.random.default_rng(3).uniform(-0.5, 0.5, size=(48000 + 480, 2))
    sf.write(tmp_path / "long.wav", x, 48000, subtype="PCM_24")
    sf.write(tmp_path / "short.wav", x[:24000], 48000, subtype="PCM_24")
    for name in ("long.wav", "short.wav"):
        path = tmp_path / name
        expected = Resampler(48000, TARGET)(wavfile.read_mono(path))[:TARGET]
        expected = np.pad(expected, (0, TARGET - len(expected)))
        got = inputs.load_clip(
            tf.constant(str(path)),
            tf.constant(1),
            tf.constant(48000, tf.int64),
            target_rate=TARGET,
            clip_samples=TARGET,
            source_rates=(48000,),
        ).numpy()
        np.testing.assert_allclose(got, expected, atol=3e-6, rtol=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no resampler for sample rate"):
        inputs.load_clip(
            tf.constant(str(tmp_path / "short.wav")),
            tf.constant(1),
            tf.constant(48000, tf.int64),
            target_rate=TARGET,
            clip_samples=TARGET,
            source_rates=(16000,),
        )


def test_eval_dataset_resamples_each_file_from_its_own_rate(tmp_path):
    import pandas as pd

    from pipeline.core.config import AudioParams, DataParams

    rng = np.random.default_rng(4)
    rows = []
    for i, (rate, subtype) in enumerate([(48000, "PCM_24"), (16000, "PCM_16"), (44100, "FLOAT"), (22050, "PCM_32")]):
        name = f"f{i}.wav"
        sf.write(tmp_path / name, rng.uniform(-0.5, 0.5, size=(rate, 2)), rate, subtype=subtype)
        info = wavfile.read_info(tmp_path / name)
        rows.append({"filename": name, "encoding": info.encoding, "bits": info.bits, "sample_rate": rate, "label": i})
    index = pd.DataFrame(rows)
    waves = np.concatenate(
        [
            w
            for w, _ in inputs.eval_dataset(
                index, tmp_path, AudioParams(), DataParams(), batch_size=4
            ).as_numpy_iterator()
        ]
    )
    for row, wave in zip(rows, waves, strict=True):
        expected = Resampler(row["sample_rate"], TARGET)(wavfile.read_mono(tmp_path / row["filename"]))[:TARGET]
        np.testing.assert_allclose(wave, expected, atol=3e-6, rtol=0, err_msg=row["filename"])
