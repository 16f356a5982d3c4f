"""The challenge figures of issue 22 on the built-in synthetic set: device-specific models, the DCASE2024
subsets and CP-Mobile against the report's network.

Usage::

    python benchmarks/bench_challenge.py --part devices  --epochs 20 --seeds 0,1,2 [--specialize-epochs 5]
    python benchmarks/bench_challenge.py --part splits   --epochs 20 --seeds 0,1,2
    python benchmarks/bench_challenge.py --part cpmobile --epochs 20 --seeds 0,1,2
        [--clips 2000 --data-seed 42] [--root DIR] [--workdir DIR] [--set KEY=VALUE] [--quick]

Every run goes through the project's own stages in a fresh child process, on one generated set
(``--clips``, ``--data-seed``), with the same epochs; TTA is off. Prints one JSON object:

* ``devices`` (``configs/dcase22.yaml`` + ``specialize.enabled``; stages prepare, train, specialize,
  evaluate, compress): per seen device the general and the specialized model's macro accuracy on its
  evaluate clips, mean and std over seeds and the paired gain; the system's figure (each known device
  through its own model); the size, MACs and limit check of every per-device int8 model.
* ``splits`` (``configs/dcase22.yaml``, ``data.train_split`` 5, 10, 25, 50, 100): macro accuracy per
  subset (mean and std over seeds) and the DCASE2024 score, their mean.
* ``cpmobile``: ``configs/dcase24-baseline.yaml`` (CP-Mobile, 32 kHz) against ``configs/dcase22.yaml`` (the
  report's network at 128 mels), both within the DCASE limits: overall, seen and unseen accuracy, the
  paired difference, and each network's parameters and MACs (CP-Mobile's next to the published figures).
"""

from __future__ import annotations

import _common

from pipeline.core.params import TRAIN_SUBSETS

PARTS = ("devices", "splits", "cpmobile")


def _mean_std(values: list[float]) -> dict:
    return _common.seed_stats([v for v in values if v is not None])


def devices(runs: list[dict]) -> dict:
    """General against specialized per device, the system figure, and the per-device int8 models."""
    seen = sorted({d for r in runs for d in r["device_specific"]["devices"]})
    table = {}
    for d in seen:
        rows = [r["device_specific"]["devices"][d] for r in runs if r["device_specific"]["devices"][d]["n"]]
        table[d] = {
            "n": rows[0]["n"] if rows else 0,
            "general": _mean_std([x["general"] for x in rows]),
            "specialized": _mean_std([x["specialized"] for x in rows]),
            "gain": _mean_std([x["gain"] for x in rows]),
        }
    return {
        "per_device": table,
        "system_macro_accuracy": _mean_std([r["device_specific"]["overall"]["macro_accuracy"] for r in runs]),
        "general_macro_accuracy": _mean_std([r["overall"]["macro_accuracy"] for r in runs]),
        "device_models": runs[0].get("device_models"),  # sizes and MACs do not depend on the seed
        "general_int8": runs[0].get("int8"),
    }


def splits(runs: list[dict], seeds: list[int]) -> dict:
    """Macro accuracy per subset and the DCASE2024 score (mean over the five subsets, per seed)."""
    per = {}
    for p in TRAIN_SUBSETS:
        rs = [r for r in runs if r["variant"] == f"split{p}"]
        per[p] = {
            "macro_accuracy": _mean_std([r["overall"]["macro_accuracy"] for r in rs]),
            "train_clips": rs[0]["training_data"]["train_clips"] if rs else None,
        }
    scores = []
    for s in seeds:
        accs = [r["overall"]["macro_accuracy"] for r in runs if r["seed"] == s]
        if len(accs) == len(TRAIN_SUBSETS):
            scores.append(sum(accs) / len(accs))
    return {"per_subset": per, "dcase2024_score": _mean_std(scores)}


def main() -> None:
    p = _common.grid_parser(__doc__, epochs=20)
    p.add_argument("--part", choices=PARTS, required=True)
    p.add_argument("--specialize-epochs", type=int, default=5, help="fine-tuning epochs per device (devices part)")
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.clips, args.epochs, args.seeds, args.specialize_epochs = 300, 1, "0", 1
    load_before = _common.load_average()
    if args.part == "devices":
        variants = {"specialized": ["specialize.enabled=true", f"specialize.epochs={args.specialize_epochs}"]}
        stages, configs = ["prepare", "train", "specialize", "evaluate", "compress"], {"specialized": "dcase22"}
    elif args.part == "splits":
        variants = {f"split{q}": [f"data.train_split={q}"] for q in TRAIN_SUBSETS}
        stages, configs = ["prepare", "train", "evaluate"], {v: "dcase22" for v in variants}
    else:
        variants = {"dcase22": [], "dcase24-baseline": []}
        stages, configs = ["prepare", "train", "evaluate", "compress"], {v: v for v in variants}
    runs = _common.seeds_by_variants("challenge", args, variants, stages=stages, configs=configs)
    seeds = sorted({r["seed"] for r in runs})
    figures: dict = {"part": args.part, "epochs": args.epochs, "seeds": seeds, "clips": args.clips}
    if args.part == "devices":
        figures["devices"] = devices(runs)
    elif args.part == "splits":
        figures["splits"] = splits(runs, seeds)
    else:
        names = list(variants)
        figures["variants"] = _common.by_variant(runs, names)
        figures["difference"] = _common.paired_difference(runs, "dcase24-baseline", "dcase22")
        figures["complexity"] = {v: next(r for r in runs if r["variant"] == v)["complexity"] for v in names}
        figures["int8"] = {v: next(r for r in runs if r["variant"] == v).get("int8") for v in names}
        figures["cpmobile_published"] = {"params": 61_148, "macs": 29_419_156, "counted_by": "torchinfo"}
    _common.emit("challenge", {**figures, "runs": runs}, args, load_before=load_before)


if __name__ == "__main__":
    main()
