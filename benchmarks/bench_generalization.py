"""Generalization to unseen devices: the report's recipe against the additions of issue 13.

Usage::

    python benchmarks/bench_generalization.py [--quick] [--clips 1500] [--epochs 10] [--seeds 0,1,2]
                                              [--variants report,dir,fms,kd,all] [--config default]
                                              [--teacher-channels 96,192,192,192] [--teacher-members 1]
                                              [--root DIR] [--workdir DIR] [--set KEY=VALUE] [--mlflow]

Generates one synthetic set (``--clips`` clips, ``--data-seed``; devices S4-S6 only in the
evaluate split) and, for every seed and variant, runs the project's own stages (``prepare``,
``teacher`` when distilling, ``train``, ``evaluate``; ``pipeline.running.runner.run_stages``) in a fresh
child process with the same epochs and the same data. Variants:

* ``report``: the report's recipe (``configs/<config>.yaml``: SpecAugment++, time shift);
* ``dir``: + device response augmentation (``augment.device_response.enabled``, built-in generator);
* ``fms``: + Freq-MixStyle (``augment.freq_mixstyle.enabled``);
* ``kd``: + knowledge distillation from a wider teacher trained by the same recipe;
* ``all``: all three together.

The generator of device responses is the augmentation's own (random EQ cascades, band limits,
mild nonlinearity), not the synthetic set's device models, so the comparison measures
generalization to devices neither of them was built from. TTA is off (plain predictions).

The seeds x variants loop, the child process and the statistics are the harness shared with
``bench_models.py`` (``_common.seeds_by_variants``; mean and sample standard deviation, ``ddof=1``,
from ``pipeline.core.stats``). Prints one JSON object: per run the overall, seen- and
unseen-device macro accuracy and log loss; per variant mean and sample standard deviation over
seeds; per variant the paired per-seed difference to ``report`` per group and metric (mean, std,
on how many seeds it is better: ``better_on_seeds``).
"""

from __future__ import annotations

import _common

VARIANTS = {
    "report": [],
    "dir": ["augment.device_response.enabled=true"],
    "fms": ["augment.freq_mixstyle.enabled=true"],
    "kd": ["distill.enabled=true"],
    "all": ["augment.device_response.enabled=true", "augment.freq_mixstyle.enabled=true", "distill.enabled=true"],
}


def aggregate(runs: list[dict], variants: list[str]) -> dict:
    """Mean and std per variant; paired differences to the report's recipe."""
    out: dict = {"variants": _common.by_variant(runs, variants), "difference_to_report": {}}
    if "report" in variants:
        for v in variants:
            if v != "report":
                out["difference_to_report"][v] = _common.paired_difference(runs, v, "report")
    return out


def main() -> None:
    p = _common.grid_parser(__doc__, epochs=10)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--teacher-channels", default="96,192,192,192")
    p.add_argument("--teacher-members", type=int, default=1)
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.clips, args.epochs, args.seeds = 300, 1, "0"
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    load_before = _common.load_average()
    teacher = [f"distill.teacher.channels=[{args.teacher_channels}]", f"distill.teacher.members={args.teacher_members}"]
    runs = _common.seeds_by_variants(
        "generalization",
        args,
        {v: VARIANTS[v] for v in variants},
        stages=["prepare", "teacher", "train", "evaluate"],
        extra=teacher,
    )
    settings = {
        "clips": args.clips,
        "epochs": args.epochs,
        "seeds": sorted({r["seed"] for r in runs}),
        "variants": variants,
        "config": args.config,
        "teacher_channels": args.teacher_channels,
        "teacher_members": args.teacher_members,
        "data_seed": args.data_seed,
        "overrides": args.set,
        "tta": False,
        "quick": args.quick,
    }
    _common.emit(
        "generalization",
        {"settings": settings, **aggregate(runs, variants), "runs": runs},
        args,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
