"""Generalization to unseen devices: the report's recipe against the additions of issue 13.

Usage::

    python benchmarks/bench_generalization.py [--quick] [--clips 1500] [--epochs 10] [--seeds 0,1,2]
                                              [--variants report,dir,fms,kd,all] [--config default]
                                              [--teacher-channels 96,192,192,192] [--teacher-members 1]
                                              [--root DIR] [--workdir DIR] [--set KEY=VALUE] [--mlflow]

Generates one synthetic set (``--clips`` clips, ``--data-seed``; devices S4-S6 only in the
evaluate split) and, for every seed and variant, runs the project's own stages (``prepare``,
``teacher`` when distilling, ``train``, ``evaluate``; ``pipeline.runner.run_stages``) in a fresh
child process with the same epochs and the same data. Variants:

* ``report``: the report's recipe (``configs/<config>.yaml``: SpecAugment++, time shift);
* ``dir``: + device response augmentation (``augment.device_response.enabled``, built-in generator);
* ``fms``: + Freq-MixStyle (``augment.freq_mixstyle.enabled``);
* ``kd``: + knowledge distillation from a wider teacher trained by the same recipe;
* ``all``: all three together.

The generator of device responses is the augmentation's own (random EQ cascades, band limits,
mild nonlinearity), not the synthetic set's device models, so the comparison measures
generalization to devices neither of them was built from. TTA is off (plain predictions).

Prints one JSON object: per run the overall and unseen-device macro accuracy and log loss; per
variant mean and sample standard deviation over seeds; per variant the paired per-seed
difference to ``report`` (mean, std, on how many seeds it is better).
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
VARIANTS = {
    "report": [],
    "dir": ["augment.device_response.enabled=true"],
    "fms": ["augment.freq_mixstyle.enabled=true"],
    "kd": ["distill.enabled=true"],
    "all": ["augment.device_response.enabled=true", "augment.freq_mixstyle.enabled=true", "distill.enabled=true"],
}


def run_variant(config_name: str, overrides: list[str], workdir: str, verbose: bool) -> dict:
    """Child: prepare, (teacher,) train, evaluate with the project's stages; the headline figures."""
    import logging
    import time

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from pipeline import runner
    from pipeline.core import config

    params = config.load(config_name, overrides)
    work = Path(workdir)
    start = time.perf_counter()
    results = runner.run_stages(params, work, ["prepare", "teacher", "train", "evaluate"])
    seconds = time.perf_counter() - start
    metrics = json.loads((work / "evaluate" / "metrics.json").read_text())
    plain = metrics["splits"]["evaluate"]["plain"]
    out = {"overall": {k: plain["overall"][k] for k in METRICS},
           "unseen": {k: plain["per_device_group"]["unseen"][k] for k in METRICS},
           "seen": {k: plain["per_device_group"]["seen"][k] for k in METRICS},
           "params": metrics["complexity"]["params"], "macs": metrics["complexity"]["macs"],
           "wall_seconds": round(seconds, 1)}
    if "teacher" in results and not results["teacher"].get("reused"):
        out["teacher_macro_accuracy"] = results["teacher"].get("teacher_macro_accuracy")
    return out


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "values": [round(v, 4) for v in values]}


def aggregate(runs: list[dict], variants: list[str]) -> dict:
    """Mean and std per variant; paired differences to the report's recipe."""
    by = {v: {r["seed"]: r for r in runs if r["variant"] == v} for v in variants}
    out: dict = {"variants": {}, "difference_to_report": {}}
    for v, rs in by.items():
        out["variants"][v] = {g: {k: _stats([r[g][k] for r in rs.values()]) for k in METRICS} for g in GROUPS}
    if "report" in by:
        for v in variants:
            if v == "report":
                continue
            common = sorted(set(by[v]) & set(by["report"]))
            block = {}
            for g in GROUPS:
                d = [by[v][s][g]["macro_accuracy"] - by["report"][s][g]["macro_accuracy"] for s in common]
                block[g] = {**_stats(d), "better_on_seeds": f"{sum(x > 0 for x in d)}/{len(d)}"}
            out["difference_to_report"][v] = block
    return out


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--clips", type=int, default=1500, help="clips in the synthetic set (70%% train, 30%% evaluate)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of every run (and of the teacher)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--config", default="default")
    p.add_argument("--teacher-channels", default="96,192,192,192")
    p.add_argument("--teacher-members", type=int, default=1)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=None, help="generate (or reuse) the synthetic set here")
    p.add_argument("--workdir", type=Path, default=None, help="keep the runs' work directories here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--verbose", action="store_true", help="stage logs on stderr")
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.clips, args.epochs, args.seeds = 300, 1, "0"
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    load_before = _common.load_average()

    from pipeline import synthetic

    with tempfile.TemporaryDirectory(prefix="bench-generalization-") as tmp:
        root = args.root or Path(tmp) / "data"
        synthetic.generate(root, n_clips=args.clips, seed=args.data_seed, workers=2, progress=False)
        base = args.workdir or Path(tmp) / "work"
        base.mkdir(parents=True, exist_ok=True)
        store = base / "mlruns"
        runs = []
        for seed in seeds:
            for variant in variants:
                overrides = [f"data.source={root.resolve()}", f"seed={seed}", f"train.epochs={args.epochs}",
                             "augment.tta.enabled=false", "train.progress_bar=false",
                             f"distill.teacher.channels=[{args.teacher_channels}]",
                             f"distill.teacher.members={args.teacher_members}",
                             f"tracking.uri=sqlite:///{(store / 'mlflow.db').resolve()}",
                             f"tracking.artifact_root={store.resolve()}", "tracking.experiment=bench-generalization",
                             f"tracking.run_name={variant}-seed{seed}", *VARIANTS[variant], *args.set]
                _common.logger.info("%s, seed %d (%d epochs on %d clips)", variant, seed, args.epochs, args.clips)
                out = _common.run_child(run_variant, args.config, overrides,
                                        os.fspath(base / f"{variant}-seed{seed}"), args.verbose)
                run = {"variant": variant, "seed": seed, **out["result"], "peak_rss_mb": out["memory"]["peak_rss_mb"]}
                _common.logger.info("%s seed %d: %s", variant, seed,
                                    json.dumps({g: run[g] for g in GROUPS} | {"s": run["wall_seconds"]}))
                runs.append(run)

    settings = {"clips": args.clips, "epochs": args.epochs, "seeds": seeds, "variants": variants,
                "config": args.config, "teacher_channels": args.teacher_channels,
                "teacher_members": args.teacher_members, "data_seed": args.data_seed, "overrides": args.set,
                "tta": False, "quick": args.quick}
    _common.emit("generalization", {"settings": settings, **aggregate(runs, variants), "runs": runs}, args,
                 load_before=load_before)


if __name__ == "__main__":
    main()
