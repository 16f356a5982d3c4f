"""Scaling: the train stage's peak memory and time per epoch against the number of training clips.

Usage::

    python benchmarks/bench_scaling.py [--quick] [--sizes 1000,4000,16000] [--epochs 1] [--eval-clips 64]
                                       [--cache none|memory] [--config default] [--set KEY=VALUE ...]
                                       [--root DIR] [--mlflow]

Generates one synthetic set large enough for the largest size (its train split is 70 % of the
clips), then for each size runs the project's real ``prepare`` and ``train`` stages
(``pipeline.running.runner.run_stages``) in a fresh child process with ``data.max_train_clips=<size>``
(a seeded sample of the train split), ``data.max_eval_clips=--eval-clips`` (a fixed, small
validation cost per epoch), ``data.cache=--cache`` (``none``: clips are read from the files every
step, the case of a dataset that does not fit in memory), ``train.epochs=--epochs`` and an MLflow
store in the temporary directory.

Per size: ``epoch_seconds`` (the train stage's own per-epoch time from ``train/history.json``:
the training steps and the validation pass; the first epoch also traces the step), the peak
resident memory of the child during the train stage (``train_stage_peak_mb``: ``VmHWM`` reset
after prepare) and of the whole child (``peak_rss_mb``). Then two least-squares lines against the
number of clips: time (``ms_per_clip`` = slope; R^2 near 1 means linear) and memory (``mb_per_1000_clips``:
near 0 means flat). ``cache_would_need_mb`` is what ``data.cache=memory`` would hold
(clips x samples x 4 bytes), for comparison.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import _common


def scaling_case(config_name: str, overrides: list[str], workdir: str) -> dict:
    """Child: prepare, then train, with the memory peak of each stage."""
    import logging
    import time

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)

    logging.basicConfig(level=logging.WARNING, force=True)
    from pipeline.core import config
    from pipeline.running import runner

    _common.memory_mark("imports")
    params = config.load(config_name, overrides)
    work = Path(workdir)
    runner.run_stages(params, work, ["prepare"], force=True)
    _common.memory_mark("prepare")
    start = time.perf_counter()
    runner.run_stages(params, work, ["train"], force=True)
    stage_seconds = time.perf_counter() - start
    _common.memory_mark("train")
    history = json.loads((work / "train" / "history.json").read_text())["history"]
    return {
        "epoch_seconds": history["epoch_seconds"],
        "train_stage_seconds": stage_seconds,
        "batch_size": params.train.batch_size,
        "clip_samples": params.audio.clip_samples,
    }


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--sizes", default="1000,4000,16000", help="training clips per run, comma-separated")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--eval-clips", type=int, default=64, help="validation clips per epoch (fixed cost)")
    p.add_argument("--cache", choices=("none", "memory"), default="none")
    p.add_argument("--config", default="default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=None, help="generate (or reuse) the synthetic set here and keep it")
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.sizes = "200,400,800"
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    if len(sizes) < 2:
        p.error("--sizes needs at least two sizes")
    load_before = _common.load_average()

    from pipeline.data import synthetic
    from pipeline.data import tau as data

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        n_clips = math.ceil(max(sizes) / 0.7) + 20  # the generator puts 70 % of the clips in train
        root = args.root or Path(tmp) / "data"
        synthetic.generate(root, n_clips=n_clips, seed=args.seed, workers=2, progress=False)
        n_train = int((data.read_index(root, check_audio=False).split == "train").sum())
        if n_train < max(sizes):
            raise SystemExit(f"the synthetic set has {n_train} train clips, fewer than {max(sizes)}")
        store = Path(tmp) / "mlruns"
        for size in sizes:
            overrides = [
                f"data.source={root.resolve()}",
                f"data.max_train_clips={size}",
                f"data.max_eval_clips={args.eval_clips}",
                f"data.cache={args.cache}",
                f"train.epochs={args.epochs}",
                "train.progress_bar=false",
                f"seed={args.seed}",
                f"tracking.uri=sqlite:///{(store / 'mlflow.db').resolve()}",
                f"tracking.artifact_root={store.resolve()}",
                "tracking.experiment=bench-scaling",
                *args.set,
            ]
            _common.logger.info("train stage on %d clips (%d epoch(s), cache=%s)", size, args.epochs, args.cache)
            out = _common.run_child(scaling_case, args.config, overrides, os.fspath(Path(tmp) / f"work-{size}"))
            res, mem = out["result"], out["memory"]
            epoch_s = res["epoch_seconds"]
            results.append(
                {
                    "train_clips": size,
                    "steps_per_epoch": math.ceil(size / res["batch_size"]),
                    "epoch_seconds": [round(s, 2) for s in epoch_s],
                    "last_epoch_seconds": round(epoch_s[-1], 2),
                    "ms_per_clip": round(1000 * epoch_s[-1] / size, 2),
                    "train_stage_seconds": round(res["train_stage_seconds"], 1),
                    "train_stage_peak_mb": mem["phases"]["train"]["peak_mb"],
                    "prepare_peak_mb": mem["phases"]["prepare"]["peak_mb"],
                    "peak_rss_mb": mem["peak_rss_mb"],
                    "cache_would_need_mb": round(size * res["clip_samples"] * 4 / _common.MB, 1),
                    "load_average": _common.load_average(),
                }
            )

    xs = [r["train_clips"] for r in results]
    time_fit = _common.linear_fit(xs, [r["last_epoch_seconds"] for r in results])
    mem_values = [r["train_stage_peak_mb"] for r in results]
    mem_fit = _common.linear_fit(xs, mem_values)
    figures = {
        "sizes": results,
        "time_per_epoch_fit": {
            "ms_per_clip": round(1000 * time_fit["slope"], 3),
            "intercept_s": round(time_fit["intercept"], 2),
            "r2": time_fit["r2"],
        },
        "memory_fit": {
            "mb_per_1000_clips": round(1000 * mem_fit["slope"], 2),
            "intercept_mb": round(mem_fit["intercept"], 1),
            "min_mb": min(mem_values),
            "max_mb": max(mem_values),
            "max_over_min": round(max(mem_values) / min(mem_values), 3),
        },
        "time_largest_over_smallest": round(results[-1]["last_epoch_seconds"] / results[0]["last_epoch_seconds"], 3),
        "size_largest_over_smallest": round(xs[-1] / xs[0], 3),
    }
    settings = {
        "sizes": sizes,
        "epochs": args.epochs,
        "eval_clips": args.eval_clips,
        "cache": args.cache,
        "config": args.config,
        "overrides": args.set,
        "quick": args.quick,
    }
    _common.emit("scaling", {"settings": settings, **figures}, args, load_before=load_before)


if __name__ == "__main__":
    main()
