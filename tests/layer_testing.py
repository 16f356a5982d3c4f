"""One helper that every custom layer goes through (after keras-hub's ``run_layer_test``).

``run_layer_test`` builds the layer, calls it eagerly and inside a ``tf.function`` graph,
fits a one-step model around it, round-trips it through ``get_config``/``from_config`` and
through a ``.keras`` save/load, and checks that outputs agree at every step.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tf_keras


def run_layer_test(
    layer_cls,
    init_kwargs: dict,
    input_shape: tuple,
    expected_output_shape: tuple | None = None,
    *,
    input_data: np.ndarray | None = None,
    tmp_path=None,
    call_kwargs: dict | None = None,
    trainable: bool = True,
    atol: float = 1e-5,
    seed: int = 0,
):
    """Build, call, fit one step and round-trip ``layer_cls(**init_kwargs)``.

    Args:
      layer_cls: the layer class under test.
      init_kwargs: constructor arguments.
      input_shape: full input shape including the batch dimension.
      expected_output_shape: full output shape including batch, or None to skip.
      input_data: optional input array; seeded normal noise of ``input_shape`` otherwise.
      tmp_path: a directory (pytest's ``tmp_path``) for the ``.keras`` round trip.
      call_kwargs: extra keyword arguments for ``layer(x, **call_kwargs)`` (inference mode).
      trainable: whether to fit one step and require the loss to be finite.
      atol: tolerance for output agreement across the round trips.
      seed: seed of the random input.

    Returns:
      The layer output on ``input_data`` (inference mode), as a NumPy array.
    """
    call_kwargs = dict(call_kwargs or {})
    if input_data is None:
        rng = np.random.default_rng(seed)
        input_data = rng.standard_normal(input_shape).astype("float32")
    x = tf.constant(input_data)

    # Eager call, inference mode.
    layer = layer_cls(**init_kwargs)
    eager = layer(x, training=False, **call_kwargs).numpy()
    if expected_output_shape is not None:
        assert tuple(eager.shape) == tuple(expected_output_shape), (eager.shape, expected_output_shape)
    assert np.all(np.isfinite(eager)), "non-finite output"

    # Graph call agrees with the eager call.
    graph_fn = tf.function(lambda t: layer(t, training=False, **call_kwargs))
    graph = graph_fn(x).numpy()
    np.testing.assert_allclose(graph, eager, atol=atol, rtol=1e-5)

    # Config round trip: same config, same output with copied weights.
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    clone(x, training=False, **call_kwargs)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    np.testing.assert_allclose(clone(x, training=False, **call_kwargs).numpy(), eager, atol=atol, rtol=1e-5)

    # Functional model round trip through .keras save/load.
    inputs = tf_keras.Input(shape=input_shape[1:], batch_size=None)
    outputs = layer_cls.from_config(config)(inputs, **call_kwargs)
    model = tf_keras.Model(inputs, outputs)
    model.layers[-1].set_weights(layer.get_weights())
    before = model(x, training=False).numpy()
    np.testing.assert_allclose(before, eager, atol=atol, rtol=1e-5)
    if tmp_path is not None:
        path = os.path.join(str(tmp_path), f"{layer_cls.__name__}.keras")
        model.save(path)
        loaded = tf_keras.models.load_model(path)
        after = loaded(x, training=False).numpy()
        np.testing.assert_allclose(after, before, atol=atol, rtol=1e-5)
        assert type(loaded.layers[-1]) is layer_cls

    # One optimisation step with a finite loss.
    if trainable:
        model.compile(optimizer=tf_keras.optimizers.SGD(1e-3), loss="mse")
        target = np.zeros_like(before)
        history = model.fit(input_data, target, batch_size=input_shape[0], epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    return eager
