"""Time shifting: roll each clip's time axis by a random number of frames, wrapping around.

Reference: section 3.2 of the DCASE2022 Task 1 report (Xin et al.), after Dinkel, Wu, Yu
("Towards duration robust weakly supervised sound event detection", IEEE/ACM TASLP 2021):
for each clip, ``eta ~ N(0, 10)`` frames (10 is the standard deviation) and the whole sequence is
shifted by ``eta`` frames with wrap-around.

The roll is one batched ``tf.gather`` with per-sample indices ``(t - eta) mod T``. Randomness and
the training / ``augment`` / ``always_on`` switch are described in :mod:`augment._base`.
"""

from __future__ import annotations

import logging

import tensorflow as tf
import tf_keras

from augment._base import RandomAugmentation
from pipeline.core.checks import check_real

logger = logging.getLogger(__name__)


def random_shifts(seed, batch, std_frames: float) -> tf.Tensor:
    """Per-sample shifts ``eta = round(N(0, std_frames))`` (half to even), int32 ``[batch]``."""
    noise = tf.random.stateless_normal(tf.reshape(batch, [1]), seed=seed, stddev=std_frames)
    return tf.cast(tf.round(noise), tf.int32)  # [B]


def roll_time(x, shifts) -> tf.Tensor:
    """Roll axis 1 of ``x`` by ``shifts[b]`` for each sample: ``out[b, t] = x[b, (t - s_b) mod T]``.

    Matches ``np.roll(x[b], s_b, axis=0)`` per sample (positive shifts move content later).
    """
    frames = tf.shape(x)[1]
    index = tf.math.floormod(tf.range(frames)[tf.newaxis, :] - shifts[:, tf.newaxis], frames)  # [B, T]
    return tf.gather(x, index, axis=1, batch_dims=1)  # [B, T, ...]


@tf_keras.saving.register_keras_serializable(package="asc")
class TimeShift(RandomAugmentation):
    """Random circular shift of the time axis (axis 1), one shift per sample.

    Each sample is rolled by ``eta = round(N(0, std_frames))`` frames with wrap-around:
    ``out[:, t] = x[:, (t - eta) mod T]``, so a positive ``eta`` moves the content later in time
    (``np.roll`` / ``tf.roll`` convention). The report writes the shifted clip as
    ``[x_eta, ..., x_T, x_1, ..., x_(eta-1)]``, the opposite direction; as ``eta`` is symmetric
    around 0 the two conventions give the same distribution of augmentations.

    The layer is the identity unless ``training=True``, ``call(..., augment=True)`` or
    ``always_on=True`` (see :mod:`augment._base`); it has no weights. It accepts any input of rank
    >= 2 with time on axis 1 (log-mel ``[B, T, F, C]`` or waveforms ``[B, samples]``).

    Reference: section 3.2 of the DCASE2022 Task 1 report (Xin et al.); Dinkel, Wu, Yu 2021.

    Args:
      std_frames: standard deviation of the shift in frames (the report's 10), >= 0; 0 disables
        the shift.
      seed: non-negative integer seed of the layer's random stream.
      always_on: augment on every call, also at inference (used by test-time augmentation).
      **kwargs: base Layer arguments (name, dtype, ...).

    Input shape:
      ``[B, T, ...]`` with rank >= 2; B and T may be unknown.

    Output shape:
      Same as the input.
    """

    def __init__(self, std_frames: float = 10.0, seed: int = 0, always_on: bool = False, **kwargs):
        super().__init__(seed=seed, always_on=always_on, **kwargs)
        self.std_frames = check_real("std_frames", std_frames, minimum=0.0)
        self.input_spec = tf_keras.layers.InputSpec(min_ndim=2)

    def _augment(self, inputs):
        x = inputs  # [B, T, F, C]
        shifts = random_shifts(self._next_seed(), tf.shape(x)[0], self.std_frames)  # [B]
        return roll_time(x, shifts)  # [B, T, F, C]

    def get_config(self):
        config = super().get_config()
        config.update({"std_frames": self.std_frames})
        return config
