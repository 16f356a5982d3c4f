"""What ``prepare`` checks beyond the CSV format: paths, the split design and every clip's samples.

Three kinds of finding, each with a stable name (the README's bad-input table lists them):

* **errors**: the data cannot be right. ``prepare`` stops with one :class:`~pipeline.data.tau.DatasetError`
  listing every error (CSV, path and audio problems together).
* **warnings**: a user may mean it (a custom split that shares locations, a set without unseen
  devices, a silent clip). Each is logged with the files it concerns, counted in
  ``prepare/summary.json`` (``warnings``) and logged to MLflow as ``warning_<name>``;
  ``data.strict_checks: true`` turns them into errors.

Paths (before anything is opened): a CSV's filename must be relative, without ``..``, and must
resolve (symlinks followed) inside the dataset root. A name that escapes is reported with its
CSV line; the target is never opened and the message does not say whether it exists.

Split design (TAU22 splits by recording location, and devices S4-S6 are never in training):

==================================  =======  =====================================================
finding                             kind     meaning
==================================  =======  =====================================================
``empty_split``                     error    no clip in fold1_train.csv or fold1_evaluate.csv
``one_class_training``              error    every training clip has the same scene
``label_contradicts_filename``      error    meta.csv scene_label is not the filename's scene
``device_contradicts_filename``     error    meta.csv source_label is not the filename's device
``duplicate_across_splits``         error    the same samples (content hash) in train and evaluate
``non_finite_samples``              error    NaN or inf in a clip
``location_overlap``                warning  evaluate clips recorded at a training location
``unseen_devices_in_training``      warning  S4, S5 or S6 clips in the training split
``no_unseen_devices_in_evaluate``   warning  the evaluate split has no S4-S6 clip
``classes_missing``                 warning  a scene with no clip in the training or evaluate split
``duplicate_within_split``          warning  the same samples twice in one split
``silent_clip``                     warning  every sample is 0
``clipped_clip``                    warning  >= 1% of the samples at full scale (|x| >= 0.999)
``over_full_scale``                 warning  float samples beyond +-1 (peak reported)
==================================  =======  =====================================================
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from pipeline.core.labels import CLASSES, UNSEEN_DEVICES
from pipeline.inference.asc_infer import wavfile

logger = logging.getLogger(__name__)

ERRORS = (
    "empty_split",
    "one_class_training",
    "label_contradicts_filename",
    "device_contradicts_filename",
    "duplicate_across_splits",
    "non_finite_samples",
)
WARNINGS = (
    "location_overlap",
    "unseen_devices_in_training",
    "no_unseen_devices_in_evaluate",
    "classes_missing",
    "duplicate_within_split",
    "silent_clip",
    "clipped_clip",
    "over_full_scale",
)
CLIPPED_LEVEL = 0.999
CLIPPED_FRACTION = 0.01
SHOWN_NAME = 120  # characters of a filename shown in a message
LISTED = 5  # files named per warning message


@dataclass
class Findings:
    """Errors (messages) and warnings (name -> messages) found by the checks."""

    errors: list[str] = field(default_factory=list)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    scan: pd.DataFrame | None = None  # scan_audio's per-clip table, when the clips were read

    def warn(self, name: str, message: str) -> None:
        assert name in WARNINGS, name
        self.warnings.setdefault(name, []).append(message)

    def counts(self) -> dict[str, int]:
        return {name: len(self.warnings.get(name, ())) for name in WARNINGS}

    def extend(self, other: Findings) -> None:
        self.errors.extend(other.errors)
        for name, messages in other.warnings.items():
            self.warnings.setdefault(name, []).extend(messages)
        if other.scan is not None:
            self.scan = other.scan


def shown(name: str) -> str:
    """``repr`` of a filename, cut to ``SHOWN_NAME`` characters (a 2 MB name is not echoed whole)."""
    if len(name) <= SHOWN_NAME:
        return repr(name)
    return f"{name[:SHOWN_NAME]!r}... ({len(name):,} characters)"


def path_problem(root: Path, name: str) -> str | None:
    """Why the CSV filename ``name`` may not be opened under ``root`` (resolved), or None.

    Nothing is opened: the name is checked as text, then resolved (symlinks followed, which reads
    links, not files) and required to stay inside the root.
    """
    if "\x00" in name:
        return "contains a NUL character"
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        return "is an absolute path; filenames must be relative to the dataset root"
    if ".." in posix.parts or ".." in windows.parts:
        return "contains '..'; filenames must stay inside the dataset root"
    target = Path(os.path.realpath(root / name))
    if target != root and root not in target.parents:
        return "leaves the dataset root through a symbolic link (not opened)"
    return None


# ----------------------------------------------------------------------------- the split design


def _filename_facts(filename: str) -> tuple[str, str] | None:
    """(scene, device) from ``audio/<scene>-<city>-<location>-<segment>-<device>.wav``, or None."""
    parts = Path(filename).stem.split("-")
    if len(parts) < 4:
        return None
    return parts[0], parts[-1].upper()


def split_checks(index: pd.DataFrame) -> Findings:
    """Check the split design of a dataset index (``pipeline.data.tau.read_index``'s columns)."""
    found = Findings()
    train, evaluate = index[index.split == "train"], index[index.split == "evaluate"]
    for name, part in (("train", train), ("evaluate", evaluate)):
        if part.empty:
            found.errors.append(f"empty_split: the {name} split has no clips")
    if not train.empty and train.scene_label.nunique() == 1:
        found.errors.append(f"one_class_training: every training clip is {train.scene_label.iloc[0]!r}")

    for row in index.drop_duplicates("filename").itertuples():
        facts = _filename_facts(row.filename)
        if facts is None:
            continue  # parse_filename reports names that do not follow the pattern
        scene, device = facts
        if scene != row.scene_label:
            found.errors.append(
                f"label_contradicts_filename: {shown(row.filename)} has scene_label {row.scene_label!r} in meta.csv"
            )
        if device != row.device:
            found.errors.append(
                f"device_contradicts_filename: {shown(row.filename)} has source_label "
                f"{row.device.lower()!r} in meta.csv"
            )

    if not train.empty and not evaluate.empty:
        shared = sorted(set(train.identifier) & set(evaluate.identifier))
        if shared:
            clips = int(evaluate.identifier.isin(shared).sum())
            found.warn(
                "location_overlap",
                f"{clips} evaluate clip(s) were recorded at {len(shared)} training "
                f"location(s) ({', '.join(shared[:LISTED])}"
                f"{', ...' if len(shared) > LISTED else ''}); TAU22 splits by location",
            )
        unseen_in_train = sorted(set(train.device) & set(UNSEEN_DEVICES))
        if unseen_in_train:
            found.warn(
                "unseen_devices_in_training",
                f"device(s) {unseen_in_train} are in the training split; their 'unseen' results are not unseen",
            )
        if not set(evaluate.device) & set(UNSEEN_DEVICES):
            found.warn(
                "no_unseen_devices_in_evaluate",
                "the evaluate split has no clip from S4, S5 or S6: no unseen-device result can be measured",
            )
    for name, part in (("train", train), ("evaluate", evaluate)):
        missing = [c for c in CLASSES if c not in set(part.scene_label)] if not part.empty else []
        if missing:
            found.warn("classes_missing", f"the {name} split has no clip of {missing}")
    return found


# ----------------------------------------------------------------------------- every clip's samples


@dataclass(frozen=True)
class ClipFacts:
    digest: str
    peak: float
    clipped_fraction: float
    non_finite: int


def clip_facts(path: Path, info: wavfile.WavInfo, block_frames: int = 1 << 16) -> ClipFacts:
    """Content hash (BLAKE2b of the decoded float32 samples), peak, clipped fraction, non-finite count.

    Reads the clip in blocks of ``block_frames`` with the project's one WAV reader.
    """
    h = hashlib.blake2b(digest_size=16)
    peak, clipped, bad = 0.0, 0, 0
    for start in range(0, info.frames, block_frames):
        block = wavfile.read_frames(path, info, start, block_frames)
        h.update(np.ascontiguousarray(block, np.float32).tobytes())
        finite = np.isfinite(block)
        bad += int(block.size - finite.sum())
        magnitude = np.abs(np.where(finite, block, 0.0))
        if magnitude.size:
            peak = max(peak, float(magnitude.max()))
            clipped += int((magnitude >= CLIPPED_LEVEL).sum())
    total = max(1, info.frames * info.channels)
    return ClipFacts(h.hexdigest(), peak, clipped / total, bad)


def scan_audio(
    root: Path, index: pd.DataFrame, infos: dict[str, wavfile.WavInfo], *, workers: int = 2, progress: bool = True
) -> tuple[pd.DataFrame, Findings]:
    """Read every clip of ``index`` once: content hashes, silence, clipping, non-finite samples.

    Args:
      root: the dataset root.
      index: the clip index (``filename``, ``split``).
      infos: filename -> its validated header.
      workers: reader threads (NumPy and file reads release the GIL).
      progress: show a tqdm bar.

    Returns:
      One row per file (``filename``, ``digest``, ``peak``, ``clipped_fraction``, ``non_finite``)
      and the findings.
    """
    from tqdm.auto import tqdm

    names = index.filename.drop_duplicates().tolist()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        facts = list(
            tqdm(
                pool.map(lambda n: clip_facts(root / n, infos[n]), names),
                total=len(names),
                desc="scan audio",
                unit="clip",
                disable=not progress or len(names) < 500,
                mininterval=2.0,
            )
        )
    table = pd.DataFrame(
        {
            "filename": names,
            "digest": [f.digest for f in facts],
            "peak": [f.peak for f in facts],
            "clipped_fraction": [f.clipped_fraction for f in facts],
            "non_finite": [f.non_finite for f in facts],
        }
    )
    found = Findings(scan=table)
    for row in table.itertuples():
        path = root / row.filename
        if row.non_finite:
            found.errors.append(f"non_finite_samples: {path}: {row.non_finite} NaN or inf sample(s)")
        elif row.peak == 0.0:
            found.warn("silent_clip", f"{path}: every sample is 0")
        elif row.peak > 1.0:
            found.warn("over_full_scale", f"{path}: float samples beyond full scale (peak {row.peak:.3g})")
        elif row.clipped_fraction >= CLIPPED_FRACTION:
            found.warn("clipped_clip", f"{path}: {row.clipped_fraction:.1%} of the samples at full scale")

    splits = index[["filename", "split"]].merge(table[["filename", "digest"]], on="filename")
    for _, group in splits.groupby("digest"):
        parts = set(group.split)
        if {"train", "evaluate"} <= parts:
            tr = group[group.split == "train"].filename.tolist()
            ev = group[group.split == "evaluate"].filename.tolist()
            found.errors.append(
                f"duplicate_across_splits: {shown(ev[0])} (evaluate) has the same samples as "
                f"{shown(tr[0])} (train)" + (f" and {len(group) - 2} more" if len(group) > 2 else "")
            )
        for split in sorted(parts):
            same = group[group.split == split].filename.tolist()
            if len(same) > 1:
                found.warn(
                    "duplicate_within_split",
                    f"{len(same)} clips in {split} have the same samples: {', '.join(shown(n) for n in same[:LISTED])}",
                )
    return table, found
