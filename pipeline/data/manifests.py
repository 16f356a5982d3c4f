"""What ``python -m pipeline.data download`` fetches: file names, sizes and MD5s, as data.

Every list here was copied from a public source, named in each manifest's ``source`` (the TAU
lists: the dataset classes of DCASE-REPO/dcase_util, ``dcase_util/datasets/tut.py`` at commit
a2694b0b9ad4592c9c27c935fb92b0e5751b8ab4, extracted from that file by a script, not typed). The
DCASE2024 split files have no published size or checksum: they are checked by content instead
(tab-separated, a ``filename`` column, at least one row).

A manifest can also be a JSON file (``--manifest FILE``, e.g. for a local mirror); see
:func:`manifest_from_json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DCASE_UTIL = "DCASE-REPO/dcase_util dcase_util/datasets/tut.py @a2694b0b9ad4592c9c27c935fb92b0e5751b8ab4"
SPLITS_RELEASE = "https://github.com/CPJKU/dcase2024_task1_baseline/releases/download/files/"
KINDS = ("zip", "tsv")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset record.

    Args:
      name: the file's name on disk (in the download folder).
      url: where it is fetched from.
      size: its published size in bytes, or None when none is published.
      md5: its published MD5 (32 hex digits), or None when none is published.
      kind: ``zip`` (an archive, unpacked into the dataset folder) or ``tsv`` (a tab-separated list,
        copied to ``dest`` and checked by content).
      dest: for a ``tsv``: its path inside the dataset folder.
    """

    name: str
    url: str
    size: int | None = None
    md5: str | None = None
    kind: str = "zip"
    dest: str | None = None

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"RemoteFile.name {self.name!r}: a plain file name is expected")
        if self.kind not in KINDS:
            raise ValueError(f"RemoteFile {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.size is not None and self.size < 0:
            raise ValueError(f"RemoteFile {self.name}: size {self.size} is negative")
        if self.md5 is not None and (len(self.md5) != 32 or any(c not in "0123456789abcdef" for c in self.md5)):
            raise ValueError(f"RemoteFile {self.name}: md5 {self.md5!r} is not 32 lowercase hex digits")
        if self.kind == "tsv" and not self.dest:
            raise ValueError(f"RemoteFile {self.name}: a tsv file needs dest (its path in the dataset folder)")
        if self.dest is not None and (Path(self.dest).is_absolute() or ".." in Path(self.dest).parts):
            raise ValueError(f"RemoteFile {self.name}: dest {self.dest!r} must stay inside the dataset folder")


@dataclass(frozen=True)
class Manifest:
    """A dataset record: the files to fetch and the folder they make.

    Args:
      key: the name on the command line (``tau22-dev``).
      title: one line for people.
      source: where the list of files (names, sizes, checksums) was read.
      folder: the dataset folder the files make under ``--to`` (the folder ``--data`` then takes).
      files: the files, in download order.
    """

    key: str
    title: str
    source: str
    folder: str
    files: tuple[RemoteFile, ...]

    def __post_init__(self):
        if not self.files:
            raise ValueError(f"manifest {self.key}: no files")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError(f"manifest {self.key}: duplicate file names")
        if not self.folder or Path(self.folder).is_absolute() or ".." in Path(self.folder).parts:
            raise ValueError(f"manifest {self.key}: folder {self.folder!r} must be a relative path under --to")

    @property
    def known_bytes(self) -> int:
        """The sum of the published sizes (files without one count 0)."""
        return sum(f.size or 0 for f in self.files)


def _tau(key: str, title: str, record: int, base: str, rows) -> Manifest:
    url = f"https://zenodo.org/record/{record}/files/"
    files = tuple(RemoteFile(base + suffix, url + base + suffix, size, md5) for suffix, size, md5 in rows)
    return Manifest(key, title, f"{DCASE_UTIL} (Zenodo record {record})", base, files)


TAU22_DEV = _tau(
    "tau22-dev",
    "TAU Urban Acoustic Scenes 2022 Mobile, development set (230,350 clips; 27.5 GB of zips)",
    6337421,
    "TAU-urban-acoustic-scenes-2022-mobile-development",
    (
        (".doc.zip", 16_819, "9c4f610bdb5d3e3e72a17d393a26452a"),
        (".meta.zip", 1_538_781, "419b6ff6570f1030730352dc80cd8d15"),
        (".audio.1.zip", 1_736_050_960, "8be14bdbd844481dce059ab31fbd2239"),
        (".audio.2.zip", 1_791_821_989, "e821abda49b069248bb75eab39df7575"),
        (".audio.3.zip", 1_878_561_499, "9c7897f78bb42ca0008936daddf3f8f3"),
        (".audio.4.zip", 1_887_825_128, "53ec3e37c0fc0be75f53c5abbc5300b8"),
        (".audio.5.zip", 1_832_871_840, "528422c33c5d10263203d2c61cb1f3be"),
        (".audio.6.zip", 1_836_165_296, "4759a9465c903e13e57d5e82e791fc28"),
        (".audio.7.zip", 1_737_838_582, "6d545fc83a55a17856a9ccc1ac9aff6b"),
        (".audio.8.zip", 1_758_317_867, "3a2916a9b5d3f43cc7a22a62b180b0d9"),
        (".audio.9.zip", 1_790_044_829, "071f664c86639ad730f7be4e3c39d886"),
        (".audio.10.zip", 1_736_836_871, "e0839d019e9b77ecbcbb0eff85965530"),
        (".audio.11.zip", 1_754_618_148, "fc60f1c83726be3963ae14fbcb95eeb4"),
        (".audio.12.zip", 1_748_795_940, "02246547f86c0a814dc63ec65d7033bb"),
        (".audio.13.zip", 1_844_234_922, "88ae9ef884665140d1572d8061725e00"),
        (".audio.14.zip", 1_854_884_822, "c3f400d74ae90e5190dc518cde43de47"),
        (".audio.15.zip", 1_877_789_093, "85594c6fe4f91c10aa2a410f748103b8"),
        (".audio.16.zip", 435_379_083, "6e2df8438c69f6789414aeba8cbad9d8"),
    ),
)

TAU22_EVAL = _tau(
    "tau22-eval",
    "TAU Urban Acoustic Scenes 2022 Mobile, evaluation set (no labels; 13.2 GB of zips)",
    6591203,
    "TAU-urban-acoustic-scenes-2022-mobile-evaluation",
    (
        (".doc.zip", 8_056, "885bcd97d13c12571348250a9e132fae"),
        (".meta.zip", 294_726, "53ff714b17293c5f973ce233db393416"),
        (".audio.1.zip", 1_684_954_408, "740f80e5a62821f80d0d2c2660fa616c"),
        (".audio.2.zip", 1_685_855_969, "4accb0bd9486c429540770ef4fdd5595"),
        (".audio.3.zip", 1_684_186_384, "bf8c5c3c6d49c1517ee6e7402e1e7121"),
        (".audio.4.zip", 1_683_652_385, "bb086c4225119d332e0ceea8234b4435"),
        (".audio.5.zip", 1_685_227_691, "e4ab8505774526279d6231d6769c3c79"),
        (".audio.6.zip", 1_688_648_060, "270f122ebe737fd2e463165a76f6abbd"),
        (".audio.7.zip", 1_685_304_723, "86d975ee1b4d09b26e1b998f122189e1"),
        (".audio.8.zip", 1_451_063_404, "93b3c7dc8be152f9bf1edbbe8cf8d1b1"),
    ),
)

TAU24_SPLITS = Manifest(
    "tau24-splits",
    "DCASE2024 Task 1 training subsets split5/10/25/50/100.csv and test.csv (into the development folder's splits/)",
    "CPJKU/dcase2024_task1_baseline, release 'files' (dataset/dcase24.py: split_url); no sizes or checksums published",
    TAU22_DEV.folder,
    tuple(
        RemoteFile(name, SPLITS_RELEASE + name, kind="tsv", dest=f"splits/{name}")
        for name in ("split5.csv", "split10.csv", "split25.csv", "split50.csv", "split100.csv", "test.csv")
    ),
)

MANIFESTS = {m.key: m for m in (TAU22_DEV, TAU22_EVAL, TAU24_SPLITS)}


def manifest_from_json(path: str | os.PathLike) -> Manifest:
    """Read a manifest from JSON (keys as :class:`Manifest`; ``files`` a list of :class:`RemoteFile` keys).

    Raises:
      ValueError: naming the file and the bad key.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"manifest {path}: cannot read it as JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"manifest {path}: expected a JSON object")
    entries = raw.pop("files", None)
    if not isinstance(entries, list):
        raise ValueError(f"manifest {path}: 'files' must be a list of objects (name, url, size, md5, kind, dest)")
    files = []
    for i, entry in enumerate(entries):
        try:
            files.append(RemoteFile(**entry))
        except (TypeError, ValueError) as e:
            raise ValueError(f"manifest {path}: files[{i}]: {e}") from None
    try:
        return Manifest(files=tuple(files), **raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"manifest {path}: {e}") from None
