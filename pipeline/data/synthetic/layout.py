"""The synthetic set on disk: its CSV tables, ownership file and completion record.

``OWNER`` is written first and marks a directory this generator may empty; ``MARKER`` is
written last and holds the generation parameters and counts, so its absence (or other
parameters) means the set must be generated again. The CSVs are tab-separated like
TAU22's, sorted by file name.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.files import write_json, write_text
from pipeline.core.labels import CLASSES, DEVICES, SPLIT_FILES
from pipeline.data.synthetic.plan import Recording

GENERATOR = "pipeline.data.synthetic"
GENERATOR_VERSION = 1

MARKER = ".complete.json"  # written last; its absence means "not usable"
OWNER = ".synthetic.json"  # written first; only a directory holding it may be wiped
META_FILE = "meta.csv"
META_COLUMNS = ("filename", "scene_label", "identifier", "source_label")


def read_completion_record(root: str | os.PathLike) -> dict | None:
    """The completion record of a generated set (``{"params": ..., "counts": ...}``, read from
    ``MARKER``), or None when it is absent or unreadable."""
    try:
        return json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: Path, params: dict) -> bool:
    """True when ``root`` holds a finished set generated with ``params``."""
    record = read_completion_record(root)
    if record is None or record.get("params") != params:
        return False
    if not all((root / f).is_file() for f in (META_FILE, *SPLIT_FILES.values())):
        return False
    audio = root / "audio"
    if not audio.is_dir():
        return False
    n_wav = sum(1 for e in os.scandir(audio) if e.name.endswith(".wav") and not e.name.startswith("."))
    return n_wav == params["n_clips"]


def reset(root: Path) -> None:
    """Empty a directory this generator owns (or create it); refuse to touch anything else."""
    if root.exists():
        if not root.is_dir():
            raise NotADirectoryError(f"synthetic dataset root {root} exists and is not a directory")
        entries = list(root.iterdir())
        if entries and not (root / OWNER).is_file():
            raise FileExistsError(
                f"synthetic dataset root {root} is not empty and was not written by {GENERATOR} "
                f"(no {OWNER}); refusing to overwrite it -- choose another directory"
            )
        if (root / MARKER).exists():
            (root / MARKER).unlink()  # first: a half-emptied directory must not look complete
        for entry in entries:
            if entry.name in (OWNER, MARKER):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / OWNER, json.dumps({"generator": GENERATOR}) + "\n")


def _tsv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "".join("\t".join(r) + "\n" for r in [tuple(header), *rows])


def write_tables(root: Path, recordings: Sequence[Recording]) -> dict:
    """Write meta.csv and the fold1 split files of ``recordings``; returns their counts."""
    rows = sorted(
        (filename, CLASSES[rec.label], rec.identifier, device.lower(), rec.split)
        for rec in recordings
        for _, device, filename in rec.clips
    )
    write_text(root / META_FILE, _tsv(META_COLUMNS, [r[:4] for r in rows]))
    train = [r[:2] for r in rows if r[4] == "train"]
    evaluate = [r[:2] for r in rows if r[4] == "evaluate"]
    write_text(root / SPLIT_FILES["train"], _tsv(("filename", "scene_label"), train))
    write_text(root / SPLIT_FILES["evaluate"], _tsv(("filename", "scene_label"), evaluate))
    write_text(root / SPLIT_FILES["test"], _tsv(("filename",), [r[:1] for r in evaluate]))
    return {
        "clips": len(rows),
        "recordings": len(recordings),
        "train": len(train),
        "evaluate": len(evaluate),
        "devices": {d: sum(1 for r in rows if r[3] == d.lower()) for d in DEVICES},
        "locations": len({r[2] for r in rows}),
    }


def write_completion_record(root: Path, params: dict, counts: dict) -> None:
    """Write the completion record (last): the set is usable from here on."""
    write_json(root / MARKER, {"params": params, "counts": counts})


def write_splits(root: Path, seed: int, *, missing_only: bool = False) -> None:
    """The DCASE2024 data-efficiency lists ``splits/split{5,10,25,50,100}.csv`` of the training split, in
    the official form (:func:`pipeline.data.splits.make_splits`: nested, whole recordings, scenes kept)."""
    from pipeline.data.splits import FOLDER, SUBSETS, make_splits

    folder = Path(root) / FOLDER
    if missing_only and all((folder / f"split{p}.csv").is_file() for p in SUBSETS):
        return
    import pandas as pd

    train = pd.read_csv(Path(root) / SPLIT_FILES["train"], sep="\t", dtype=str)
    make_splits(train, folder, seed=seed)
