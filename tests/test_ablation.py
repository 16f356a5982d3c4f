"""The ablation table over an experiment's runs: recipe names, grouping by recipe, mean and std, the plot."""

import pytest

from evaluate.ablation import ablation, recipe_name
from evaluate.plots import plot_ablation


def _run(acc, unseen=None, **switches):
    params = {"model.name": "asc", **{k: str(v) for k, v in switches.items()}}
    metrics = {"macro_accuracy": acc}
    if unseen is not None:
        metrics["group_unseen_macro_accuracy"] = unseen
    return {"params": params, "metrics": metrics}


def test_recipe_names_from_the_switches():
    assert recipe_name({"model.name": "asc"}) == "report"
    assert (
        recipe_name({"model.name": "asc", "augment.freq_mixstyle.enabled": "True", "distill.enabled": "True"})
        == "report+FMS+KD"
    )
    assert recipe_name({"model.name": "baseline"}) == "baseline"


def test_runs_of_a_recipe_are_grouped_with_mean_and_std(tmp_path):
    dr = {"augment.device_response.enabled": True}
    rows = ablation(
        [
            _run(0.50, 0.40),
            _run(0.60, 0.44),
            _run(0.70, 0.60, **dr),
            _run(0.66, 0.58, **dr),
            {"params": {}, "metrics": {"log_loss": 1.0}},
        ]
    )  # a run without accuracy is left out
    assert [r["recipe"] for r in rows] == ["report", "report+DIR"]
    report, dir_ = rows
    assert report["runs"] == 2 and report["overall"]["mean"] == pytest.approx(0.55)
    assert report["overall"]["std"] == pytest.approx(0.0707107, rel=1e-5)  # sample std of 0.5, 0.6
    assert dir_["unseen"]["mean"] == pytest.approx(0.59)
    path = plot_ablation(rows, tmp_path / "ablation.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_empty_ablation():
    assert ablation([]) == []
    with pytest.raises(ValueError, match="no recipe"):
        plot_ablation([], "x.png")
