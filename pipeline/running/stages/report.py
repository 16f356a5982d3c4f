"""``report``: ``report.md`` and ``report.html`` from the stage outputs (no model is loaded)."""

from __future__ import annotations

import logging
from pathlib import Path

from evaluate import report as rep
from evaluate.ablation import ablation
from pipeline.core.config import Params
from pipeline.running.stages.base import Context

logger = logging.getLogger(__name__)


def report(ctx: Context) -> dict:
    """Write the report into the stage folder and log every file of it."""
    runs = [r for r in ctx.record.finished_runs("evaluate") if r["tags"].get("reused") != "true"]
    rows = ablation(runs)
    plots = (ctx.input("evaluate", plot, missing_ok=True) for plot in rep.PLOTS)
    inputs = rep.ReportInputs(
        summary=ctx.input("prepare", "summary"),
        metrics=ctx.input("evaluate", "metrics"),
        plots=tuple(p for p in plots if p is not None),
        compress_metrics=ctx.input("compress", "metrics", missing_ok=True),
        teacher_metrics=ctx.input("teacher", "metrics", missing_ok=True),
    )
    result = rep.build_report(inputs, ctx.params.to_yaml(), ctx.out, ablation=rows)
    for path in sorted(ctx.out.iterdir()):
        if path.is_file():
            ctx.record.artifact(path, "report")
    logger.info("report: %s", result["markdown"])
    return result


def summary_lines(folder: Path, params: Params) -> list[str]:
    """The closing summary's line of a complete ``report`` folder: where the report is.

    Args:
      folder: the stage's complete folder.
      params: the run's parameter tree (unused).

    Returns:
      One line.
    """
    return [f"  report:   {(folder / 'report.md').resolve()} (and report.html)"]
