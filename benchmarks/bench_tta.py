"""Cost of test-time augmentation: TTA with N copies vs one plain forward pass on the same batch.

Runs on log-mel inputs ``[B, 44, 256, 1]`` (the report's front end at 44.1 kHz). The network is
the project's (``models.asc``: ``build_model`` + ``tta_classifier`` on the ``paper`` config) when
it can be built, else a stand-in CNN of the same shape class (four blocks of 1x1 conv + dilated
depthwise (3,1)/(1,3) convs, BN, ReLU, 2x2 average pooling, channels 64-128-128-128, with
TimeShift and SpecAugment++ layers). The repeats of the three measurements are interleaved, so
that they share the machine's load. Prints one JSON object:

* ``plain_s``: median seconds of one compiled forward pass + softmax on the batch;
* ``tta_s``: median seconds of the compiled graph-safe core :meth:`augment.TTA.probabilities`
  (time shift on, SpecAugment++ off, in a ``tf.function``; steady state, as the evaluate stage
  runs it); ``ratio = tta_s / plain_s``;
* ``predict_s`` / ``predict_ratio``: end to end, a new :class:`augment.TTA` and its
  :meth:`~augment.TTA.predict` on the same batch, including building the view and tracing its
  function (paid once per call).

Usage: ``python benchmarks/bench_tta.py [--batch 16] [--copies 30] [--chunk-copies N]
[--repeats 5] [--model auto|asc|standin]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

import tensorflow as tf
import tf_keras

import augment
from augment import SpecAugmentPP, TimeShift
from pipeline.core.config import TTAParams

logger = logging.getLogger("bench_tta")

FRAMES, MELS = 44, 256


def standin_model(seed: int = 0) -> tf_keras.Model:
    """Log-mel ``[44, 256, 1]`` in, 10 logits out: the report's network without attention."""
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input([FRAMES, MELS, 1], name="logmel")
    x = TimeShift(std_frames=10.0, seed=seed + 1)(inputs)
    x = SpecAugmentPP(4, 26, mode="mm", seed=seed + 2)(x)
    for i, channels in enumerate((64, 128, 128, 128)):
        x = tf_keras.layers.Conv2D(channels, 1, use_bias=False)(x)
        a = tf_keras.layers.DepthwiseConv2D((3, 1), dilation_rate=(2, 1), padding="same")(x)
        b = tf_keras.layers.DepthwiseConv2D((1, 3), dilation_rate=(1, 2), padding="same")(x)
        x = tf_keras.layers.Add()([a, b])
        x = tf_keras.layers.BatchNormalization()(x)
        x = tf_keras.layers.ReLU()(x)
        x = tf_keras.layers.AveragePooling2D(2)(x)
        x = SpecAugmentPP(1, 2, mode="mm", seed=seed + 3 + i)(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    x = tf_keras.layers.Dense(128, activation="relu")(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(10)(x), name="standin")


def project_model() -> tf_keras.Model:
    """The project's log-mel -> logits TTA classifier at the paper's settings."""
    from models import asc
    from pipeline.core import config

    params = config.load("paper")
    model = asc.build_model(params)
    classifier = asc.tta_classifier(model, params)
    shape = tuple(int(d) for d in classifier.inputs[0].shape[1:])
    if shape != (FRAMES, MELS, 1):
        raise ValueError(f"paper config: log-mel inputs {shape}, expected {(FRAMES, MELS, 1)}")
    return classifier


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable; repeats interleave so that all see the same machine load."""
    for fn in fns.values():
        fn()  # warm-up: tracing
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--chunk-copies", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", choices=("auto", "asc", "standin"), default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    model, name = None, "standin"
    if args.model in ("auto", "asc"):
        try:
            model, name = project_model(), "asc"
        except Exception as exc:
            if args.model == "asc":
                raise
            logger.warning("models.asc unavailable (%s: %s): using the stand-in CNN", type(exc).__name__, exc)
    if model is None:
        model = standin_model()

    x = tf.random.stateless_normal([args.batch, FRAMES, MELS, 1], seed=[0, 1])
    chunk = args.chunk_copies or max(1, 256 // args.batch)  # at most ~256 rows per forward pass
    chunk = min(chunk, args.copies)
    tta_params = TTAParams(n_copies=args.copies, chunk_copies=chunk, modes=("shift",))

    plain = tf.function(lambda t: tf.nn.softmax(model(t, training=False)))
    tta = augment.TTA(model, tta_params, seed=0)
    core = tf.function(tta.probabilities)

    medians = interleaved_medians(
        {
            "plain": lambda: plain(x).numpy(),
            "tta": lambda: core(x).numpy(),
            "predict": lambda: augment.TTA(model, tta_params, seed=0).predict(x, batch_size=args.batch),
        },
        args.repeats,
    )
    plain_s, tta_s, end_to_end_s = medians["plain"], medians["tta"], medians["predict"]
    result = {
        "benchmark": "tta",
        "model": name,
        "params": int(model.count_params()),
        "batch": args.batch,
        "n_copies": args.copies,
        "chunk_copies": chunk,
        "repeats": args.repeats,
        "plain_s": round(plain_s, 4),
        "tta_s": round(tta_s, 4),
        "ratio": round(tta_s / plain_s, 2),
        "predict_s": round(end_to_end_s, 4),
        "predict_ratio": round(end_to_end_s / plain_s, 2),
        "tta_clips_per_s": round(args.batch / tta_s, 2),
        "plain_clips_per_s": round(args.batch / plain_s, 2),
        "cpu_threads": os.cpu_count(),
        "tensorflow": tf.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
