"""Compression with TensorFlow Model Optimization: pruning, quantization-aware training, int8 TFLite.

The object compressed is the classifier (log-mel in, logits out, no augmentation layers:
:func:`models.asc.export_classifier`). The float log-mel front end stays outside the int8
graph; it is exported on its own as a float TFLite model (``frontend.tflite``), so an
application runs ``frontend.tflite`` on a 1-s waveform and feeds its output, quantized with
the classifier's input scale and zero point, to ``model_int8.tflite``.

Steps (each switched by ``compress.*``):

1. **prune**: ``tfmot.sparsity.keras.prune_low_magnitude`` on the classifier with a
   ``PolynomialDecay`` schedule from 0 to ``target_sparsity`` over the fine-tuning steps, with
   ``UpdatePruningStep``; the project's custom layers take part through ``get_prunable_weights``.
   ``strip_pruning`` at the end; the achieved sparsity is reported per kernel.
2. **qat**: quantization-aware training (``tfmot.quantization.keras``) with the project's
   ``QuantizeConfig`` s for ``SeparableBlock``/``CoordAttention`` (:mod:`models.quantize`); when
   the model was pruned, TFMOT's pruning-preserving scheme
   (``Default8BitPrunePreserveQuantizeScheme``) plus a mask projection after every step keeps
   every pruned kernel (custom layers included) at its sparsity.
3. **ptq**: post-training full-integer quantization of the float (pruned) classifier, for
   comparison with QAT; it is the shipped model when QAT is off.

Fine-tuning runs on waveforms through the frozen float front end (same tf.data pipeline as
training) at ``compress.fine_tune_learning_rate``.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

logger = logging.getLogger(__name__)

_TYPES = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}


def _with_frontend(frontend_layer, classifier, clip_samples: int) -> tf_keras.Model:
    """Waveform -> frozen front end -> ``classifier`` (for fine-tuning on the file pipeline)."""
    wave = tf_keras.Input(shape=(clip_samples,), name="waveform")
    frontend_layer.trainable = False
    return tf_keras.Model(wave, classifier(frontend_layer(wave)), name=f"finetune_{classifier.name}")


def copy_model(model: tf_keras.Model) -> tf_keras.Model:
    """A copy with its own layers and weights (TFMOT wraps layers in place, changing the original)."""
    clone = tf_keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _compile(model, learning_rate: float) -> None:
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def kernel_sparsity(model: tf_keras.Model) -> dict[str, dict]:
    """Zero fraction of every prunable kernel, custom layers' inner kernels included.

    Returns:
      ``{weight path: {"zeros": int, "size": int, "sparsity": float}}``.
    """
    report = {}
    for layer in model.layers:
        base = getattr(layer, "layer", layer)  # through Prune/Quantize wrappers
        if isinstance(base, tfmot.sparsity.keras.PrunableLayer):
            kernels = base.get_prunable_weights()
        elif isinstance(base, (tf_keras.layers.Conv2D, tf_keras.layers.Dense)):
            kernels = [base.kernel]
        elif isinstance(base, tf_keras.layers.DepthwiseConv2D):
            kernels = [base.depthwise_kernel]
        else:
            continue
        for w in kernels:
            value = w.numpy()
            zeros = int(np.sum(value == 0))
            report[f"{base.name}/{w.name.split('/')[-2] if '/' in w.name else w.name}:{value.shape}"] = {
                "zeros": zeros,
                "size": int(value.size),
                "sparsity": zeros / value.size,
            }
    return report


def variable_sparsity(model: tf_keras.Model) -> dict[str, dict]:
    """Zero fraction of every kernel variable of ``model`` (works through QAT wrappers)."""
    report = {}
    for w in model.trainable_weights:
        if "kernel" not in w.name.split("/")[-1]:
            continue
        value = w.numpy()
        zeros = int(np.sum(value == 0))
        report[w.name] = {"zeros": zeros, "size": int(value.size), "sparsity": zeros / value.size}
    return report


def overall_sparsity(report: dict[str, dict]) -> float:
    zeros = sum(r["zeros"] for r in report.values())
    size = sum(r["size"] for r in report.values())
    return zeros / size if size else 0.0


def prune(
    classifier,
    frontend_layer,
    train_ds,
    steps: int,
    *,
    epochs: int,
    target_sparsity: float,
    learning_rate: float,
    clip_samples: int,
    val_ds=None,
) -> tuple[tf_keras.Model, dict]:
    """Magnitude pruning to ``target_sparsity`` with polynomial decay; returns (stripped model, report)."""
    total = max(1, steps * epochs)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=target_sparsity,
        begin_step=0,
        end_step=max(1, int(total * 0.8)),
        frequency=1,
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(classifier, pruning_schedule=schedule)
    wrapped = [
        layer.name
        for layer in pruned.layers
        if isinstance(layer, PruneLowMagnitude) and _has_prunable_weights(layer.layer)
    ]
    logger.info(
        "pruning %d layers to %.0f%% sparsity over %d steps: %s",
        len(wrapped),
        100 * target_sparsity,
        total,
        ", ".join(wrapped),
    )
    model = _with_frontend(frontend_layer, pruned, clip_samples)
    _compile(model, learning_rate)
    model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        verbose=1,
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    return stripped, kernel_sparsity(stripped)


def _has_prunable_weights(layer) -> bool:
    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
        return bool(layer.get_prunable_weights())
    return isinstance(layer, (tf_keras.layers.Conv2D, tf_keras.layers.Dense, tf_keras.layers.DepthwiseConv2D))


class KeepSparsity(tf_keras.callbacks.Callback):
    """Projects pruned kernels back onto their zero pattern after every step (sparsity-preserving QAT)."""

    def __init__(self, variables: list[tf.Variable], threshold: float = 0.05):
        super().__init__()
        self.pairs = []
        for v in variables:
            mask = tf.cast(tf.not_equal(v, 0), v.dtype)
            if 1.0 - float(tf.reduce_mean(mask)) >= threshold:
                self.pairs.append((v, mask))

    def on_train_batch_end(self, batch, logs=None):
        for v, mask in self.pairs:
            v.assign(v * mask)


def _annotate(classifier) -> tf_keras.Model:
    from models import quantize
    from models.asc import TimeFreqPooling

    annotated = quantize.annotate_model(classifier)
    # The report's global pooling has no weights: quantize its output only.
    for layer in annotated.layers:
        inner = getattr(layer, "layer", None)
        if isinstance(inner, TimeFreqPooling):
            layer.quantize_config = quantize.OutputQuantizeConfig()
    return annotated


def quantize_aware(
    classifier,
    frontend_layer,
    train_ds,
    steps: int,
    *,
    epochs: int,
    learning_rate: float,
    clip_samples: int,
    pruned: bool,
    val_ds=None,
) -> tf_keras.Model:
    """QAT fine-tuning; pruning-preserving when ``pruned``. Returns the QAT classifier."""
    from models import quantize

    annotated = _annotate(classifier)
    with tfmot.quantization.keras.quantize_scope(quantize.quantize_scope_objects()):
        if pruned:
            scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            qat = tfmot.quantization.keras.quantize_apply(annotated, scheme)
        else:
            qat = tfmot.quantization.keras.quantize_apply(annotated)
    kernels = [w for w in qat.trainable_weights if "kernel" in w.name]
    callbacks = [KeepSparsity(kernels)] if pruned else []
    model = _with_frontend(frontend_layer, qat, clip_samples)
    _compile(model, learning_rate)
    model.fit(train_ds, epochs=epochs, steps_per_epoch=steps, validation_data=val_ds, callbacks=callbacks, verbose=1)
    return qat


def to_int8_tflite(
    classifier,
    representative_inputs,
    input_type=tf.int8,
    output_type=tf.int8,
    batch_size: int | None = None,
) -> bytes:
    """Full-integer post-training quantisation of a Keras classifier to a TFLite flatbuffer.

    Args:
      classifier: a ``tf_keras.Model`` (log-mel in, logits out).
      representative_inputs: calibration inputs, an array ``[N, *input_shape]`` or an iterable
        of arrays, each one sample (``input_shape`` or ``[1, *input_shape]``) or a batch;
        fed to the converter one float32 sample at a time.
      input_type: ``tf.int8`` (default), ``tf.uint8`` or ``tf.float32`` model input.
      output_type: likewise for the model output.
      batch_size: None (default) converts the Keras model as it is, with a dynamic batch
        (``TFLiteConverter.from_keras_model``). An integer fixes the batch (1 is the DCASE
        case, one clip per inference): the converter then turns dilated depthwise
        convolutions into single dilated ``DEPTHWISE_CONV_2D`` operators instead of
        ``SPACE_TO_BATCH_ND``/``BATCH_TO_SPACE_ND`` pairs (faster; batch norm and biases
        after them fold; MACs equal to the Keras count), but the file then only runs at that
        batch size. Calibration samples are grouped into batches of that size.

    Returns:
      The ``.tflite`` file contents, weights int8, biases int32, ops ``TFLITE_BUILTINS_INT8``.

    Raises:
      ValueError: if there are no representative inputs, their shape does not fit, or
        ``batch_size`` is not None or a positive integer.
    """
    if not isinstance(classifier, tf_keras.Model):
        raise ValueError(f"classifier must be a tf_keras.Model, got {type(classifier).__name__}")
    bad_batch = isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    if batch_size is not None and bad_batch:
        raise ValueError(f"batch_size must be None or a positive integer, got {batch_size!r}")
    input_tensor = classifier.inputs[0]
    sample_rank = len(input_tensor.shape) - 1
    samples = []
    for item in _iterate_inputs(representative_inputs):
        item = np.asarray(item, dtype=np.float32)
        if item.ndim == sample_rank:
            samples.append(item)
        elif item.ndim == sample_rank + 1:
            samples.extend(item)
        else:
            raise ValueError(
                f"representative_inputs: expected samples of rank {sample_rank} (or batches), "
                f"got an array of shape {item.shape}"
            )
    group = batch_size or 1
    if len(samples) < group:
        raise ValueError(
            f"representative_inputs is empty or smaller than one batch ({len(samples)} samples, batch {group})"
        )

    def representative_dataset():
        for start in range(0, len(samples) - group + 1, group):
            yield [np.stack(samples[start : start + group])]  # [batch, *input_shape] float32

    if batch_size is None:
        converter = tf.lite.TFLiteConverter.from_keras_model(classifier)
    else:
        shape = [batch_size] + list(input_tensor.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(f"a fixed batch_size needs a fully known input shape, got {tuple(input_tensor.shape)}")
        function = tf.function(lambda x: classifier(x, training=False))
        concrete = function.get_concrete_function(tf.TensorSpec(shape, input_tensor.dtype))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], classifier)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = input_type
    converter.inference_output_type = output_type
    logger.info(
        "converting %r to int8 TFLite (batch %s) with %d representative samples",
        classifier.name,
        batch_size or "dynamic",
        len(samples),
    )
    return bytes(converter.convert())


def _iterate_inputs(representative_inputs) -> Iterable:
    if isinstance(representative_inputs, (np.ndarray, tf.Tensor)):
        return [np.asarray(representative_inputs)]
    return representative_inputs


def to_tflite(classifier, representative: np.ndarray, input_type: str = "int8", output_type: str = "int8") -> bytes:
    """Full-integer int8 TFLite flatbuffer (batch 1, the DCASE case) of a float or QAT classifier."""
    return to_int8_tflite(
        classifier, representative, input_type=_TYPES[input_type], output_type=_TYPES[output_type], batch_size=1
    )


def frontend_tflite(frontend_model: tf_keras.Model) -> bytes:
    """The float log-mel front end as its own TFLite model (waveform ``[1, samples]`` in)."""
    fixed = tf_keras.Model(frontend_model.inputs, frontend_model.outputs)
    fn = tf.function(
        lambda x: fixed(x, training=False), input_signature=[tf.TensorSpec([1, fixed.inputs[0].shape[1]], tf.float32)]
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fixed)
    return converter.convert()


class TFLiteClassifier:
    """Runs a TFLite classifier one clip at a time; returns float probabilities (softmax of logits)."""

    def __init__(self, model_content: bytes, num_threads: int | None = None):
        self.interpreter = tf.lite.Interpreter(model_content=model_content, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return x.astype(np.float32)
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)

    def logits(self, x: np.ndarray) -> np.ndarray:
        out = []
        for sample in x:
            self.interpreter.set_tensor(self.input["index"], self._quantize(sample[None]))
            self.interpreter.invoke()
            y = self.interpreter.get_tensor(self.output["index"])
            if self.output["dtype"] != np.float32:
                scale, zero = self.output["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            out.append(y[0])
        return np.stack(out)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def gzip_size(content: bytes) -> int:
    return len(gzip.compress(content, compresslevel=9))


def write_bytes(path: Path, content: bytes) -> Path:
    from pipeline.core import files

    with files.atomic_path(path) as tmp:
        tmp.write_bytes(content)
    return path
