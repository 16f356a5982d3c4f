"""Multi-worker training: 1 worker against 2 local workers (pipeline.launch) at the same global batch.

Usage::

    python benchmarks/bench_multiworker.py [--quick] [--clips 600] [--epochs 3] [--batch 32]
                                           [--set KEY=VALUE ...] [--mlflow]

Generates a synthetic set (``--clips`` clips), runs ``prepare`` once, then the ``train`` stage
twice from copies of it: ``python -m pipeline.run`` (one process, ``train.strategy=default``)
and ``python -m pipeline.launch --workers 2`` (``train.strategy=multi_worker``, two processes
on 127.0.0.1 exchanging gradients over gRPC). Both use the same global batch
(``train.batch_size``), so both take the same number of steps per epoch; each of the two
workers computes half of every batch.

Figures, from each run's ``train/history.json`` (epoch 1, which traces the graphs, left out;
medians over the remaining epochs):

* ``one.steps_per_s`` / ``two.steps_per_s``: training steps per second (steps only, no validation);
* ``one.epoch_seconds`` / ``two.epoch_seconds``: one whole epoch (steps + validation);
* ``ratio_steps_per_s`` = two / one (> 1: the two workers train faster), ``ratio_epoch_seconds``;
* ``per_step_overhead_ms``: ``1/two - 1/one`` steps per second, in ms, when positive: what the
  gradient all-reduce and the lock-step cost per step beyond the halved compute;
* ``wall_seconds``: each command from start to exit (process start, TensorFlow import, strategy set-up).

On one 2-core machine the two workers share the same cores, so they are not expected to be
faster: the ratio shows the per-step cost of the collective exchange, which on a real cluster
(a machine per worker) is paid against a halved per-worker compute.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return time.perf_counter() - t0


def _figures(workdir: Path, steps: int, wall: float) -> dict:
    history = json.loads((workdir / "train/history.json").read_text())["history"]
    train_s, epoch_s = history["train_seconds"][1:], history["epoch_seconds"][1:]
    if not train_s:
        raise RuntimeError("need at least 2 epochs (epoch 1 traces the graphs and is left out)")
    return {
        "steps_per_epoch": steps,
        "steps_per_s": _common.rate(steps, _common.median(train_s)),
        "epoch_seconds": round(_common.median(epoch_s), 3),
        "first_epoch_seconds": round(history["epoch_seconds"][0], 3),
        "final_loss": history["loss"][-1],
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    parser = _common.parser(__doc__)
    parser.add_argument("--clips", type=int, default=600, help="synthetic clips (train + evaluate)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (>= 2; the first is left out)")
    parser.add_argument("--batch", type=int, default=32, help="global batch (train.batch_size)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.epochs, args.batch = 60, 2, 8
    _common.setup_logging()
    load_before = _common.load_average()

    import pandas as pd

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)
    from pipeline.data import synthetic

    tmp = Path(tempfile.mkdtemp(prefix="bench-mw-"))
    try:
        data = tmp / "tau"
        synthetic.generate(data, n_clips=args.clips, seed=0, workers=1, progress=False)
        base = {
            "data.source": str(data),
            "train.epochs": args.epochs,
            "train.batch_size": args.batch,
            "train.progress_bar": "false",
            "tracking.experiment": "bench-multiworker",
        }
        if args.quick:
            base.update({"audio.n_mels": 32, "model.channels": "[8, 8, 16, 16]", "model.hidden_units": 16})

        def sets(workdir: Path, **extra) -> list[str]:
            values = {
                **base,
                "tracking.uri": f"sqlite:///{workdir}/mlflow.db",
                "tracking.artifact_root": f"{workdir}/mlruns",
                **extra,
            }
            return [a for kv in [*(f"{k}={v}" for k, v in values.items()), *args.overrides] for a in ("--set", kv)]

        prepared = tmp / "prepared"
        _run([sys.executable, "-m", "pipeline.run", "--stage", "prepare", "--workdir", str(prepared), *sets(prepared)])
        index = pd.read_csv(prepared / "prepare/index.csv")
        steps = math.ceil(int((index.split == "train").sum()) / args.batch)
        results = {}
        for name, launcher in (("one", []), ("two", [sys.executable, "-m", "pipeline.launch", "--workers", "2", "--"])):
            workdir = tmp / name
            shutil.copytree(prepared / "prepare", workdir / "prepare")
            cmd = (launcher or [sys.executable, "-m", "pipeline.run"]) + [
                "--stage",
                "train",
                "--workdir",
                str(workdir),
                *sets(workdir),
            ]
            results[name] = _figures(workdir, steps, _run(cmd))
        one, two = results["one"], results["two"]
        overhead = 1000.0 * (1.0 / two["steps_per_s"] - 1.0 / one["steps_per_s"])
        figures = {
            "clips": args.clips,
            "epochs": args.epochs,
            "global_batch": args.batch,
            "one": one,
            "two": two,
            "ratio_steps_per_s": _common.ratio(two["steps_per_s"], one["steps_per_s"]),
            "ratio_epoch_seconds": _common.ratio(two["epoch_seconds"], one["epoch_seconds"]),
            "per_step_overhead_ms": round(max(0.0, overhead), 1),
        }
        _common.emit("multiworker", figures, args, load_before=load_before)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
