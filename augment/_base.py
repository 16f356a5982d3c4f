"""Shared machinery of the augmentation layers: when to augment, and where randomness comes from.

Activity. An augmentation layer transforms its input when, in order of precedence:

1. ``call(..., augment=True)`` is passed (``augment=False`` switches it off, even in training);
2. the layer was built with ``always_on=True`` (the test-time-augmentation view of a model,
   see :func:`augment.tta.make_tta_model`: a functional model cannot pass extra call arguments
   to its inner layers, so the flag lives in the layer's config instead);
3. ``training`` is true (``model.fit``). ``training=None`` or ``False`` means identity.

Randomness. Each layer owns a ``tf.random.Generator`` seeded with its ``seed`` (through
``tf_keras``'s ``BaseRandomLayer`` with ``rng_type="stateful"``, the mechanism Keras' own
random layers use). Every augmenting call takes one fresh ``[2]`` seed from it
(``make_seeds()``: the generator's Philox counter is the per-call counter) and draws everything
of that call with stateless ops (``tf.random.stateless_uniform`` ...) from that seed, so:

* two fresh instances with the same seed produce the same sequence of augmentations;
* successive calls (training steps) produce different augmentations, also inside a
  ``tf.function`` (the generator's state is a ``tf.Variable`` updated by the graph);
* the generator state is not a layer weight: it is not counted by ``count_params``, not in
  ``get_weights``/checkpoints or the ``.keras`` file (a loaded model starts its sequence from
  the seed again, like a fresh one), but it is visible to SavedModel tracing.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from pipeline.core.checks import check_bool, check_int


class RandomAugmentation(tf_keras.__internal__.layers.BaseRandomLayer):
    """Base class: activity switch (training / ``augment`` / ``always_on``) and seeded draws.

    Subclasses implement ``_augment(inputs)`` and call ``self._next_seed()`` once per call to get
    the ``[2]`` int64 seed of that call. See the module docstring for the semantics.

    Args:
      seed: non-negative integer seed of the layer's random stream.
      always_on: augment on every call, whatever ``training`` is (unless ``augment=False``).
      **kwargs: base Layer arguments (name, dtype, ...).
    """

    def __init__(self, seed: int = 0, always_on: bool = False, **kwargs):
        seed = check_int("seed", seed, minimum=0)
        super().__init__(seed=seed, rng_type="stateful", **kwargs)
        self.seed = seed
        self.always_on = check_bool("always_on", always_on)
        self.supports_masking = True

    def _next_seed(self) -> tf.Tensor:
        """A fresh ``[2]`` int64 seed for the stateless ops of one call (advances the stream)."""
        return self._random_generator.make_seed_for_stateless_op()

    def _augment(self, inputs):
        raise NotImplementedError

    def call(self, inputs, training=None, augment=None):
        if augment is None:
            augment = True if self.always_on else training
        if augment is None:
            return tf.identity(inputs)
        if tf.is_tensor(augment):
            return tf.cond(
                tf.cast(augment, tf.bool),
                lambda: self._augment(inputs),
                lambda: tf.identity(inputs),
            )
        return self._augment(inputs) if bool(augment) else tf.identity(inputs)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"seed": self.seed, "always_on": self.always_on})
        return config
