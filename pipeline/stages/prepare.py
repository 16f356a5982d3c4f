"""``prepare``: read and validate the dataset, write the clip index and its summary."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline import data as tau
from pipeline import synthetic
from pipeline.core import files
from pipeline.core.config import Params
from pipeline.core.hashing import digest
from pipeline.stages.base import Context

logger = logging.getLogger(__name__)


def dataset_root(params: Params, workdir: Path) -> Path:
    """The dataset directory: the built-in synthetic set (generated once into the workdir) or a path."""
    if params.data.source != "synthetic":
        return Path(params.data.source).expanduser()
    syn = params.data.synthetic
    facts = {"n_clips": syn.n_clips, "n_cities": syn.n_cities, "seed": params.seed,
             "sample_rate_hz": params.audio.sample_rate_hz, "clip_seconds": params.audio.clip_seconds}
    root = workdir / "data" / f"synthetic-{syn.n_clips}-{digest(facts)[:10]}"
    synthetic.generate(root, n_clips=syn.n_clips, seed=params.seed, sample_rate_hz=params.audio.sample_rate_hz,
                       clip_seconds=params.audio.clip_seconds, n_cities=syn.n_cities, workers=syn.workers,
                       progress=True)
    return root


def data_name(params: Params) -> str:
    """``synthetic`` for the built-in set (also when given by path), else the dataset folder's name."""
    if params.data.source == "synthetic":
        return "synthetic"
    root = Path(params.data.source).expanduser().resolve()
    return "synthetic" if (root / synthetic.MARKER).is_file() else root.name


def _listing_digest(directory: Path) -> str | None:
    """Digest of a folder's file names, sizes and modification times (no file is read)."""
    if not directory.is_dir():
        return None
    entries = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        st = entry.stat()
        entries.append((entry.name, st.st_size, st.st_mtime_ns))
    return digest(entries)


def dataset_facts(params: Params) -> dict:
    """What the dataset on disk is, without reading it: the part of prepare's key outside the workdir."""
    facts: dict = {"source": params.data.source,
                   "audio": [params.audio.sample_rate_hz, params.audio.clip_seconds]}
    if params.data.source == "synthetic":
        facts.update(synthetic=[params.data.synthetic.n_clips, params.data.synthetic.n_cities], seed=params.seed)
        return facts
    root = Path(params.data.source).expanduser()
    facts["files"] = [(rel, p.stat().st_size, p.stat().st_mtime_ns) for rel in
                      ("meta.csv", *tau.SPLIT_FILES.values()) if (p := root / rel).is_file()]
    facts["audio_listing"] = _listing_digest(root / "audio")
    return facts


def prepare(ctx: Context) -> dict:
    """Read and validate the dataset; write ``index.csv``, ``summary.json`` and ``summary.csv``."""
    params, out = ctx.params, ctx.out
    root = dataset_root(params, ctx.workdir)
    logger.info("reading dataset %s", root)
    index = tau.read_index(root)
    fallbacks = tau.fallback_counts(index, params.audio.sample_rate_hz, params.audio.clip_samples)
    for name, count in fallbacks.items():
        if count:
            logger.warning("%d clip(s) will be %s to %d Hz mono, %d samples", count, name,
                           params.audio.sample_rate_hz, params.audio.clip_samples)
    fp = tau.fingerprint(index)
    summary = tau.summarise(index)
    table = summary.pop("table")
    resolved = str(root.resolve())
    summary.update({"root": resolved, "fingerprint": fp, "fallbacks": fallbacks})

    with files.atomic_path(out / "index.csv") as tmp:
        index.to_csv(tmp, index=False)
    pivot = table.pivot_table(index=["split", "scene_label"], columns="device", values="clips",
                              fill_value=0, aggfunc="sum")
    with files.atomic_path(out / "summary.csv") as tmp:
        pivot.to_csv(tmp)
    files.write_json(out / "summary.json", summary)

    ctx.record.tags({"dataset.path": resolved, "dataset.fingerprint": fp})
    ctx.record.metrics({f"clips_{split}": n for split, n in summary["clips_per_split"].items()})
    ctx.record.metrics({f"fallback_{k}": v for k, v in fallbacks.items()})
    for name in ("index.csv", "summary.csv", "summary.json"):
        ctx.record.artifact(out / name, "prepare")
    ctx.facts.update(fingerprint=fp, root=resolved)
    logger.info("prepare: %d clips (%s), fingerprint %s", len(index),
                ", ".join(f"{k} {v}" for k, v in summary["clips_per_split"].items()), fp)
    return {"index": out / "index.csv", "summary": out / "summary.json", "fingerprint": fp, "root": root}
