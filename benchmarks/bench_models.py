"""The paper network against the DCASE2022 baseline on the same synthetic data, budget and seeds.

Usage::

    python benchmarks/bench_models.py [--quick] [--clips 1500] [--epochs 6] [--seeds 0,1,2]
                                      [--config default] [--models asc,baseline] [--data-seed 0]
                                      [--root DIR] [--workdir DIR] [--mlflow]

Generates one synthetic set (``pipeline.data.synthetic.generate``, ``--clips`` clips, ``--data-seed``)
and, for every seed and network, runs the project's real stages ``prepare``, ``train`` and
``evaluate`` (``pipeline.running.runner.run_stages``) in a fresh child process, with the overrides
``data.source=<set>``, ``model.name=<asc|baseline>``, ``seed=<seed>``, ``train.epochs=<epochs>``,
``augment.tta.enabled=false`` and an MLflow store in the temporary work directory. Everything
else comes from ``configs/<config>.yaml`` (``default``: the report's network at 128 mel bins,
batch 32, AdamW with cosine decay, SpecAugment++ and time shift for ``asc``). The data are the
same for every run; the seed sets initialisation, data order, augmentation and dropout. Runs are
ordered seed by seed, so both networks see the same machine load.

The seeds x variants loop, the child process and the statistics are the harness shared with
``bench_generalization.py`` (``_common.seeds_by_variants``; mean and sample standard deviation,
``ddof=1``, from ``pipeline.core.stats``). Reads ``evaluate/metrics.json`` of each run:
macro-averaged class accuracy and log loss on the evaluate split, overall, on the seen and on the
unseen devices (S4-S6, absent from training). Prints one JSON object: per run the figures, train
time and peak memory; per network mean, sample standard deviation, min and max over seeds; the
paired per-seed difference asc - baseline with its mean and standard deviation, and on how many
seeds the paper network is better (``better_on_seeds``).
"""

from __future__ import annotations

import _common


def aggregate(runs: list[dict], models: list[str]) -> dict:
    """Per-network statistics over seeds and the paired differences between the first two networks."""
    stats = _common.by_variant(runs, models)
    out: dict = {"models": {}}
    for m in models:
        rs = sorted((r for r in runs if r["variant"] == m), key=lambda r: r["seed"])
        c = rs[0]["complexity"]
        out["models"][m] = {
            **stats[m],
            "params": c["params"],
            "macs": c["macs"],
            "int8_bytes_estimate": c["size_bytes"],
            "train_seconds": _common.seed_stats([r["train_seconds"] for r in rs]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
    if len(models) >= 2:
        out[f"difference_{models[0]}_minus_{models[1]}"] = _common.paired_difference(runs, models[0], models[1])
    return out


def main() -> None:
    p = _common.grid_parser(__doc__, epochs=6)
    p.add_argument("--models", default="asc,baseline")
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.clips, args.epochs, args.seeds = 200, 1, "0,1"
    models = [m for m in args.models.split(",") if m]
    load_before = _common.load_average()
    runs = _common.seeds_by_variants(
        "models", args, {m: [f"model.name={m}"] for m in models}, stages=["prepare", "train", "evaluate"], force=True
    )
    summary = aggregate(runs, models)
    compact = [{k: v for k, v in r.items() if k != "complexity"} for r in runs]  # complexity: once per model
    settings = {
        "clips": args.clips,
        "epochs": args.epochs,
        "seeds": sorted({r["seed"] for r in runs}),
        "models": models,
        "config": args.config,
        "data_seed": args.data_seed,
        "overrides": args.set,
        "tta": False,
        "quick": args.quick,
        "split": "evaluate (30% of the clips; unseen devices S4-S6)",
    }
    _common.emit("models", {"settings": settings, **summary, "runs": compact}, args, load_before=load_before)


if __name__ == "__main__":
    main()
