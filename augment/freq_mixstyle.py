"""Freq-MixStyle: mix the per-frequency-bin statistics of each clip with another clip's.

Reference: Schmid, Masoudian, Koutini, Widmer, "Knowledge Distillation from Transformers for
Low-Complexity Acoustic Scene Classification", DCASE 2022 Workshop (the CP-JKU DCASE2022 Task 1
submission), after MixStyle (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021) and
the frequency-wise normalisation of Kim et al. (Interspeech 2022). MixStyle mixes the
per-*channel* statistics of CNN feature maps; Freq-MixStyle computes them per *frequency bin*
of the input spectrogram (over time and channels), where a recording device's frequency
response shows up as a per-bin offset and scale of the log-mel.

Per call (one training batch), with probability ``p``::

    mu_b,f    = mean over (t, c) of x[b, t, f, c]                        [B, 1, F, 1]
    sigma_b,f = sqrt(var over (t, c) of x[b, t, f, c] + eps)            [B, 1, F, 1]
    lambda_b ~ Beta(alpha, alpha), j(b) a random partner of b
    mu_mix    = lambda_b mu_b + (1 - lambda_b) mu_j(b)
    sigma_mix = lambda_b sigma_b + (1 - lambda_b) sigma_j(b)
    out       = (x - mu_b) / sigma_b * sigma_mix + mu_mix

so each bin of the output has mean ``mu_mix`` and standard deviation ``sigma_mix`` (up to the
``eps`` regulariser). As in the reference code the statistics are constants for the gradient
(``stop_gradient``) and the variance is the unbiased one (divisor ``T * C - 1``). Randomness and
the training / ``augment`` / ``always_on`` switch are described in :mod:`augment._base`.
"""

from __future__ import annotations

import logging

import tensorflow as tf
import tf_keras

from augment._base import RandomAugmentation
from augment.specaugment import random_partners
from pipeline.core.checks import check_real

logger = logging.getLogger(__name__)


def per_bin_statistics(x, eps: float):
    """Mean and regularised standard deviation of each sample's frequency bins over time and channels.

    Args:
      x: ``[B, T, F, C]`` float tensor.
      eps: added to the variance before the square root.

    Returns:
      ``(mu, sigma)``, each ``[B, 1, F, 1]``: ``mu`` the mean over axes 1 and 3, ``sigma`` the
      square root of the unbiased variance (divisor ``T * C - 1``, at least 1) plus ``eps``.
    """
    mu = tf.reduce_mean(x, axis=[1, 3], keepdims=True)  # [B, 1, F, 1]
    shape = tf.shape(x)
    count = tf.cast(shape[1] * shape[3], x.dtype)  # T * C
    squares = tf.reduce_sum(tf.square(x - mu), axis=[1, 3], keepdims=True)  # [B, 1, F, 1]
    var = squares / tf.maximum(count - 1.0, 1.0)  # [B, 1, F, 1], unbiased
    return mu, tf.sqrt(var + eps)  # [B, 1, F, 1] each


def freq_mixstyle(x, partner, lam, eps: float = 1e-6):
    """Freq-MixStyle of ``x`` for given partners and mixing weights (no randomness).

    Args:
      x: ``[B, T, F, C]`` float tensor (log-mel, time, frequency, channels).
      partner: int ``[B]``, the sample whose statistics are mixed into sample ``b``.
      lam: float ``[B]``, the weight of the sample's own statistics (``1 - lam`` for the partner's).
      eps: variance regulariser of :func:`per_bin_statistics`.

    Returns:
      ``[B, T, F, C]``: ``(x - mu) / sigma * sigma_mix + mu_mix`` with
      ``mu_mix = lam mu + (1 - lam) mu[partner]`` and likewise for ``sigma``.
    """
    x = tf.convert_to_tensor(x)
    mu, sigma = per_bin_statistics(x, eps)  # [B, 1, F, 1] each
    mu, sigma = tf.stop_gradient(mu), tf.stop_gradient(sigma)
    lam = tf.reshape(tf.cast(lam, x.dtype), [-1, 1, 1, 1])  # [B, 1, 1, 1]
    mu_mix = lam * mu + (1.0 - lam) * tf.gather(mu, partner)  # [B, 1, F, 1]
    sigma_mix = lam * sigma + (1.0 - lam) * tf.gather(sigma, partner)  # [B, 1, F, 1]
    return (x - mu) / sigma * sigma_mix + mu_mix  # [B, T, F, C]


def stateless_beta(seed, shape, alpha: float) -> tf.Tensor:
    """``Beta(alpha, alpha)`` draws of ``shape`` from a ``[2]`` seed, as ``G1 / (G1 + G2)``.

    ``G1, G2 ~ Gamma(alpha)`` are independent stateless draws. When both underflow to 0 (possible
    only for very small ``alpha``) the draw is 0 or 1 with equal probability, the limit of the
    distribution's two ends.
    """
    first, second, coin = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    g1 = tf.random.stateless_gamma(shape, seed=first, alpha=alpha)
    g2 = tf.random.stateless_gamma(shape, seed=second, alpha=alpha)
    total = g1 + g2
    fallback = tf.cast(tf.random.stateless_uniform(shape, seed=coin) < 0.5, tf.float32)
    return tf.where(total > 0.0, g1 / tf.where(total > 0.0, total, 1.0), fallback)


@tf_keras.saving.register_keras_serializable(package="asc")
class FreqMixStyle(RandomAugmentation):
    """Freq-MixStyle on ``[B, T, F, C]`` log-mel maps: per-bin statistics mixed between clips.

    With probability ``p`` per call (per training batch, as in the reference code), every
    sample of the batch is normalised per frequency bin by its own mean and standard deviation
    over time and channels and re-scaled with a convex mix of its own statistics and those of a
    partner sample (:func:`freq_mixstyle`), the mixing weight ``lambda ~ Beta(alpha, alpha)``
    drawn per sample. Otherwise the batch passes unchanged.

    The partner of each sample comes from a uniformly random cyclic permutation of the batch
    (:func:`augment.specaugment.random_partners`), so it is always *another* sample when the
    batch holds two or more; the reference code's ``torch.randperm`` may pair a sample with
    itself (probability 1/B), which leaves it unchanged. With a batch of one sample the layer
    only re-normalises it (``eps`` aside, the identity).

    The layer is the identity unless ``training=True``, ``call(..., augment=True)`` or
    ``always_on=True`` (see :mod:`augment._base`); it has no weights.

    Reference: Schmid et al., DCASE 2022 Workshop (CP-JKU, first in DCASE2022 Task 1); used with
    DIR augmentation by Morocutti et al., "Device-Robust Acoustic Scene Classification via
    Impulse Response Augmentation", EUSIPCO 2023. Defaults ``p = 0.6``, ``alpha = 0.3`` are those
    of CP-JKU's DCASE2022 submission 2 ("mixstyleR8"); their DCASE2023 and DIR code use
    ``p = 0.8``, ``alpha = 0.4``. ``eps = 1e-6`` as in the reference code.

    Args:
      p: probability that a call mixes (in [0, 1]; 0 disables the layer).
      alpha: parameter of the symmetric Beta distribution of the mixing weights (> 0; small
        values put the weights near 0 or 1).
      eps: variance regulariser (> 0).
      seed: non-negative integer seed of the layer's random stream.
      always_on: augment on every call, whatever ``training`` is.
      **kwargs: base Layer arguments (name, dtype, ...).

    Input shape:
      ``[B, T, F, C]`` (time, frequency, channels); B, T, F may be unknown.

    Output shape:
      Same as the input.
    """

    def __init__(
        self, p: float = 0.6, alpha: float = 0.3, eps: float = 1e-6, seed: int = 0, always_on: bool = False, **kwargs
    ):
        super().__init__(seed=seed, always_on=always_on, **kwargs)
        self.p = check_real("p", p, minimum=0.0)
        if self.p > 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.alpha = check_real("alpha", alpha, minimum=0.0, exclusive=True)
        self.eps = check_real("eps", eps, minimum=0.0, exclusive=True)
        self.input_spec = tf_keras.layers.InputSpec(ndim=4)

    @classmethod
    def from_params(cls, params, *, seed: int, **kwargs) -> FreqMixStyle:
        """The layer configured by a ``FreqMixStyleParams`` (``params.augment.freq_mixstyle``).

        ``params.enabled`` is the caller's business (whether to put the layer in the model).
        """
        return cls(p=params.p, alpha=params.alpha, eps=params.eps, seed=seed, **kwargs)

    def _augment(self, inputs):
        x = inputs  # [B, T, F, C]
        gate_seed, partner_seed, lam_seed = tf.unstack(tf.random.experimental.stateless_split(self._next_seed(), num=3))
        batch = tf.shape(x)[0]
        apply = tf.random.stateless_uniform([], seed=gate_seed) < self.p  # scalar bool
        partner = random_partners(partner_seed, batch)  # [B]
        lam = stateless_beta(lam_seed, tf.reshape(batch, [1]), self.alpha)  # [B]
        return tf.cond(
            apply,
            lambda: freq_mixstyle(x, partner, lam, self.eps),  # [B, T, F, C]
            lambda: tf.identity(x),
        )

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p, "alpha": self.alpha, "eps": self.eps})
        return config
