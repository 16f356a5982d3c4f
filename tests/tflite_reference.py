"""Probabilities computed without the project's inference code, to check that code against.

The package's two TFLite files are run by ``tf.lite.Interpreter`` called directly, the audio is
decoded by soundfile and the softmax is numpy's: nothing of ``asc_infer``, ``predict`` or
``serving`` is used. Only recordings at the model's rate whose length is a whole number of
windows are accepted, so no resampling or window placement is involved either.
"""

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import tensorflow as tf


def _invoke(interpreter: tf.lite.Interpreter, x: np.ndarray) -> np.ndarray:
    """One inference, quantising the input and dequantising the output as the tensors declare."""
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), -128, 127)
    interpreter.set_tensor(inp["index"], np.asarray(x).reshape(inp["shape"]).astype(inp["dtype"]))
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"]).astype(np.float64)
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y - zero) * scale
    return y.reshape(-1)


def reference_probabilities(model_folder: str | Path, audio: str | Path | bytes, window: int = 44100) -> np.ndarray:
    """Mean class probabilities over the consecutive windows of a mono recording at the model's rate.

    Args:
      model_folder: a package's model folder (``<package>/asc_infer/model``: the two ``.tflite`` files).
      audio: a WAV/FLAC path or the bytes of one; its length must be a whole number of windows.
      window: the window (the model's clip) in samples.

    Returns:
      float64 ``[n_classes]``: the mean of the windows' softmax probabilities.
    """
    folder = Path(model_folder)
    samples, rate = sf.read(io.BytesIO(audio) if isinstance(audio, bytes) else audio, dtype="float32")
    assert rate == 44100 and samples.ndim == 1 and len(samples) % window == 0, (rate, samples.shape)
    frontend = tf.lite.Interpreter(model_path=str(folder / "frontend.tflite"))
    classifier = tf.lite.Interpreter(model_path=str(folder / "model_int8.tflite"))
    frontend.allocate_tensors()
    classifier.allocate_tensors()
    probs = []
    for start in range(0, len(samples), window):
        logits = _invoke(classifier, _invoke(frontend, samples[start : start + window]))
        e = np.exp(logits - logits.max())
        probs.append(e / e.sum())
    return np.mean(probs, axis=0)
