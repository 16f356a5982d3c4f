"""The TAU Urban Acoustic Scenes 2022 Mobile development layout: reading and validation.

The reader builds one pandas index of every clip (filename, scene_label, label, city,
identifier, device, split, and the WAV header facts) and validates everything before any
training. All problems are collected and reported in one :class:`DatasetError` (the first
20 listed, the count of the rest), never a bare traceback.

Layout::

    <root>/meta.csv                              filename  scene_label  identifier  source_label
    <root>/evaluation_setup/fold1_train.csv      filename  scene_label
    <root>/evaluation_setup/fold1_evaluate.csv   filename  scene_label
    <root>/evaluation_setup/fold1_test.csv       filename
    <root>/audio/<scene>-<city>-<location>-<segment>-<device>.wav

All CSVs are tab-separated with a header row.

Bad-input policy (each case is tested):

==========================================  ==================================================
problem                                     what happens
==========================================  ==================================================
missing / empty / corrupt / truncated WAV    error naming the file (in the one report)
8-bit PCM, A-law, 64-bit float, other codes  error naming the file and the encoding
odd-sized chunks, EXTENSIBLE, LIST after     read exactly (pipeline.inference.asc_infer.wavfile)
stereo or more channels                      fallback: downmixed to mono (counted, logged)
sample rate != audio.sample_rate_hz          fallback: resampled in tf.data by the polyphase
                                            resampler (pipeline.inference.asc_infer.resample; counted)
shorter / longer than the clip               fallback: zero-padded / cropped (counted, logged)
NaN or inf in a float WAV                    error naming the file when tf.data decodes it
unknown label, missing or extra columns,     error naming the CSV file, row and column
wrong delimiter, duplicate rows, split
files naming files absent from meta.csv
==========================================  ==================================================
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import MAX_LISTED, ProblemsError
from pipeline.core.hashing import digest_bytes
from pipeline.core.labels import (
    CLASSES,
    DEVICES,
    SEEN_DEVICES,
    SPLIT_FILES,
    UNSEEN_DEVICES,
)
from pipeline.data.audit import Findings, path_problem, shown, split_checks
from pipeline.data.audit import scan_audio as scan_audio_files
from pipeline.inference.asc_infer import wavfile
from pipeline.inference.asc_infer.wavfile import WavInfo

logger = logging.getLogger(__name__)

META_COLUMNS = ("filename", "scene_label", "identifier", "source_label")
SPLIT_COLUMNS = {"train": ("filename", "scene_label"), "evaluate": ("filename", "scene_label"), "test": ("filename",)}
INDEX_COLUMNS = (
    "filename",
    "scene_label",
    "label",
    "city",
    "identifier",
    "device",
    "split",
    "sample_rate",
    "channels",
    "bits",
    "encoding",
    "frames",
    "data_offset",
    "block_align",
    "content",
)

# (encoding, bits) the tf.data decoder (pipeline.data.inputs.decode_wav) reads
TRAINABLE_FORMATS = (("pcm", 16), ("pcm", 24), ("pcm", 32), ("float", 32))


class DatasetError(ProblemsError):
    """The dataset on disk is malformed; the message lists every problem found."""

    def __init__(self, root, problems: list[str]):
        super().__init__(f"dataset {root}", problems)


def read_wav_header(path: str | os.PathLike) -> WavInfo:
    """Parse a WAV header with the project's one reader (:func:`pipeline.inference.asc_infer.wavfile.read_info`).

    The header is parsed exactly as RIFF says (chunk padding, WAVE_FORMAT_EXTENSIBLE, extra
    chunks) and the file must hold the frames it announces. Only the formats the tf.data decoder
    reads are accepted (``TRAINABLE_FORMATS``: PCM 16/24/32-bit, float 32-bit).

    Returns:
      The :class:`WavInfo` (sample_rate, channels, bits, encoding, frames, data_offset, block_align).

    Raises:
      ValueError: (:class:`~pipeline.inference.asc_infer.wavfile.WavError`) with a message saying what is
        wrong (empty, not RIFF/WAVE, truncated, unsupported encoding or bit depth), without the path.
      FileNotFoundError, IsADirectoryError, PermissionError: from opening the file.
    """
    info = wavfile.read_info(path)
    if (info.encoding, info.bits) not in TRAINABLE_FORMATS:
        raise wavfile.WavError(
            f"unsupported {info.encoding} bit depth {info.bits} for training "
            f"(PCM 16/24/32-bit and float 32-bit supported)"
        )
    return info


def _read_csv(path: Path, columns: tuple[str, ...], problems: list[str]) -> pd.DataFrame | None:
    """Read one tab-separated file, checking delimiter, columns and every row; problems appended.

    Returns a DataFrame of string columns plus ``_line`` (the row's line number in the file), or
    None when the file cannot be used at all. Blank lines are ignored; a row with the wrong number
    of fields is reported and left out. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is a
    documented fallback: ignored, with a warning naming the file.
    """
    if path.is_dir():
        problems.append(f"{path}: is a directory, not a CSV file")
        return None
    if not path.is_file():
        problems.append(f"{path}: missing file")
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8, tab-separated")
        return None
    except OSError as exc:
        problems.append(f"{path}: unreadable CSV ({exc.strerror or exc})")
        return None
    if text.startswith("\ufeff"):
        logger.warning('%s: starts with a UTF-8 byte-order mark (Excel\'s "CSV UTF-8"); ignored', path)
        text = text[1:]
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        problems.append(f"{path}: empty file (expected a tab-separated header {list(columns)})")
        return None
    header = lines[0].split("\t")
    if len(header) == 1 and len(columns) > 1 and any(d in header[0] for d in (",", ";")):
        problems.append(
            f"{path}: wrong delimiter: expected tab-separated columns {list(columns)}, got header {shown(header[0])}"
        )
        return None
    missing = [c for c in columns if c not in header]
    extra = [c for c in header if c not in columns]
    if missing or extra or len(set(header)) != len(header):
        what = [f"missing column(s) {missing}" for _ in [0] if missing] + [
            f"unexpected column(s) {extra}" for _ in [0] if extra
        ]
        problems.append(
            f"{path}: {'; '.join(what) or 'duplicate column names'}; expected {list(columns)}, "
            f"got {[shown(h) for h in header][:10]}"
        )
        return None
    rows, numbers = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            problems.append(f"{path}: line {number}: expected {len(header)} tab-separated fields, got {len(fields)}")
            continue
        rows.append(fields)
        numbers.append(number)
    frame = pd.DataFrame(rows, columns=header, dtype=str)
    frame["_line"] = numbers
    for i in np.flatnonzero(frame[list(columns)].eq("").any(axis=1).to_numpy())[:MAX_LISTED]:
        problems.append(f"{path}: line {frame._line.iloc[i]}: empty field")
    for i in np.flatnonzero(frame.duplicated(subset=["filename"], keep="first").to_numpy()):
        problems.append(f"{path}: line {frame._line.iloc[i]}: duplicate filename {shown(frame.filename.iloc[i])}")
    return frame


def _safe_rows(path: Path, table: pd.DataFrame, root: Path, problems: list[str]) -> pd.DataFrame:
    """The rows of ``table`` whose filename stays inside ``root``; the others reported with their line."""
    bad = []
    for i, name in enumerate(table.filename):
        reason = path_problem(root, name)
        if reason:
            problems.append(f"{path}: line {table._line.iloc[i]}: filename {shown(name)} {reason}")
            bad.append(i)
    return table.drop(table.index[bad]) if bad else table


def parse_filename(filename: str) -> tuple[str, str]:
    """``audio/airport-barcelona-203-6129-0-a.wav`` -> (city ``barcelona``, device ``A``)."""
    stem = Path(filename).stem
    parts = stem.split("-")
    if len(parts) < 4:
        raise ValueError(f"filename {shown(filename)} does not follow scene-city-location-...-device.wav")
    return parts[1], parts[-1].upper()


def read_index(root: str | os.PathLike, *, check_audio: bool = True) -> pd.DataFrame:
    """Read and validate a TAU22-layout dataset into one index DataFrame (:func:`inspect` without the scan).

    Raises:
      DatasetError: listing every problem found.
    """
    return inspect(root, check_audio=check_audio)[0]


def inspect(
    root: str | os.PathLike,
    *,
    check_audio: bool = True,
    scan_audio: bool = False,
    strict: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> tuple[pd.DataFrame, Findings]:
    """Read and validate a TAU22-layout dataset: the index and the findings of every check.

    Every problem (CSV format, paths, labels, WAV headers, the split design and, with
    ``scan_audio``, every clip's samples) is collected and reported in one :class:`DatasetError`.

    Args:
      root: the dataset directory (holding meta.csv, evaluation_setup/, audio/).
      check_audio: parse every WAV header (existence, format, length); the default.
      scan_audio: also read every clip (:func:`pipeline.data.audit.scan_audio`): content hashes,
        non-finite, silent and clipped clips.
      strict: the warnings of :mod:`pipeline.data.audit` are errors too.
      workers: reader threads of the scan.
      progress: progress bars.

    Returns:
      A DataFrame with columns ``INDEX_COLUMNS``, one row per (file, split) pair: files of
      fold1_train.csv with split ``train``, fold1_evaluate.csv with ``evaluate``, and files of
      fold1_test.csv that are not in fold1_evaluate.csv with ``test``. ``label`` is the class
      id in ``CLASSES`` order. And the :class:`~pipeline.data.audit.Findings` (warnings by name).

    Raises:
      DatasetError: listing every problem found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, [f"{root}: dataset directory does not exist"])
    unfinished = sorted(root.glob("_INCOMPLETE_*.json"))  # pipeline.data.download writes it while unpacking
    if unfinished:
        raise DatasetError(
            root,
            [
                f"{m}: the download of {m.stem[len('_INCOMPLETE_') :]} into this folder did not finish: rerun "
                f"python -m pipeline.data download {m.stem[len('_INCOMPLETE_') :]} --to {root.parent}"
                for m in unfinished
            ],
        )
    real_root = Path(os.path.realpath(root))
    problems: list[str] = []
    for rel in ("meta.csv", *SPLIT_FILES.values()):
        reason = path_problem(real_root, rel) if (root / rel).exists() else None
        if reason:
            problems.append(f"{root / rel}: {reason}")
    if problems:
        raise DatasetError(root, problems)
    meta = _read_csv(root / "meta.csv", META_COLUMNS, problems)
    splits = {
        name: _read_csv(root / rel, SPLIT_COLUMNS[name], problems)
        for name, rel in SPLIT_FILES.items()
        if name != "test" or (root / rel).exists()
    }
    if "test" not in splits:
        logger.warning("%s: no %s; the test split is empty", root, SPLIT_FILES["test"])
    if meta is None:
        raise DatasetError(root, problems)
    meta = _safe_rows(root / "meta.csv", meta, real_root, problems)

    bad_label = ~meta.scene_label.isin(CLASSES)
    for row in np.flatnonzero(bad_label.to_numpy()):
        problems.append(
            f"{root / 'meta.csv'}: line {meta._line.iloc[row]}: unknown scene_label "
            f"{shown(meta.scene_label.iloc[row])}; allowed: {list(CLASSES)}"
        )
    devices = meta.source_label.str.upper()
    for row in np.flatnonzero((~devices.isin(DEVICES)).to_numpy()):
        problems.append(
            f"{root / 'meta.csv'}: line {meta._line.iloc[row]}: unknown source_label "
            f"{shown(meta.source_label.iloc[row])}; allowed: {[d.lower() for d in DEVICES]}"
        )
    meta_by_name = meta.drop_duplicates("filename").set_index("filename")
    labelled = meta_by_name[
        meta_by_name.scene_label.isin(CLASSES) & meta_by_name.source_label.str.upper().isin(DEVICES)
    ]

    frames = []
    for split, table in splits.items():
        if table is None:
            continue
        rel = SPLIT_FILES[split]
        absent = ~table.filename.isin(meta_by_name.index)
        for row in np.flatnonzero(absent.to_numpy()):
            problems.append(
                f"{root / rel}: line {table._line.iloc[row]}: {shown(table.filename.iloc[row])} "
                "is not in meta.csv (or its meta.csv row was refused)"
            )
        table = table[~absent]
        if "scene_label" in table.columns:
            wrong = table.scene_label.to_numpy() != meta_by_name.loc[table.filename, "scene_label"].to_numpy()
            for row in np.flatnonzero(wrong):
                problems.append(
                    f"{root / rel}: line {table._line.iloc[row]}: {shown(table.filename.iloc[row])}: "
                    f"scene_label {shown(table.scene_label.iloc[row])} disagrees with meta.csv"
                )
        if split == "test" and splits.get("evaluate") is not None:
            table = table[~table.filename.isin(splits["evaluate"].filename)]
        table = table[table.filename.isin(labelled.index)]  # unknown labels are reported above
        frames.append(pd.DataFrame({"filename": table.filename.to_numpy(), "split": split}))
    if frames and splits.get("train") is not None and splits.get("evaluate") is not None:
        overlap = set(splits["train"].filename) & set(splits["evaluate"].filename)
        for name in sorted(overlap)[:MAX_LISTED]:
            problems.append(f"{root}: {shown(name)} is in both fold1_train.csv and fold1_evaluate.csv")

    index = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({"filename": pd.Series([], dtype=str), "split": pd.Series([], dtype=str)})
    )
    joined = labelled.loc[index.filename]
    index["scene_label"] = joined.scene_label.to_numpy()
    index["label"] = [CLASSES.index(s) for s in index.scene_label]
    index["identifier"] = joined.identifier.to_numpy()
    index["device"] = joined.source_label.str.upper().to_numpy()
    cities = []
    for name in index.filename:
        try:
            cities.append(parse_filename(name)[0])
        except ValueError as exc:
            problems.append(str(exc))
            cities.append("")
    index["city"] = cities

    findings = Findings()
    findings.extend(split_checks(index))
    names = index.filename.drop_duplicates().tolist()
    headers = dict(zip(names, _check_audio(root, names, problems), strict=True)) if check_audio else {}
    good = {n: h for n, h in headers.items() if h is not None}
    if scan_audio and good:
        _, scanned = scan_audio_files(root, index[index.filename.isin(good)], good, workers=workers, progress=progress)
        findings.extend(scanned)
    problems.extend(findings.errors)
    for name, messages in findings.warnings.items():
        if strict:
            problems.extend(f"{name} (an error with data.strict_checks): {m}" for m in messages)
        else:
            for message in messages[:MAX_LISTED]:
                logger.warning("dataset check %s: %s", name, message)
            if len(messages) > MAX_LISTED:
                logger.warning("dataset check %s: %d more", name, len(messages) - MAX_LISTED)
    if problems:
        raise DatasetError(root, problems)
    for col in ("sample_rate", "channels", "bits", "encoding", "frames", "data_offset", "block_align"):
        index[col] = (
            [getattr(headers[n], col) for n in index.filename] if check_audio else ("" if col == "encoding" else 0)
        )
    index["content"] = _content(root, index.filename, findings.scan if check_audio else None, check_audio)
    return index[list(INDEX_COLUMNS)], findings


def _content(root: Path, filenames: pd.Series, scan: pd.DataFrame | None, check_audio: bool) -> list[str]:
    """What each clip holds, for the reuse keys of the stages that read it: the scan's content hash,
    else ``size:mtime_ns`` (a clip replaced by other samples with the same header changes either)."""
    if scan is not None:
        digests = dict(zip(scan.filename, scan.digest, strict=True))
        return [digests[n] for n in filenames]
    if not check_audio:
        return [""] * len(filenames)
    stats = {}
    for name in filenames.drop_duplicates():
        st = (root / name).stat()
        stats[name] = f"{st.st_size}:{st.st_mtime_ns}"
    return [stats[n] for n in filenames]


def _check_audio(root: Path, filenames: list[str], problems: list[str]) -> list[WavInfo | None]:
    from tqdm.auto import tqdm

    infos: list[WavInfo | None] = []
    for name in tqdm(
        filenames, desc="check audio headers", unit="file", disable=len(filenames) < 2000, mininterval=2.0
    ):
        path = root / name
        try:
            infos.append(read_wav_header(path))
        except FileNotFoundError:
            problems.append(f"{path}: missing audio file")
            infos.append(None)
        except IsADirectoryError:
            problems.append(f"{path}: is a directory, not a WAV file")
            infos.append(None)
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
            infos.append(None)
    return infos


def fallback_counts(index: pd.DataFrame, sample_rate_hz: int, clip_samples: int) -> dict[str, int]:
    """How many clips take each documented fallback (downmix, resample, pad, crop)."""
    resampled_len = np.round(index.frames.to_numpy() * sample_rate_hz / index.sample_rate.to_numpy())
    return {
        "downmixed": int((index.channels > 1).sum()),
        "resampled": int((index.sample_rate != sample_rate_hz).sum()),
        "padded": int((resampled_len < clip_samples).sum()),
        "cropped": int((resampled_len > clip_samples).sum()),
    }


def fingerprint(index: pd.DataFrame) -> str:
    """SHA-256 (16 hex) of the index content: file list, labels, splits and header facts."""
    cols = [c for c in INDEX_COLUMNS if c in index.columns]
    blob = index[cols].to_csv(index=False, sep="\t").encode()
    return digest_bytes(blob)


def summarise(index: pd.DataFrame) -> dict:
    """Clips per split x class x device, and seen/unseen device counts per split."""
    table = index.groupby(["split", "scene_label", "device"]).size().rename("clips").reset_index()
    per_split = index.groupby("split").size().to_dict()
    seen = {s: int(index[(index.split == s) & index.device.isin(SEEN_DEVICES)].shape[0]) for s in per_split}
    unseen = {s: int(index[(index.split == s) & index.device.isin(UNSEEN_DEVICES)].shape[0]) for s in per_split}
    return {
        "clips": len(index),
        "clips_per_split": {k: int(v) for k, v in per_split.items()},
        "seen_device_clips": seen,
        "unseen_device_clips": unseen,
        "devices_per_split": {s: sorted(index[index.split == s].device.unique().tolist()) for s in per_split},
        "cities": sorted(index.city.unique().tolist()),
        "table": table,
    }
