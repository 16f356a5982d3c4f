"""A search's records: its MLflow runs, and ``trials.csv``, ``history.png`` and ``best.yaml`` from the study.

``trials.csv``: one row per trial of the study (every shard's): number, slot, state, value
(validation macro accuracy), params (the sampled values, JSON), seconds, error, MLflow run id.
``history.png``: each completed trial's value by trial number, pruned trials at their last
reported ``val_accuracy``, and the best value so far. ``best.yaml``: the base configuration with
the best trial's values and a comment header naming the study, the trial and its value; it loads
with ``--config``. The three are logged to the search's parent run, with the best value.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd
import yaml

from pipeline.core import dotted, files
from pipeline.core.config import Params
from pipeline.running import tracking

logger = logging.getLogger(__name__)


def shown(value) -> str:
    """A setting as text: ``0.25``, ``zm``, ``[8, 8, 16, 16]``."""
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)


def safe_url(url: str) -> str:
    """A database URL without its password (for logs and tags)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: Optuna will say so when it opens it
        return url.split("@")[-1] if "@" in url else url


class SearchRuns:
    """The search's side of the MLflow store: its parent run and its trials' runs."""

    def __init__(self, params: Params):
        import mlflow

        self.experiment_id = tracking.setup(params)
        self.client = mlflow.MlflowClient(tracking_uri=params.tracking.uri)
        self.base = params

    def _search(self, filter_string: str) -> list:
        return list(
            self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=1000, order_by=["attributes.start_time"]
            )
        )

    def parent(self, search, storage: str) -> str:
        """The search's parent run (created once for the study, whichever shard comes first), set RUNNING."""
        query = f"tags.search_id = '{search.search_id}' and tags.search_role = 'search'"
        found = self._search(query)
        if not found:
            mine = self.client.create_run(
                self.experiment_id,
                run_name=f"search-{search.search_id[:6]}",
                tags={
                    "search_id": search.search_id,
                    "search_role": "search",
                    "search_space": str(search.space.path),
                    "search_stages": ",".join(search.names),
                    "search_storage": safe_url(storage),
                    "config": search.base.name,
                },
            ).info.run_id
            self.client.log_dict(mine, search.space.describe(), "space.yaml")
            self.client.log_dict(mine, search.base.to_dict(), "base_config.yaml")
            found = self._search(query)
            if found and found[0].info.run_id != mine:  # another shard created one at the same moment
                self.client.delete_run(mine)
        run_id = found[0].info.run_id if found else mine
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "search_trials", str(search.trials))
        return run_id

    def tag_attempt(self, attempt: str, tags: dict[str, str]) -> str:
        """Tag one trial's run (found by its ``search_attempt`` tag); its id, "" when it has none."""
        for run in self._search(f"tags.search_attempt = '{attempt}'"):
            for key, value in tags.items():
                self.client.set_tag(run.info.run_id, key, value)
            return run.info.run_id
        return ""

    def objective(self, run_id: str, value: float) -> None:
        """The trial's value on its own run (metric ``search_objective``)."""
        if run_id:
            self.client.log_metric(run_id, "search_objective", value)

    def failed_run(self, search, number: int, tags: dict[str, str], values: dict, error: str) -> str:
        """A FAILED run for a trial that never started (its values do not validate), its values as params; its id."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"search-{search.search_id[:6]}-t{number}",
            tags={**tags, "trial_state": "FAIL", "trial_error": error[:4000]},
        )
        for key, value in values.items():
            self.client.log_param(run.info.run_id, key, shown(value))
        self.client.log_text(run.info.run_id, error + "\n", "error.txt")
        self.client.set_terminated(run.info.run_id, "FAILED")
        return run.info.run_id

    def finish(self, parent: str, paths: list[Path], best: float | None, counts: dict[str, int]) -> None:
        for path in paths:
            self.client.log_artifact(parent, str(path))
        if best is not None:
            self.client.log_metric(parent, "best_validation_macro_accuracy", best)
        for state, n in counts.items():
            self.client.log_metric(parent, f"trials_{state.lower()}", n)
        self.client.set_terminated(parent, "FINISHED")


def trials_table(study, space) -> pd.DataFrame:
    """One row per trial of the study: number, slot, state, value, params (JSON), seconds, error, run id.

    Args:
      study: the Optuna study (every shard's trials).
      space: the search's :class:`~pipeline.scaling.search_space.Space` (decodes the sampled values).

    Returns:
      The table, in trial order.
    """
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = space.values(t.params)
        rows.append(
            {
                "number": t.number,
                "slot": t.user_attrs.get("slot"),
                "state": t.state.name,
                "value": t.value if t.value is not None else math.nan,
                "params": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}),
                "seconds": t.user_attrs.get("seconds", math.nan),
                "error": t.user_attrs.get("error") or t.user_attrs.get("abandoned", ""),
                "run_id": t.user_attrs.get("run_id", ""),
            }
        )
    return pd.DataFrame(rows, columns=["number", "slot", "state", "value", "params", "seconds", "error", "run_id"])


def best_yaml(search, trial, study_name: str, storage: str) -> str:
    """The base configuration with ``trial``'s values, as YAML with a comment header.

    Args:
      search: the search (its base configuration and space).
      trial: the best ``FrozenTrial``.
      study_name: the study's name.
      storage: the study's storage URL (shown without its password).

    Returns:
      The file's text; :func:`pipeline.core.config.load` reads it.
    """
    values = search.space.values(trial.params)
    tree = search.base.to_dict()
    for key, value in values.items():
        dotted.put(tree, key, list(value) if isinstance(value, tuple) else value)
    header = [
        f"# Best settings of search {search.search_id}: Optuna study '{study_name}' in {safe_url(storage)}",
        f"# trial {trial.number}: validation macro accuracy {trial.value:.6f} "
        f"(held-out devices {','.join(search.base.data.validation)}; the evaluate split was not used)",
        *(f"#   {key}: {shown(value)}" for key, value in values.items()),
        "# The base configuration (--config/--set) with these values; run it with:",
        "#   python -m pipeline.run --stage all --config <this file>",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(tree, sort_keys=False)


def plot_history(table: pd.DataFrame, pruned_at: dict[int, float], path: Path, title: str) -> Path:
    """The optimization history: completed values, pruned trials' last ``val_accuracy``, best so far.

    Args:
      table: :func:`trials_table`.
      pruned_at: the last reported ``val_accuracy`` of each pruned trial, by number.
      path: the PNG to write.
      title: the figure's title.

    Returns:
      ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    done = table[table.state == "COMPLETE"].sort_values("number")
    ax.plot(done.number, done.value, "o", color="#1f77b4", label="completed: validation macro accuracy")
    if len(done):
        ax.step(done.number, done.value.cummax(), where="post", color="#d62728", label="best so far")
    if pruned_at:
        ax.plot(list(pruned_at), list(pruned_at.values()), "x", color="#7f7f7f", label="pruned: last val_accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path


def write(search, study, root: Path, store: SearchRuns, parent: str, ran: int, storage: str) -> str:
    """Write ``trials.csv``, ``history.png`` and (with a completed trial) ``best.yaml``, and log them to the parent run.

    Args:
      search: the search.
      study: its study.
      root: the search's folder.
      store: the MLflow side.
      parent: the search's parent run id (ended FINISHED here).
      ran: trials this invocation ran (for the closing text).
      storage: the study's storage URL.

    Returns:
      The closing text for the terminal.
    """
    from optuna.trial import TrialState

    table = trials_table(study, search.space)
    root.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(root / "trials.csv") as tmp:
        table.to_csv(tmp, index=False)
    pruned_at = {
        t.number: t.intermediate_values[max(t.intermediate_values)]
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if t.intermediate_values
    }
    title = f"search {search.search_id}: {len(table)} trial(s)"
    paths = [root / "trials.csv", plot_history(table, pruned_at, root / "history.png", title)]
    counts = {state: int((table.state == state).sum()) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    lines = [
        f"Search {search.search_id}: {len(table)} trial(s) in the study ({counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed, {counts['RUNNING']} running); this run ran {ran}"
    ]
    best = None
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        trial = study.best_trial
        best = trial.value
        files.write_text(root / "best.yaml", best_yaml(search, trial, study.study_name, storage))
        paths.append(root / "best.yaml")
        settings = ", ".join(f"{k}={shown(v)}" for k, v in search.space.values(trial.params).items())
        lines.append(f"  best: trial {trial.number}, validation macro accuracy {best:.4f} ({settings})")
    else:
        lines.append("  no trial completed: no best settings")
    store.finish(parent, paths, best, counts)
    lines += [f"  {path}" for path in paths]
    lines.append(
        f"  MLflow: parent run search-{search.search_id[:6]} ({parent}); trials tagged search_id = "
        f"'{search.search_id}' in experiment '{search.base.tracking.experiment}' ({search.base.tracking.uri})"
    )
    lines.append(f"  Optuna: study '{study.study_name}' in {safe_url(storage)}")
    return "\n".join(lines)
