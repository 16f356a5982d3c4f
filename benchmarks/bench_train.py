"""Training throughput: the train stage's own code path next to a bare ``model.fit`` of the same model and input.

Usage::

    python benchmarks/bench_train.py [--quick] [--clips 1000] [--epochs 3] [--steps 30] [--warmup 3]
                                     [--repeats 3] [--config default] [--set KEY=VALUE ...] [--root DIR]
                                     [--mlflow]

Generates a synthetic set (``--clips`` clips: 70 % train, 30 % evaluate) and, in one child
process, measures three cases per repeat, one after the other (so that all see the same load):

* ``stage``: the train stage's own function, ``pipeline.running.task.fit``, for
  ``--epochs`` epochs into a fresh folder: the stage's model build and compile, its datasets
  (``inputs.train_dataset`` / ``eval_dataset`` over the WAV files), its ``EpochEnd`` callback
  (metrics, best.keras, history.json, checkpoint) and its ``model.fit`` call, with validation
  every epoch. The per-epoch split comes from the epoch logs and the callback's files, read by
  the recorder passed in (``_train_timing.EpochClock``; no library code patched): ``train_seconds``
  (the training steps), ``validation_seconds``, ``callback_seconds``. Epoch 1 (tracing) is left
  out of the rates and reported as ``first_epoch_extra_seconds``.
* ``file`` (the bare figure): ``model.fit`` on ``inputs.train_dataset`` (same files, batch and
  data order), the model built and compiled as the stage does (``training.seed_everything``,
  ``asc.build_model``, ``training.make_optimizer``, ``training.compile_model``), no validation,
  no callbacks but a time stamp per batch; the rate over ``--steps`` batches after ``--warmup``.
* ``memory``: the same with ``data.cache=memory`` (clips decoded once before timing).

Figures (medians over repeats; ratios are the medians of the per-repeat ratios):

* ``stage.train_steps_per_s``: training steps per second of the stage's epochs (steps only);
  ``ratio_stage_vs_bare`` = that / ``file.steps_per_s``: near 1 when the stage adds no
  per-step work;
* ``stage.epoch_steps_per_s``: steps per second of whole epochs (steps + validation +
  end-of-epoch callback), what a user's epoch takes; ``ratio_stage_epoch_vs_bare`` against
  the bare figure (below 1 by the validation pass, which the bare fit does not do);
* ``ratio_file_vs_memory``: near 1 when reading and decoding the files is not the bottleneck;
  ``input_only_batches_per_s``: the file pipeline alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import _common
import _train_timing


def train_case(
    root: str, config_name: str, overrides: list[str], steps: int, warmup: int, repeats: int, epochs: int, workdir: str
) -> dict:
    """Child: per repeat, the bare fit on files and on memory, then the training task's fit."""
    import importlib
    import time

    import numpy as np
    import tensorflow as tf
    import tf_keras

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)
    from models import asc
    from pipeline.core import config
    from pipeline.data import inputs
    from pipeline.data import tau as data
    from pipeline.running import training
    from pipeline.running.stages.base import clips

    train_stage = importlib.import_module("pipeline.running.task")  # the training task: build_model, fit, load
    _common.memory_mark("imports")
    stage_params = config.load(config_name, [f"train.epochs={epochs}", "train.progress_bar=false"] + overrides)
    params = stage_params
    index = data.read_index(root)
    tr = clips(index, "train", params)
    ev = clips(index, "evaluate", params)
    batch = params.train.batch_size
    steps_per_epoch = int(np.ceil(len(tr) / batch))
    many = 1000  # epochs of the bare input: more than the repeats consume, the iterator never runs dry
    training.seed_everything(params.seed, params.train.deterministic)
    model = asc.build_model(params)
    training.compile_model(model, training.make_optimizer(params.train, steps_per_epoch))

    file_params = config.load(config_name, overrides + ["data.cache=none"])
    mem_params = config.load(config_name, overrides + ["data.cache=memory"])
    file_ds, _ = inputs.train_dataset(
        tr, root, file_params.audio, file_params.data, batch_size=batch, seed=params.seed, start_epoch=0, epochs=many
    )
    _common.memory_mark("setup")
    t0 = time.perf_counter()
    mem_ds, _ = inputs.train_dataset(
        tr, root, mem_params.audio, mem_params.data, batch_size=batch, seed=params.seed, start_epoch=0, epochs=many
    )
    cache_seconds = time.perf_counter() - t0
    _common.memory_mark("cache")

    class Stamps(tf_keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    def bare(ds) -> float:
        stamps = Stamps()
        model.fit(ds, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[stamps])
        t = stamps.times[warmup - 1 :]
        return (len(t) - 1) / (t[-1] - t[0])

    def stage(r: int) -> dict:
        out = Path(workdir) / f"train-{r}"
        clock = _train_timing.EpochClock(out)  # the stage's recorder: times each epoch's callback from outside
        start = time.perf_counter()
        train_stage.fit(stage_params, out, tr, ev, Path(root), clock, resuming=False, log_model=False)
        wall = time.perf_counter() - start
        rows = []
        for t in clock.finish():
            total = t["epoch_seconds"] + t["callback_seconds"]
            rows.append(
                {
                    "train_seconds": t["train_seconds"],
                    "validation_seconds": t["validation_seconds"],
                    "callback_seconds": t["callback_seconds"],
                    "epoch_seconds": total,
                    "train_steps_per_s": steps_per_epoch / t["train_seconds"],
                    "epoch_steps_per_s": steps_per_epoch / total,
                }
            )
        later = rows[1:] or rows
        med = {k: float(np.median([row[k] for row in later])) for k in later[0]}
        med["first_epoch_extra_seconds"] = rows[0]["epoch_seconds"] - med["epoch_seconds"]
        med["stage_seconds"] = wall
        med["epochs"] = rows
        return med

    bare(file_ds)  # tracing of the train step, untimed
    rates: dict[str, list[float]] = {"file": [], "memory": []}
    stages: list[dict] = []
    loads: list[float] = []
    for r in range(repeats):
        rates["file"].append(bare(file_ds))
        rates["memory"].append(bare(mem_ds))
        stages.append(stage(r))
        loads.append(os.getloadavg()[0])
    _common.memory_mark("run")

    # The file pipeline alone, as fast as it goes: from a new iterator (start-up included, so that
    # batches prefetched before the clock starts do not count) over enough batches to swamp it.
    input_rates = []
    n_batches = max(3 * steps, 30)
    for _ in range(repeats):
        start = time.perf_counter()
        it = iter(file_ds)
        for _ in range(n_batches):
            next(it)
        input_rates.append(n_batches / (time.perf_counter() - start))
    return {
        "rates": rates,
        "stages": stages,
        "loads": loads,
        "input_rates": input_rates,
        "train_clips": len(tr),
        "eval_clips": len(ev),
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch,
        "eval_batch_size": params.evaluate.batch_size,
        "cache_seconds": cache_seconds,
        "model": params.model.name,
        "params": int(model.count_params()),
        "n_mels": params.audio.n_mels,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--clips", type=int, default=1000, help="clips in the synthetic set (70%% train, 30%% evaluate)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each stage run (the first is left out of rates)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per bare fit call")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every bare fit call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--config", default="default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic set")
    p.add_argument("--root", type=Path, default=None, help="generate (or reuse) the synthetic set here and keep it")
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.clips, args.epochs, args.steps, args.repeats = 400, 2, 10, 2
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first batch of a fit call includes its start-up)")
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch holds the tracing)")
    load_before = _common.load_average()

    from pipeline.data import synthetic

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = args.root or Path(tmp) / "data"
        synthetic.generate(root, n_clips=args.clips, seed=args.seed, workers=2, progress=False)
        out = _common.run_child(
            train_case,
            os.fspath(root),
            args.config,
            list(args.set),
            args.steps,
            args.warmup,
            args.repeats,
            args.epochs,
            os.fspath(Path(tmp) / "work"),
        )
    res, mem = out["result"], out["memory"]
    batch = res["batch_size"]
    figures: dict = {}
    for name in ("file", "memory"):
        med = _common.median(res["rates"][name])
        figures[name] = {
            "steps_per_s": round(med, 3),
            "clips_per_s": round(med * batch, 1),
            "ms_per_step": round(1000 / med, 1),
            "steps_per_s_repeats": [round(r, 3) for r in res["rates"][name]],
        }
    stages = res["stages"]
    stage = {
        k: round(_common.median([s[k] for s in stages]), 3)
        for k in (
            "train_steps_per_s",
            "epoch_steps_per_s",
            "train_seconds",
            "validation_seconds",
            "callback_seconds",
            "epoch_seconds",
            "first_epoch_extra_seconds",
            "stage_seconds",
        )
    }
    stage["train_steps_per_s_repeats"] = [round(s["train_steps_per_s"], 3) for s in stages]
    stage["epoch_steps_per_s_repeats"] = [round(s["epoch_steps_per_s"], 3) for s in stages]
    stage["epochs_per_repeat"] = [[{k: round(v, 3) for k, v in row.items()} for row in s["epochs"]] for s in stages]
    figures["stage"] = stage
    # Each repeat's cases are adjacent in time: the median of the paired ratios is less sensitive
    # to the load drifting between repeats than the ratio of medians.
    file_rates = res["rates"]["file"]
    pairs = {
        "ratio_stage_vs_bare": [s["train_steps_per_s"] / f for s, f in zip(stages, file_rates, strict=True)],
        "ratio_stage_epoch_vs_bare": [s["epoch_steps_per_s"] / f for s, f in zip(stages, file_rates, strict=True)],
        "ratio_file_vs_memory": [f / m for f, m in zip(file_rates, res["rates"]["memory"], strict=True)],
    }
    for name, values in pairs.items():
        figures[name] = round(_common.median(values), 3)
        figures[f"{name}_repeats"] = [round(v, 3) for v in values]
    figures["validation_share_of_epoch"] = round(stage["validation_seconds"] / stage["epoch_seconds"], 3)
    in_med = _common.median(res["input_rates"])
    figures["input_only_batches_per_s"] = round(in_med, 2)
    figures["input_headroom_vs_training"] = _common.ratio(in_med, figures["file"]["steps_per_s"], 2)
    figures["memory_cache_build_seconds"] = round(res["cache_seconds"], 2)
    figures["load_1min_per_repeat"] = [round(x, 2) for x in res["loads"]]
    figures["peak_rss_mb"] = mem["peak_rss_mb"]
    figures["memory_phases"] = mem["phases"]
    settings = {
        "clips": args.clips,
        "train_clips": res["train_clips"],
        "eval_clips": res["eval_clips"],
        "steps_per_epoch": res["steps_per_epoch"],
        "batch_size": batch,
        "eval_batch_size": res["eval_batch_size"],
        "epochs": args.epochs,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "config": args.config,
        "overrides": args.set,
        "model": res["model"],
        "model_params": res["params"],
        "n_mels": res["n_mels"],
        "intra_op_threads": res["intra_op_threads"],
        "inter_op_threads": res["inter_op_threads"],
        "quick": args.quick,
    }
    _common.emit("train", {"settings": settings, **figures}, args, load_before=load_before)


if __name__ == "__main__":
    main()
