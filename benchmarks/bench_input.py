"""Input and front end: clips/s of read + decode + resample + log-mel, the project's tf.data path vs librosa.

Usage::

    python benchmarks/bench_input.py [--quick] [--clips 256] [--passes 3] [--rounds 2] [--batch 32]
                                     [--config default] [--root DIR] [--mlflow]

Writes two synthetic sets (``pipeline.data.synthetic.generate``: 1-second, 24-bit mono WAV files), one
at 44.1 kHz and one at 48 kHz, into a temporary directory (or ``--root``, kept and reused), and
reads every file of each set to a log-mel spectrogram in two ways, with the same parameters
(``configs/<config>.yaml``'s audio section: 44.1 kHz, n_fft 2048, hop 1024, centred reflect-padded
frames, Slaney mel filter bank, power 2, natural log with offset 1e-10; 128 mels by default):

* ``librosa``: the common way in DCASE code, one file after the other in one process:
  ``librosa.load(path, sr=44100)`` (soundfile + soxr "soxr_hq" resampling when the file is at
  48 kHz), ``librosa.util.fix_length`` to 1 s, ``librosa.feature.melspectrogram``, ``np.log``.
* ``tfdata``: the project's pipeline, ``pipeline.data.inputs.eval_dataset`` (tensorflow-io decode,
  downmix, the project's polyphase resampler (``pipeline.inference.asc_infer.resample``: a Kaiser-windowed
  sinc matrix applied with ``tf.signal.frame`` + ``tf.matmul``), crop/pad;
  ``data.num_parallel_calls`` AUTOTUNE, batches of ``--batch``) with the project's ``LogMel``
  layer (``models.asc.frontend``) called once per batch in a ``tf.function``. TensorFlow uses its
  default thread pools (all cores).
* ``tfdata_1thread``: the same with one thread everywhere (intra-op and inter-op pools, the
  tf.data private pool, ``num_parallel_calls=1``): a per-core comparison with librosa.
* ``tfdata_tfio_resample`` (48 kHz files only; the previous code, for comparison): the same
  pipeline with the project's resampler swapped, in the child process only, for
  ``tfio.audio.resample`` (tensorflow-io's Speex resampler, run through ``tf.vectorized_map``),
  which the pipeline used before the polyphase resampler replaced it.

A last child times the resampler alone, NumPy against soxr: ``Resampler(orig, 44100)(x)`` and
``soxr.resample(x, orig, 44100, quality="HQ")`` on 10 s of noise at 48, 22.05 and 16 kHz
(``resampler_numpy_vs_soxr``: ms per second of audio, median of ``--passes`` x 5 calls each,
interleaved).

Each case runs in a fresh child process (so its peak resident memory is its own; see
``_common.run_child``) that makes one untimed warm-up pass over the files (page cache, tracing,
numba) and then ``--passes`` timed passes. ``--rounds`` repeats all children in turn, so that the
cases share the machine's load; the figures are medians over all timed passes. The tf.data child
also times the two halves separately: read + decode + resample alone, and the LogMel layer alone
on the decoded batches held in memory. The librosa child splits its time into load and features.

Prints one JSON object: per sample rate and case ``clips_per_s`` (clips / median pass seconds),
the pass times, the phase split, peak memory; ``ratio_*`` = tf.data clips/s / librosa clips/s
(> 1: the project's pipeline is faster); ``resampler_numpy_vs_soxr``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import _common

RATES = (44100, 48000)
CASES = ("librosa", "tfdata", "tfdata_1thread", "tfdata_tfio_resample")
RESAMPLING_ONLY = ("tfdata_tfio_resample",)  # cases that differ only where the file is resampled


def _files(root: str) -> list[str]:
    from pipeline.data import tau as data

    index = data.read_index(root)
    names = index.filename.drop_duplicates().tolist()
    return [os.fspath(Path(root) / name) for name in names]


def _audio(config_name: str, n_mels: int):
    from pipeline.core import config

    return config.load(config_name, [f"audio.n_mels={n_mels}"])


# --------------------------------------------------------------------------- measured cases (children)


def librosa_case(root: str, config_name: str, n_mels: int, passes: int) -> dict:
    """librosa.load (+ resample) -> fix_length -> melspectrogram -> log, file by file."""
    import time

    import librosa
    import numpy as np

    _common.memory_mark("imports")
    a = _audio(config_name, n_mels).audio
    files = _files(root)
    kwargs = {
        "sr": a.sample_rate_hz,
        "n_fft": a.n_fft,
        "win_length": a.win_length,
        "hop_length": a.hop_length,
        "n_mels": a.n_mels,
        "fmin": a.fmin_hz,
        "fmax": a.fmax_hz,
        "window": a.window,
        "center": a.center,
        "pad_mode": "reflect",
        "power": a.power,
        "htk": a.mel_scale == "htk",
        "norm": "slaney",
    }
    if a.log != "natural":
        raise ValueError(f"bench_input compares the natural log front end, config has audio.log={a.log!r}")
    _common.memory_mark("setup")

    def one_pass():
        t_load = t_feat = 0.0
        shape = None
        for path in files:
            t0 = time.perf_counter()
            y, _ = librosa.load(path, sr=a.sample_rate_hz, mono=True)  # soxr_hq when rates differ
            y = librosa.util.fix_length(y, size=a.clip_samples)
            t1 = time.perf_counter()
            mel = librosa.feature.melspectrogram(y=y, **kwargs)  # [n_mels, frames]
            logmel = np.log(mel + a.log_offset)
            t2 = time.perf_counter()
            t_load, t_feat, shape = t_load + t1 - t0, t_feat + t2 - t1, logmel.shape
        return t_load, t_feat, shape

    one_pass()  # warm-up: page cache, numba, FFT plans
    totals, loads, feats = [], [], []
    for _ in range(passes):
        start = time.perf_counter()
        t_load, t_feat, shape = one_pass()
        totals.append(time.perf_counter() - start)
        loads.append(t_load)
        feats.append(t_feat)
    _common.memory_mark("run")
    return {
        "clips": len(files),
        "pass_s": totals,
        "load_s": loads,
        "features_s": feats,
        "output_shape": list(shape),
        "res_type": "soxr_hq",
    }


def tfio_resample(x, sample_rate, *, target_rate, source_rates, max_out=None, name=None):
    """``pipeline.data.inputs.resample``'s signature, computed by ``tfio.audio.resample`` (the previous code)."""
    import tensorflow as tf
    import tensorflow_io as tfio

    def speex():
        y = tfio.audio.resample(x[:, None], rate_in=tf.cast(sample_rate, tf.int64), rate_out=target_rate)
        return y[:, 0] if max_out is None else y[:max_out, 0]

    same = tf.equal(tf.cast(sample_rate, tf.int64), target_rate)
    return tf.cond(same, lambda: x if max_out is None else x[:max_out], speex)


def resampler_speed(passes: int, seconds: float = 10.0) -> dict:
    """ms per second of audio: ``pipeline.inference.asc_infer.resample.Resampler`` vs ``soxr.resample`` HQ."""
    import numpy as np
    import soxr

    from pipeline.inference.asc_infer.resample import Resampler

    out = {}
    for orig in (48000, 22050, 16000):
        x = np.random.default_rng(0).uniform(-0.5, 0.5, int(seconds * orig)).astype(np.float32)
        resampler = Resampler(orig, 44100)
        times = _common.interleaved(
            {
                "numpy": lambda r=resampler, x=x: [r(x) for _ in range(5)],
                "soxr_hq": lambda o=orig, x=x: [soxr.resample(x, o, 44100, quality="HQ") for _ in range(5)],
            },
            passes,
            warmup=1,
        )
        ms = {k: round(1000 * _common.median(v) / 5 / seconds, 4) for k, v in times.items()}
        out[f"{orig}hz"] = {
            "numpy_ms_per_audio_s": ms["numpy"],
            "soxr_hq_ms_per_audio_s": ms["soxr_hq"],
            "ratio_numpy_vs_soxr_speed": _common.ratio(ms["soxr_hq"], ms["numpy"]),
            "up": resampler.up,
            "down": resampler.down,
            "frame_len": resampler.frame_len,
        }
    return out


def tfdata_case(
    root: str, config_name: str, n_mels: int, passes: int, batch: int, one_thread: bool, tfio_resampler: bool = False
) -> dict:
    """pipeline.data.inputs.eval_dataset -> LogMel per batch (tf.function); optionally on one thread."""
    import time  # noqa: I001  (pipeline.core.env must come before TensorFlow)

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)
    import tensorflow as tf

    if one_thread:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from models import asc
    from pipeline.data import inputs
    from pipeline.data import tau as data

    if tfio_resampler:  # the previous code: the pipeline with tensorflow-io's resampler (this child only)
        inputs.resample = tfio_resample
    _common.memory_mark("imports")
    overrides = [f"audio.n_mels={n_mels}"] + (["data.num_parallel_calls=1"] if one_thread else [])
    from pipeline.core import config

    params = config.load(config_name, overrides)
    index = data.read_index(root).drop_duplicates("filename").reset_index(drop=True)
    ds = inputs.eval_dataset(index, root, params.audio, params.data, batch_size=batch)
    if one_thread:
        options = tf.data.Options()
        options.threading.private_threadpool_size = 1
        options.threading.max_intra_op_parallelism = 1
        ds = ds.with_options(options)
    frontend = asc.frontend(params)
    logmel = tf.function(lambda wave: frontend(wave), reduce_retracing=True)
    _common.memory_mark("setup")

    def full():
        n, shape = 0, None
        for wave, _ in ds:
            out = logmel(wave).numpy()  # [B, frames, n_mels, 1]
            n, shape = n + out.shape[0], out.shape[1:]
        return n, shape

    full()  # warm-up: page cache, tracing
    totals = []
    for _ in range(passes):
        start = time.perf_counter()
        n, shape = full()
        totals.append(time.perf_counter() - start)
    _common.memory_mark("run")

    # The two halves alone: decode (tf.data only) and LogMel on decoded batches held in memory.
    waves = [wave for wave, _ in ds]

    def decode_only():
        for wave, _ in ds:
            wave.numpy()

    def logmel_only():
        for wave in waves:
            logmel(wave).numpy()

    halves = _common.interleaved({"decode": decode_only, "logmel": logmel_only}, passes, warmup=1)
    _common.memory_mark("halves")
    return {
        "clips": n,
        "pass_s": totals,
        "decode_only_s": halves["decode"],
        "logmel_only_s": halves["logmel"],
        "output_shape": [int(d) for d in shape],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "resampler": "tfio.audio.resample (speex)" if tfio_resampler else "polyphase (tf.signal.frame + matmul)",
        "num_parallel_calls": params.data.num_parallel_calls,
    }


# --------------------------------------------------------------------------- parent


def _make_sets(base: Path, clips: int, seed: int) -> dict[int, str]:
    from pipeline.data import synthetic

    roots = {}
    for rate in RATES:
        root = base / f"set-{clips}-{rate}"
        synthetic.generate(root, n_clips=clips, seed=seed, sample_rate_hz=rate, workers=2, progress=False)
        roots[rate] = os.fspath(root)
    return roots


def _summarise_case(case: str, runs: list[dict]) -> dict:
    clips = runs[0]["result"]["clips"]
    totals = [t for r in runs for t in r["result"]["pass_s"]]
    med = _common.median(totals)
    out = {
        "clips": clips,
        "clips_per_s": _common.rate(clips, med),
        "ms_per_clip": round(1000 * med / clips, 3),
        "pass": _common.summarize(totals),
        "peak_rss_mb": max(r["memory"]["peak_rss_mb"] for r in runs),
        "memory_phases": runs[-1]["memory"]["phases"],
    }
    res = runs[0]["result"]
    if case == "librosa":
        loads = [t for r in runs for t in r["result"]["load_s"]]
        feats = [t for r in runs for t in r["result"]["features_s"]]
        out["load_ms_per_clip"] = round(1000 * _common.median(loads) / clips, 3)
        out["features_ms_per_clip"] = round(1000 * _common.median(feats) / clips, 3)
        out["res_type"] = res["res_type"]
    else:
        dec = [t for r in runs for t in r["result"]["decode_only_s"]]
        mel = [t for r in runs for t in r["result"]["logmel_only_s"]]
        out["decode_only_clips_per_s"] = _common.rate(clips, _common.median(dec))
        out["logmel_only_clips_per_s"] = _common.rate(clips, _common.median(mel))
        out["decode_only_ms_per_clip"] = round(1000 * _common.median(dec) / clips, 3)
        out["logmel_only_ms_per_clip"] = round(1000 * _common.median(mel) / clips, 3)
        out["intra_op_threads"] = res["intra_op_threads"]
        out["num_parallel_calls"] = res["num_parallel_calls"]
        out["resampler"] = res["resampler"]
    out["output_shape"] = res["output_shape"]
    return out


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--clips", type=int, default=256, help="files per set (one set per sample rate)")
    p.add_argument("--passes", type=int, default=3, help="timed passes over the files per child")
    p.add_argument("--rounds", type=int, default=2, help="times each case's child runs (interleaved)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--config", default="default")
    p.add_argument("--n-mels", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=None, help="generate (or reuse) the sets here and keep them")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.clips, args.passes, args.rounds = 64, 2, 1
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {CASES}")
    load_before = _common.load_average()

    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        base = args.root or Path(tmp)
        roots = _make_sets(base, args.clips, args.seed)
        runs: dict[int, dict[str, list]] = {rate: {c: [] for c in cases} for rate in RATES}
        for r in range(args.rounds):
            for rate in RATES:
                for case in cases:
                    if case in RESAMPLING_ONLY and rate == 44100:
                        continue
                    _common.logger.info("round %d/%d: %s at %d Hz", r + 1, args.rounds, case, rate)
                    if case == "librosa":
                        out = _common.run_child(librosa_case, roots[rate], args.config, args.n_mels, args.passes)
                    else:
                        out = _common.run_child(
                            tfdata_case,
                            roots[rate],
                            args.config,
                            args.n_mels,
                            args.passes,
                            args.batch,
                            case == "tfdata_1thread",
                            case == "tfdata_tfio_resample",
                        )
                    runs[rate][case].append(out)

    figures: dict = {}
    for rate in RATES:
        block = {case: _summarise_case(case, runs[rate][case]) for case in cases if runs[rate][case]}
        if "librosa" in block:
            for case in list(block):
                if case != "librosa":
                    block[f"ratio_{case}_vs_librosa"] = _common.ratio(
                        block[case]["clips_per_s"], block["librosa"]["clips_per_s"]
                    )
        figures[f"file_{rate}hz"] = block
    _common.logger.info("resampler alone: numpy vs soxr")
    figures["resampler_numpy_vs_soxr"] = _common.run_child(resampler_speed, args.passes)["result"]
    settings = {
        "clips": args.clips,
        "passes": args.passes,
        "rounds": args.rounds,
        "batch": args.batch,
        "config": args.config,
        "n_mels": args.n_mels,
        "target_rate_hz": 44100,
        "quick": args.quick,
        "file_format": "WAV PCM 24-bit mono, 1 s",
    }
    _common.emit("input", {"settings": settings, **figures}, args, load_before=load_before)


if __name__ == "__main__":
    main()
