"""A sweep's summaries, read back from the parent runs' MLflow metrics (what the UI shows).

``runs.csv``: one row per cell (combination x seed): the swept values, the status (finished,
failed, killed, running, missing), the parent run's id and name, the error, and the summary
metrics. ``summary.csv``: one row per combination: the swept values, ``n_seeds`` (finished
cells, the only ones averaged), ``n_failed``, ``n_missing``, and per metric ``<m>_mean`` and
``<m>_std`` (sample standard deviation over seeds, ``ddof=1``; empty for one seed).
``summary.png``: mean +/- std per combination and metric. All three are logged to one MLflow
"sweep" run per scope (tagged ``sweep_id``, ``sweep_role=summary``, ``sweep_scope``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import files
from pipeline.core.config import Params
from pipeline.core.params import TRAIN_SUBSETS
from pipeline.core.stats import mean_std
from pipeline.running import tracking

logger = logging.getLogger(__name__)

# (parent-run metric, title): overall macro accuracy, unseen devices (S4-S6), log loss, int8 size.
METRICS = (
    ("macro_accuracy", "macro accuracy"),
    ("group_unseen_macro_accuracy", "unseen-device macro accuracy"),
    ("log_loss", "log loss"),
    ("int8_size_bytes", "int8 size (bytes)"),
)
_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed", "RUNNING": "running", "SCHEDULED": "running"}


def status(run) -> str:
    """``finished``, ``failed``, ``killed``, ``running`` or ``missing`` (no run) of a parent run."""
    return "missing" if run is None else _STATUS.get(run.info.status, run.info.status.lower())


class Store:
    """The sweep's side of the MLflow store: its parent runs, and its summary runs."""

    def __init__(self, params: Params):
        import mlflow

        self.experiment_id = tracking.setup(params)
        self.client = mlflow.MlflowClient(tracking_uri=params.tracking.uri)

    def search(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def latest(self, sweep_id: str) -> dict:
        """Per cell name, its newest FINISHED parent run of this sweep, else its newest run."""
        chosen: dict = {}
        for run in self.search(f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'run'"):  # newest first
            cell = run.data.tags.get("sweep_cell")
            have = chosen.get(cell)
            if have is None or (status(have) != "finished" and status(run) == "finished"):
                chosen[cell] = run
        return chosen

    def tag_attempt(self, attempt: str, tags: dict[str, str]) -> str:
        """Tag the parent run of one attempt (found by its ``sweep_attempt`` tag); its id, "" if none was made."""
        for run in self.search(f"tags.sweep_attempt = '{attempt}'"):
            for key, value in tags.items():
                self.client.set_tag(run.info.run_id, key, value)
            return run.info.run_id
        return ""

    def log_summary(
        self, sweep, scope: str, paths: list[Path], summary: pd.DataFrame, ranking: pd.DataFrame | None = None
    ) -> str:
        """Log the summary files into the sweep's summary run for ``scope`` (created once, then updated)."""
        found = self.search(
            f"tags.sweep_id = '{sweep.sweep_id}' and tags.sweep_role = 'summary' and tags.sweep_scope = '{scope}'"
        )
        if found:
            run_id = found[0].info.run_id
        else:
            name = f"sweep-{sweep.sweep_id}" + ("" if scope == "grid" else f"-{scope}")
            run_id = self.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={"sweep_id": sweep.sweep_id, "sweep_role": "summary", "sweep_scope": scope},
            ).info.run_id
        for path in paths:
            self.client.log_artifact(run_id, str(path))
        self.client.log_param(run_id, "sweep.keys", ",".join(d.key for d in sweep.dims) or "(seeds only)")
        self.client.log_param(run_id, "sweep.seeds", ",".join(map(str, sweep.seeds)))
        for row in summary.to_dict("records"):
            for metric, _ in METRICS:
                for stat in ("mean", "std"):
                    value = row.get(f"{metric}_{stat}")
                    if value is not None and np.isfinite(value):
                        self.client.log_metric(run_id, f"{row['combo']}_{metric}_{stat}", float(value))
        if ranking is not None:  # the DCASE2024 score: one metric per setting of the other swept keys
            for k, row in enumerate(ranking.to_dict("records")):
                if row["complete"]:
                    name = "dcase2024_score" if len(ranking) == 1 else f"g{k}_dcase2024_score"
                    self.client.log_metric(run_id, name, float(row["dcase2024_score"]))
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def runs_table(sweep, cells: list, latest: dict, errors: dict[str, dict]) -> pd.DataFrame:
    """One row per cell: swept values, status, run id and name, error, and the summary metrics.

    A cell that failed in this invocation (``errors``: ``{"error", "run_id"}`` by cell name) is
    failed whatever older runs MLflow holds; the others show their :meth:`Store.latest` run.
    """
    rows = []
    for cell in cells:
        run = latest.get(cell.name)
        state = status(run)
        error = run.data.tags.get("sweep_error", "") if run is not None else ""
        run_id = run.info.run_id if run is not None else ""
        run_name = run.info.run_name if run is not None else ""
        if cell.name in errors:
            state, error, run_id = "failed", errors[cell.name]["error"], errors[cell.name]["run_id"]
            run_name = run_name if run is not None and run.info.run_id == run_id else ""
        if state in ("failed", "killed") and not error:
            error = "see error.txt in the failed stage's MLflow run"
        row = {
            "cell": cell.name,
            "combo": f"c{cell.combo}",
            "seed": cell.seed,
            **dict(cell.settings),
            "status": state,
            "run_id": run_id,
            "run_name": run_name,
            "error": error,
        }
        for metric, _ in METRICS:
            row[metric] = run.data.metrics.get(metric, np.nan) if state == "finished" else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(sweep, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per combination: ``n_seeds`` finished, failures, and mean/std (ddof=1) of each metric present."""
    present = [m for m, _ in METRICS if runs[m].notna().any()]
    absent = [m for m, _ in METRICS if m not in present]
    if absent:
        logger.info(
            "sweep summary: %s not in any finished parent run (their stages did not run); left out", ", ".join(absent)
        )
    rows = []
    for combo, group in runs.groupby("combo", sort=False):
        done = group[group.status == "finished"]
        failed = group[group.status.isin(["failed", "killed"])]
        row = {
            "combo": combo,
            **{d.key: group[d.key].iloc[0] for d in sweep.dims},
            "n_seeds": len(done),
            "n_failed": len(failed),
            "n_missing": len(group) - len(done) - len(failed),
            "seeds": ",".join(map(str, done.seed)),
        }
        row["status"] = "finished" if len(done) == len(group) else ("failed" if len(failed) else "incomplete")
        for metric in present:
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(done[metric].dropna())
        row["error"] = "; ".join(f"{c}: {e}" for c, e in zip(failed.cell, failed.error, strict=True))
        rows.append(row)
    return pd.DataFrame(rows)


SPLIT_KEY = "data.train_split"


def dcase2024_table(sweep, summary: pd.DataFrame) -> pd.DataFrame | None:
    """The DCASE2024 Task 1 ranking score of a sweep over ``data.train_split``: per setting of the other
    swept keys, the mean over the five subsets (5, 10, 25, 50, 100 %) of the macro accuracy (each the
    mean over seeds), next to each subset's figure; None when the sweep does not cover all five.

    Columns: the other keys, ``split<N>_macro_accuracy`` (mean over seeds) and ``_std`` per subset,
    ``dcase2024_score`` (NaN while a subset has no finished run), ``complete``.
    """
    dim = next((d for d in sweep.dims if d.key == SPLIT_KEY), None)
    wanted = [str(p) for p in TRAIN_SUBSETS]
    if dim is None or not set(wanted) <= {t.strip() for t in dim.texts} or "macro_accuracy_mean" not in summary:
        return None
    others = [d.key for d in sweep.dims if d.key != SPLIT_KEY]
    table = summary.assign(_split=summary[SPLIT_KEY].astype(str).str.strip())
    groups = table.groupby(others, sort=False) if others else [((), table)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(others, key, strict=True))
        accs = []
        for p in wanted:
            hit = group[group._split == p]
            mean = float(hit.macro_accuracy_mean.iloc[0]) if len(hit) else np.nan
            std = float(hit.macro_accuracy_std.iloc[0]) if len(hit) and "macro_accuracy_std" in hit else np.nan
            row[f"split{p}_macro_accuracy"], row[f"split{p}_macro_accuracy_std"] = mean, std
            accs.append(mean)
        row["complete"] = bool(np.all(np.isfinite(accs)))
        row["dcase2024_score"] = float(np.mean(accs)) if row["complete"] else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def read_table(path: Path) -> pd.DataFrame:
    """A summary CSV read back (the swept values as text, as the sweep holds them)."""
    return pd.read_csv(path, dtype={SPLIT_KEY: str})


def dcase2024_lines(table: pd.DataFrame) -> list[str]:
    """The ranking score and each subset's figure, one line per setting, for the sweep's closing text."""
    lines = []
    others = [c for c in table.columns if not c.startswith("split") and c not in ("complete", "dcase2024_score")]
    for row in table.to_dict("records"):
        label = " ".join(f"{k}={row[k]}" for k in others) or "base"
        figures = ", ".join(
            f"{p} %: {100 * row[f'split{p}_macro_accuracy']:.1f}"
            if np.isfinite(row[f"split{p}_macro_accuracy"])
            else f"{p} %: -"
            for p in TRAIN_SUBSETS
        )
        score = f"{100 * row['dcase2024_score']:.2f} %" if row["complete"] else "incomplete"
        lines.append(f"  DCASE2024 score ({label}): {score}  [macro accuracy by subset: {figures}]")
    return lines


def write(sweep, cells: list, latest: dict, errors: dict[str, dict], folder: Path, scope: str, store: Store) -> Path:
    """Write ``runs.csv``, ``summary.csv`` and ``summary.png`` into ``folder``; log them. Returns summary.csv."""
    from evaluate.plots import plot_sweep

    runs = runs_table(sweep, cells, latest, errors)
    summary = summary_table(sweep, runs)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in (("summary.csv", summary), ("runs.csv", runs)):
        with files.atomic_path(folder / name) as tmp:
            table.to_csv(tmp, index=False)
        paths.append(folder / name)
    series = [
        (title, summary[f"{m}_mean"].tolist(), summary[f"{m}_std"].tolist())
        for m, title in METRICS
        if f"{m}_mean" in summary
    ]
    if series and summary.n_seeds.sum():
        labels = [
            f"{row.combo}: {sweep.combo_label(int(row.combo[1:]))} (n={row.n_seeds})" for row in summary.itertuples()
        ]
        paths.append(
            plot_sweep(
                labels,
                series,
                folder / "summary.png",
                title=f"sweep {sweep.sweep_id} ({scope}): mean +/- std over seeds",
            )
        )
    else:
        logger.warning("sweep %s (%s): no finished run with summary metrics; no plot", sweep.sweep_id, scope)
    ranking = dcase2024_table(sweep, summary)
    if ranking is not None:
        with files.atomic_path(folder / "dcase2024.csv") as tmp:
            ranking.to_csv(tmp, index=False)
        paths.append(folder / "dcase2024.csv")
        from evaluate.challenge_plots import plot_data_fraction

        others = [d.key for d in sweep.dims if d.key != SPLIT_KEY]
        paths.append(
            plot_data_fraction(
                TRAIN_SUBSETS,
                [
                    (
                        " ".join(f"{k}={row[k]}" for k in others) or "macro accuracy",
                        [row[f"split{p}_macro_accuracy"] for p in TRAIN_SUBSETS],
                        [row[f"split{p}_macro_accuracy_std"] for p in TRAIN_SUBSETS],
                    )
                    for row in ranking.to_dict("records")
                ],
                folder / "dcase2024.png",
                title=f"sweep {sweep.sweep_id}: macro accuracy against the training data (DCASE2024 subsets)",
            )
        )
        for line in dcase2024_lines(ranking):
            logger.info("sweep %s (%s):%s", sweep.sweep_id, scope, line)
    run_id = store.log_summary(sweep, scope, paths, summary, ranking)
    logger.info("sweep %s (%s): %s, logged to MLflow run %s", sweep.sweep_id, scope, folder / "summary.csv", run_id)
    return folder / "summary.csv"
