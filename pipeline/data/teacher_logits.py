"""Imported teacher logits: predictions computed elsewhere (PaSST, BEATs, EfficientAT ensembles, ...).

``distill.teacher.logits=PATH`` makes the teacher stage read the teacher's logits from a file instead
of training teachers. Two formats:

* **CSV** (comma- or tab-separated, header row): a ``filename`` column and one column per class,
  named by the class (any order: the header says which column is which class)::

      filename,airport,bus,metro,metro_station,park,public_square,shopping_mall,street_pedestrian,street_traffic,tram
      audio/airport-lisbon-1000-40000-0-a.wav,3.1,-0.2,...

* **NPZ**: arrays ``filenames`` (``[N]`` strings), ``classes`` (``[K]`` strings, the column order of
  ``logits``) and ``logits`` (``[N, K]`` floats).

A filename is the dataset's (``audio/<name>.wav``) or its base name (``<name>.wav``). Everything is
checked before training and reported together in one :class:`TeacherLogitsError` (the first 20
problems, the rest counted): every training clip present, each file name once, every class named
once and no unknown class, values finite. The logits come back in the project's class order
(:data:`pipeline.core.labels.CLASSES`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from pipeline.core.errors import ProblemsError
from pipeline.core.labels import CLASSES


class TeacherLogitsError(ProblemsError):
    """An imported teacher-logits file that cannot be used; the message names the file and each problem."""

    def __init__(self, path, problems: list[str]):
        super().__init__(f"teacher logits {path} (distill.teacher.logits)", problems)


def _name(filename: str) -> str:
    """``x.wav`` -> ``audio/x.wav``; a name with a folder stays as it is."""
    return filename if "/" in filename else f"audio/{filename}"


def _read_csv(path: Path, problems: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    text = path.read_text(encoding="utf-8-sig")
    dialect = "excel-tab" if "\t" in text.split("\n", 1)[0] else "excel"
    rows = list(csv.reader(text.splitlines(), dialect))
    if not rows:
        raise TeacherLogitsError(path, ["the file is empty"])
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if "filename" not in header:
        raise TeacherLogitsError(path, [f"no 'filename' column in the header {header[:12]}"])
    at = header.index("filename")
    classes = header[:at] + header[at + 1 :]
    names, values = [], []
    for line, row in enumerate(body, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append(f"line {line}: {len(row)} fields, the header has {len(header)}")
            continue
        numbers = []
        for column, cell in zip(header, row, strict=True):
            if column == "filename":
                continue
            try:
                numbers.append(float(cell))
            except ValueError:
                problems.append(f"line {line}: {column} is not a number: {cell!r}")
                numbers.append(math.nan)
        names.append(row[at].strip())
        values.append(numbers)
    return names, classes, np.asarray(values, dtype=np.float64).reshape(len(values), len(classes))


def _read_npz(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TeacherLogitsError(path, [f"not a readable NPZ file ({exc})"]) from None
    missing = [key for key in ("filenames", "classes", "logits") if key not in stored.files]
    if missing:
        raise TeacherLogitsError(path, [f"no array {', '.join(missing)} (it has {', '.join(stored.files)})"])
    logits = np.asarray(stored["logits"], dtype=np.float64)
    names, classes = [str(f) for f in stored["filenames"]], [str(c) for c in stored["classes"]]
    if logits.ndim != 2 or logits.shape != (len(names), len(classes)):
        raise TeacherLogitsError(
            path, [f"logits has shape {list(logits.shape)}; filenames and classes say [{len(names)}, {len(classes)}]"]
        )
    return names, classes, logits


def read_teacher_logits(path, required: list[str]) -> dict[str, np.ndarray]:
    """The teacher logits of a CSV or NPZ file, by dataset filename, in the project's class order.

    Args:
      path: the file (``.csv``, ``.tsv`` or ``.npz``).
      required: dataset filenames (``audio/<name>.wav``) that must all be present (the training clips).

    Returns:
      ``{filename: [K] float32 logits}`` for every row of the file (required or not).

    Raises:
      TeacherLogitsError: the file is missing or unreadable, or any problem listed in the module docstring.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TeacherLogitsError(path, ["no such file"])
    problems: list[str] = []
    if path.suffix.lower() == ".npz":
        names, classes, logits = _read_npz(path)
    elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
        names, classes, logits = _read_csv(path, problems)
    else:
        raise TeacherLogitsError(path, [f"unknown format {path.suffix!r}: use .csv (or .tsv) or .npz"])
    unknown = [c for c in classes if c not in CLASSES]
    absent = [c for c in CLASSES if c not in classes]
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if unknown:
        problems.append(
            f"unknown class name(s) in the header: {', '.join(unknown)} (the classes: {', '.join(CLASSES)})"
        )
    if absent:
        problems.append(f"no column for class(es): {', '.join(absent)}")
    if repeated:
        problems.append(f"class(es) named more than once: {', '.join(repeated)}")
    rows: dict[str, int] = {}
    for i, name in enumerate(names):
        key = _name(name)
        if key in rows:
            problems.append(f"{name}: listed more than once (rows {rows[key] + 1} and {i + 1})")
        rows[key] = i
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=1)) if logits.size else []
    problems += [f"{names[i]}: a logit is not finite" for i in bad[:5]]
    if len(bad) > 5:
        problems.append(f"... {len(bad) - 5} more row(s) with values that are not finite")
    missing = [f for f in required if f not in rows]
    if missing:
        problems.append(
            f"{len(missing)} of the {len(required)} training clip(s) have no logits, e.g. {', '.join(missing[:3])}"
        )
    if problems:
        raise TeacherLogitsError(path, problems)
    order = [classes.index(c) for c in CLASSES]
    ours = logits[:, order].astype(np.float32)
    return {key: ours[i] for key, i in rows.items()}
