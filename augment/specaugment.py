"""SpecAugment++: time and frequency stripes masked in the input and in hidden feature maps.

Reference: Wang, Zou, Wang, "SpecAugment++: A Hidden Space Data Augmentation Method for Acoustic
Scene Classification", Interspeech 2021 (arXiv 2103.16858), as used in section 3.1 of the
DCASE2022 Task 1 report (Xin et al.). Unlike SpecAugment (Park et al. 2019) it is applied to the
input spectrogram and to intermediate feature maps, and besides zero masking it can fill the
stripes with another sample of the same mini-batch (mixture masking or cutting).

Everything is vectorised over the batch and over the masks: a stripe is a comparison of a
``tf.range`` against per-sample starts and widths, the mask is their union, and a single
``tf.where`` applies it. Randomness and the training / ``augment`` / ``always_on`` switch are
described in :mod:`augment._base`.
"""

from __future__ import annotations

import logging

import tensorflow as tf
import tf_keras

from augment._base import RandomAugmentation
from pipeline.core.checks import check_choice, check_int

logger = logging.getLogger(__name__)

MODES = ("zm", "mm", "cm")


def random_stripes(seed, batch, length, max_width: int, n_stripes: int) -> tf.Tensor:
    """Union of ``n_stripes`` random stripes per sample along an axis of ``length`` positions.

    Each stripe has width ``w ~ U{0, ..., max_width}`` (integers, both ends included), clipped to
    ``length``, and start ``s ~ U{0, ..., length - w}``; it covers positions ``s, ..., s + w - 1``.

    Args:
      seed: ``[2]`` integer seed of the stateless draws.
      batch: number of samples (scalar tensor or int).
      length: number of positions along the axis (scalar tensor or int).
      max_width: largest stripe width (a Python int).
      n_stripes: stripes per sample (a Python int).

    Returns:
      Boolean ``[batch, length]``, True where a position is inside a stripe.
    """
    if n_stripes == 0 or max_width == 0:
        return tf.zeros(tf.stack([batch, length]), dtype=tf.bool)
    width_seed, start_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    draw_shape = tf.stack([n_stripes, batch])
    # width ~ U{0..max_width}: floor(u * (max_width + 1)), u ~ U[0, 1).
    u_width = tf.random.stateless_uniform(draw_shape, seed=width_seed)  # [S, B]
    width = tf.cast(tf.floor(u_width * float(max_width + 1)), tf.int32)
    width = tf.minimum(width, max_width)  # guards float rounding of u close to 1
    width = tf.minimum(width, length)  # [S, B], clipped to the axis
    # start ~ U{0..length - width}.
    u_start = tf.random.stateless_uniform(draw_shape, seed=start_seed)  # [S, B]
    room = tf.cast(length - width + 1, tf.float32)  # [S, B], >= 1
    start = tf.minimum(tf.cast(tf.floor(u_start * room), tf.int32), length - width)  # [S, B]
    positions = tf.range(length)[tf.newaxis, tf.newaxis, :]  # [1, 1, L]
    inside = (positions >= start[..., tf.newaxis]) & (positions < (start + width)[..., tf.newaxis])  # [S, B, L]
    return tf.reduce_any(inside, axis=0)  # [B, L]


def random_partners(seed, batch) -> tf.Tensor:
    """Partner index of each sample: a uniformly random cyclic permutation of the batch.

    A random order ``p`` of the batch is drawn and sample ``p[k]`` is paired with ``p[k + 1]``
    (cyclically). This is a derangement for ``batch >= 2`` (no sample is its own partner) and each
    sample's partner is uniform over the other samples; with ``batch == 1`` the only sample is its
    own partner.

    Args:
      seed: ``[2]`` integer seed.
      batch: number of samples (scalar tensor or int).

    Returns:
      int32 ``[batch]``: ``partner[i]`` is the sample whose values fill sample ``i``'s stripes.
    """
    order = tf.argsort(tf.random.stateless_uniform(tf.reshape(batch, [1]), seed=seed))  # [B]
    following = tf.roll(order, shift=-1, axis=0)  # [B], following[k] = order[k + 1]
    return tf.gather(following, tf.argsort(order))  # [B], partner[order[k]] = order[k + 1]


def max_width(fraction: float, size: int, n_masks: int = 1) -> int:
    """Largest stripe width for masks of ``fraction`` of an axis of ``size`` positions.

    ``round(fraction * size)`` (Python's rounding, half to even), raised to 1 when it rounds to 0
    while masks are requested (``n_masks > 0`` and ``fraction > 0``).

    Why raised rather than rejected: the report's recipe (fraction 0.1 after each of four 2x2
    poolings, 44 frames at the input) leaves 5 and 2 frames after blocks 3 and 4, where
    ``round(0.1 * 5) = round(0.1 * 2) = 0``: such a mask would silently do nothing. Rejecting
    it would make the report's own configuration invalid; 1 is the smallest width that acts
    (widths are drawn from ``U{0..max}``, so half of such masks cover one position). An explicit
    fraction of 0 is not raised: the config check refuses it while masks are requested
    (``n_*_masks: 0`` is how an axis is switched off), and here it gives 0.

    Args:
      fraction: largest width as a fraction of the axis, in [0, 1].
      size: positions along the axis (>= 1).
      n_masks: stripes per sample along the axis (with 0 there is nothing to raise).
    """
    width = round(fraction * size)
    return 1 if width == 0 and n_masks > 0 and fraction > 0 and size > 0 else width


def max_widths(params, frames: int, bins: int) -> tuple[int, int]:
    """``(max_time_width, max_freq_width)`` of the SpecAugment++ configured by ``params`` on
    ``[B, frames, bins, C]`` maps (see :func:`max_width`; ``params`` is a ``SpecAugmentParams``)."""
    return (
        max_width(params.time_width_fraction, frames, params.n_time_masks),
        max_width(params.freq_width_fraction, bins, params.n_freq_masks),
    )


@tf_keras.saving.register_keras_serializable(package="asc")
class SpecAugmentPP(RandomAugmentation):
    """SpecAugment++ time and frequency masking of ``[B, T, F, C]`` feature maps.

    Per sample, ``n_time_masks`` stripes of ``t ~ U{0..max_time_width}`` consecutive frames
    starting at ``t0 ~ U{0..T - t}`` and ``n_freq_masks`` stripes of ``f ~ U{0..max_freq_width}``
    consecutive bins starting at ``f0 ~ U{0..F - f}`` are drawn (widths are integers, both ends
    included, clipped to the axis size; stripes may overlap). The union of the stripes, over all
    channels, is filled according to ``mode``:

    * ``"zm"`` zero masking: 0;
    * ``"mm"`` mini-batch mixture masking (the report's choice): ``0.5 * (x_i + x_j)``, the mean of
      this sample and its partner ``j`` at the same layer and positions;
    * ``"cm"`` cutting: ``x_j``, the partner's values.

    The partner ``j`` of sample ``i`` comes from a uniformly random cyclic permutation of the batch,
    so ``j != i`` whenever the batch holds two samples or more; with a batch of one sample the
    partner is the sample itself and "mm"/"cm" leave it unchanged.

    The report's text draws ``f0`` from ``[0, f']`` (``f'`` the maximum width), which would only
    ever mask the lowest ``2 f'`` bins; like the original SpecAugment (Park et al. 2019) and the
    time axis, ``f0`` is drawn from ``[0, F - f]`` here.

    The layer is the identity unless ``training=True``, ``call(..., augment=True)`` or
    ``always_on=True`` (see :mod:`augment._base`); it has no weights.

    Reference: Wang, Zou, Wang, "SpecAugment++" (Interspeech 2021, arXiv 2103.16858); section 3.1
    of the DCASE2022 Task 1 report (Xin et al.).

    Args:
      max_time_width: largest time-stripe width ``t'`` in frames (integer >= 0).
      max_freq_width: largest frequency-stripe width ``f'`` in bins (integer >= 0).
      n_time_masks: time stripes per sample (integer >= 0).
      n_freq_masks: frequency stripes per sample (integer >= 0).
      mode: "zm", "mm" or "cm" (see above).
      seed: non-negative integer seed of the layer's random stream.
      always_on: augment on every call, also at inference (used by test-time augmentation).
      **kwargs: base Layer arguments (name, dtype, ...).

    Input shape:
      ``[B, T, F, C]`` (time, frequency, channels); B, T, F may be unknown.

    Output shape:
      Same as the input.
    """

    def __init__(
        self,
        max_time_width: int,
        max_freq_width: int,
        n_time_masks: int = 1,
        n_freq_masks: int = 1,
        mode: str = "mm",
        seed: int = 0,
        always_on: bool = False,
        **kwargs,
    ):
        super().__init__(seed=seed, always_on=always_on, **kwargs)
        self.max_time_width = check_int("max_time_width", max_time_width)
        self.max_freq_width = check_int("max_freq_width", max_freq_width)
        self.n_time_masks = check_int("n_time_masks", n_time_masks)
        self.n_freq_masks = check_int("n_freq_masks", n_freq_masks)
        self.mode = check_choice("mode", mode, MODES)
        self.input_spec = tf_keras.layers.InputSpec(ndim=4)

    @classmethod
    def from_params(cls, params, frames: int, bins: int, *, seed: int, **kwargs) -> SpecAugmentPP:
        """The layer configured by a ``SpecAugmentParams`` for ``[B, frames, bins, C]`` feature maps.

        The largest stripe widths are the configured fractions of the axis sizes, rounded
        (``round(time_width_fraction * frames)``, ``round(freq_width_fraction * bins)``), and
        raised to 1 where they round to 0 while masks are requested (:func:`max_widths`: no
        configured mask is silently zero-width); the counts and the mode are the configured ones.
        ``params.enabled`` and ``params.positions`` are the caller's business (whether and where
        to put the layer).

        Args:
          params: ``pipeline.core.config.SpecAugmentParams`` (``params.augment.specaugment``).
          frames: time frames of the feature maps the layer will see.
          bins: frequency bins of those feature maps.
          seed: non-negative integer seed of the layer's random stream.
          **kwargs: other constructor arguments (name, always_on, ...).
        """
        time_width, freq_width = max_widths(params, frames, bins)
        return cls(
            max_time_width=time_width,
            max_freq_width=freq_width,
            n_time_masks=params.n_time_masks,
            n_freq_masks=params.n_freq_masks,
            mode=params.mode,
            seed=seed,
            **kwargs,
        )

    def _augment(self, inputs):
        x = inputs  # [B, T, F, C]
        shape = tf.shape(x)
        batch, frames, bins = shape[0], shape[1], shape[2]
        time_seed, freq_seed, partner_seed = tf.unstack(
            tf.random.experimental.stateless_split(self._next_seed(), num=3)
        )
        time_mask = random_stripes(time_seed, batch, frames, self.max_time_width, self.n_time_masks)  # [B, T]
        freq_mask = random_stripes(freq_seed, batch, bins, self.max_freq_width, self.n_freq_masks)  # [B, F]
        mask = time_mask[:, :, tf.newaxis, tf.newaxis] | freq_mask[:, tf.newaxis, :, tf.newaxis]  # [B, T, F, 1]
        if self.mode == "zm":
            fill = tf.zeros_like(x)  # [B, T, F, C]
        else:
            partner = tf.gather(x, random_partners(partner_seed, batch))  # [B, T, F, C]
            fill = partner if self.mode == "cm" else 0.5 * (x + partner)  # [B, T, F, C]
        return tf.where(mask, fill, x)  # [B, T, F, C]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_time_width": self.max_time_width,
                "max_freq_width": self.max_freq_width,
                "n_time_masks": self.n_time_masks,
                "n_freq_masks": self.n_freq_masks,
                "mode": self.mode,
            }
        )
        return config
