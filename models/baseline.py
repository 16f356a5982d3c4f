"""The DCASE2022 Task 1 baseline network in tf_keras.

Reference: I. Martin Morato, T. Heittola, DCASE2022 Task 1 baseline system,
https://github.com/marmoi/dcase2022_task1_baseline (README "System description" and
"Network summary"): 40 log-mel bands from 40 ms Hamming windows with 50 % hop (51 frames
per 1-s clip at 44.1 kHz), three 7x7 convolutions, two max-pools, a 100-unit dense layer.
The published figures, which the tests check: 46,246 Keras parameters, 46,512 bytes as an
int8 TFLite model, 29.23 M MACs.

The project stores spectrograms time first (``[frames, mels, 1]``), so the published
shapes (mels x frames) are transposed here: the second max-pool is (10, 4) instead of the
published (4, 10), and both give 2 x 32 = 64 features before the dense layer.
"""

from __future__ import annotations

import logging

import tf_keras

from pipeline.core.checks import check_int

logger = logging.getLogger(__name__)

#: Front end of the baseline: 40 ms Hamming window, 20 ms hop, 40 mel bands.
BASELINE_WIN_SECONDS = 0.04
BASELINE_HOP_SECONDS = 0.02
BASELINE_N_MELS = 40
BASELINE_N_FFT = 2048


def build_baseline_classifier(
    n_frames: int = 51,
    n_mels: int = 40,
    n_classes: int = 10,
    name: str = "baseline",
) -> tf_keras.Model:
    """Builds the baseline classifier from log-mel features to logits.

    Args:
      n_frames: number of time frames of the input (51 for 1 s at a 20 ms hop).
      n_mels: number of mel bands of the input (40 in the baseline).
      n_classes: number of output classes.
      name: name of the returned model.

    Input shape: ``[B, n_frames, n_mels, 1]`` log-mel energies (time first).
    Output shape: ``[B, n_classes]`` logits (no softmax).

    Returns:
      A functional ``tf_keras.Model`` with 46,246 parameters at the default sizes and
      stable layer names ``conv1, bn1, relu1, conv2, bn2, relu2, pool1, dropout1, conv3,
      bn3, relu3, pool2, dropout2, flatten, dense1, dropout3, logits``.

    Raises:
      ValueError: if a size is not a positive integer or the input is too small for
        the two max-pools ((5, 5) then (10, 4)).
    """
    check_int("n_frames", n_frames, 1)
    check_int("n_mels", n_mels, 1)
    check_int("n_classes", n_classes, 1)
    if n_frames < 50 or n_mels < 20:
        raise ValueError(
            f"the baseline needs at least 50 frames and 20 mel bands for its max-pools "
            f"(5, 5) and (10, 4), got n_frames={n_frames}, n_mels={n_mels}"
        )

    layers = tf_keras.layers
    inputs = tf_keras.Input(shape=(n_frames, n_mels, 1), name="log_mel")  # [B, T, F, 1]
    x = layers.Conv2D(16, 7, padding="same", name="conv1")(inputs)  # [B, T, F, 16]
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.Activation("relu", name="relu1")(x)
    x = layers.Conv2D(16, 7, padding="same", name="conv2")(x)  # [B, T, F, 16]
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.Activation("relu", name="relu2")(x)
    x = layers.MaxPooling2D(pool_size=(5, 5), name="pool1")(x)  # [B, T/5, F/5, 16]
    x = layers.Dropout(0.3, name="dropout1")(x)
    x = layers.Conv2D(32, 7, padding="same", name="conv3")(x)  # [B, T/5, F/5, 32]
    x = layers.BatchNormalization(name="bn3")(x)
    x = layers.Activation("relu", name="relu3")(x)
    x = layers.MaxPooling2D(pool_size=(10, 4), name="pool2")(x)  # [B, T/50, F/20, 32]
    x = layers.Dropout(0.3, name="dropout2")(x)
    x = layers.Flatten(name="flatten")(x)  # [B, 64] at 51 x 40
    x = layers.Dense(100, activation="relu", name="dense1")(x)  # [B, 100]
    x = layers.Dropout(0.3, name="dropout3")(x)
    outputs = layers.Dense(n_classes, name="logits")(x)  # [B, n_classes]
    return tf_keras.Model(inputs, outputs, name=name)


def build_baseline(
    n_classes: int = 10,
    sample_rate: int = 44100,
    clip_samples: int = 44100,
) -> tf_keras.Model:
    """Builds the full baseline: waveform -> log-mel (40 bands) -> classifier -> logits.

    The front end is ``models.frontend.LogMel`` with the baseline's analysis: 40 ms
    Hamming window (1764 samples at 44.1 kHz) in a 2048-point FFT, 20 ms hop (882
    samples), 40 mel bands, centred frames: 51 frames per 1-s clip.

    Args:
      n_classes: number of output classes.
      sample_rate: sampling rate of the waveform in Hz.
      clip_samples: length of the input waveform in samples (one second by default).

    Input shape: ``[B, clip_samples]`` float waveform.
    Output shape: ``[B, n_classes]`` logits.

    Returns:
      A functional model named ``"baseline"`` whose layer ``"classifier"`` is the nested
      classifier of :func:`build_baseline_classifier` (``model.get_layer("classifier")``),
      the part that is counted and quantized.
    """
    check_int("n_classes", n_classes, 1)
    check_int("sample_rate", sample_rate, 1)
    check_int("clip_samples", clip_samples, 1)
    # Imported here so that this module imports without the front end.
    from models.frontend import LogMel

    win_length = int(round(BASELINE_WIN_SECONDS * sample_rate))
    hop_length = int(round(BASELINE_HOP_SECONDS * sample_rate))
    n_fft = max(BASELINE_N_FFT, win_length)
    frontend = LogMel(
        sample_rate=sample_rate,
        n_fft=n_fft,
        win_length=win_length,
        hop_length=hop_length,
        n_mels=BASELINE_N_MELS,
        window="hamming",
        name="log_mel",
    )
    waveform = tf_keras.Input(shape=(clip_samples,), name="waveform")  # [B, S]
    features = frontend(waveform)  # [B, T, 40, 1]
    n_frames = int(features.shape[1])
    logger.debug("baseline front end: %d frames x %d mels", n_frames, BASELINE_N_MELS)
    classifier = build_baseline_classifier(
        n_frames=n_frames, n_mels=BASELINE_N_MELS, n_classes=n_classes, name="classifier"
    )
    logits = classifier(features)  # [B, n_classes]
    return tf_keras.Model(waveform, logits, name="baseline")
