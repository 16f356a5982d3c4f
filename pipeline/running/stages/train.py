"""``train``: fit the network on fold1_train, validating each epoch on fold1_evaluate; resumable.

With ``distill.enabled`` the network is a student trained on the teacher stage's stored logits.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from models import asc, distill
from pipeline.running import task
from pipeline.running.stages.base import Context, StageError, clips, load_index, validation_split

logger = logging.getLogger(__name__)


def distillation_targets(ctx: Context, tr: pd.DataFrame) -> np.ndarray:
    """``[len(tr), 1 + K]`` targets: each clip's label and the teacher ensemble's stored logits."""
    path = ctx.input("teacher", "logits")
    stored = np.load(path, allow_pickle=False)
    row = {name: i for i, name in enumerate(stored["filenames"].tolist())}
    missing = [f for f in tr.filename if f not in row]
    if missing:
        raise StageError(
            f"{path} has no teacher logits for {len(missing)} training "
            f"clip(s), e.g. {missing[0]}: run --stage teacher with this run's settings"
        )
    logits = stored["logits"][[row[f] for f in tr.filename]]
    return distill.pack_targets(tr.label.to_numpy(), logits)


def train(ctx: Context) -> dict:
    """Train the network (the student, when distillation is on); resumes an interrupted run.

    Returns:
      ``{"model": path, "best": path, "history": dict}``.
    """
    params = ctx.params
    index, root, _ = load_index(ctx)
    tr = clips(index, "train", params)
    ev = clips(index, validation_split(params), params)
    if params.data.train_split is not None:
        logger.info(
            "train: data.train_split=%s: %d of the %d clips of the training split",
            params.data.train_split,
            len(tr),
            int((index.split == "train").sum()),
        )
    if len(ev) == 0:
        raise StageError(f"the {validation_split(params)} split is empty: nothing to validate on (data.validation)")
    widths = asc.specaugment_widths(params)
    ctx.record.tags({f"specaugment.width.{pos}": f"time {t}, freq {f}" for pos, (t, f) in widths.items()})
    targets = distillation_targets(ctx, tr) if params.distill.enabled else None
    if targets is not None:
        logger.info(
            "train: distilling from %d teacher(s) at T=%.1f, weight %.2f",
            params.distill.teacher.members,
            params.distill.temperature,
            params.distill.weight,
        )
    _, history = task.fit(
        params,
        ctx.out,
        tr,
        ev,
        root,
        ctx.record,
        resuming=ctx.resuming,
        targets=targets,
        resume_from=task.resume_folder(params, ctx.workdir, "train"),
        settings=ctx.settings,
    )
    return {"model": ctx.out / "model.keras", "best": ctx.out / "best.keras", "history": history}
