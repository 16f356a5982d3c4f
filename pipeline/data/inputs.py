"""tf.data input pipelines: WAV files -> (waveform [samples], label) batches.

Waveforms, not spectrograms, leave the CPU: the log-mel front end is the first layer of
the model, so on a GPU it runs there. Per clip::

    read bytes -> tensorflow-io decode_wav -> float32 [frames, channels] in [-1, 1]
    -> finite check (error naming the file) -> mono (mean of channels)
    -> resample to audio.sample_rate_hz when the file's rate differs (the project's polyphase
       resampler, :mod:`pipeline.inference.asc_infer.resample`: its NumPy-designed matrix applied with
       tf.signal.frame + tf.matmul, one branch per sample rate present in the index)
    -> crop (keep the start) or zero-pad (at the end) to audio.clip_samples

The header facts (rate, channels, bit depth, encoding) come from the validated index
(:func:`pipeline.data.tau.read_index`), so each file's decode branch is known in advance and a
bad file was already reported by name before any training.

Training order is a stateless, seeded permutation per epoch (``seed``, ``epoch``), so an
interrupted run restarted at epoch k sees exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline.core.config import AudioParams, DataParams
from pipeline.inference.asc_infer.resample import Resampler

logger = logging.getLogger(__name__)

# source rates load_clip can resample when its caller names none (the datasets pass the index's rates)
COMMON_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 192000)

# decode branches, by (encoding, bits)
_FORMAT_CODES = {("pcm", 16): 0, ("pcm", 24): 1, ("pcm", 32): 2, ("float", 32): 3}


def _format_code(encoding: str, bits: int) -> int:
    try:
        return _FORMAT_CODES[(encoding, int(bits))]
    except KeyError:
        raise ValueError(f"unsupported WAV format {encoding} {bits}-bit") from None


def _uint(contents: tf.Tensor, pos: tf.Tensor, n: int) -> tf.Tensor:
    """The little-endian unsigned integer of ``n`` bytes at byte ``pos`` of ``contents`` (int64)."""
    digits = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, pos, n), tf.uint8), tf.int64)  # [n]
    return tf.reduce_sum(digits * tf.constant([256**i for i in range(n)], tf.int64))


def _little_endian(value: tf.Tensor, n: int) -> tf.Tensor:
    """``value`` as a string of ``n`` little-endian bytes."""
    shifts = tf.constant([8 * i for i in range(n)], tf.int64)
    digits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.cast(value, tf.int64), shifts), 255)  # [n]
    return tf.strings.reduce_join(tf.gather(tf.constant([bytes([i]) for i in range(256)]), digits))


def canonical_wav(contents: tf.Tensor) -> tf.Tensor:
    """Rewrite WAV bytes to the layout tensorflow-io reads: ``RIFF``, a 16-byte ``fmt `` chunk, ``data``.

    tensorflow-io 0.37.1 does not skip the pad byte that follows every odd-sized RIFF chunk: a
    WAV with an odd-sized chunk before ``data`` decodes to 0 frames, and one whose odd-sized
    ``data`` chunk (24-bit mono, odd frame count) is followed by its pad byte, or by more
    chunks, fails with "EOF reached". This walks the chunks as RIFF says (as
    :mod:`pipeline.inference.asc_infer.wavfile` does) and keeps only the format fields (the sub-format's
    tag for WAVE_FORMAT_EXTENSIBLE) and the whole frames of the ``data`` chunk, so tensorflow-io
    decodes exactly the frames the header check counted.

    Args:
      contents: scalar string tensor, the whole file (already validated by ``prepare``).

    Returns:
      scalar string tensor: a 44-byte canonical header followed by the frames' bytes.
    """
    size = tf.cast(tf.strings.length(contents), tf.int64)
    none = tf.constant(-1, tf.int64)

    def more(pos, fmt_pos, data_pos):
        return tf.logical_and(data_pos < 0, pos + 8 <= size)

    def step(pos, fmt_pos, data_pos):
        cid, csize = tf.strings.substr(contents, pos, 4), _uint(contents, pos + 4, 4)
        fmt_pos = tf.where(tf.equal(cid, b"fmt "), pos, fmt_pos)
        data_pos = tf.where(tf.equal(cid, b"data"), pos, data_pos)
        return pos + 8 + csize + csize % 2, fmt_pos, data_pos  # odd-sized chunks: one pad byte

    _, fmt_pos, data_pos = tf.while_loop(more, step, (tf.constant(12, tf.int64), none, none))
    found = tf.debugging.Assert(tf.logical_and(fmt_pos >= 0, data_pos >= 0), ["no 'fmt ' or 'data' chunk"])
    with tf.control_dependencies([found]):
        fmt = fmt_pos + 8  # the fmt chunk's body
    tag = _uint(contents, fmt, 2)
    tag = tf.cond(tf.equal(tag, 0xFFFE), lambda: _uint(contents, fmt + 24, 2), lambda: tag)
    block_align = tf.maximum(_uint(contents, fmt + 12, 2), 1)
    data_bytes = tf.minimum(_uint(contents, data_pos + 4, 4), size - data_pos - 8)
    data_bytes -= data_bytes % block_align  # whole frames
    return tf.strings.join(
        [
            b"RIFF",
            _little_endian(36 + data_bytes, 4),
            b"WAVEfmt ",
            _little_endian(16, 4),
            _little_endian(tag, 2),
            tf.strings.substr(contents, fmt + 2, 14),
            b"data",
            _little_endian(data_bytes, 4),
            tf.strings.substr(contents, data_pos + 8, data_bytes),
        ]
    )


def decode_wav(contents: tf.Tensor, format_code: tf.Tensor) -> tf.Tensor:
    """Decode WAV bytes with tensorflow-io into float32 ``[frames, channels]`` in [-1, 1].

    Args:
      contents: scalar string tensor, the whole file.
      format_code: scalar int32: 0 PCM16, 1 PCM24, 2 PCM32, 3 float32.

    The bytes are first rewritten by :func:`canonical_wav` (tensorflow-io misreads RIFF chunk
    padding), so the frames decoded are those :func:`pipeline.inference.asc_infer.wavfile.read_frames`
    reads, with the same values. tensorflow-io 0.37.1 returns 24-bit PCM left-aligned in int32
    (scaled by 2^8) and reads 32-bit PCM as if it were float32; the PCM32 branch therefore
    bit-casts the "float" result back to the int32 samples it holds.
    """
    import tensorflow_io as tfio

    contents = canonical_wav(contents)

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


@functools.lru_cache(maxsize=64)
def _resampler(orig_rate: int, target_rate: int) -> Resampler:
    """The (cached) polyphase filter design for one pair of rates."""
    return Resampler(orig_rate, target_rate)


def polyphase_resample(x: tf.Tensor, resampler: Resampler, max_out: int | None = None) -> tf.Tensor:
    """Apply ``resampler`` (its NumPy-designed matrix) with TensorFlow ops.

    Computes the same samples as ``resampler(x)`` (float32 sums in another order: within ~1e-6): the input
    is zero-padded by ``pad_left`` on the left, cut into frames of ``frame_len`` samples every
    ``down`` samples (``tf.signal.frame``) and multiplied by ``resampler.matrix`` (``tf.matmul``).

    Args:
      x: float32 ``[n_in]``.
      resampler: the filter design (``Resampler(orig_rate, target_rate)``).
      max_out: compute only the first ``max_out`` output samples (None: all).

    Returns:
      float32 ``[min(resampler.output_length(n_in), max_out)]``.
    """
    if resampler.identity:
        return x if max_out is None else x[:max_out]
    up, down, frame_len, pad = resampler.up, resampler.down, resampler.frame_len, resampler.pad_left
    n_in = tf.shape(x, out_type=tf.int64)[0]
    n_out = (n_in * up + down - 1) // down
    if max_out is not None:
        n_out = tf.minimum(n_out, max_out)
    blocks = (n_out + up - 1) // up
    need = tf.maximum(blocks - 1, 0) * down + frame_len  # padded input samples the blocks read
    take = tf.clip_by_value(need - pad, 0, n_in)
    padded = tf.pad(x[:take], tf.stack([[tf.constant(pad, tf.int64), need - pad - take]]))  # [need]
    frames = tf.signal.frame(padded, frame_len, down)  # [max(blocks, 1), frame_len]
    y = tf.matmul(frames, tf.constant(resampler.matrix))  # [blocks, up]
    return tf.reshape(y, [-1])[:n_out]


def resample(
    x: tf.Tensor,
    sample_rate: tf.Tensor,
    *,
    target_rate: int,
    source_rates: Iterable[int],
    max_out: int | None = None,
    name=None,
) -> tf.Tensor:
    """Resample ``x`` float32 ``[n]`` from its (run-time) ``sample_rate`` to ``target_rate``.

    One :func:`polyphase_resample` branch per rate of ``source_rates`` (plus the identity at
    ``target_rate``), chosen with ``tf.switch_case``. A rate outside ``source_rates`` fails with
    an error naming it (and ``name``, e.g. the file path).

    Returns:
      float32 ``[min(ceil(n * target_rate / sample_rate), max_out)]``.
    """
    rates = sorted({int(r) for r in source_rates} | {int(target_rate)})
    designs = [_resampler(r, int(target_rate)) for r in rates]  # ValueError naming both rates if refused
    hit = tf.equal(tf.constant(rates, tf.int64), tf.cast(sample_rate, tf.int64))
    found = tf.debugging.Assert(
        tf.reduce_any(hit),
        ["no resampler for sample rate", sample_rate, "Hz (file:", "" if name is None else name, ")"],
    )
    with tf.control_dependencies([found]):
        branch = tf.argmax(tf.cast(hit, tf.int32), output_type=tf.int32)
    branches = [functools.partial(polyphase_resample, x, d, max_out) for d in designs]
    if len(branches) == 1:
        with tf.control_dependencies([found]):
            return tf.identity(branches[0]())
    return tf.switch_case(branch, branches)


def load_clip(
    path,
    format_code,
    sample_rate,
    *,
    target_rate: int,
    clip_samples: int,
    source_rates: Iterable[int] = COMMON_RATES,
    frames=None,
) -> tf.Tensor:
    """Read, decode, check, downmix, resample and crop/pad one clip -> float32 ``[clip_samples]``.

    Args:
      path: scalar string tensor. format_code: scalar int32 (see :func:`decode_wav`).
      sample_rate: scalar int64, the file's rate (from the index).
      target_rate, clip_samples: the model's rate and clip length.
      source_rates: the file rates to build resampling branches for (the index's rates;
        ``COMMON_RATES`` by default).
      frames: the header's frame count (``pipeline.inference.asc_infer.wavfile``); when given, a decoded
        length that differs is an error naming the file. Without it, zero decoded frames is one
        (tensorflow-io 0.37.1 decodes a WAV with an odd-sized chunk before ``data`` to 0 frames).

    Raises:
      tf.errors.InvalidArgumentError: naming the file: non-finite samples, a decoded length that
        disagrees with the header (or 0 frames), a sample rate outside ``source_rates``.
    """
    audio = decode_wav(tf.io.read_file(path), format_code)  # [frames, channels]
    decoded = tf.shape(audio, out_type=tf.int64)[0]
    if frames is None:
        length_ok = tf.debugging.Assert(decoded > 0, ["decoded 0 frames from", path])
    else:
        length_ok = tf.debugging.Assert(
            tf.equal(decoded, tf.cast(frames, tf.int64)),
            ["decoded", decoded, "frames from", path, "but its header announces", frames],
        )
    finite = tf.reduce_all(tf.math.is_finite(audio))
    with tf.control_dependencies(
        [length_ok, tf.debugging.Assert(finite, ["non-finite samples (NaN or inf) in", path])]
    ):
        audio = tf.identity(audio)
    mono = tf.reduce_mean(audio, axis=1)  # [frames]
    wave = resample(
        mono, sample_rate, target_rate=target_rate, source_rates=source_rates, max_out=clip_samples, name=path
    )  # [<= clip_samples]
    wave = tf.pad(wave, [[0, clip_samples - tf.shape(wave)[0]]])  # [clip_samples]
    return tf.ensure_shape(wave, [clip_samples])


def _columns(index: pd.DataFrame, root: Path):
    paths = np.array([os.fspath(Path(root) / f) for f in index.filename], dtype=object)
    codes = np.array([_format_code(e, b) for e, b in zip(index.encoding, index.bits, strict=True)], dtype=np.int32)
    rates = index.sample_rate.to_numpy(dtype=np.int64)
    labels = index.label.to_numpy(dtype=np.int32)
    return paths, codes, rates, labels


def _frames(index: pd.DataFrame) -> np.ndarray | None:
    """The header frame counts of the index (None for an index read without its headers)."""
    return index.frames.to_numpy(np.int64) if "frames" in index.columns else None


def _loader(audio: AudioParams, rates: np.ndarray, paths: np.ndarray | None = None, frames: np.ndarray | None = None):
    """``load(path, code, rate, label) -> (wave, label)``, with resampling branches for ``rates``.

    With ``paths`` and ``frames`` (the index's header frame counts), every decoded clip must hold
    exactly the frames its header announced (checked against the one reader's count).
    """
    clip = audio.clip_samples
    source_rates = tuple(sorted({int(r) for r in rates}))
    table = None
    if paths is not None and frames is not None and len(paths) and int(np.min(frames)) > 0:
        unique = pd.Series(np.asarray(frames, np.int64), index=np.asarray(paths, dtype=str))
        unique = unique[~unique.index.duplicated()]
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(unique.index.to_numpy(dtype=str)), tf.constant(unique.to_numpy(), tf.int64)
            ),
            default_value=-1,
        )

    def load(path, code, rate, label):
        expected = None if table is None else table.lookup(path)
        wave = load_clip(
            path,
            code,
            rate,
            target_rate=audio.sample_rate_hz,
            clip_samples=clip,
            source_rates=source_rates,
            frames=expected,
        )
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


def eval_dataset(index: pd.DataFrame, root, audio: AudioParams, data: DataParams, batch_size: int) -> tf.data.Dataset:
    """Ordered (no shuffle) batches of ``(waveform [B, samples], label [B])`` in index order."""
    paths, codes, rates, labels = _columns(index, root)
    ds = tf.data.Dataset.from_tensor_slices((paths.astype(str), codes, rates, labels))
    ds = ds.map(_loader(audio, rates, paths, _frames(index)), num_parallel_calls=_parallel(data), deterministic=True)
    if data.cache == "memory":
        ds = ds.cache()
    return _no_autotune(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def train_dataset(
    index: pd.DataFrame,
    root,
    audio: AudioParams,
    data: DataParams,
    *,
    batch_size: int,
    seed: int,
    start_epoch: int,
    epochs: int,
    targets: np.ndarray | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[tf.data.Dataset, int]:
    """Shuffled training batches for epochs ``start_epoch .. epochs-1``, and steps per epoch.

    ``targets`` (float ``[N, D]``, one row per clip of ``index``) replace the integer labels as
    the batches' second element (knowledge distillation: the label and the teacher's logits).

    Each epoch is a full stateless permutation seeded by ``(seed, epoch)``: the data order
    repeats for a seed, changes every epoch and does not depend on where a run resumed.
    With ``data.cache == "memory"`` decoded clips are cached after the first pass (the
    permutation then indexes the cache, so the order is the same as without caching).

    ``shard=(w, W)`` (multi-worker training, worker ``w`` of ``W``): every worker computes the
    same permutation and the same global batches of ``batch_size`` clip indices, and keeps only
    its contiguous slice ``[b*w//W, b*(w+1)//W)`` of each (``b`` the batch's size, ``batch_size``
    but for an epoch's last batch) before decoding: each clip is read by one worker once per
    epoch, the workers' slices together are exactly the single-worker batch, and ``steps`` is
    unchanged. The dataset's auto-shard policy is set OFF: it is sharded here, so tf.distribute
    must not shard it again (FILE would fail on an in-memory source, DATA would keep 1/W of the
    already-sliced batches). ``shard=None`` is the single-worker pipeline, unchanged.

    Returns:
      ``(dataset of (waveforms [b, samples], labels [b] or targets [b, D]), steps per epoch)``.
    """
    if shard is not None and not (0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (worker, workers) with 0 <= worker < workers, got {shard}")
    if len(index) == 0:
        raise ValueError("the training split is empty")
    n = len(index)
    steps = int(np.ceil(n / batch_size))
    paths, codes, rates, labels = _columns(index, root)
    if targets is not None:
        targets = np.asarray(targets, np.float32)
        if targets.ndim != 2 or len(targets) != n:
            raise ValueError(f"targets must be [{n}, D] (one row per clip), got shape {targets.shape}")
    load = _loader(audio, rates, paths, _frames(index))
    parallel = _parallel(data)

    if data.cache == "memory":
        # Decode once into memory (same decode path), then index the cached tensor per epoch.
        waves = np.stack(
            [
                w
                for w, _ in eval_dataset(index, root, audio, DataParams(cache="none"), batch_size=256)
                .unbatch()
                .as_numpy_iterator()
            ]
        )
        table = tf.constant(waves)

        def fetch(i):
            return tf.gather(table, i), tf.gather(labels, i)
    else:
        t_paths, t_codes = tf.constant(paths.astype(str)), tf.constant(codes)
        t_rates, t_labels = tf.constant(rates), tf.constant(labels)

        def fetch(i):
            return load(tf.gather(t_paths, i), tf.gather(t_codes, i), tf.gather(t_rates, i), tf.gather(t_labels, i))

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
            tf.range(n, dtype=tf.int32), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)  # batches of clip indices
        if shard is None:
            return batches
        worker, workers = shard

        def mine(batch):  # this worker's contiguous slice of a global batch
            b = tf.shape(batch, out_type=tf.int32)[0]
            return batch[(b * worker) // workers : (b * (worker + 1)) // workers]

        return batches.map(mine)

    # Batches never span two epochs; one top-level parallel map decodes whole batches (no parallel
    # stage nested inside flat_map, whose iterator teardown was seen to deadlock under load).
    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(epoch_batches)
    ds = ds.map(fetch_batch, num_parallel_calls=parallel, deterministic=True)
    ds = _no_autotune(ds.prefetch(tf.data.AUTOTUNE))
    if shard is not None:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
    return ds, steps


def representative_waveforms(index: pd.DataFrame, root, audio: AudioParams, n: int, seed: int) -> np.ndarray:
    """``n`` seeded-random training clips as float32 ``[n, samples]`` (for int8 calibration)."""
    rng = np.random.default_rng(seed)
    pick = index.iloc[np.sort(rng.choice(len(index), size=min(n, len(index)), replace=False))]
    return np.concatenate([w for w, _ in eval_dataset(pick, root, audio, DataParams(), 64).as_numpy_iterator()])
