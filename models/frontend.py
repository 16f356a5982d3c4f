"""On-graph log-mel front end: waveform in, log-mel spectrogram out, all in TensorFlow ops.

The front end is the first layer of the training graph, so that
waveforms rather than spectrograms leave the CPU and the STFT runs on the accelerator. It follows
``librosa.feature.melspectrogram`` (STFT -> power -> Slaney or HTK mel filter bank) followed by a
log, with librosa's meaning for every argument; the mel filter bank is rebuilt here in NumPy so that
librosa is not a runtime dependency (the tests compare against librosa 0.11).

Style model: YAMNet's ``features.py`` (tensorflow/models, research/audioset/yamnet), which computes
its log-mel patches with ``tf.signal`` inside the model graph.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import tensorflow as tf
import tf_keras

from pipeline.core.checks import check_bool, check_choice, check_int, check_real

logger = logging.getLogger(__name__)

WINDOWS = ("hann", "hamming")
PAD_MODES = ("reflect", "constant")
MEL_SCALES = ("slaney", "htk")
LOGS = ("natural", "db", "none")

# Slaney's Auditory Toolbox mel scale (librosa's default): linear below 1 kHz, logarithmic above.
_SLANEY_F_SP = 200.0 / 3.0
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(frequencies, htk: bool = False) -> np.ndarray:
    """Hz to mels, as ``librosa.hz_to_mel`` (Slaney's scale, or HTK's with ``htk=True``)."""
    f = np.asanyarray(frequencies, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    mels = f / _SLANEY_F_SP
    above = np.maximum(f, _SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ
    log_part = _SLANEY_MIN_LOG_MEL + np.log(above) / _SLANEY_LOGSTEP
    return np.where(f >= _SLANEY_MIN_LOG_HZ, log_part, mels)


def mel_to_hz(mels, htk: bool = False) -> np.ndarray:
    """Mels to Hz, as ``librosa.mel_to_hz`` (the inverse of :func:`hz_to_mel`)."""
    m = np.asanyarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    freqs = _SLANEY_F_SP * m
    above = np.maximum(m, _SLANEY_MIN_LOG_MEL) - _SLANEY_MIN_LOG_MEL
    log_part = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * above)
    return np.where(m >= _SLANEY_MIN_LOG_MEL, log_part, freqs)


def mel_filterbank(
    sample_rate: float,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
) -> np.ndarray:
    """Triangular mel filter bank ``[n_mels, 1 + n_fft // 2]`` as ``librosa.filters.mel``.

    Computed in float64 (librosa stores float32; the two agree to float32 rounding).

    Args:
      sample_rate: sampling rate in Hz.
      n_fft: FFT length.
      n_mels: number of mel bands.
      fmin: lowest band edge in Hz.
      fmax: highest band edge in Hz; ``sample_rate / 2`` when None.
      htk: HTK's mel scale instead of Slaney's.
      norm: "slaney" divides each triangle by its width in Hz (constant energy per band), None
        leaves peaks at 1.

    Returns:
      The filter bank, float64, one row per band.
    """
    if fmax is None:
        fmax = float(sample_rate) / 2.0
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / float(sample_rate))  # [F]
    mel_points = np.linspace(hz_to_mel(fmin, htk=htk), hz_to_mel(fmax, htk=htk), n_mels + 2)
    mel_f = mel_to_hz(mel_points, htk=htk)  # [n_mels + 2] band edges in Hz
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)  # [n_mels + 2, F]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))  # [n_mels, F]
    if norm == "slaney":
        weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    elif norm is not None:
        raise ValueError(f"norm must be 'slaney' or None, got {norm!r}")
    return weights


def periodic_window(name: str, length: int) -> np.ndarray:
    """Periodic ("DFT-even") window, as ``scipy.signal.get_window(name, length, fftbins=True)``."""
    n = np.arange(length, dtype=np.float64)
    phase = 2.0 * np.pi * n / length
    if name == "hann":
        return 0.5 - 0.5 * np.cos(phase)
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(phase)
    raise ValueError(f"window must be one of {WINDOWS}, got {name!r}")


def split_tf32(x):
    """Split float32 ``x`` into ``hi + lo`` with ``hi`` exactly representable in TensorFloat-32.

    Veltkamp's splitting with the factor ``2**13 + 1`` leaves ``hi`` with 11 significant bits
    (TF32 keeps 10 explicit mantissa bits plus the implicit one), and ``lo = x - hi`` is exact.
    Works on NumPy arrays (returns NumPy) and on tensors (returns tensors, plain float ops).
    """
    if isinstance(x, np.ndarray):
        x = x.astype(np.float32)
        scaled = x * np.float32(8193.0)
        hi = (scaled - (scaled - x)).astype(np.float32)
        return hi, (x - hi).astype(np.float32)
    scaled = x * 8193.0
    hi = scaled - (scaled - x)
    return hi, x - hi


def _plain_number(value):
    """int when integral, float otherwise (keeps configs JSON-friendly and stable)."""
    value = float(value)
    return int(value) if value.is_integer() else value


@tf_keras.saving.register_keras_serializable(package="asc")
class LogMel(tf_keras.layers.Layer):
    """Log-mel spectrogram of a waveform batch, computed with ``tf.signal`` inside the graph.

    Matches ``librosa.feature.melspectrogram(..., norm="slaney")`` followed by a log: STFT with a
    periodic window (``win_length`` samples, zero-padded to ``n_fft`` and centred as librosa does),
    frames centred on ``t * hop_length`` when ``center`` (the signal is padded by ``n_fft // 2`` on
    both sides), ``|X|**power``, a mel filter bank built in NumPy as a graph constant (not a weight,
    so it adds no parameters), and then ``log``. The layer always computes in float32 (its dtype
    defaults to "float32", so a mixed-precision policy does not push the STFT into float16).

    Reference: the DCASE2022 Task 1 report (Xin et al., "Low-complexity acoustic scene
    classification with mismatch-devices using separable convolutions and coordinate attention")
    feeds 256 log-mel bins of 2048-sample frames with hop 1024 at 44.1 kHz; the front end follows
    YAMNet's on-graph ``tf.signal`` features and librosa's definitions.

    Args:
      sample_rate: sampling rate of the input in Hz.
      n_fft: FFT length (frame length after zero padding the window), a positive integer.
      win_length: window length in samples, ``<= n_fft``; ``n_fft`` when None. A shorter window is
        zero-padded centred inside the ``n_fft`` frame, as in librosa.
      hop_length: hop between frames in samples.
      n_mels: number of mel bands.
      fmin: lowest mel band edge in Hz.
      fmax: highest mel band edge in Hz (``<= sample_rate / 2``); ``sample_rate / 2`` when None.
      window: "hann" or "hamming", periodic as ``scipy.signal.get_window(..., fftbins=True)``.
      center: pad ``n_fft // 2`` samples on both sides so that frame ``t`` is centred on sample
        ``t * hop_length``; otherwise frame ``t`` starts there.
      pad_mode: "reflect" (the default here, as in the report's reference code valeoai/SP4ASC,
        which uses torchlibrosa) or "constant" (zeros; librosa 0.11's default) for the centring
        pad.
      power: exponent of the magnitude: 2.0 gives the power spectrogram, 1.0 the magnitude.
      mel_scale: "slaney" (librosa's default: Slaney's scale, area-normalised triangles,
        ``htk=False, norm="slaney"``) or "htk" (``htk=True, norm="slaney"``).
      mel_norm: "slaney" (area-normalised triangles, librosa's default) or "none" (peak 1, as
        ``torchaudio.transforms.MelSpectrogram``'s default ``norm=None``, the DCASE2024 baseline's).
      log: "natural" gives ``log(mel + log_offset)``; "db" gives
        ``10 * log10(max(mel, log_offset))`` as ``librosa.power_to_db(mel, ref=1.0,
        amin=log_offset, top_db=top_db)`` (SP4ASC's torchlibrosa front end is ``log="db"``
        with ``top_db=None``); "none" returns the mel spectrogram itself.
      log_offset: the offset (natural log) or floor ``amin`` (dB), > 0.
      top_db: with ``log="db"`` only: clip each example at ``top_db`` below its own maximum
        (librosa takes the maximum over the whole array it is given; here it is per example).
      **kwargs: base Layer arguments (name, dtype, ...).

    Input shape:
      ``[batch, samples]`` float waveform (cast to float32).

    Output shape:
      ``[batch, frames, n_mels, 1]`` float32, with ``frames = 1 + samples // hop_length`` when
      ``center`` and ``1 + (samples - n_fft) // hop_length`` otherwise (see :meth:`output_frames`).
    """

    # None: split the mel matmul (see ``_mel_matmul``) only when TF32 is on and a GPU is visible;
    # True / False force it (tests). Not part of the config: it changes the graph, not the result.
    split_matmul = None

    def __init__(
        self,
        sample_rate=44100,
        n_fft=2048,
        win_length=None,
        hop_length=1024,
        n_mels=256,
        fmin=0.0,
        fmax=None,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        mel_scale="slaney",
        mel_norm="slaney",
        log="natural",
        log_offset=1e-10,
        top_db=None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        sample_rate = check_real("sample_rate", sample_rate, exclusive=True)
        self.sample_rate = _plain_number(sample_rate)
        self.n_fft = check_int("n_fft", n_fft, 1)
        if win_length is None:
            self.win_length = None
        else:
            self.win_length = check_int("win_length", win_length, 1)
            if self.win_length > self.n_fft:
                raise ValueError(f"win_length must be <= n_fft={self.n_fft}, got {win_length!r}")
        self.hop_length = check_int("hop_length", hop_length, 1)
        self.n_mels = check_int("n_mels", n_mels, 1)
        self.fmin = check_real("fmin", fmin)
        nyquist = float(sample_rate) / 2.0
        if fmax is None:
            self.fmax = None
        else:
            self.fmax = check_real("fmax", fmax, exclusive=True)
            if self.fmax > nyquist:
                raise ValueError(f"fmax must be <= sample_rate / 2 = {nyquist}, got {fmax!r}")
        if self.fmin >= (nyquist if self.fmax is None else self.fmax):
            raise ValueError(f"fmin must be < fmax ({nyquist if self.fmax is None else self.fmax}), got {fmin!r}")
        self.window = check_choice("window", window, WINDOWS)
        self.center = check_bool("center", center.item() if isinstance(center, np.bool_) else center)
        self.pad_mode = check_choice("pad_mode", pad_mode, PAD_MODES)
        self.power = check_real("power", power, exclusive=True)
        self.mel_scale = check_choice("mel_scale", mel_scale, MEL_SCALES)
        self.mel_norm = check_choice("mel_norm", mel_norm, ("slaney", "none"))
        self.log = check_choice("log", log, LOGS)
        self.log_offset = check_real("log_offset", log_offset, exclusive=True)
        if top_db is None:
            self.top_db = None
        else:
            self.top_db = check_real("top_db", top_db, exclusive=True)
            if self.log != "db":
                raise ValueError(f"top_db applies only to log='db' (log={self.log!r}), got {top_db!r}")

        # Constants, built once in NumPy (float64) and stored as float32 graph constants.
        win = self.win_length or self.n_fft
        self._win = win
        self._win_offset = (self.n_fft - win) // 2  # librosa centres a short window in n_fft
        self._window_np = periodic_window(self.window, win).astype(np.float32)  # [win]
        mel = mel_filterbank(
            self.sample_rate,
            self.n_fft,
            self.n_mels,
            fmin=self.fmin,
            fmax=self.fmax,
            htk=self.mel_scale == "htk",
            norm=None if self.mel_norm == "none" else "slaney",
        )  # [n_mels, F]
        empty = int(np.sum(mel.max(axis=1) <= 0.0))
        if empty:
            logger.info(
                "LogMel: %d of %d mel bands hold no FFT bin (n_mels=%d is high for n_fft=%d); "
                "they output log(log_offset)",
                empty,
                self.n_mels,
                self.n_mels,
                self.n_fft,
            )
        self._mel_np = np.ascontiguousarray(mel.T.astype(np.float32))  # [F, n_mels]

    @classmethod
    def from_seconds(cls, sample_rate, window_seconds, hop_seconds, **kwargs) -> LogMel:
        """A LogMel whose window and hop are given in seconds.

        ``win_length = round(window_seconds * sample_rate)``, ``n_fft`` the next power of two
        ``>= win_length`` and ``hop_length = round(hop_seconds * sample_rate)``; e.g. the DCASE2022
        baseline's 40 ms / 20 ms at 44.1 kHz gives win_length 1764, n_fft 2048, hop_length 882.

        Args:
          sample_rate: sampling rate in Hz.
          window_seconds: window length in seconds.
          hop_seconds: hop length in seconds.
          **kwargs: any other LogMel argument except n_fft, win_length and hop_length.
        """
        sample_rate = check_real("sample_rate", sample_rate, exclusive=True)
        window_seconds = check_real("window_seconds", window_seconds, exclusive=True)
        hop_seconds = check_real("hop_seconds", hop_seconds, exclusive=True)
        for key in ("n_fft", "win_length", "hop_length"):
            if key in kwargs:
                raise ValueError(f"{key} is derived from the seconds in from_seconds, got {key}={kwargs[key]!r}")
        win_length = int(round(window_seconds * sample_rate))
        hop_length = int(round(hop_seconds * sample_rate))
        if win_length < 1:
            raise ValueError(f"window_seconds gives a window of {win_length} samples, got {window_seconds!r}")
        if hop_length < 1:
            raise ValueError(f"hop_seconds gives a hop of {hop_length} samples, got {hop_seconds!r}")
        n_fft = 1 << (win_length - 1).bit_length()
        return cls(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            **kwargs,
        )

    def output_frames(self, n_samples):
        """Number of frames for ``n_samples`` input samples (librosa's count)."""
        n_samples = check_int("n_samples", n_samples)
        if self.center:
            return 1 + n_samples // self.hop_length
        if n_samples < self.n_fft:
            raise ValueError(f"n_samples must be >= n_fft={self.n_fft} when center=False, got {n_samples}")
        return 1 + (n_samples - self.n_fft) // self.hop_length

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 2:
            raise ValueError(f"LogMel expects input [batch, samples], got shape {input_shape}")
        n = input_shape[1]
        if n is not None:
            if self.center and self.pad_mode == "reflect" and n <= self.n_fft // 2:
                raise ValueError(f"reflect padding needs more than n_fft // 2 = {self.n_fft // 2} samples, got {n}")
            self.output_frames(n)  # raises when too short without centring
        super().build(input_shape)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)  # [B, N]
        if self.center:
            half = self.n_fft // 2
            x = tf.pad(x, [[0, 0], [half, half]], mode=self.pad_mode.upper())  # [B, N + n_fft]

        # Frame only the non-zero part of each (zero-padded, centred) window: frame t covers
        # samples [t * hop + offset, t * hop + offset + win) of the padded signal.
        length = x.shape[1]
        if length is not None:
            n_frames = 1 + (length - self.n_fft) // self.hop_length
        else:
            n_frames = 1 + (tf.shape(x)[1] - self.n_fft) // self.hop_length
        start = self._win_offset
        stop = start + (n_frames - 1) * self.hop_length + self._win
        x = x[:, start:stop]  # [B, (T - 1) * hop + win]
        frames = tf.signal.frame(x, self._win, self.hop_length, pad_end=False)  # [B, T, win]
        frames = frames * tf.constant(self._window_np)  # [B, T, win]
        if self._win < self.n_fft:
            # Zero-pad at the end: a circular shift of librosa's centred frame, same magnitudes.
            frames = tf.pad(frames, [[0, 0], [0, 0], [0, self.n_fft - self._win]])  # [B, T, n_fft]
        spec = tf.signal.rfft(frames, fft_length=[self.n_fft])  # [B, T, F] complex64
        re = tf.math.real(spec)
        im = tf.math.imag(spec)
        power = re * re + im * im  # [B, T, F] |X|^2
        if self.power == 1.0:
            power = tf.sqrt(power)
        elif self.power != 2.0:
            power = tf.pow(power, self.power / 2.0)

        n_bins = self.n_fft // 2 + 1
        dynamic = tf.shape(power)
        batch = power.shape[0] if power.shape[0] is not None else dynamic[0]
        time = power.shape[1] if power.shape[1] is not None else dynamic[1]
        flat = tf.reshape(power, [-1, n_bins])  # [B * T, F]
        mel = self._mel_matmul(flat)  # [B * T, n_mels]
        mel = tf.reshape(mel, [batch, time, self.n_mels, 1])  # [B, T, n_mels, 1]

        if self.log == "natural":
            out = tf.math.log(mel + self.log_offset)
        elif self.log == "db":
            out = (10.0 / math.log(10.0)) * tf.math.log(tf.maximum(mel, self.log_offset))
            if self.top_db is not None:
                peak = tf.reduce_max(out, axis=[1, 2, 3], keepdims=True)  # [B, 1, 1, 1]
                out = tf.maximum(out, peak - self.top_db)
        else:
            out = mel
        return out  # [B, T, n_mels, 1]

    def _mel_matmul(self, power):
        """``power @ mel`` for ``power`` ``[rows, F]``, float32-accurate even under TensorFloat-32.

        On Ampere and newer GPUs TensorFlow runs float32 matmuls in TF32 by default, which keeps
        10 mantissa bits of each operand (relative error up to 2**-11): that alone moves log-mel
        values by up to ~8e-4 (simulated on white noise). When TF32 is enabled and a GPU is
        visible, both operands are split Veltkamp-style into a TF32-exact high part and a
        remainder and three products are summed (hi*hi + hi*lo + lo*hi), which restores float32
        accuracy for three small matmuls. On CPU, and in TFLite, a single matmul is used.
        """
        use_split = self.split_matmul
        if use_split is None:
            use_split = bool(
                tf.config.experimental.tensor_float_32_execution_enabled() and tf.config.list_logical_devices("GPU")
            )
        if not use_split:
            return tf.matmul(power, tf.constant(self._mel_np))  # [rows, n_mels]
        mel_hi, mel_lo = split_tf32(self._mel_np)  # NumPy, [F, n_mels] each
        power_hi, power_lo = split_tf32(power)  # [rows, F] each
        mel_hi = tf.constant(mel_hi)
        small = tf.matmul(power_hi, tf.constant(mel_lo)) + tf.matmul(power_lo, mel_hi)
        return tf.matmul(power_hi, mel_hi) + small  # [rows, n_mels]

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        n = input_shape[1]
        frames = None if n is None else self.output_frames(int(n))
        return tf.TensorShape([input_shape[0], frames, self.n_mels, 1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sample_rate": self.sample_rate,
                "n_fft": self.n_fft,
                "win_length": self.win_length,
                "hop_length": self.hop_length,
                "n_mels": self.n_mels,
                "fmin": self.fmin,
                "fmax": self.fmax,
                "window": self.window,
                "center": self.center,
                "pad_mode": self.pad_mode,
                "power": self.power,
                "mel_scale": self.mel_scale,
                "mel_norm": self.mel_norm,
                "log": self.log,
                "log_offset": self.log_offset,
                "top_db": self.top_db,
            }
        )
        return config
