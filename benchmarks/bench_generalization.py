"""Generalization to unseen devices: the report's recipe against the recommended one, and an ablation.

Usage::

    python benchmarks/bench_generalization.py --variants dcase22,dcase22-kd --epochs 40 --seeds 0,1,2 \
        [--clips 2000 --data-seed 42] [--teacher-channels 96,192,192,192] [--teacher-members 1]
    python benchmarks/bench_generalization.py [--quick] [--variants report,dir,fms,kd,all] [--config dcase22]
                                              [--root DIR] [--workdir DIR] [--set KEY=VALUE] [--mlflow]

Generates one synthetic set (``--clips`` clips, ``--data-seed``; devices S4-S6 only in the
evaluate split; ``--clips 2000 --data-seed 42`` is the set ``configs/dcase22.yaml`` generates) and,
for every seed and variant, runs the project's own stages (``prepare``, ``teacher`` when
distilling, ``train``, ``evaluate``; ``pipeline.running.runner.run_stages``) in a fresh child
process with the same epochs and the same data. TTA is off (plain predictions).

Whole recipes, each its own configuration file (its teacher settings unless ``--teacher-*``):

* ``dcase22``: the report's recipe (``configs/dcase22.yaml``);
* ``dcase22-kd``: the recommended one (``configs/dcase22-kd.yaml``).

Variants of ``--config`` (the ablation of issue 24):

* ``report``: the configuration as it is (for ``dcase22``: SpecAugment++, time shift);
* ``dir``: + device response augmentation (``augment.device_response.enabled``, built-in generator);
* ``fms``: + Freq-MixStyle (``augment.freq_mixstyle.enabled``);
* ``dir+fms``: both; ``dir+fms-nospec``: both without SpecAugment++ (stacked regularizers);
  ``dir+fms-half``: both at half their probabilities (strength);
* ``kd``: + knowledge distillation from a wider teacher trained by the same recipe;
* ``all``: dir + fms + kd, the teacher trained with the device augmentations too
  (``distill.teacher.device_augmentations``; the recipe as issue 13 shipped it);
* ``kd-plain-teacher+dir+fms`` (``-w0.9``: distillation weight 0.9; ``-nospec``: without
  SpecAugment++): dir + fms + kd, the teacher imported from the ``kd`` variant of the same seed,
  trained without device augmentations.

The generator of device responses is the augmentation's own (random EQ cascades, band limits,
mild nonlinearity), not the synthetic set's device models, so the comparison measures
generalization to devices neither of them was built from.

The seeds x variants loop, the child process and the statistics are the harness shared with
``bench_models.py`` (``_common.seeds_by_variants``; mean and sample standard deviation, ``ddof=1``,
from ``pipeline.core.stats``). Prints one JSON object: per run the overall, seen- and
unseen-device macro accuracy and log loss and the learning curves (``curves``: training and
validation accuracy per epoch); per variant mean and sample standard deviation over seeds and the
seen - unseen gap (``gap``); per variant the paired per-seed difference to ``report`` (or to
``dcase22``) per group and metric (mean, std, on how many seeds it is better: ``better_on_seeds``).
Each run is also appended to ``runs.jsonl`` in the work folder as it ends.
"""

from __future__ import annotations

import _common

DIR = "augment.device_response.enabled=true"
FMS = "augment.freq_mixstyle.enabled=true"
KD = "distill.enabled=true"
NOSPEC = "augment.specaugment.enabled=false"
# the plain teacher the ``kd`` variant trained for the same seed, imported (it must run first)
KD_TEACHER = "distill.teacher.logits={work}/kd-seed{seed}/teacher/logits.npz"

VARIANTS = {
    "report": [],
    "dir": [DIR],
    "fms": [FMS],
    "kd": [KD],
    "all": [DIR, FMS, KD, "distill.teacher.device_augmentations=true"],  # the recipe as issue 13 shipped it
    # ablation (issue 24): which part of the device recipe costs, and what recovers it
    "dir+fms": [DIR, FMS],
    "dir+fms-nospec": [DIR, FMS, NOSPEC],
    "dir+fms-half": [DIR, FMS, "augment.device_response.p=0.2", "augment.freq_mixstyle.p=0.3"],
    "kd-plain-teacher+dir+fms": [DIR, FMS, KD, KD_TEACHER],
    "kd-plain-teacher+dir+fms-w0.9": [DIR, FMS, KD, KD_TEACHER, "distill.weight=0.9"],
    "kd-plain-teacher+dir+fms-nospec": [DIR, FMS, NOSPEC, KD, KD_TEACHER],
    "kd-plain-teacher+dir+fms-nospec-w0.9": [DIR, FMS, NOSPEC, KD, KD_TEACHER, "distill.weight=0.9"],
}
# whole recipes, each its own configuration file with its own teacher settings
RECIPES = {"dcase22": "dcase22", "dcase22-kd": "dcase22-kd"}


def aggregate(runs: list[dict], variants: list[str]) -> dict:
    """Mean and std per variant, its seen - unseen gap; paired differences to the report's recipe.

    The reference of the paired differences is ``report`` (or the ``dcase22`` recipe when ``report``
    did not run).
    """
    out: dict = {"variants": _common.by_variant(runs, variants), "gap": {}, "difference_to_report": {}}
    for v in variants:
        rs = [r for r in runs if r["variant"] == v and r["seen"] is not None and r["unseen"] is not None]
        if rs:
            out["gap"][v] = _common.seed_stats(
                [r["seen"]["macro_accuracy"] - r["unseen"]["macro_accuracy"] for r in rs]
            )
    reference = "report" if "report" in variants else "dcase22" if "dcase22" in variants else None
    if reference is not None:
        out["reference"] = reference
        for v in variants:
            if v != reference:
                out["difference_to_report"][v] = _common.paired_difference(runs, v, reference)
    return out


def main() -> None:
    p = _common.grid_parser(__doc__, epochs=10)
    p.add_argument(
        "--variants",
        default="report,dir,fms,kd,all",
        help=f"comma-separated, run in this order for each seed; known: {', '.join([*VARIANTS, *RECIPES])}",
    )
    p.add_argument("--teacher-channels", default=None, help="e.g. 96,192,192,192; default: the config's")
    p.add_argument("--teacher-members", type=int, default=None, help="default: the config's")
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.clips, args.epochs, args.seeds = 300, 1, "0"
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS and v not in RECIPES]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join([*VARIANTS, *RECIPES])}")
    for v in variants:
        if KD_TEACHER in VARIANTS.get(v, []) and ("kd" not in variants or variants.index("kd") > variants.index(v)):
            p.error(f"variant {v} imports the teacher of variant kd: list kd before it")
    load_before = _common.load_average()
    teacher = []
    if args.teacher_channels is not None:
        teacher.append(f"distill.teacher.channels=[{args.teacher_channels}]")
    if args.teacher_members is not None:
        teacher.append(f"distill.teacher.members={args.teacher_members}")
    runs = _common.seeds_by_variants(
        "generalization",
        args,
        {v: VARIANTS.get(v, []) for v in variants},
        stages=["prepare", "teacher", "train", "evaluate"],
        extra=teacher,
        configs={v: RECIPES[v] for v in variants if v in RECIPES},
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
