"""Which files ``python -m pipeline.predict`` reads and writes, and how it opens them.

Inputs: :func:`expand_inputs` turns the command line's paths (files, folders walked recursively,
globs) into files, and reports every path it cannot use with the reason. Outputs:
:func:`check_outputs` refuses, before any work, an output that would destroy an input or
something that is not a regular file. :func:`open_source` opens one file with the project's WAV
reader, or ``soundfile`` for FLAC and OGG.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import numpy as np

from pipeline.inference import asc_infer

SOUNDFILE_SUFFIXES = (".flac", ".ogg", ".oga")
logger = logging.getLogger("pipeline.predict")


class UsageError(ValueError):
    """A bad command line (model, window, inputs, outputs): exit status 2."""


# --------------------------------------------------------------------------- inputs and outputs

OUTPUT_HEADERS = (b"file,scene,", b"file,window,start_s,")  # how this command's own CSV files begin


def _written_by_predict(path: Path) -> bool:
    """True for a file this command wrote, whatever its name (its first bytes are one of :data:`OUTPUT_HEADERS`)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError:
        return False
    return head.startswith(OUTPUT_HEADERS)


def _kind(path: str) -> str | None:
    """Why ``path`` cannot be an input file (not a regular file), or None when it is one."""
    try:
        asc_infer.recording.check_regular_file(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def expand_inputs(paths: list[str]) -> tuple[list[Path], list[tuple[str, str]], int]:
    """Files named by ``paths`` (files, folders walked recursively, globs), in order, without repeats.

    Every named path is either used or reported: a path that names nothing, a pattern that
    matches nothing, a folder with no file in it (``x.wav`` may be a folder too), a folder that
    cannot be listed and anything that is not a regular file (a FIFO would block the reader
    forever) are reported with the reason. Linked folders are followed, each real folder once. In
    folders, files that this command wrote (:func:`_written_by_predict`) are skipped and counted,
    so an output kept beside the recordings is not an input on the next run; a file named
    explicitly is always an input. A recording reached by two paths (a link) is scored once.

    Returns:
      ``(files, problems, skipped)``: the regular files found, ``(path, reason)`` for what cannot
      be used, and the number of earlier prediction CSVs skipped in folders.
    """
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    skipped = 0
    for raw in paths:
        if os.path.lexists(raw):
            matches = [raw]
        elif glob.has_magic(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                problems.append((raw, "the pattern matches no file"))
        else:
            problems.append((raw, "no such file or folder"))
            matches = []
        for m in matches:
            path = Path(m)
            if not path.is_dir():
                reason = _kind(m) if os.path.exists(m) else "a dangling symbolic link"
                if reason:
                    problems.append((m, reason))
                else:
                    found.append(path)
                continue
            before, skipped_before, problems_before = len(found), skipped, len(problems)

            def onerror(exc, _path=path):
                problems.append((exc.filename or str(_path), f"cannot list the folder: {exc.strerror or exc}"))

            visited = {os.path.realpath(path)}
            for folder, dirs, names in os.walk(path, onerror=onerror, followlinks=True):
                for d in sorted(dirs):  # linked folders are followed, each real folder once (no loops)
                    real = os.path.realpath(os.path.join(folder, d))
                    if real in visited:  # its files are inputs already (a loop, or two links to one folder)
                        dirs.remove(d)
                        logger.info("predict: %s links to a folder already scanned", os.path.join(folder, d))
                    else:
                        visited.add(real)
                dirs.sort()
                for name in sorted(names):
                    file = Path(folder) / name
                    reason = _kind(str(file)) if os.path.exists(file) else "a dangling symbolic link"
                    if reason:
                        problems.append((str(file), reason))
                    elif _written_by_predict(file):
                        skipped += 1
                    else:
                        found.append(file)
            if len(found) == before and len(problems) == problems_before:
                problems.append(
                    (
                        m,
                        "the folder holds no input file"
                        + (" (only earlier prediction CSVs)" if skipped > skipped_before else ""),
                    )
                )
    problems = list(dict.fromkeys(problems))  # a FIFO named and also found in a named folder: listed once
    seen: set[str] = set()
    unique = []
    for path in found:
        key = os.path.realpath(path)  # a recording reached through a link too is scored once
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, problems, skipped


def read_file_list(path: Path) -> tuple[list[Path], dict[Path, str | None], list[tuple[str, str]]]:
    """A CSV list of recordings (``--list``): a ``file`` or ``filename`` column (paths relative to the list's
    folder), optionally a ``device`` or ``device_id`` column (DCASE2025 device IDs); comma- or tab-separated.

    Returns:
      ``(files, devices, problems)``: the listed files that exist, each file's device (None where the cell is
      empty), and ``(path, reason)`` for listed files that do not exist or are not regular files.

    Raises:
      UsageError: the list cannot be read, has no file column, or lists nothing.
    """
    import csv

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--list {path}: cannot be read ({exc})") from None
    lines = text.splitlines()
    delimiter = "\t" if lines and "\t" in lines[0] else ","
    rows = [
        {(k or "").strip(): v for k, v in row.items()}
        for row in csv.DictReader(lines, delimiter=delimiter, skipinitialspace=True)
    ]
    columns = [c.strip() for c in (rows[0].keys() if rows else (lines[0].split(delimiter) if lines else []))]
    name_col = next((c for c in ("file", "filename") if c in columns), None)
    if name_col is None:
        raise UsageError(f"--list {path}: no 'file' or 'filename' column (columns: {columns})")
    if not rows:
        raise UsageError(f"--list {path}: lists no file")
    device_col = next((c for c in ("device", "device_id") if c in columns), None)
    files, devices, problems = [], {}, []
    for row in rows:
        raw = (row.get(name_col) or "").strip()
        if not raw:
            continue
        item = Path(raw) if Path(raw).is_absolute() else path.parent / raw
        reason = _kind(str(item)) if os.path.exists(item) else "no such file (named in --list)"
        if reason:
            problems.append((str(item), reason))
            continue
        device = (row.get(device_col) or "").strip().lower() if device_col else ""
        if item not in devices:
            files.append(item)
        devices[item] = device or None
    return files, devices, problems


def check_outputs(outputs: dict[str, Path | None], inputs: list[Path]) -> None:
    """Refuse, before any work, outputs that would destroy something or be lost.

    Raises:
      UsageError: an output is one of the inputs, a folder, an existing path that is not a
        regular file (a FIFO, a device, a symbolic link: the atomic rename would replace it), in a
        folder that does not exist, or the two outputs are the same path.
    """
    chosen = {opt: Path(p) for opt, p in outputs.items() if p is not None}
    resolved = {opt: os.path.realpath(p) for opt, p in chosen.items()}
    if len(set(resolved.values())) < len(resolved):
        raise UsageError(
            f"{' and '.join(chosen)} name the same file ({next(iter(chosen.values()))}); one would overwrite the other"
        )
    ins = {os.path.realpath(p) for p in inputs}
    for opt, path in chosen.items():
        if os.path.islink(path):
            raise UsageError(
                f"{opt} {path} is a symbolic link; writing would replace the link with a plain file: "
                "name its target or another file"
            )
        if path.is_dir():
            raise UsageError(f"{opt} {path} is a folder: name a CSV file")
        if path.exists() and _kind(str(path)):
            raise UsageError(f"{opt} {path} is {_kind(str(path))}: name a regular CSV file")
        if resolved[opt] in ins:
            raise UsageError(f"{opt} {path} is one of the inputs; writing it would destroy that recording")
        if not path.parent.is_dir():
            raise UsageError(f"{opt} {path}: the folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise UsageError(f"{opt} {path}: cannot write in the folder {path.parent}")


class SoundFileSource:
    """A FLAC/OGG file read through ``soundfile``: ``sample_rate``, ``frames``, ``read(start, stop)`` (mono)."""

    def __init__(self, path: Path):
        import soundfile

        self._sf = soundfile
        self.path = str(path)
        info = soundfile.info(self.path)
        self.sample_rate, self.frames, self.channels = int(info.samplerate), int(info.frames), int(info.channels)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Mono float32 samples ``[start, stop)``: seek and read that range only."""
        try:
            with self._sf.SoundFile(self.path) as f:
                f.seek(start)
                x = f.read(max(0, stop - start), dtype="float32", always_2d=True)
        except Exception as exc:  # libsndfile's errors are RuntimeErrors: report them as read errors
            raise OSError(f"soundfile cannot read frames {start}..{stop}: {exc}") from exc
        return x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]


def open_source(path: Path):
    """The reader of one file: the WAV reader, or ``soundfile`` for FLAC/OGG.

    Raises:
      asc_infer.InputError: the file cannot be read (names it and the reason).
    """
    name = str(path)
    try:
        asc_infer.recording.check_regular_file(path)  # a FIFO is never opened (it would block forever)
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise asc_infer.InputError(name, exc.strerror or str(exc)) from exc
    if magic in (b"fLaC", b"OggS") or (path.suffix.lower() in SOUNDFILE_SUFFIXES and magic[:4] != b"RIFF"):
        try:
            return SoundFileSource(path)
        except ImportError:
            raise asc_infer.InputError(name, "FLAC/OGG needs the soundfile package (pip install soundfile)") from None
        except Exception as exc:  # soundfile raises its own error types (LibsndfileError, RuntimeError)
            raise asc_infer.InputError(name, f"soundfile cannot read it: {exc}") from exc
    return asc_infer.open_wav(path, name)
