"""The paper network against the DCASE2022 baseline on the same synthetic data, budget and seeds.

Usage::

    python benchmarks/bench_models.py [--quick] [--clips 1500] [--epochs 6] [--seeds 0,1,2]
                                      [--config default] [--models asc,baseline] [--data-seed 0]
                                      [--root DIR] [--workdir DIR] [--mlflow]

Generates one synthetic set (``pipeline.synthetic.generate``, ``--clips`` clips, ``--data-seed``)
and, for every seed and network, runs the project's real stages ``prepare``, ``train`` and
``evaluate`` (``pipeline.runner.run_stages``) in a fresh child process, with the overrides
``data.source=<set>``, ``model.name=<asc|baseline>``, ``seed=<seed>``, ``train.epochs=<epochs>``,
``augment.tta.enabled=false`` and an MLflow store in the temporary work directory. Everything
else comes from ``configs/<config>.yaml`` (``default``: the report's network at 128 mel bins,
batch 32, AdamW with cosine decay, SpecAugment++ and time shift for ``asc``). The data are the
same for every run; the seed sets initialisation, data order, augmentation and dropout. Runs are
ordered seed by seed, so both networks see the same machine load.

Reads ``evaluate/metrics.json`` of each run: macro-averaged class accuracy and log loss on the
evaluate split, overall and on the unseen devices (S4-S6, absent from training). Prints one JSON
object: per run the figures, train time and peak memory; per network mean, sample standard
deviation, min and max over seeds; the paired per-seed difference asc - baseline with its mean
and standard deviation, and on how many seeds the paper network is better.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

import _common

METRICS = ("macro_accuracy", "log_loss")
GROUPS = ("overall", "unseen")


def train_and_evaluate(config_name: str, overrides: list[str], workdir: str, verbose: bool) -> dict:
    """Child: run prepare, train, evaluate with the project's stages; return the headline figures."""
    import logging
    import time

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from pipeline.core import config
    from pipeline import runner

    _common.memory_mark("imports")
    params = config.load(config_name, overrides)
    work = Path(workdir)
    start = time.perf_counter()
    runner.run_stages(params, work, ["prepare", "train", "evaluate"], force=True)
    seconds = time.perf_counter() - start
    _common.memory_mark("run")
    metrics = json.loads((work / "evaluate" / "metrics.json").read_text())
    history = json.loads((work / "train" / "history.json").read_text())["history"]
    plain = metrics["splits"]["evaluate"]["plain"]
    out = {"overall": {k: plain["overall"][k] for k in METRICS},
           "unseen": {k: plain["per_device_group"]["unseen"][k] for k in METRICS}
           if "unseen" in plain["per_device_group"] else None,
           "n_evaluate": plain["overall"]["n"],
           "unseen_devices": plain["per_device_group"].get("unseen", {}).get("devices"),
           "complexity": metrics["complexity"],
           "epochs": len(history.get("epoch_seconds", [])),
           "train_seconds": round(sum(history.get("epoch_seconds", [])), 1),
           "final_train_accuracy": history.get("accuracy", [None])[-1],
           "final_val_accuracy": history.get("val_accuracy", [None])[-1],
           "wall_seconds": round(seconds, 1)}
    return out


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4),
            "values": [round(v, 4) for v in values]}


def aggregate(runs: list[dict], models: list[str]) -> dict:
    """Per-network statistics over seeds and the paired differences between the first two networks."""
    by_model = {m: sorted((r for r in runs if r["model"] == m), key=lambda r: r["seed"]) for m in models}
    out: dict = {"models": {}}
    for m, rs in by_model.items():
        block: dict = {}
        for g in GROUPS:
            if all(r[g] is not None for r in rs):
                block[g] = {k: _stats([r[g][k] for r in rs]) for k in METRICS}
        c = rs[0]["complexity"]
        block.update({"params": c["params"], "macs": c["macs"], "int8_bytes_estimate": c["size_bytes"],
                      "train_seconds": _stats([r["train_seconds"] for r in rs]),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)})
        out["models"][m] = block
    if len(models) >= 2:
        a, b = models[0], models[1]
        seeds_a = {r["seed"]: r for r in by_model[a]}
        seeds_b = {r["seed"]: r for r in by_model[b]}
        common = sorted(set(seeds_a) & set(seeds_b))
        diff: dict = {}
        for g in GROUPS:
            if not all(seeds_a[s][g] is not None and seeds_b[s][g] is not None for s in common):
                continue
            diff[g] = {}
            for k in METRICS:
                d = [seeds_a[s][g][k] - seeds_b[s][g][k] for s in common]
                better = sum(1 for x in d if (x > 0 if k == "macro_accuracy" else x < 0))
                diff[g][k] = {**_stats(d), f"{a}_better_on_seeds": f"{better}/{len(d)}"}
        out[f"difference_{a}_minus_{b}"] = diff
    return out


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--clips", type=int, default=1500, help="clips in the synthetic set (70%% train, 30%% evaluate)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs of every run (same budget for both)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default="asc,baseline")
    p.add_argument("--config", default="default")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=None, help="generate (or reuse) the synthetic set here and keep it")
    p.add_argument("--workdir", type=Path, default=None, help="keep the runs' work directories here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (repeatable)")
    p.add_argument("--verbose", action="store_true", help="stage logs on stderr")
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.clips, args.epochs, args.seeds = 200, 1, "0,1"
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    models = [m for m in args.models.split(",") if m]
    load_before = _common.load_average()

    from pipeline import synthetic

    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        root = args.root or Path(tmp) / "data"
        synthetic.generate(root, n_clips=args.clips, seed=args.data_seed, workers=2, progress=False)
        base = args.workdir or Path(tmp) / "work"
        base.mkdir(parents=True, exist_ok=True)
        store = base / "mlruns"
        runs = []
        for seed in seeds:
            for model in models:
                overrides = [f"data.source={root.resolve()}", f"model.name={model}", f"seed={seed}",
                             f"train.epochs={args.epochs}", "augment.tta.enabled=false",
                             "train.progress_bar=false",
                             f"tracking.uri=sqlite:///{(store / 'mlflow.db').resolve()}",
                             f"tracking.artifact_root={store.resolve()}", "tracking.experiment=bench-models",
                             *args.set]
                _common.logger.info("training %s, seed %d (%d epochs on %d clips)", model, seed, args.epochs,
                                    args.clips)
                out = _common.run_child(train_and_evaluate, args.config, overrides,
                                        os.fspath(base / f"{model}-seed{seed}"), args.verbose)
                run = {"model": model, "seed": seed, **out["result"], "peak_rss_mb": out["memory"]["peak_rss_mb"]}
                _common.logger.info("%s seed %d: %s", model, seed,
                                    json.dumps({g: run[g] for g in GROUPS} | {"s": run["wall_seconds"]}))
                runs.append(run)

    summary = aggregate(runs, models)
    compact = [{k: v for k, v in r.items() if k != "complexity"} for r in runs]  # complexity: once per model
    settings = {"clips": args.clips, "epochs": args.epochs, "seeds": seeds, "models": models, "config": args.config,
                "data_seed": args.data_seed, "overrides": args.set, "tta": False, "quick": args.quick,
                "split": "evaluate (30% of the clips; unseen devices S4-S6)"}
    _common.emit("models", {"settings": settings, **summary, "runs": compact}, args, load_before=load_before)


if __name__ == "__main__":
    main()
