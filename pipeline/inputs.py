"""tf.data input pipelines: WAV files -> (waveform [samples], label) batches.

Waveforms, not spectrograms, leave the CPU: the log-mel front end is the first layer of
the model, so on a GPU it runs there. Per clip::

    read bytes -> tensorflow-io decode_wav -> float32 [frames, channels] in [-1, 1]
    -> finite check (error naming the file) -> mono (mean of channels)
    -> resample to audio.sample_rate_hz (tensorflow-io) when the file's rate differs
    -> crop (keep the start) or zero-pad (at the end) to audio.clip_samples

The header facts (rate, channels, bit depth, encoding) come from the validated index
(:func:`pipeline.data.read_index`), so each file's decode branch is known in advance and a
bad file was already reported by name before any training.

Training order is a stateless, seeded permutation per epoch (``seed``, ``epoch``), so an
interrupted run restarted at epoch k sees exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline.core.config import AudioParams, DataParams

logger = logging.getLogger(__name__)

# decode branches, by (encoding, bits)
_FORMAT_CODES = {("pcm", 16): 0, ("pcm", 24): 1, ("pcm", 32): 2, ("float", 32): 3}


def _format_code(encoding: str, bits: int) -> int:
    try:
        return _FORMAT_CODES[(encoding, int(bits))]
    except KeyError:
        raise ValueError(f"unsupported WAV format {encoding} {bits}-bit") from None


def decode_wav(contents: tf.Tensor, format_code: tf.Tensor) -> tf.Tensor:
    """Decode WAV bytes with tensorflow-io into float32 ``[frames, channels]`` in [-1, 1].

    Args:
      contents: scalar string tensor, the whole file.
      format_code: scalar int32: 0 PCM16, 1 PCM24, 2 PCM32, 3 float32.

    tensorflow-io 0.37.1 returns 24-bit PCM left-aligned in int32 (scaled by 2^8) and reads
    32-bit PCM as if it were float32; the PCM32 branch therefore bit-casts the "float" result
    back to the int32 samples it holds.
    """
    import tensorflow_io as tfio

    def pcm16():
        return tf.cast(tfio.audio.decode_wav(contents, dtype=tf.int16), tf.float32) / 32768.0

    def pcm24():
        return tf.cast(tfio.audio.decode_wav(contents, dtype=tf.int32), tf.float32) / 2147483648.0

    def pcm32():
        raw = tf.bitcast(tfio.audio.decode_wav(contents, dtype=tf.float32), tf.int32)
        return tf.cast(raw, tf.float32) / 2147483648.0

    def float32():
        return tfio.audio.decode_wav(contents, dtype=tf.float32)

    return tf.switch_case(format_code, [pcm16, pcm24, pcm32, float32])


def load_clip(path, format_code, sample_rate, *, target_rate: int, clip_samples: int) -> tf.Tensor:
    """Read, decode, check, downmix, resample and crop/pad one clip -> float32 ``[clip_samples]``."""
    import tensorflow_io as tfio

    audio = decode_wav(tf.io.read_file(path), format_code)  # [frames, channels]
    finite = tf.reduce_all(tf.math.is_finite(audio))
    with tf.control_dependencies([tf.debugging.Assert(finite, ["non-finite samples (NaN or inf) in", path])]):
        audio = tf.identity(audio)
    mono = tf.reduce_mean(audio, axis=1, keepdims=True)  # [frames, 1]
    mono = tf.cond(
        tf.equal(sample_rate, target_rate),
        lambda: mono,
        lambda: tfio.audio.resample(mono, rate_in=tf.cast(sample_rate, tf.int64), rate_out=target_rate),
    )  # [frames', 1]
    wave = mono[:clip_samples, 0]  # [<= clip_samples]
    wave = tf.pad(wave, [[0, clip_samples - tf.shape(wave)[0]]])  # [clip_samples]
    return tf.ensure_shape(wave, [clip_samples])


def _columns(index: pd.DataFrame, root: Path):
    paths = np.array([os.fspath(Path(root) / f) for f in index.filename], dtype=object)
    codes = np.array([_format_code(e, b) for e, b in zip(index.encoding, index.bits)], dtype=np.int32)
    rates = index.sample_rate.to_numpy(dtype=np.int64)
    labels = index.label.to_numpy(dtype=np.int32)
    return paths, codes, rates, labels


def _loader(audio: AudioParams):
    clip = audio.clip_samples

    def load(path, code, rate, label):
        wave = load_clip(path, code, rate, target_rate=audio.sample_rate_hz, clip_samples=clip)
        return wave, label

    return load


def _parallel(data: DataParams):
    """Parallel decode calls: ``data.num_parallel_calls``; -1: tf.data's default, one per core (at most 16)."""
    return tf.data.AUTOTUNE if data.num_parallel_calls == -1 else max(1, data.num_parallel_calls)


def _no_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` without tf.data's autotuning model (parallelism fixed as :func:`_parallel` says).

    With autotuning on (TensorFlow 2.17), deleting an iterator often stalled: Keras deletes its
    validation iterator after every epoch and its training iterator when ``fit`` returns, and
    the deletion waited, sleeping, for up to about as long as the iterator had lived (measured:
    1.3 s after a 1.3 s validation pass, 4.9 s after a 5.5 s ``fit``; ``fit`` calls of the
    same length all returned at the same 10.3 s mark, as if waiting out the autotuner's
    doubling optimisation period). Without autotuning the stall is gone. The pipelines here
    are one parallel map (decode, or gather from the memory cache) whose parallelism is set
    (:func:`_parallel`; -1 = one call per core) and a prefetch buffer (its own, legacy,
    autotuner stays): training runs as fast without the optimiser (benchmarks/README.md,
    "Where the train stage's time goes"), and the data order never depended on it.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def eval_dataset(index: pd.DataFrame, root, audio: AudioParams, data: DataParams,
                 batch_size: int) -> tf.data.Dataset:
    """Ordered (no shuffle) batches of ``(waveform [B, samples], label [B])`` in index order."""
    paths, codes, rates, labels = _columns(index, root)
    ds = tf.data.Dataset.from_tensor_slices((paths.astype(str), codes, rates, labels))
    ds = ds.map(_loader(audio), num_parallel_calls=_parallel(data), deterministic=True)
    if data.cache == "memory":
        ds = ds.cache()
    return _no_autotune(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def train_dataset(index: pd.DataFrame, root, audio: AudioParams, data: DataParams, *,
                  batch_size: int, seed: int, start_epoch: int, epochs: int,
                  targets: np.ndarray | None = None) -> tuple[tf.data.Dataset, int]:
    """Shuffled training batches for epochs ``start_epoch .. epochs-1``, and steps per epoch.

    ``targets`` (float ``[N, D]``, one row per clip of ``index``) replace the integer labels as
    the batches' second element (knowledge distillation: the label and the teacher's logits).

    Each epoch is a full stateless permutation seeded by ``(seed, epoch)``: the data order
    repeats for a seed, changes every epoch and does not depend on where a run resumed.
    With ``data.cache == "memory"`` decoded clips are cached after the first pass (the
    permutation then indexes the cache, so the order is the same as without caching).
    """
    if len(index) == 0:
        raise ValueError("the training split is empty")
    n = len(index)
    steps = int(np.ceil(n / batch_size))
    paths, codes, rates, labels = _columns(index, root)
    if targets is not None:
        targets = np.asarray(targets, np.float32)
        if targets.ndim != 2 or len(targets) != n:
            raise ValueError(f"targets must be [{n}, D] (one row per clip), got shape {targets.shape}")
    load = _loader(audio)
    parallel = _parallel(data)

    if data.cache == "memory":
        # Decode once into memory (same decode path), then index the cached tensor per epoch.
        waves = np.stack([w for w, _ in eval_dataset(index, root, audio, DataParams(cache="none"),
                                                     batch_size=256).unbatch().as_numpy_iterator()])
        table = tf.constant(waves)

        def fetch(i):
            return tf.gather(table, i), tf.gather(labels, i)
    else:
        t_paths, t_codes = tf.constant(paths.astype(str)), tf.constant(codes)
        t_rates, t_labels = tf.constant(rates), tf.constant(labels)

        def fetch(i):
            return load(tf.gather(t_paths, i), tf.gather(t_codes, i), tf.gather(t_rates, i),
                        tf.gather(t_labels, i))

    def fetch_batch(batch_indices):  # [b] -> ([b, samples], [b])
        return tf.map_fn(fetch, batch_indices, fn_output_signature=(tf.float32, tf.int32))

    if targets is not None:
        t_targets = tf.constant(targets)
        plain_batch = fetch_batch

        def fetch_batch(batch_indices):  # [b] -> ([b, samples], [b, D])
            waves, _ = plain_batch(batch_indices)
            return waves, tf.gather(t_targets, batch_indices)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int32), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)  # batches of clip indices

    # Batches never span two epochs; one top-level parallel map decodes whole batches (no parallel
    # stage nested inside flat_map, whose iterator teardown was seen to deadlock under load).
    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(epoch_batches)
    ds = ds.map(fetch_batch, num_parallel_calls=parallel, deterministic=True)
    return _no_autotune(ds.prefetch(tf.data.AUTOTUNE)), steps


def representative_waveforms(index: pd.DataFrame, root, audio: AudioParams, n: int, seed: int) -> np.ndarray:
    """``n`` seeded-random training clips as float32 ``[n, samples]`` (for int8 calibration)."""
    rng = np.random.default_rng(seed)
    pick = index.iloc[np.sort(rng.choice(len(index), size=min(n, len(index)), replace=False))]
    return np.concatenate([w for w, _ in eval_dataset(pick, root, audio, DataParams(), 64).as_numpy_iterator()])
