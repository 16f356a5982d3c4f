"""Speed of the synthetic dataset generator: clips written per second.

Usage::

    python benchmarks/bench_synthetic.py [--clips 10000] [--workers 2] [--sample-rate-hz 44100]
                                         [--clip-seconds 1.0] [--seed 0] [--root DIR]

Generates the set into a temporary directory (removed afterwards unless ``--root`` is
given) and prints one JSON object: clips, seconds, clips_per_second, workers, the audio
format and the bytes of audio written. Target: 10,000 one-second 44.1 kHz clips in under
two minutes on two cores. Other work on the machine slows it down: note the load average
printed alongside.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from pipeline.data import synthetic


def run(root: Path, clips: int, workers: int, sample_rate_hz: int, clip_seconds: float, seed: int) -> dict:
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    synthetic.generate(
        root,
        n_clips=clips,
        seed=seed,
        sample_rate_hz=sample_rate_hz,
        clip_seconds=clip_seconds,
        workers=workers,
        progress=False,
    )
    seconds = time.perf_counter() - started
    audio_bytes = sum(e.stat().st_size for e in os.scandir(root / "audio"))
    return {
        "clips": clips,
        "seconds": round(seconds, 2),
        "clips_per_second": round(clips / seconds, 1),
        "workers": workers or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "sample_rate_hz": sample_rate_hz,
        "clip_seconds": clip_seconds,
        "audio_bytes": audio_bytes,
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2, help="0 = all cores")
    parser.add_argument("--sample-rate-hz", type=int, default=44100)
    parser.add_argument("--clip-seconds", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="write the set here and keep it (a new directory or one written "
        "by the generator before; it is regenerated)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = dict(
        clips=args.clips,
        workers=args.workers,
        sample_rate_hz=args.sample_rate_hz,
        clip_seconds=args.clip_seconds,
        seed=args.seed,
    )
    if args.root is not None:
        marker = args.root / synthetic.MARKER
        if marker.exists():
            marker.unlink()  # force a fresh generation so that the timing means something
        result = run(args.root, **settings)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-synthetic-") as tmp:
            result = run(Path(tmp) / "set", **settings)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
