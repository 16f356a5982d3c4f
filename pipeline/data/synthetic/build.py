"""``generate``: check the arguments, reuse a finished set or render every clip (in worker
processes) and write the tables and completion record last."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.synthetic import layout
from pipeline.data.synthetic.devices import render_device
from pipeline.data.synthetic.plan import (
    CITIES,
    MIN_CLIPS,
    Recording,
    Stream,
    plan_recordings,
    stream_rng,
)
from pipeline.data.synthetic.scenes import render_scene
from pipeline.data.synthetic.wav import write_wav24

logger = logging.getLogger(__name__)


def _check(n_clips, seed, sample_rate_hz, clip_seconds, n_cities, workers) -> int:
    """Validate ``generate``'s arguments (the message names the argument); returns the
    samples per clip."""

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(n_clips) or n_clips < MIN_CLIPS:
        raise ValueError(f"n_clips={n_clips!r}: need an integer >= {MIN_CLIPS} (every class and device in both splits)")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed={seed!r}: need a non-negative integer")
    if not is_int(sample_rate_hz) or not 8000 <= sample_rate_hz <= 192000:
        raise ValueError(f"sample_rate_hz={sample_rate_hz!r}: need an integer in [8000, 192000]")
    if (
        not isinstance(clip_seconds, (int, float))
        or isinstance(clip_seconds, bool)
        or not math.isfinite(clip_seconds)
        or clip_seconds <= 0
    ):
        raise ValueError(f"clip_seconds={clip_seconds!r}: need a positive number")
    n_samples = int(round(sample_rate_hz * clip_seconds))
    if n_samples < 256:
        raise ValueError(
            f"clip_seconds={clip_seconds!r}: {n_samples} samples at {sample_rate_hz} Hz; need at least 256"
        )
    if not is_int(n_cities) or not 1 <= n_cities <= len(CITIES):
        raise ValueError(f"n_cities={n_cities!r}: need an integer in [1, {len(CITIES)}]")
    if not is_int(workers) or workers < 0:
        raise ValueError(f"workers={workers!r}: need an integer >= 0 (0 = all cores)")
    return n_samples


def _completion_params(n_clips, seed, sample_rate_hz, clip_seconds, n_cities) -> dict:
    """What the bytes of a set depend on: the completion record's ``params``."""
    return {
        "generator": layout.GENERATOR,
        "version": layout.GENERATOR_VERSION,
        "n_clips": int(n_clips),
        "seed": int(seed),
        "sample_rate_hz": int(sample_rate_hz),
        "clip_seconds": float(clip_seconds),
        "n_cities": int(n_cities),
    }


@dataclass(frozen=True)
class _Job:
    root: str
    seed: int
    sample_rate_hz: int
    n_samples: int


def _render_recordings(job: _Job, recordings: Sequence[Recording]) -> int:
    """Worker: render and write every clip of ``recordings``; returns the clip count."""
    root = Path(job.root)
    sr, n = job.sample_rate_hz, job.n_samples
    done = 0
    for rec in recordings:
        scene = render_scene(job.seed, rec, sr, n)
        for clip_index, device, filename in rec.clips:
            rng = stream_rng(job.seed, Stream.CLIP, clip_index)
            write_wav24(root / filename, render_device(scene, device, rng, sr, n), sr)
            done += 1
    return done


def _render_all(job: _Job, chunks: list, workers: int, n_clips: int, progress: bool) -> None:
    """Render every chunk of recordings, in this process or in ``workers`` spawned ones."""
    from tqdm.auto import tqdm

    with tqdm(total=n_clips, unit="clip", desc="synthetic dataset", disable=not progress) as bar:
        if workers == 1:
            for part in chunks:
                bar.update(_render_recordings(job, part))
            return
        # "spawn" is safe with threads (TensorFlow) in the parent; an executor (unlike
        # multiprocessing.Pool) fails instead of hanging when a worker process dies
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_render_recordings, job, part) for part in chunks]
            try:
                for future in as_completed(futures):
                    bar.update(future.result())
            except BrokenProcessPool as err:
                raise RuntimeError(
                    f"a synthetic-dataset worker process died while writing {job.root}; nothing "
                    "was marked complete. If generate() runs from a script, call it under "
                    "'if __name__ == \"__main__\":' (worker processes re-import the "
                    "script)"
                ) from err
            finally:
                for future in futures:
                    future.cancel()


def generate(
    root: str | os.PathLike,
    *,
    n_clips: int,
    seed: int,
    sample_rate_hz: int = 44100,
    clip_seconds: float = 1.0,
    n_cities: int = 6,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Write the synthetic dataset under ``root`` (or reuse it when already complete).

    Args:
      root: the dataset directory. Created if missing; if it exists it must be empty or a
        directory this function wrote before (it is then emptied and rewritten unless its
        completion marker matches the parameters).
      n_clips: clips in the whole set (train + evaluate), at least ``MIN_CLIPS``.
      seed: non-negative integer; the bytes written depend only on the parameters.
      sample_rate_hz: sampling rate of the WAV files.
      clip_seconds: length of every clip.
      n_cities: how many of ``CITIES`` the locations are spread over (1-10).
      workers: generator processes; 0 = ``os.cpu_count()``, 1 = in this process.
      progress: show a tqdm progress bar.

    With ``workers`` > 1 the clips are rendered in "spawn" worker processes, so a script that
    calls this at import time needs the usual ``if __name__ == "__main__":`` guard.

    Returns:
      ``Path(root)``.

    Raises:
      ValueError: a parameter is out of range (the message names it).
      FileExistsError: ``root`` holds other files than a set written by this module.
    """
    n_samples = _check(n_clips, seed, sample_rate_hz, clip_seconds, n_cities, workers)
    root = Path(root)
    params = _completion_params(n_clips, seed, sample_rate_hz, clip_seconds, n_cities)
    if layout.is_complete(root, params):
        logger.info("reusing the synthetic dataset at %s (%d clips, seed %d)", root, n_clips, seed)
        layout.write_splits(root, seed, missing_only=True)  # a set generated before the lists existed
        return root
    if (root / layout.MARKER).exists():
        logger.info("synthetic dataset at %s has other parameters; regenerating", root)

    started = time.perf_counter()
    recordings = plan_recordings(n_clips, seed, n_cities)
    layout.reset(root)
    (root / "audio").mkdir()
    (root / "evaluation_setup").mkdir()
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(16, len(recordings) // (4 * workers)))
    chunks = [recordings[i : i + chunk] for i in range(0, len(recordings), chunk)]
    workers = min(workers, len(chunks))
    logger.info(
        "generating %d synthetic clips (%d recordings) in %s with %d worker(s)", n_clips, len(recordings), root, workers
    )
    _render_all(_Job(str(root), int(seed), int(sample_rate_hz), n_samples), chunks, workers, n_clips, progress)
    counts = layout.write_tables(root, recordings)
    layout.write_splits(root, seed)
    layout.write_completion_record(root, params, counts)
    logger.info("wrote %d synthetic clips to %s in %.1f s", n_clips, root, time.perf_counter() - started)
    return root
