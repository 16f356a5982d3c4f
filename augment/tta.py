"""Test-time augmentation (TTA): average the softmax over randomly augmented copies of each clip.

Reference: section 3.3 of the DCASE2022 Task 1 report (Xin et al.), which averages the softmax
predictions of 30 augmented copies; after Kandel & Castelli (2021) and the report's reference
[7] (Bursuc, Puy, Jain, "Separable convolutions and test-time augmentations for low-complexity
and calibrated acoustic scene classification", 2021).

Design. The augmentation layers of a model (:class:`augment.TimeShift`,
:class:`augment.SpecAugmentPP`) are identities at inference, and a functional model cannot pass an
extra call argument (``augment=True``) down to its inner layers. So TTA works on an *augmenting
view* of the model, built by :func:`make_tta_model`: ``tf_keras.models.clone_model`` with a
``clone_function`` that

* replaces each augmentation layer that TTA should apply by a fresh copy of it with
  ``always_on=True`` (the constructor flag equivalent to calling it with ``augment=True``) and a
  seed derived from the TTA seed, and each augmentation layer that TTA should not apply by a
  ``tf_keras.layers.Identity``;
* returns every other layer itself, so the view *shares* the trained weights (no copy, and it
  follows the original if the original is trained further); nested functional or Sequential
  sub-models that contain augmentation layers are cloned the same way, recursively.

The view is called with ``training=False`` (batch normalisation uses its moving statistics,
dropout is off); only the ``always_on`` layers augment.

Modes (:data:`TTA_MODES`, ``augment.tta.modes``). ``"shift"``: only the time shifts augment, the
circular shifts of training. The network pools mean + max over time, so a circular shift moves its
output little (the findings of issue 13: about 8x less than masks on random weights; 62.0% vs
61.2% without TTA on the synthetic set). ``"masks"``: only the SpecAugment++ layers augment, at
every position where the model has one (input and hidden), the way the report's reference code
runs its copies: valeoai/SP4ASC, ``sp4asc/testing.py`` ``TestManager.one_epoch``, calls
``self.net.spec_augmenter.train()`` on the network in ``eval()`` mode when ``nb_augmentations >
0`` and averages the softmax of that many forward passes, so only the masks are random there:
dropout stays off, batch normalisation keeps its running statistics, and there is no time shift
(SP4ASC has none; its masks are torchlibrosa's ``SpecAugmentation``, zero-filled stripes on the
batch-normalised log-mel input, ``sp4asc/models/cnns.py``). Here too the view runs with
``training=False``. Both modes keep each layer's configured widths and counts.

Use. :class:`TTA` is the one entry point: ``TTA(model, params.augment.tta, seed, mode=...)`` builds
the view once from a :class:`pipeline.core.config.TTAParams` (the only TTA configuration), and
``TTA.probabilities(x)`` returns the mean class probabilities ``[B, K]`` of one batch (graph-safe:
the evaluate stage wraps it, after the front end, in its own ``tf.function``); ``TTA.predict``
runs it over an array or a batched ``tf.data.Dataset``. :func:`models.asc.tta_predictor` builds the
``TTA`` of a full project model from its ``Params``.

Batching. Each input batch of B rows is tiled copy-major (row ``c * B + i`` is copy ``c`` of
clip ``i``) in chunks of at most ``chunk_copies`` copies, so one forward pass sees at most
``chunk_copies * B`` rows; the softmax of each chunk is reshaped to ``[copies, B, classes]`` and
summed, and the sum over all chunks is divided by ``n_copies``.

Reproducibility. A fresh :class:`TTA` starts the random streams of its view's augmentation layers
from seeds derived from ``seed`` (see :mod:`augment._base`), so the same model, inputs, seed and
settings give the same probabilities; successive batches of one ``TTA`` continue the streams. The
random draws of a forward pass depend on its number of rows, so changing the batch size or
``chunk_copies`` changes which augmentations each copy gets (not their distribution). With
``chunk_copies=1`` the result is exactly the mean of ``n_copies`` successive calls of a fresh view
on each batch (the tests check this). SpecAugment++ with mixture masking or cutting mixes a clip
with another row of the same forward pass (another clip, or a copy of the same clip), which makes
a prediction depend on its batch-mates (DCASE asks for each clip to be classified on its own);
TTA therefore switches it to zero masking (``augment.tta.mask_fill: zm``, SP4ASC's fill too) unless
told otherwise. SP4ASC's zeros sit after its input batch normalisation, where 0 is the per-bin
mean; :func:`models.asc.tta_classifier` centres the project's input masks the same way.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
import tf_keras

from augment.shift import TimeShift
from augment.specaugment import MODES, SpecAugmentPP
from pipeline.core.checks import check_bool, check_choice, check_int

if TYPE_CHECKING:
    from pipeline.core.config import TTAParams

logger = logging.getLogger(__name__)

AUGMENTATION_LAYERS = (TimeShift, SpecAugmentPP)

_FROM_PARAMS = "<TTAParams.mask_fill>"  # TTA's default SpecAugment++ fill: the configured one

# Which augmentation layers each TTA mode switches on (the arguments of make_tta_model).
TTA_MODES = {
    "shift": {"time_shift": True, "specaugment": False},
    "masks": {"time_shift": False, "specaugment": True},
}


def _derived_seed(seed: int, index: int, layer_seed: int) -> int:
    """Seed of the ``index``-th augmentation layer of a TTA view (31 bits, well mixed)."""
    state = np.random.SeedSequence([seed, index, layer_seed]).generate_state(1, dtype=np.uint32)
    return int(state[0] >> 1)


def _contains_augmentation(model) -> bool:
    return any(isinstance(m, AUGMENTATION_LAYERS) for m in model.submodules)


def count_augmentation_layers(model, *, active_only: bool = False) -> int:
    """Number of ``TimeShift``/``SpecAugmentPP`` layers in ``model`` (nested ones included).

    With ``active_only``, only those built with ``always_on=True`` are counted.
    """
    return sum(isinstance(m, AUGMENTATION_LAYERS) and (m.always_on or not active_only) for m in model.submodules)


def make_tta_model(
    model: tf_keras.Model,
    *,
    time_shift: bool = True,
    specaugment: bool = False,
    specaugment_mode: str | None = "zm",
    seed: int = 0,
) -> tf_keras.Model:
    """The augmenting view of ``model`` used for test-time augmentation.

    Clones the functional (or Sequential) ``model``, sharing every layer except the augmentation
    layers: each ``TimeShift`` (if ``time_shift``) and ``SpecAugmentPP`` (if ``specaugment``) is
    replaced by a copy with ``always_on=True`` and a seed derived from ``seed`` and its position;
    the disabled ones are replaced by ``tf_keras.layers.Identity``. Nested functional/Sequential
    sub-models that contain augmentation layers are handled recursively.

    Args:
      model: a functional or Sequential ``tf_keras`` model (weights are shared, not copied).
      time_shift: keep the time shift on at test time.
      specaugment: keep the SpecAugment++ masks on at test time.
      specaugment_mode: "zm", "mm" or "cm" for the test-time SpecAugment++ copies, or None to keep
        each layer's own mode.
      seed: non-negative integer seed of the view's random streams.

    Returns:
      A new ``tf_keras.Model`` with the same inputs and outputs as ``model``.

    Raises:
      ValueError: for bad arguments, or when ``model`` (or a sub-model holding augmentation
        layers) is a subclassed model, which cannot be cloned.
    """
    check_bool("time_shift", time_shift)
    check_bool("specaugment", specaugment)
    check_choice("specaugment_mode", specaugment_mode, MODES, allow_none=True)
    seed = check_int("seed", seed)
    counter = itertools.count()

    def replace(layer):
        if isinstance(layer, tf_keras.Model):
            return clone(layer) if _contains_augmentation(layer) else layer
        if not isinstance(layer, AUGMENTATION_LAYERS):
            return layer  # shared: same weights as the original
        index = next(counter)
        enabled = time_shift if isinstance(layer, TimeShift) else specaugment
        if not enabled:
            return tf_keras.layers.Identity(name=layer.name)
        config = layer.get_config()
        config["always_on"] = True
        config["seed"] = _derived_seed(seed, index, layer.seed)
        if isinstance(layer, SpecAugmentPP) and specaugment_mode is not None:
            config["mode"] = specaugment_mode
        return layer.__class__.from_config(config)

    def clone(sub_model):
        if not (isinstance(sub_model, tf_keras.Sequential) or sub_model._is_graph_network):
            raise ValueError(
                f"make_tta_model needs a functional or Sequential model, got the subclassed "
                f"model {sub_model.name!r} ({type(sub_model).__name__})"
            )
        return tf_keras.models.clone_model(sub_model, clone_function=replace)

    if not isinstance(model, tf_keras.Model):
        raise ValueError(f"model must be a tf_keras.Model, got {type(model).__name__}")
    view = clone(model)
    logger.info(
        "TTA view of %r: %d augmentation layers, %d active (time_shift=%s, specaugment=%s)",
        model.name,
        count_augmentation_layers(model),
        count_augmentation_layers(view, active_only=True),
        time_shift,
        specaugment,
    )
    return view


def _chunk_sizes(n_copies: int, chunk_copies: int) -> list[int]:
    """Copies per forward pass: full chunks of ``chunk_copies`` then the remainder."""
    return [min(chunk_copies, n_copies - start) for start in range(0, n_copies, chunk_copies)]


def _tile_copies(x, copies: int):
    """``copies`` copies of each tensor of the structure ``x``, copy-major along axis 0."""

    def tile(t):
        t = tf.convert_to_tensor(t)
        multiples = tf.concat([[copies], tf.ones([tf.rank(t) - 1], tf.int32)], axis=0)
        return tf.tile(t, multiples)  # [copies * B, ...]

    return tf.nest.map_structure(tile, x)


def _copies_probability_sum(tta_model, x, copies: int, from_logits: bool = True):
    """Sum over ``copies`` augmented copies of the class probabilities, ``[B, classes]``."""
    batch = tf.shape(tf.nest.flatten(x)[0])[0]
    outputs = tta_model(_tile_copies(x, copies), training=False)  # [copies * B, K]
    outputs = tf.cast(outputs, tf.float32)
    probabilities = tf.nn.softmax(outputs, axis=-1) if from_logits else outputs  # [copies * B, K]
    probabilities = tf.reshape(probabilities, tf.stack([copies, batch, -1]))  # [copies, B, K]
    return tf.reduce_sum(probabilities, axis=0)  # [B, K]


def _mean_probabilities(view, x, n_copies: int, chunk_copies: int, from_logits: bool) -> tf.Tensor:
    """Mean class probabilities over ``n_copies`` copies of the batch ``x``, float32 ``[B, K]``.

    Graph-safe (the loop over chunks is a static Python loop).
    """
    total = None
    for copies in _chunk_sizes(n_copies, chunk_copies):
        part = _copies_probability_sum(view, x, copies, from_logits)  # [B, K]
        total = part if total is None else total + part
    return total / float(n_copies)  # [B, K]


def _input_batches(inputs, batch_size: int):
    """Batches of model inputs from an array/tensor or from a batched ``tf.data.Dataset``."""
    if isinstance(inputs, tf.data.Dataset):
        for element in inputs:
            yield element[0] if isinstance(element, tuple) else element
        return
    inputs = inputs if tf.is_tensor(inputs) else np.asarray(inputs)
    for start in range(0, int(inputs.shape[0]), batch_size):
        yield inputs[start : start + batch_size]


class TTA:
    """Test-time augmentation of ``model`` in one mode, as configured by a ``TTAParams``.

    Builds the augmenting view of ``model`` once (:func:`make_tta_model` with the layers of
    ``TTA_MODES[mode]`` switched on, the view's random streams seeded from ``seed``);
    :meth:`probabilities` averages the softmax of ``params.n_copies`` augmented copies of each
    clip of a batch, ``params.chunk_copies`` copies per forward pass. ``params.enabled`` is the
    caller's business (whether to run TTA at all). The copies cost ``n_copies`` times the
    model's MACs per clip.

    Args:
      model: a functional or Sequential ``tf_keras`` model whose outputs are logits (or
        probabilities with ``from_logits=False``); weights are shared, not copied.
      params: a :class:`pipeline.core.config.TTAParams` (``params.augment.tta``): ``n_copies``,
        ``chunk_copies``, ``modes``.
      seed: non-negative integer seed of the augmentations.
      mode: "shift" (time shifts only) or "masks" (SpecAugment++ masks only), see the module
        docstring; None = the first of ``params.modes``.
      specaugment_mode: "zm", "mm" or "cm" for the test-time SpecAugment++ layers, or None to keep
        each layer's own mode; by default ``params.mask_fill`` ("zm" unless configured: see the
        module docstring for why).
      from_logits: apply softmax to the model outputs.

    Attributes:
      view: the augmenting view (a ``tf_keras.Model`` with ``model``'s inputs and outputs).
      mode: the mode.
      n_copies, chunk_copies: as in ``params``.

    Raises:
      ValueError: for bad settings (naming the setting and the value), or a model that cannot be
        cloned (see :func:`make_tta_model`).
    """

    def __init__(
        self,
        model: tf_keras.Model,
        params: TTAParams,
        seed: int = 0,
        *,
        mode: str | None = None,
        specaugment_mode: str | None = _FROM_PARAMS,
        from_logits: bool = True,
    ):
        if specaugment_mode is _FROM_PARAMS:
            specaugment_mode = params.mask_fill
        self.n_copies = check_int("n_copies", params.n_copies, minimum=1)
        self.chunk_copies = check_int("chunk_copies", params.chunk_copies, minimum=1)
        self.from_logits = check_bool("from_logits", from_logits)
        self.mode = check_choice("mode", params.modes[0] if mode is None else mode, tuple(TTA_MODES))
        self.view = make_tta_model(model, **TTA_MODES[self.mode], specaugment_mode=specaugment_mode, seed=seed)
        if count_augmentation_layers(self.view, active_only=True) == 0:
            logger.warning(
                "TTA on %r applies no augmentation (mode %r, %d augmentation layers): all %d copies are identical",
                model.name,
                self.mode,
                count_augmentation_layers(model),
                self.n_copies,
            )
        self._step = None

    def probabilities(self, x) -> tf.Tensor:
        """Mean class probabilities of the batch ``x`` ``[B, ...]`` (or a structure of them).

        Graph-safe: call it inside a ``tf.function`` (after a front end, say) or eagerly.

        Returns:
          float32 ``[B, classes]``.
        """
        return _mean_probabilities(self.view, x, self.n_copies, self.chunk_copies, self.from_logits)

    def predict(self, inputs, batch_size: int = 32) -> np.ndarray:
        """:meth:`probabilities` (compiled) over all clips of ``inputs``, in order.

        Args:
          inputs: an array or tensor ``[N, ...]`` (split into batches of ``batch_size``), or a
            batched ``tf.data.Dataset`` of inputs or of ``(inputs, labels, ...)`` tuples.
          batch_size: clips per batch for array inputs.

        Returns:
          float32 ``[N, classes]`` mean probabilities.
        """
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if self._step is None:
            self._step = tf.function(self.probabilities, reduce_retracing=True)
        results = [self._step(batch).numpy() for batch in _input_batches(inputs, batch_size)]
        if not results:
            raise ValueError("TTA.predict got no input batches")
        return np.concatenate(results, axis=0).astype(np.float32)
