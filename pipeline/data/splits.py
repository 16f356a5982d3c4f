"""DCASE2024 Task 1 data-efficiency subsets: training on 5, 10, 25, 50 or 100 % of the training split.

The official lists (``split5.csv`` ... ``split100.csv``, release ``files`` of
CPJKU/dcase2024_task1_baseline; ``python -m pipeline.data download tau24-splits``) are tab-separated
with a ``filename`` column naming files of ``meta.csv`` (``audio/<scene>-<city>-<location>-<segment>-
<index>-<device>.wav``). They are nested (every clip of the 5 % list is in the 10 % list, ...), keep
the scenes about uniform and the devices' shares alike, and hold a 10-s recording segment whole.

``data.train_split`` names one: a percentage (the dataset's ``splits/split<N>.csv``) or the path of
any such list. Training, the teacher and compression's calibration then see only those clips of the
training split; the evaluate split is untouched.

:func:`make_splits` writes nested lists of the same form for any TAU-layout set (the synthetic
generator uses it, so every split runs offline).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import ProblemsError
from pipeline.core.hashing import stat_file_digest
from pipeline.core.params import TRAIN_SUBSETS

SUBSETS = TRAIN_SUBSETS
FOLDER = "splits"


class SplitError(ProblemsError):
    """A split list that cannot be used; the message names the file and every problem."""

    def __init__(self, path, problems: list[str]):
        super().__init__(f"split list {path}", problems)


def is_subset_name(value: str) -> bool:
    """``"25"`` names the dataset's own ``splits/split25.csv``; anything else is a path."""
    return value.strip() in {str(s) for s in SUBSETS}


def split_path(value: str, root: str | os.PathLike) -> Path:
    """The list ``data.train_split`` names: ``<root>/splits/split<N>.csv`` for a percentage, else the path."""
    value = value.strip()
    if is_subset_name(value):
        return Path(root) / FOLDER / f"split{value}.csv"
    return Path(value).expanduser()


def split_facts(value: str | None, root: str | os.PathLike | None) -> dict | None:
    """The named list's digest (part of a stage's key: an edited list is read again), or None without one.

    ``root`` None (the built-in set, whose folder the settings already key): a percentage is keyed by name.
    """
    if value is None:
        return None
    if root is None and is_subset_name(value.strip()):
        return {"train_split": value}
    path = split_path(value, root or ".")
    if not path.is_file():
        return {"train_split": value, "file": f"missing: {path}"}
    return {"train_split": value, "file": stat_file_digest(path)}


@functools.lru_cache(maxsize=16)
def _read(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    problems: list[str] = []
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SplitError(path, [f"cannot read it as a tab-separated list: {e}"]) from None
    if "filename" not in table.columns:
        hint = " (comma-separated? the lists are tab-separated)" if "," in ",".join(table.columns) else ""
        raise SplitError(path, [f"no 'filename' column (columns: {list(table.columns)[:5]}){hint}"])
    names = table["filename"].str.strip()
    if names.empty:
        problems.append("a header and no rows")
    blank = np.flatnonzero((names == "").to_numpy())
    problems += [f"line {i + 2}: empty filename" for i in blank[:5]]
    dup = names[names.duplicated() & (names != "")]
    problems += [f"line {i + 2}: {n} listed twice" for i, n in zip(dup.index[:5], dup[:5], strict=True)]
    if problems:
        raise SplitError(path, problems)
    return tuple(names)


def read_split(path: str | os.PathLike) -> tuple[str, ...]:
    """The file names a split list holds, checked (read once per path, size and modification time).

    Raises:
      SplitError: a missing or unreadable file, no ``filename`` column, no rows, blank or repeated names.
    """
    path = Path(path)
    if not path.is_file():
        raise SplitError(path, ["no such file"])
    st = path.stat()
    return _read(str(path.resolve()), st.st_size, st.st_mtime_ns)


def restrict(train: pd.DataFrame, value: str, root: str | os.PathLike) -> pd.DataFrame:
    """The rows of ``train`` (the training split) that ``data.train_split`` lists, in their order.

    Raises:
      SplitError: the list is bad, or names files that are not in the training split (the first named).
    """
    path = split_path(value, root)
    if not path.is_file() and is_subset_name(value.strip()):
        raise SplitError(
            path,
            [
                f"data.train_split={value}: the dataset has no {FOLDER}/split{value}.csv; for TAU22: python -m "
                f"pipeline.data download tau24-splits --to {Path(root).parent} (the built-in set writes its own)"
            ],
        )
    names = read_split(path)
    known = set(train.filename)
    foreign = [n for n in names if n not in known]
    if foreign:
        shown = ", ".join(foreign[:3])
        raise SplitError(
            path,
            [f"{len(foreign)} of its {len(names)} file(s) are not in the training split, e.g. {shown}"],
        )
    return train[train.filename.isin(set(names))]


def segment_of(filename: str) -> str:
    """``audio/airport-lisbon-1000-40000-3-a.wav`` -> ``airport-lisbon-1000-40000``: the 10-s recording."""
    stem = Path(filename).name.rsplit(".", 1)[0]
    parts = stem.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else stem


def make_splits(train: pd.DataFrame, folder: str | os.PathLike, *, seed: int = 0, subsets=SUBSETS) -> dict[int, int]:
    """Write nested ``split<N>.csv`` lists of the training clips into ``folder``; return clips per list.

    Within each scene the recording segments (:func:`segment_of`) are shuffled once (seeded) and
    taken in that order until N % of the scene's clips are in, so every list holds whole segments,
    keeps the scenes' shares, and contains the smaller lists.

    Args:
      train: rows of the training split with ``filename`` and ``scene_label``.
      folder: where the lists go (created).
      seed: the shuffle's seed.
      subsets: percentages (1-100).
    """
    from pipeline.core.files import write_text

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    frame = train[["filename", "scene_label"]].copy()
    frame["segment"] = frame.filename.map(segment_of)
    order: list[pd.DataFrame] = []
    for _, scene in frame.groupby("scene_label", sort=True):
        segments = sorted(scene.segment.unique())
        rank = {s: i for i, s in enumerate(rng.permutation(segments))}
        scene = scene.assign(rank=scene.segment.map(rank)).sort_values(["rank", "filename"], kind="stable")
        scene["cum"] = np.arange(1, len(scene) + 1) / len(scene)
        # a clip is in list p when its segment starts before p % of the scene's clips are taken
        scene["start"] = scene.groupby("rank").cum.transform("min") - 1 / len(scene)
        order.append(scene)
    ranked = pd.concat(order)
    counts = {}
    for p in subsets:
        keep = ranked[ranked.start < p / 100 - 1e-12].sort_values("filename")
        write_text(
            folder / f"split{p}.csv",
            "filename\tscene_label\n"
            + "".join(f"{f}\t{s}\n" for f, s in zip(keep.filename, keep.scene_label, strict=True)),
        )
        counts[p] = len(keep)
    return counts
