"""Compression of a network that learned (``learned_workdir``): pruning, QAT, PTQ, TFLite agreement and complexity."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from evaluate import complexity
from evaluate import compress as cz
from models import asc
from pipeline.data import inputs
from pipeline.running import task

pytestmark = pytest.mark.slow  # prunes and quantises (QAT) a network: minutes on 2 cores


@pytest.fixture(scope="module")
def setup(learned_workdir):
    """The network of ``learned_workdir`` (it learned: most clips decided, so argmax agreement means
    something), 96 of its training clips and their log-mels; the dataset folder."""
    workdir, params = learned_workdir
    root = Path(params.data.source)
    index = pd.read_csv(workdir / "prepare" / "index.csv")
    train = index[index.split == "train"].sample(n=96, random_state=0).reset_index(drop=True)
    model = task.load(workdir / "train" / "model.keras")
    frontend = asc.frontend_model(model)
    waves = np.concatenate([w for w, _ in inputs.eval_dataset(train, root, params.audio, params.data, 32)])
    logmel = frontend(waves, training=False).numpy()
    return params, model, train, logmel, root


def _data(params, train, root, epochs=1):
    ds, steps = inputs.train_dataset(
        train, root, params.audio, params.data, batch_size=8, seed=2, start_epoch=0, epochs=epochs
    )
    return ds, steps


def _agree(got, ref, margin=0.1, minimum=5):
    """Argmax agreement on clips where the reference is not undecided (top-2 gap > margin).

    At least ``minimum`` (>= 1) clips must be decided, so the agreement always compares something.
    """
    assert minimum >= 1, "an agreement over no clip would pass whatever the model does"
    top2 = np.sort(ref, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > margin
    assert decided.sum() >= minimum, f"the model is decided on {decided.sum()} of {len(ref)} clips, need {minimum}"
    return float(np.mean(got[decided].argmax(1) == ref[decided].argmax(1)))


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_prune_reaches_target_sparsity_in_custom_layers(setup):
    params, model, train, _, root = setup
    classifier = asc.export_classifier(model, params)
    before = classifier.get_weights()
    ds, steps = _data(params, train, root, epochs=2)
    pruned, report = cz.prune(
        cz.copy_model(classifier),
        asc.frontend_layer(model),
        ds,
        steps,
        epochs=2,
        target_sparsity=0.6,
        learning_rate=1e-4,
        clip_samples=params.audio.clip_samples,
    )
    for a, b in zip(before, classifier.get_weights(), strict=True):  # the original is untouched
        np.testing.assert_array_equal(a, b)
    custom = {k: v for k, v in report.items() if "_sepconv/" in k or "_attention/" in k}
    assert any("pointwise" in k for k in custom) and any("conv_reduce" in k for k in custom)
    for name, row in custom.items():
        assert abs(row["sparsity"] - 0.6) <= 1.0 / row["size"] + 1e-9, (name, row)  # one weight of granularity
    assert abs(cz.overall_sparsity(report) - 0.6) < 0.02
    kinds = {type(layer).__name__ for layer in pruned.layers}
    assert "PruneLowMagnitude" not in kinds  # stripped


def test_ptq_tflite_agrees_with_keras_and_complexity_matches(setup):
    params, model, train, logmel, root = setup
    classifier = asc.export_classifier(model, params)
    content = cz.to_tflite(classifier, logmel[:64])
    tfl = cz.TFLiteClassifier(content)
    assert tfl.input["dtype"] == np.int8 and tfl.output["dtype"] == np.int8
    got = tfl.probabilities(logmel)
    ref = _softmax(classifier.predict(logmel, verbose=0).astype(np.float64))
    assert _agree(got, ref) >= 0.9
    assert np.mean(np.abs(got - ref)) < 0.03 and np.max(np.abs(got - ref)) < 0.35  # int8 steps on confident clips
    keras_side = complexity.keras_complexity(classifier)
    tflite_side = complexity.tflite_complexity(content)
    assert tflite_side["size_bytes"] == keras_side["size_bytes"]
    assert tflite_side["macs"] == keras_side["macs"]
    # Batch norm is folded away (-3 per channel) and the converter gives some convolutions a bias (+1 per
    # channel): measured 7,978 TFLite against 7,946 Keras parameters for this network; the bytes are equal.
    assert abs(tflite_side["params"] - keras_side["params"]) <= 0.01 * keras_side["params"]


def test_qat_pruning_preserving_then_int8(setup):
    params, model, train, logmel, root = setup
    classifier = asc.export_classifier(model, params)
    ds, steps = _data(params, train, root)
    pruned, report = cz.prune(
        cz.copy_model(classifier),
        asc.frontend_layer(model),
        ds,
        steps,
        epochs=1,
        target_sparsity=0.5,
        learning_rate=1e-4,
        clip_samples=params.audio.clip_samples,
    )
    ds, steps = _data(params, train, root)
    qat = cz.quantize_aware(
        pruned,
        asc.frontend_layer(model),
        ds,
        steps,
        epochs=1,
        learning_rate=1e-4,
        clip_samples=params.audio.clip_samples,
        pruned=True,
    )
    kinds = {type(layer).__name__ for layer in qat.layers}
    assert "QuantizeWrapperV2" in kinds or "QuantizeWrapper" in kinds
    pointwise = [w for w in qat.trainable_weights if "pointwise/kernel" in w.name]
    assert pointwise and all(
        abs(float(tf.reduce_mean(tf.cast(w == 0, tf.float32))) - 0.5) < 0.02 for w in pointwise
    )  # sparsity kept through QAT
    content = cz.to_tflite(qat, logmel[:64])
    got = cz.TFLiteClassifier(content).probabilities(logmel)
    ref = _softmax(qat.predict(logmel, verbose=0).astype(np.float64))
    assert _agree(got, ref) >= 0.9  # the QAT model's int8 conversion decides as the QAT model does
    assert np.mean(np.abs(got - ref)) < 0.05


def test_frontend_tflite_matches_keras(setup):
    params, model, train, logmel, root = setup
    content = cz.frontend_tflite(asc.frontend_model(model))
    interp = tf.lite.Interpreter(model_content=content)
    interp.allocate_tensors()
    wave = np.random.default_rng(0).standard_normal((1, params.audio.clip_samples)).astype(np.float32) * 0.1
    interp.set_tensor(interp.get_input_details()[0]["index"], wave)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    ref = asc.frontend_model(model)(wave).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-3)
