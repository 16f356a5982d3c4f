"""``report``: ``report.md`` and ``report.html`` from the stage outputs (no model is loaded)."""

from __future__ import annotations

import logging

from evaluate import report as rep
from evaluate.ablation import ablation
from pipeline.stages.base import Context

logger = logging.getLogger(__name__)


def report(ctx: Context) -> dict:
    """Write the report into the stage folder and log every file of it."""
    runs = [r for r in ctx.record.finished_runs("evaluate") if r["tags"].get("reused") != "true"]
    rows = ablation(runs)
    result = rep.build_report(ctx.workdir, ctx.params.to_yaml(), ctx.out, ablation=rows)
    for path in sorted(ctx.out.iterdir()):
        if path.is_file():
            ctx.record.artifact(path, "report")
    logger.info("report: %s", result["markdown"])
    return result
