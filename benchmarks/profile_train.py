"""Where the train stage's time goes: per-epoch split, bare ``model.fit`` next to it, a profiler trace.

Usage::

    python benchmarks/profile_train.py [--root DIR | --clips 2000] [--epochs 3] [--set KEY=VALUE ...]
                                       [--trace DIR] [--trace-steps 10] [--mlflow-store]

Runs, in this process, on the train split of a synthetic set (``--clips`` clips, or the set at
``--root``):

1. ``bare``: ``model.fit`` of one epoch on the stage's training input
   (``pipeline.data.inputs.train_dataset``), model built and compiled as the stage does
   (``asc.build_model``, ``training.compile_model``), no validation, no callbacks: the steps/s figure of
   ``bench_train.py``;
2. ``stage``: the train stage's own function, ``pipeline.running.task.fit``, for
   ``--epochs`` epochs into a temporary folder: the same model, compile, datasets, ``EpochEnd``
   callback (best.keras, history.json, checkpoint) and metrics logging (into a memory recorder,
   or with ``--mlflow-store`` into an MLflow run of a temporary SQLite store, as under the runner);
   the per-epoch split comes from the epoch logs and the callback's files, read by the recorder
   passed in (``_train_timing.EpochClock``; no library code patched); ``stage_before_first_epoch_seconds``
   (model build, datasets, ``fit`` start-up), ``epochs_seconds`` and ``stage_after_last_epoch_seconds``
   (``fit`` return, model.keras, digest, curves, artifacts) split the stage's wall time;
3. ``bare`` again (the two bare runs bracket the stage, so a change of load shows).

With ``--trace DIR`` a further ``model.fit`` of ``--trace-steps`` steps runs under
``tf.profiler.experimental`` and the host op time is summed per op type from the trace
(``DIR/plugins/profile/*/*.xplane.pb``; open it in TensorBoard's profile plugin for the timeline).

Prints one JSON object (figures, load average before and after) on stdout.
"""

from __future__ import annotations

import collections
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import _common
import _train_timing


def _stamps_callback(tf_keras):
    class Stamps(tf_keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    return Stamps()


def bare_fit(model, train_ds, steps: int, tf_keras) -> dict:
    """One ``model.fit`` epoch of ``steps`` steps; rate over steps 2..N (the first holds start-up)."""
    stamps = _stamps_callback(tf_keras)
    start = time.perf_counter()
    model.fit(train_ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[stamps])
    wall = time.perf_counter() - start
    t = stamps.times
    return {
        "steps": steps,
        "wall_seconds": round(wall, 3),
        "first_step_seconds": round(t[1] - t[0], 3),
        "steps_per_s": round((len(t) - 2) / (t[-1] - t[1]), 3),
        "load_1min": _common.load_average()[0],
    }


def op_summary(trace_dir: Path, top: int = 25) -> dict:
    """Host time per TensorFlow op type in the newest ``*.xplane.pb`` under ``trace_dir``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(trace_dir.glob("plugins/profile/*/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not paths:
        return {}
    space = xplane_pb2.XSpace()
    space.ParseFromString(paths[-1].read_bytes())
    per_op: dict[str, float] = collections.defaultdict(float)
    lines_total: dict[str, float] = collections.defaultdict(float)
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            total = 0.0
            for ev in line.events:
                total += ev.duration_ps
                if line.name in ("TensorFlow Ops", "tf_op"):
                    # "name:Type" -> Type
                    per_op[names.get(ev.metadata_id, "?").rsplit(":", 1)[-1]] += ev.duration_ps
            lines_total[line.name or str(line.id)] += total
    if not per_op:  # older layouts: thread lines whose events are op names "scope/name:Type"
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {k: v.name for k, v in plane.event_metadata.items()}
            for line in plane.lines:
                for ev in line.events:
                    name = names.get(ev.metadata_id, "?")
                    if ":" in name and "/" in name:
                        per_op[name.rsplit(":", 1)[-1]] += ev.duration_ps
    total_ops = sum(per_op.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return {
        "file": os.fspath(paths[-1]),
        "op_seconds_total": round(total_ops / 1e12, 3),
        "top_ops": [{"op": k, "seconds": round(v / 1e12, 3), "share": round(v / total_ops, 3)} for k, v in ranked],
    }


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--clips", type=int, default=2000, help="clips in the synthetic set (70%% train, 30%% evaluate)")
    p.add_argument("--root", type=Path, default=None, help="use (or generate and keep) the synthetic set here")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--config", default="default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--trace", type=Path, default=None, help="also write a profiler trace of --trace-steps steps here")
    p.add_argument("--trace-steps", type=int, default=10)
    p.add_argument("--log-model", action="store_true", help="also log the model in MLflow's tensorflow flavour")
    p.add_argument(
        "--mlflow-store",
        action="store_true",
        help="log the stage's metrics into an MLflow run (temporary SQLite store), as the runner does",
    )
    args = p.parse_args()
    _common.setup_logging()
    load_before = _common.load_average()
    json_out, sys.stdout = sys.stdout, sys.stderr  # Keras progress lines to stderr: stdout holds the JSON only

    import numpy as np
    import tensorflow as tf
    import tf_keras

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)
    from pipeline.core import config
    from pipeline.data import inputs, synthetic
    from pipeline.data import tau as data
    from pipeline.running import training
    from pipeline.running.stages.base import MemoryRecorder, clips

    train_stage = importlib.import_module("pipeline.running.task")  # the training task: build_model, fit, load

    tmp = Path(tempfile.mkdtemp(prefix="profile-train-"))
    root = args.root or tmp / "data"
    if not (Path(root) / "meta.csv").is_file():
        synthetic.generate(root, n_clips=args.clips, seed=0, workers=2, progress=False)
    overrides = [f"train.epochs={args.epochs}", "train.progress_bar=false"] + list(args.set)
    params = config.load(args.config, overrides)
    index = data.read_index(root)
    tr = clips(index, "train", params)  # as the stage selects them
    ev = clips(index, "evaluate", params)
    steps = int(np.ceil(len(tr) / params.train.batch_size))

    def bare_model():
        from models import asc

        training.seed_everything(params.seed, params.train.deterministic)
        m = asc.build_model(params)
        training.compile_model(m, training.make_optimizer(params.train, steps))
        return m

    train_ds, _ = inputs.train_dataset(
        tr,
        root,
        params.audio,
        params.data,
        batch_size=params.train.batch_size,
        seed=params.seed,
        start_epoch=0,
        epochs=1000,
    )
    model = bare_model()

    def bare_model_fit():
        return bare_fit(model, train_ds, steps, tf_keras)

    bare_model_fit()  # tracing, untimed
    bare = [bare_model_fit()]

    if args.mlflow_store:
        import mlflow

        from pipeline.running.tracking import MlflowRecorder

        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
        mlflow.set_experiment("profile-train")
        run = mlflow.start_run(run_name="profile-train")
        recorder = MlflowRecorder(run.info.run_id, "profile-train")
    else:
        recorder = MemoryRecorder()
    clock = _train_timing.EpochClock(tmp / "train", recorder)  # times each epoch's callback; records into recorder
    try:
        start, start_wall = time.perf_counter(), time.time()
        train_stage.fit(params, tmp / "train", tr, ev, root, clock, resuming=False, log_model=args.log_model)
        stage_wall, end_wall = time.perf_counter() - start, time.time()
    finally:
        if args.mlflow_store:
            mlflow.end_run()
    timings = clock.finish()
    bare.append(bare_model_fit())

    epochs = []
    for t in timings:
        # epoch_seconds runs to EpochEnd.on_epoch_end: what is neither steps nor validation happened
        # between them (Keras' own epoch end, the deletion of the validation iterator)
        epoch_seconds = t["epoch_seconds"]
        t = {k: v for k, v in t.items() if k not in ("start", "callback_end", "epoch_seconds")}
        t["other_seconds"] = epoch_seconds - t["train_seconds"] - t["validation_seconds"]
        epoch_total = epoch_seconds + t["callback_seconds"]
        epochs.append(
            {
                **{k: round(v, 3) for k, v in t.items()},
                "epoch_total_seconds": round(epoch_total, 3),
                "train_steps_per_s": round(steps / t["train_seconds"], 3),
                "epoch_steps_per_s": round(steps / epoch_total, 3),
            }
        )
    later = epochs[1:] or epochs  # the first epoch holds the tracing of the train and test functions
    bare_rate = _common.median([b["steps_per_s"] for b in bare])
    med = {k: _common.median([e[k] for e in later]) for k in later[0] if k != "epoch"}
    figures = {
        "settings": {
            "clips": len(index),
            "train_clips": len(tr),
            "eval_clips": len(ev),
            "steps_per_epoch": steps,
            "batch_size": params.train.batch_size,
            "eval_batch_size": params.evaluate.batch_size,
            "epochs": args.epochs,
            "overrides": args.set,
            "mlflow_store": args.mlflow_store,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "bare_fit": bare,
        "bare_steps_per_s": round(bare_rate, 3),
        "stage_epochs": epochs,
        "stage_wall_seconds": round(stage_wall, 2),
        "stage_before_first_epoch_seconds": round(timings[0]["start"] - start_wall, 2),
        "epochs_seconds": round(timings[-1]["callback_end"] - timings[0]["start"], 2),
        "stage_after_last_epoch_seconds": round(end_wall - timings[-1]["callback_end"], 2),
        "stage_after_first_epoch_median": {k: round(v, 3) for k, v in med.items()},
        "ratio_stage_train_steps_vs_bare": _common.ratio(med["train_steps_per_s"], bare_rate),
        "ratio_stage_epoch_vs_bare": _common.ratio(med["epoch_steps_per_s"], bare_rate),
        "first_epoch_extra_seconds": round(epochs[0]["epoch_total_seconds"] - med["epoch_total_seconds"], 2),
    }
    if args.trace:
        stamps = _stamps_callback(tf_keras)
        model.fit(train_ds, epochs=1, steps_per_epoch=3, verbose=0)  # warm
        tf.profiler.experimental.start(os.fspath(args.trace))
        model.fit(train_ds, epochs=1, steps_per_epoch=args.trace_steps, verbose=0, callbacks=[stamps])
        tf.profiler.experimental.stop()
        wall = stamps.times[-1] - stamps.times[0]
        summary = op_summary(args.trace)
        summary["traced_steps"] = args.trace_steps
        summary["traced_wall_seconds"] = round(wall, 3)
        # 2 cores: op time / (wall * cores) ~ how busy the cores were with TensorFlow ops
        summary["op_seconds_per_step"] = round(summary.get("op_seconds_total", 0) / args.trace_steps, 3)
        figures["trace"] = summary
    sys.stdout = json_out
    _common.emit("profile_train", figures, args, load_before=load_before)


if __name__ == "__main__":
    sys.exit(main())
