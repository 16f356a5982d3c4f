"""Ablation over the runs of an experiment: which recipe additions move accuracy, overall and on unseen devices.

The report stage collects the finished evaluate runs of its MLflow experiment (each with its
flattened parameters and metrics), names each run's recipe by the switches it had on, and
groups runs of the same recipe (different seeds) into mean and sample standard deviation
(:func:`pipeline.core.stats.mean_std`; 0 for a single run).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pipeline.core.stats import mean_std

# (flattened parameter, short name) of the recipe switches, in the order they appear in a name.
SWITCHES = (
    ("augment.device_response.enabled", "DIR"),
    ("augment.freq_mixstyle.enabled", "FMS"),
    ("distill.enabled", "KD"),
)


def _on(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def recipe_name(params: Mapping[str, str]) -> str:
    """``report`` for the report's recipe, else ``+DIR+FMS+KD``-style names of what was added."""
    model = params.get("model.name", "asc")
    added = "".join(f"+{short}" for key, short in SWITCHES if _on(params.get(key, "false")))
    base = "report" if model == "asc" else model
    return base + added if added else base


def _stats(values: list[float]) -> dict:
    mean, std = mean_std(values, single=0.0)
    return {"mean": mean, "std": std, "n": len(values)}


def ablation(runs: Iterable[Mapping]) -> list[dict]:
    """Rows ``{"recipe", "runs", "overall": stats, "unseen": stats}`` from evaluate runs.

    Args:
      runs: ``{"params": {flattened key: value}, "metrics": {name: value}}`` per finished,
        non-reused evaluate run (``macro_accuracy``; ``group_unseen_macro_accuracy`` when the
        evaluate split had unseen devices).

    Returns:
      One row per recipe, the report's recipe first, then by name; empty without runs.
    """
    groups: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        m = run.get("metrics", {})
        if "macro_accuracy" not in m:
            continue
        g = groups.setdefault(recipe_name(run.get("params", {})), {"overall": [], "unseen": []})
        g["overall"].append(float(m["macro_accuracy"]))
        if "group_unseen_macro_accuracy" in m:
            g["unseen"].append(float(m["group_unseen_macro_accuracy"]))
    rows = []
    for name in sorted(groups, key=lambda n: (n != "report", n)):
        g = groups[name]
        rows.append(
            {
                "recipe": name,
                "runs": len(g["overall"]),
                "overall": _stats(g["overall"]),
                "unseen": _stats(g["unseen"]) if g["unseen"] else None,
            }
        )
    return rows
