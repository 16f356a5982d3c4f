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
8-bit PCM, A-law, unknown WAV encoding       error naming the file (TAU is 24-bit PCM)
stereo or more channels                      fallback: downmixed to mono (counted, logged)
sample rate != audio.sample_rate_hz          fallback: resampled in tf.data (counted, logged)
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
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import MAX_LISTED, ProblemsError  # noqa: F401  (MAX_LISTED: part of the API)
from pipeline.core.hashing import digest_bytes
from pipeline.core.labels import CLASSES, DEVICES, SEEN_DEVICES, SPLIT_FILES, UNSEEN_DEVICES  # noqa: F401

logger = logging.getLogger(__name__)

META_COLUMNS = ("filename", "scene_label", "identifier", "source_label")
SPLIT_COLUMNS = {"train": ("filename", "scene_label"), "evaluate": ("filename", "scene_label"),
                 "test": ("filename",)}
INDEX_COLUMNS = (
    "filename", "scene_label", "label", "city", "identifier", "device", "split",
    "sample_rate", "channels", "bits", "encoding", "frames",
)

# WAV format tags
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class DatasetError(ProblemsError):
    """The dataset on disk is malformed; the message lists every problem found."""

    def __init__(self, root, problems: list[str]):
        super().__init__(f"dataset {root}", problems)


@dataclass(frozen=True)
class WavInfo:
    sample_rate: int
    channels: int
    bits: int
    encoding: str  # "pcm" or "float"
    frames: int


def read_wav_header(path: str | os.PathLike) -> WavInfo:
    """Parse a RIFF/WAVE header (no audio data read) and check the file is complete.

    Raises:
      ValueError: with a message saying what is wrong (empty, not RIFF/WAVE, truncated,
        unsupported encoding or bit depth).
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError("empty file")
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise ValueError("not a RIFF/WAVE file (corrupt or wrong format)")
        fmt = None
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                if fmt is None:
                    raise ValueError("truncated header: no 'fmt ' chunk")
                raise ValueError("truncated header: no 'data' chunk")
            cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                body = fh.read(csize)
                if len(body) < 16:
                    raise ValueError("truncated header: incomplete 'fmt ' chunk")
                tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:16])
                if tag == _EXTENSIBLE and len(body) >= 26:
                    tag = struct.unpack("<H", body[24:26])[0]
                fmt = (tag, channels, rate, block_align, bits)
                if csize % 2:
                    fh.read(1)
            elif cid == b"data":
                if fmt is None:
                    raise ValueError("'data' chunk before 'fmt ' chunk")
                data_start = fh.tell()
                break
            else:
                fh.seek(csize + (csize % 2), os.SEEK_CUR)
    tag, channels, rate, block_align, bits = fmt
    if tag == _PCM:
        encoding = "pcm"
        if bits not in (16, 24, 32):
            raise ValueError(f"unsupported PCM bit depth {bits} (16, 24 or 32 supported)")
    elif tag == _FLOAT:
        encoding = "float"
        if bits != 32:
            raise ValueError(f"unsupported float bit depth {bits} (32 supported)")
    else:
        raise ValueError(f"unsupported WAV encoding tag {tag} (PCM or IEEE float supported)")
    if channels < 1 or rate < 1 or block_align != channels * bits // 8:
        raise ValueError(f"inconsistent header (channels={channels}, rate={rate}, block_align={block_align})")
    available = size - data_start
    if csize > available or csize == 0xFFFFFFFF:
        raise ValueError(f"truncated: header announces {csize} data bytes, file holds {available}")
    frames = csize // block_align
    if frames == 0:
        raise ValueError("no audio samples")
    return WavInfo(int(rate), int(channels), int(bits), encoding, int(frames))


def _read_csv(path: Path, columns: tuple[str, ...], problems: list[str]) -> pd.DataFrame | None:
    """Read one tab-separated file, checking delimiter, columns and every row; problems appended.

    Returns a DataFrame of string columns plus ``_line`` (the row's line number in the file), or
    None when the file cannot be used at all. Blank lines are ignored; a row with the wrong number
    of fields is reported and left out.
    """
    if not path.is_file():
        problems.append(f"{path}: missing file")
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: unreadable CSV ({exc})")
        return None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        problems.append(f"{path}: empty file (expected a tab-separated header {list(columns)})")
        return None
    header = lines[0].split("\t")
    if len(header) == 1 and len(columns) > 1 and any(d in header[0] for d in (",", ";")):
        problems.append(f"{path}: wrong delimiter: expected tab-separated columns {list(columns)}, "
                        f"got header {header[0]!r}")
        return None
    missing = [c for c in columns if c not in header]
    if missing:
        problems.append(f"{path}: missing column(s) {missing}; expected {list(columns)}, got {header}")
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
        problems.append(f"{path}: line {frame._line.iloc[i]}: duplicate filename {frame.filename.iloc[i]!r}")
    return frame


def parse_filename(filename: str) -> tuple[str, str]:
    """``audio/airport-barcelona-203-6129-0-a.wav`` -> (city ``barcelona``, device ``A``)."""
    stem = Path(filename).stem
    parts = stem.split("-")
    if len(parts) < 4:
        raise ValueError(f"filename {filename!r} does not follow scene-city-location-...-device.wav")
    return parts[1], parts[-1].upper()


def read_index(root: str | os.PathLike, *, check_audio: bool = True) -> pd.DataFrame:
    """Read and validate a TAU22-layout dataset into one index DataFrame.

    Args:
      root: the dataset directory (holding meta.csv, evaluation_setup/, audio/).
      check_audio: parse every WAV header (existence, format, length); the default.

    Returns:
      A DataFrame with columns ``INDEX_COLUMNS``, one row per (file, split) pair: files of
      fold1_train.csv with split ``train``, fold1_evaluate.csv with ``evaluate``, and files of
      fold1_test.csv that are not in fold1_evaluate.csv with ``test``. ``label`` is the class
      id in ``CLASSES`` order (-1 where unknown, test split only).

    Raises:
      DatasetError: listing every problem found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, [f"{root}: dataset directory does not exist"])
    problems: list[str] = []
    meta = _read_csv(root / "meta.csv", META_COLUMNS, problems)
    splits = {name: _read_csv(root / rel, SPLIT_COLUMNS[name], problems)
              for name, rel in SPLIT_FILES.items() if name != "test" or (root / rel).is_file()}
    if "test" not in splits:
        logger.warning("%s: no %s; the test split is empty", root, SPLIT_FILES["test"])
    if meta is None or any(splits[s] is None for s in ("train", "evaluate")):
        raise DatasetError(root, problems)

    bad_label = ~meta.scene_label.isin(CLASSES)
    for row in np.flatnonzero(bad_label.to_numpy()):
        problems.append(f"{root / 'meta.csv'}: line {meta._line.iloc[row]}: unknown scene_label "
                        f"{meta.scene_label.iloc[row]!r}; allowed: {list(CLASSES)}")
    devices = meta.source_label.str.upper()
    for row in np.flatnonzero((~devices.isin(DEVICES)).to_numpy()):
        problems.append(f"{root / 'meta.csv'}: line {meta._line.iloc[row]}: unknown source_label "
                        f"{meta.source_label.iloc[row]!r}; allowed: {[d.lower() for d in DEVICES]}")
    meta_by_name = meta.drop_duplicates("filename").set_index("filename")

    frames = []
    for split, table in splits.items():
        if table is None:
            continue
        rel = SPLIT_FILES[split]
        absent = ~table.filename.isin(meta_by_name.index)
        for row in np.flatnonzero(absent.to_numpy()):
            problems.append(f"{root / rel}: line {table._line.iloc[row]}: {table.filename.iloc[row]!r} is not in meta.csv")
        table = table[~absent]
        if "scene_label" in table.columns:
            wrong = table.scene_label.to_numpy() != meta_by_name.loc[table.filename, "scene_label"].to_numpy()
            for row in np.flatnonzero(wrong):
                problems.append(f"{root / rel}: line {table._line.iloc[row]}: {table.filename.iloc[row]!r}: scene_label "
                                f"{table.scene_label.iloc[row]!r} disagrees with meta.csv")
        if split == "test":
            table = table[~table.filename.isin(splits["evaluate"].filename)]
        frames.append(pd.DataFrame({"filename": table.filename.to_numpy(), "split": split}))
    if not frames or sum(len(f) for f in frames) == 0:
        problems.append(f"{root}: no clips listed in the split files")
    overlap = set(splits["train"].filename) & set(splits["evaluate"].filename)
    for name in sorted(overlap)[:MAX_LISTED]:
        problems.append(f"{root}: {name!r} is in both fold1_train.csv and fold1_evaluate.csv")
    if problems:
        raise DatasetError(root, problems)

    index = pd.concat(frames, ignore_index=True)
    joined = meta_by_name.loc[index.filename]
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

    headers = []
    if check_audio:
        headers = _check_audio(root, index.filename.tolist(), problems)
    if problems:
        raise DatasetError(root, problems)
    if check_audio:
        index["sample_rate"] = [h.sample_rate for h in headers]
        index["channels"] = [h.channels for h in headers]
        index["bits"] = [h.bits for h in headers]
        index["encoding"] = [h.encoding for h in headers]
        index["frames"] = [h.frames for h in headers]
    else:
        for col in ("sample_rate", "channels", "bits", "frames"):
            index[col] = 0
        index["encoding"] = ""
    return index[list(INDEX_COLUMNS)]


def _check_audio(root: Path, filenames: list[str], problems: list[str]) -> list[WavInfo | None]:
    from tqdm.auto import tqdm

    infos: list[WavInfo | None] = []
    for name in tqdm(filenames, desc="check audio headers", unit="file", disable=len(filenames) < 2000,
                     mininterval=2.0):
        path = root / name
        try:
            infos.append(read_wav_header(path))
        except FileNotFoundError:
            problems.append(f"{path}: missing audio file")
            infos.append(None)
        except (OSError, ValueError, struct.error) as exc:
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
    table = (index.groupby(["split", "scene_label", "device"]).size()
             .rename("clips").reset_index())
    per_split = index.groupby("split").size().to_dict()
    seen = {s: int(index[(index.split == s) & index.device.isin(SEEN_DEVICES)].shape[0]) for s in per_split}
    unseen = {s: int(index[(index.split == s) & index.device.isin(UNSEEN_DEVICES)].shape[0]) for s in per_split}
    return {
        "clips": int(len(index)),
        "clips_per_split": {k: int(v) for k, v in per_split.items()},
        "seen_device_clips": seen,
        "unseen_device_clips": unseen,
        "devices_per_split": {s: sorted(index[index.split == s].device.unique().tolist()) for s in per_split},
        "cities": sorted(index.city.unique().tolist()),
        "table": table,
    }
