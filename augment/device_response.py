"""Device response augmentation: convolve training waveforms with a recording device's impulse response.

Reference: Morocutti, Schmid, Koutini, Widmer, "Device-Robust Acoustic Scene Classification via
Impulse Response Augmentation" (DIR), EUSIPCO 2023 (arXiv 2305.07499); code theMoro/DIRAugmentation
and fschmid56/cpjku_dcase23: with probability ``p_dir`` (0.4 in both) a training clip of device A
is convolved with one of 66 measured microphone impulse responses (MicIRP),
``scipy.signal.convolve(x, h, "full")[:len(x)]``, without level normalisation.

Per clip ``b`` of a ``[B, samples]`` batch, in the graph::

    apply_b ~ Bernoulli(p), k_b ~ U{0..N-1}         (one impulse response of the bank)
    y_b = (x_b * h_k)[0 : samples]                   causal linear convolution (FFT), cut to the clip
    y_b = soft_clip(y_b, drive_k)                    generated devices with a drive only
    y_b = y_b * rms(x_b) / rms(y_b)                  with rms_normalize (default)
    out_b = y_b if apply_b else x_b

The bank (``[N, L]``) comes from a folder of WAV files (:func:`augment.impulse_responses.load_impulse_responses`; MicIRP
or the user's measurements) or from the built-in generator of random device responses
(:func:`generate_device_responses`). The generator was designed for this layer alone: it shares
no model or parameter with the synthetic dataset's devices (``pipeline.data.synthetic``), which it
must not imitate, or the unseen-device benchmark would measure their resemblance. Randomness and
the training / ``augment`` / ``always_on`` switch are described in :mod:`augment._base`.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf
import tf_keras

from augment._base import RandomAugmentation
from augment.impulse_responses import fade_out, load_impulse_responses
from pipeline.core.checks import check_bool, check_int, check_real

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# the built-in generator of device responses


def _biquad(b, a) -> np.ndarray:
    """One second-order section ``[b0, b1, b2, 1, a1, a2]`` normalised by ``a0``."""
    b, a = np.asarray(b, np.float64), np.asarray(a, np.float64)
    return np.concatenate([b / a[0], a / a[0]])


def peaking_sos(freq_hz: float, gain_db: float, q: float, sample_rate: int) -> np.ndarray:
    """Peaking EQ biquad (R. Bristow-Johnson, "Audio EQ Cookbook"): ``gain_db`` at ``freq_hz``."""
    amp = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * freq_hz / sample_rate
    alpha = np.sin(w0) / (2.0 * q)
    cos = np.cos(w0)
    return _biquad([1 + alpha * amp, -2 * cos, 1 - alpha * amp], [1 + alpha / amp, -2 * cos, 1 - alpha / amp])


def shelf_sos(kind: str, freq_hz: float, gain_db: float, sample_rate: int) -> np.ndarray:
    """Low or high shelf biquad (Audio EQ Cookbook, shelf slope 1): ``gain_db`` beyond ``freq_hz``."""
    if kind not in ("low", "high"):
        raise ValueError(f"kind must be 'low' or 'high', got {kind!r}")
    amp = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * freq_hz / sample_rate
    k = np.sqrt(2.0 * amp) * np.sin(w0)  # 2 sqrt(A) alpha, alpha = sin(w0) / sqrt(2) at slope 1
    s, c = (1.0 if kind == "low" else -1.0), np.cos(w0)  # high shelf: the low shelf's signs flipped
    b = [
        amp * ((amp + 1) - s * (amp - 1) * c + k),
        2 * s * amp * ((amp - 1) - s * (amp + 1) * c),
        amp * ((amp + 1) - s * (amp - 1) * c - k),
    ]
    a = [(amp + 1) + s * (amp - 1) * c + k, -2 * s * ((amp - 1) + s * (amp + 1) * c), (amp + 1) + s * (amp - 1) * c - k]
    return _biquad(b, a)


def _log_uniform(rng, low: float, high: float) -> float:
    low, high = min(low, high), max(low, high)
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def random_device(rng: np.random.Generator, sample_rate: int) -> dict:
    """The parameters of one random device (see :func:`generate_device_responses`)."""
    top = 0.45 * sample_rate  # highest corner frequency used
    device = {
        "highpass_hz": _log_uniform(rng, 50.0, 400.0),
        "highpass_order": int(rng.choice([2, 4])),
        "lowpass_hz": min(_log_uniform(rng, 4000.0, 16000.0), top),
        "lowpass_order": int(rng.choice([2, 4])),
        "low_shelf": (_log_uniform(rng, 80.0, 400.0), float(rng.uniform(-9.0, 9.0))),
        "high_shelf": (min(_log_uniform(rng, 2000.0, 8000.0), top), float(rng.uniform(-9.0, 9.0))),
        "peaks": [
            (min(_log_uniform(rng, 150.0, 12000.0), top), float(rng.uniform(-10.0, 10.0)), _log_uniform(rng, 0.5, 5.0))
            for _ in range(int(rng.integers(1, 5)))
        ],
        "reflections": [],
        "drive": 0.0,
    }
    if rng.uniform() < 0.5:
        device["reflections"] = [
            (float(rng.uniform(0.1e-3, 3e-3)), float(rng.uniform(0.1, 0.5) * rng.choice([-1.0, 1.0])))
            for _ in range(int(rng.integers(1, 4)))
        ]
    if rng.uniform() < 0.5:
        device["drive"] = float(rng.uniform(0.1, 0.5))
    return device


def device_impulse_response(device: dict, sample_rate: int, length: int) -> np.ndarray:
    """The impulse response ``[length]`` (unit energy) of a device from :func:`random_device`."""
    from scipy import signal

    sos = [
        signal.butter(device["highpass_order"], device["highpass_hz"], "highpass", fs=sample_rate, output="sos"),
        signal.butter(device["lowpass_order"], device["lowpass_hz"], "lowpass", fs=sample_rate, output="sos"),
        shelf_sos("low", *device["low_shelf"], sample_rate)[None],
        shelf_sos("high", *device["high_shelf"], sample_rate)[None],
    ] + [peaking_sos(f, g, q, sample_rate)[None] for f, g, q in device["peaks"]]
    impulse = np.zeros(length)
    impulse[0] = 1.0
    h = signal.sosfilt(np.concatenate(sos), impulse)  # [length]
    out = h.copy()
    for delay_s, gain in device["reflections"]:
        d = max(1, round(delay_s * sample_rate))
        if d < length:
            out[d:] += gain * h[: length - d]
    out = fade_out(out)
    return out / np.sqrt(np.sum(out**2))


def generate_device_responses(n: int, sample_rate: int, length: int, seed: int):
    """A bank of ``n`` random device impulse responses and soft-clipping drives.

    Device ``k`` is drawn from ``numpy.random.default_rng([seed, k])`` (so the first ``m``
    devices of a bigger bank are the same), independently of every other device:

    * band limits: a Butterworth high-pass at ``f ~ logU[50, 400]`` Hz and a low-pass at
      ``f ~ logU[4, 16]`` kHz (at most 0.45 x the sample rate), each of order 2 or 4 (equal odds);
    * tilt: a low shelf at ``logU[80, 400]`` Hz and a high shelf at ``logU[2, 8]`` kHz, gains
      ``U[-9, 9]`` dB each (Audio EQ Cookbook shelves, slope 1);
    * resonances: 1 to 4 (uniform) peaking biquads at ``logU[150 Hz, 12 kHz]``, gain ``U[-10, 10]``
      dB, ``Q ~ logU[0.5, 5]``;
    * housing reflections, half of the devices: 1 to 3 delayed copies of the response, delay
      ``U[0.1, 3]`` ms, gain ``U[0.1, 0.5]`` with a random sign;
    * nonlinearity, half of the devices: memoryless soft clipping ``tanh(d u) / d`` of the
      convolved clip scaled to unit RMS (``u``), drive ``d ~ U[0.1, 0.5]`` (at 1 RMS the
      gain drops by 1-8 %, at 3 RMS by 8-40 %); the other half ``d = 0`` (linear).

    The filter cascade's impulse response is cut to ``length`` samples with a short fade-out and
    scaled to unit energy (a white input keeps its level on average).

    Args:
      n: number of devices (>= 1).
      sample_rate: sample rate in Hz.
      length: impulse response length in samples.
      seed: non-negative integer seed.

    Returns:
      ``(bank, drives)``: float32 ``[n, length]`` and float32 ``[n]``.
    """
    n = check_int("n", n, minimum=1)
    sample_rate = check_int("sample_rate", sample_rate, minimum=1)
    length = check_int("length", length, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    bank = np.zeros((n, length), np.float32)
    drives = np.zeros(n, np.float32)
    for k in range(n):
        device = random_device(np.random.default_rng([seed, k]), sample_rate)
        bank[k] = device_impulse_response(device, sample_rate, length)
        drives[k] = device["drive"]
    return bank, drives


# --------------------------------------------------------------------------------------------
# graph ops


def fft_convolve(x, h) -> tf.Tensor:
    """Per-sample causal convolution cut to the input length: ``(x_b * h_b)[0 : samples]``.

    Equals ``np.convolve(x[b], h[b])[:samples]`` (``scipy.signal.convolve(..., "full")`` cut to
    the clip, as in the DIR reference) for every row, computed as an FFT product of length
    ``>= samples + L - 1`` (a power of two when the lengths are known), so no wrap-around.

    Args:
      x: float ``[B, samples]``.
      h: float ``[B, L]``.

    Returns:
      float32 ``[B, samples]``.
    """
    x = tf.cast(x, tf.float32)
    h = tf.cast(h, tf.float32)
    samples, taps = x.shape[1], h.shape[1]
    if samples is not None and taps is not None:
        n_fft = 1 << (samples + taps - 2).bit_length()  # smallest power of two >= samples + taps - 1
        out_len = samples
    else:
        out_len = tf.shape(x)[1]
        n_fft = out_len + tf.shape(h)[1] - 1
    spectrum = tf.signal.rfft(x, fft_length=[n_fft]) * tf.signal.rfft(h, fft_length=[n_fft])  # [B, n_fft/2+1]
    return tf.signal.irfft(spectrum, fft_length=[n_fft])[:, :out_len]  # [B, samples]


def _rms(x) -> tf.Tensor:
    return tf.sqrt(tf.reduce_mean(tf.square(x), axis=1, keepdims=True))  # [B, 1]


def soft_clip(y, drive) -> tf.Tensor:
    """``rms * tanh(d * y / rms) / d`` per row (``rms`` the row's RMS); rows with ``d == 0`` unchanged.

    Args:
      y: float ``[B, samples]``.
      drive: float ``[B]``, ``d >= 0``.
    """
    rms = _rms(y)  # [B, 1]
    scale = tf.where(rms > 0.0, rms, 1.0)  # [B, 1]
    d = drive[:, tf.newaxis]  # [B, 1]
    safe = tf.where(d > 0.0, d, 1.0)  # [B, 1]
    clipped = scale * tf.tanh(safe * y / scale) / safe  # [B, samples]
    return tf.where(d > 0.0, clipped, y)  # [B, samples]


def match_rms(y, reference) -> tf.Tensor:
    """``y`` scaled per row to the RMS of ``reference`` (rows with a silent ``y`` unchanged)."""
    rms_y = _rms(y)  # [B, 1]
    gain = tf.where(rms_y > 1e-12, _rms(reference) / tf.where(rms_y > 1e-12, rms_y, 1.0), 1.0)  # [B, 1]
    return y * gain  # [B, samples]


# --------------------------------------------------------------------------------------------
# the layer


@tf_keras.saving.register_keras_serializable(package="asc")
class DeviceResponse(RandomAugmentation):
    """Random device impulse responses applied to ``[B, samples]`` waveforms (DIR augmentation).

    Each clip is, with probability ``p`` (drawn per clip), convolved with an impulse response
    drawn uniformly from the bank (:func:`fft_convolve`: causal, cut to the clip length, so a
    unit impulse leaves the clip unchanged), soft-clipped when the drawn generated device has a
    drive (:func:`soft_clip`) and, with ``rms_normalize``, scaled back to its own RMS
    (:func:`match_rms`): the augmentation changes the spectral shape, not the loudness. Without
    it the bank's gain applies (files keep their measured level, generated responses have unit
    energy), as in the reference. Clips not drawn pass unchanged, bit for bit.

    The bank comes from ``folder`` (:func:`load_impulse_responses`; stored as the layer's only
    weight, non-trainable ``[N, L]``, so a saved model loads without the folder) or, when
    ``folder`` is None, from the generator (:func:`generate_device_responses`: ``n_generated``
    devices of ``max_ir_samples`` samples seeded with ``seed``, rebuilt from the config, no
    weights). Identity unless ``training=True``, ``augment=True`` or ``always_on``
    (:mod:`augment._base`). Unlike the reference, which augments only clips of device A, the
    layer sees waveforms only and augments any training clip.

    Args:
      sample_rate: sample rate of the waveforms in Hz (the bank is made at this rate).
      p: probability that a clip is augmented, in [0, 1] (0.4 as in the DIR code).
      folder: folder of impulse-response WAV files, or None for the built-in generator.
      n_generated: number of generated devices when ``folder`` is None (>= 1).
      max_ir_samples: longest impulse response in samples (files are cut, generated ones have
        this length).
      rms_normalize: scale each augmented clip back to its input RMS.
      bank_shape: ``[N, L]`` of a folder bank; set by :meth:`get_config` so that
        :meth:`from_config` (``load_model``) makes the weight without reading the folder; the
        bank is then unit impulses until the saved weights are loaded. Leave it None.
      seed: non-negative integer seed of the layer's random stream and of the generated bank.
      always_on: augment on every call, whatever ``training`` is.
      **kwargs: base Layer arguments (name, dtype, ...).

    Input shape: ``[B, samples]``; B (and samples) may be unknown. Output shape: the same.

    Raises:
      ValueError: bad arguments; :class:`ImpulseResponseError` for a folder that cannot be used.
    """

    def __init__(
        self,
        sample_rate: int,
        p: float = 0.4,
        folder: str | None = None,
        n_generated: int = 64,
        max_ir_samples: int = 4096,
        rms_normalize: bool = True,
        bank_shape=None,
        seed: int = 0,
        always_on: bool = False,
        **kwargs,
    ):
        super().__init__(seed=seed, always_on=always_on, **kwargs)
        self.sample_rate = check_int("sample_rate", sample_rate, minimum=1)
        self.p = check_real("p", p, minimum=0.0)
        if self.p > 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise ValueError(f"folder must be None or a path, got {folder!r}")
        self.folder = None if folder is None else os.fspath(folder)
        self.n_generated = check_int("n_generated", n_generated, minimum=1)
        self.max_ir_samples = check_int("max_ir_samples", max_ir_samples, minimum=1)
        self.rms_normalize = check_bool("rms_normalize", rms_normalize)
        self.input_spec = tf_keras.layers.InputSpec(ndim=2)
        self.names: list[str] = []  # files of a folder bank read by this instance
        self.bank_shape, self.impulse_responses = None, None
        if self.folder is None:
            if bank_shape is not None:
                raise ValueError(f"bank_shape is only for a folder bank (folder is None), got {bank_shape!r}")
            self._bank_np, self.drives = generate_device_responses(
                self.n_generated, self.sample_rate, self.max_ir_samples, self.seed
            )
            return
        if bank_shape is not None:  # from_config: the bank comes with the saved weights
            if (
                not isinstance(bank_shape, (list, tuple))
                or len(bank_shape) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in bank_shape)
            ):
                raise ValueError(f"bank_shape must be [N, L] with positive integers, got {bank_shape!r}")
            self._bank_np = np.zeros(bank_shape, np.float32)
            self._bank_np[:, 0] = 1.0  # unit impulses until the weights are set
        else:
            self._bank_np, self.names = load_impulse_responses(self.folder, self.sample_rate, self.max_ir_samples)
        self.bank_shape = list(self._bank_np.shape)
        self.drives = np.zeros(len(self._bank_np), np.float32)  # measured responses are linear

    @classmethod
    def from_params(cls, params, *, sample_rate: int, seed: int, **kwargs) -> DeviceResponse:
        """The layer configured by a ``DeviceResponseParams`` (``params.augment.device_response``).

        ``params.enabled`` and ``params.seed_offset`` are the caller's business.
        """
        return cls(
            sample_rate=sample_rate,
            p=params.p,
            folder=params.folder,
            n_generated=params.n_generated,
            max_ir_samples=params.max_ir_samples,
            rms_normalize=params.rms_normalize,
            seed=seed,
            **kwargs,
        )

    @property
    def bank(self) -> np.ndarray:
        """The impulse responses ``[N, L]`` as a NumPy array (the weight's value for a folder bank)."""
        if self.impulse_responses is not None:
            return self.impulse_responses.numpy()
        return self._bank_np

    def build(self, input_shape):
        if self.folder is not None:
            self.impulse_responses = self.add_weight(
                name="impulse_responses",
                shape=tuple(self.bank_shape),
                dtype=tf.float32,
                trainable=False,
                initializer=tf_keras.initializers.Constant(self._bank_np),
            )
        super().build(input_shape)

    def _augment(self, inputs):
        x = tf.cast(inputs, tf.float32)  # [B, S]
        gate_seed, pick_seed = tf.unstack(tf.random.experimental.stateless_split(self._next_seed(), num=2))
        batch = tf.shape(x)[0]
        n_irs = len(self._bank_np)
        apply = tf.random.stateless_uniform(tf.reshape(batch, [1]), seed=gate_seed) < self.p  # [B]
        index = tf.random.stateless_uniform(
            tf.reshape(batch, [1]), seed=pick_seed, minval=0, maxval=n_irs, dtype=tf.int32
        )  # [B]
        bank = self.impulse_responses if self.impulse_responses is not None else tf.constant(self._bank_np)
        y = fft_convolve(x, tf.gather(bank, index))  # [B, S]
        if np.any(self.drives > 0):
            y = soft_clip(y, tf.gather(tf.constant(self.drives), index))  # [B, S]
        if self.rms_normalize:
            y = match_rms(y, x)  # [B, S]
        return tf.cast(tf.where(apply[:, tf.newaxis], y, x), inputs.dtype)  # [B, S]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sample_rate": self.sample_rate,
                "p": self.p,
                "folder": self.folder,
                "n_generated": self.n_generated,
                "max_ir_samples": self.max_ir_samples,
                "rms_normalize": self.rms_normalize,
                "bank_shape": None if self.bank_shape is None else [int(v) for v in self.bank_shape],
            }
        )
        return config
