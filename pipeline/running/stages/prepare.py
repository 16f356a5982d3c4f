"""``prepare``: read and validate the dataset, write the clip index and its summary."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.core import files
from pipeline.core.config import Params
from pipeline.core.hashing import digest
from pipeline.data import synthetic, tau
from pipeline.data.audit import path_problem
from pipeline.running.stages.base import Context

logger = logging.getLogger(__name__)


def dataset_root(params: Params, workdir: Path) -> Path:
    """The dataset directory: the built-in synthetic set (generated once into the workdir) or a path."""
    if params.data.source != "synthetic":
        return Path(params.data.source).expanduser()
    syn = params.data.synthetic
    facts = {
        "n_clips": syn.n_clips,
        "n_cities": syn.n_cities,
        "seed": params.seed,
        "sample_rate_hz": params.audio.sample_rate_hz,
        "clip_seconds": params.audio.clip_seconds,
    }
    root = workdir / "data" / f"synthetic-{syn.n_clips}-{digest(facts)[:10]}"
    synthetic.generate(
        root,
        n_clips=syn.n_clips,
        seed=params.seed,
        sample_rate_hz=params.audio.sample_rate_hz,
        clip_seconds=params.audio.clip_seconds,
        n_cities=syn.n_cities,
        workers=syn.workers,
        progress=True,
    )
    return root


def data_name(params: Params) -> str:
    """``synthetic`` for the built-in set (also when given by path), else the dataset folder's name."""
    if params.data.source == "synthetic":
        return "synthetic"
    root = Path(params.data.source).expanduser().resolve()
    return "synthetic" if (root / synthetic.MARKER).is_file() else root.name


def _named_files(root: Path) -> list:
    """(name, size, mtime_ns) of every file meta.csv names; refused names and missing files say so.

    Reads the CSV as text (the first field of each row) and stats each file: a changed, added or
    removed clip changes prepare's key, wherever in the root it is, and a dangling symbolic link
    or a name that leaves the root is recorded here, then reported by prepare with its line.
    """
    meta = root / "meta.csv"
    try:
        lines = meta.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    except OSError:
        return []
    real_root = Path(os.path.realpath(root))
    entries = []
    for line in lines:
        name = line.split("\t", 1)[0]
        if not name or path_problem(real_root, name):
            entries.append((name[:200], "refused"))
            continue
        try:
            st = (root / name).stat()
            entries.append((name, st.st_size, st.st_mtime_ns))
        except OSError as exc:
            entries.append((name, type(exc).__name__))
    return entries


def dataset_facts(params: Params) -> dict:
    """What the dataset on disk is, without reading the audio: the part of prepare's key outside the workdir."""
    facts: dict = {"source": params.data.source, "audio": [params.audio.sample_rate_hz, params.audio.clip_seconds]}
    if params.data.source == "synthetic":
        facts.update(synthetic=[params.data.synthetic.n_clips, params.data.synthetic.n_cities], seed=params.seed)
        return facts
    root = Path(params.data.source).expanduser()
    facts["files"] = [
        (rel, p.stat().st_size, p.stat().st_mtime_ns)
        for rel in ("meta.csv", *tau.SPLIT_FILES.values())
        if (p := root / rel).is_file()
    ]
    facts["named_files"] = digest(_named_files(root))
    return facts


def prepare(ctx: Context) -> dict:
    """Read and validate the dataset; write ``index.csv``, ``summary.json`` and ``summary.csv``."""
    params, out = ctx.params, ctx.out
    root = dataset_root(params, ctx.workdir)
    logger.info("reading dataset %s", root)
    index, findings = tau.inspect(
        root, scan_audio=params.data.scan_audio, strict=params.data.strict_checks, workers=os.cpu_count() or 2
    )
    warnings = findings.counts()
    fallbacks = tau.fallback_counts(index, params.audio.sample_rate_hz, params.audio.clip_samples)
    for name, count in fallbacks.items():
        if count:
            logger.warning(
                "%d clip(s) will be %s to %d Hz mono, %d samples",
                count,
                name,
                params.audio.sample_rate_hz,
                params.audio.clip_samples,
            )
    fp = tau.fingerprint(index)
    summary = tau.summarise(index)
    table = summary.pop("table")
    resolved = str(root.resolve())
    summary.update(
        {
            "root": resolved,
            "fingerprint": fp,
            "fallbacks": fallbacks,
            "warnings": warnings,
            "warning_messages": {k: v[: tau.MAX_LISTED] for k, v in findings.warnings.items()},
            "audio_scanned": findings.scan is not None,
        }
    )

    with files.atomic_path(out / "index.csv") as tmp:
        index.to_csv(tmp, index=False)
    pivot = table.pivot_table(
        index=["split", "scene_label"], columns="device", values="clips", fill_value=0, aggfunc="sum"
    )
    with files.atomic_path(out / "summary.csv") as tmp:
        pivot.to_csv(tmp)
    files.write_json(out / "summary.json", summary)
    if findings.scan is not None:
        with files.atomic_path(out / "audio_scan.csv") as tmp:
            findings.scan.to_csv(tmp, index=False)
        ctx.record.artifact(out / "audio_scan.csv", "prepare")

    ctx.record.tags({"dataset.path": resolved, "dataset.fingerprint": fp})
    ctx.record.metrics({f"clips_{split}": n for split, n in summary["clips_per_split"].items()})
    ctx.record.metrics({f"fallback_{k}": v for k, v in fallbacks.items()})
    ctx.record.metrics({f"warning_{k}": v for k, v in warnings.items()})
    if any(warnings.values()):
        logger.warning(
            "prepare: dataset warnings %s (prepare/summary.json; data.strict_checks=true makes them errors)",
            {k: v for k, v in warnings.items() if v},
        )
    for name in ("index.csv", "summary.csv", "summary.json"):
        ctx.record.artifact(out / name, "prepare")
    ctx.facts.update(fingerprint=fp, root=resolved)
    logger.info(
        "prepare: %d clips (%s), fingerprint %s",
        len(index),
        ", ".join(f"{k} {v}" for k, v in summary["clips_per_split"].items()),
        fp,
    )
    return {"index": out / "index.csv", "summary": out / "summary.json", "fingerprint": fp, "root": root}
