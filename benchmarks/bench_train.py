"""Training throughput: steps/s with the real file pipeline vs the same model fed from in-memory tensors.

Usage::

    python benchmarks/bench_train.py [--quick] [--clips 640] [--steps 30] [--warmup 3] [--repeats 3]
                                     [--config default] [--set KEY=VALUE ...] [--root DIR] [--mlflow]

Generates a synthetic set (``--clips`` clips; its train split, 70 %, is used) and, in one child
process, builds and compiles the configured model exactly as the train stage does
(``training.seed_everything``, ``asc.build_model``, ``training.make_optimizer``,
``training.compile_model``). Two inputs feed the same model:

* ``file``: ``pipeline.inputs.train_dataset`` with ``data.cache=none``: every step reads,
  decodes (tensorflow-io) and crops its clips from the WAV files, as in training on TAU22;
* ``memory``: the same function with ``data.cache=memory``: the clips are decoded once before
  timing and each step gathers its batch from an in-memory tensor (same order and batching).

Each repeat calls ``model.fit`` for ``--warmup + --steps`` steps on each input in turn
(interleaved, so both see the same load); a callback stamps the end of every batch, and the
rate is taken over the ``--steps`` batches after the warm-up ones. The figures are medians over
repeats. ``ratio_file_vs_memory`` = file steps/s / memory steps/s, the median over repeats of
the ratio within each repeat (adjacent runs): near 1 means the input pipeline is not the
bottleneck. ``input_only_batches_per_s`` is the file pipeline alone
(a new iterator drawn for ``max(3 * --steps, 30)`` batches without the model, start-up
included): ``input_headroom_vs_training`` says how much faster than the model it delivers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import _common


def train_case(root: str, config_name: str, overrides: list[str], steps: int, warmup: int, repeats: int) -> dict:
    """Child: the two inputs into one model, interleaved; per-batch timestamps."""
    import time

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from models import asc
    from pipeline.core import config
    from pipeline import data, inputs, training

    _common.memory_mark("imports")
    params = config.load(config_name, overrides)
    index = data.read_index(root)
    tr = index[index.split == "train"].reset_index(drop=True)
    batch = params.train.batch_size
    steps_per_epoch = int(np.ceil(len(tr) / batch))
    epochs = 1000  # more than the repeats will consume: the iterator never runs dry
    training.seed_everything(params.seed, params.train.deterministic)
    model = asc.build_model(params)
    optimizer = training.make_optimizer(params.train, steps_per_epoch)
    training.compile_model(model, optimizer)

    file_params = config.load(config_name, overrides + ["data.cache=none"])
    mem_params = config.load(config_name, overrides + ["data.cache=memory"])
    file_ds, _ = inputs.train_dataset(tr, root, file_params.audio, file_params.data, batch_size=batch,
                                      seed=params.seed, start_epoch=0, epochs=epochs)
    _common.memory_mark("setup")
    t0 = time.perf_counter()
    mem_ds, _ = inputs.train_dataset(tr, root, mem_params.audio, mem_params.data, batch_size=batch,
                                     seed=params.seed, start_epoch=0, epochs=epochs)
    cache_seconds = time.perf_counter() - t0
    _common.memory_mark("cache")

    class Stamps(tf_keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    def run(ds) -> float:
        stamps = Stamps()
        model.fit(ds, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[stamps])
        t = stamps.times[warmup - 1:] if warmup > 0 else stamps.times
        return (len(t) - 1) / (t[-1] - t[0])

    run(file_ds)  # tracing of the train step, untimed
    rates: dict[str, list[float]] = {"file": [], "memory": []}
    for _ in range(repeats):
        rates["file"].append(run(file_ds))
        rates["memory"].append(run(mem_ds))
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
    return {"rates": rates, "input_rates": input_rates, "train_clips": len(tr), "batch_size": batch,
            "cache_seconds": cache_seconds, "model": params.model.name, "params": int(model.count_params()),
            "n_mels": params.audio.n_mels, "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--clips", type=int, default=640, help="clips in the synthetic set (70%% are train clips)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per fit call")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every fit call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--config", default="default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic set")
    p.add_argument("--root", type=Path, default=None, help="generate (or reuse) the synthetic set here and keep it")
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.clips, args.steps, args.repeats = 320, 10, 2
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first batch of a fit call includes its start-up)")
    load_before = _common.load_average()

    from pipeline import synthetic

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = args.root or Path(tmp) / "data"
        synthetic.generate(root, n_clips=args.clips, seed=args.seed, workers=2, progress=False)
        out = _common.run_child(train_case, os.fspath(root), args.config, list(args.set), args.steps, args.warmup,
                                args.repeats)
    res, mem = out["result"], out["memory"]
    batch = res["batch_size"]
    figures = {}
    for name in ("file", "memory"):
        med = _common.median(res["rates"][name])
        figures[name] = {"steps_per_s": round(med, 3), "clips_per_s": round(med * batch, 1),
                         "ms_per_step": round(1000 / med, 1),
                         "steps_per_s_repeats": [round(r, 3) for r in res["rates"][name]]}
    # Each repeat's file and memory runs are adjacent in time: the median of the paired ratios is
    # less sensitive to the machine's load drifting between repeats than the ratio of medians.
    paired = [f / m for f, m in zip(res["rates"]["file"], res["rates"]["memory"])]
    figures["ratio_file_vs_memory"] = round(_common.median(paired), 3)
    figures["ratio_file_vs_memory_repeats"] = [round(r, 3) for r in paired]
    figures["ratio_of_medians"] = _common.ratio(figures["file"]["steps_per_s"], figures["memory"]["steps_per_s"])
    in_med = _common.median(res["input_rates"])
    figures["input_only_batches_per_s"] = round(in_med, 2)
    figures["input_headroom_vs_training"] = _common.ratio(in_med, figures["file"]["steps_per_s"], 2)
    figures["memory_cache_build_seconds"] = round(res["cache_seconds"], 2)
    figures["peak_rss_mb"] = mem["peak_rss_mb"]
    figures["memory_phases"] = mem["phases"]
    settings = {"clips": args.clips, "train_clips": res["train_clips"], "batch_size": batch, "steps": args.steps,
                "warmup": args.warmup, "repeats": args.repeats, "config": args.config, "overrides": args.set,
                "model": res["model"], "model_params": res["params"], "n_mels": res["n_mels"], "quick": args.quick}
    _common.emit("train", {"settings": settings, **figures}, args, load_before=load_before)


if __name__ == "__main__":
    main()
