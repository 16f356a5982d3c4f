"""Atomic file output and stage completion markers.

Every file a stage writes goes to a temporary name in the same directory and is renamed
when complete, so a killed run never leaves a file that looks good. A stage's directory
counts as complete only once its ``_SUCCESS.json`` marker (written last) exists; later
stages refuse inputs without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

MARKER = "_SUCCESS.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; make it like any other output
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def _default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def mark_complete(stage_dir: str | os.PathLike, **facts) -> Path:
    """Write the stage's completion marker (last), holding what the outputs depend on."""
    return write_json(Path(stage_dir) / MARKER, facts)


def read_marker(stage_dir: str | os.PathLike) -> dict | None:
    path = Path(stage_dir) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def clear_marker(stage_dir: str | os.PathLike) -> None:
    path = Path(stage_dir) / MARKER
    if path.exists():
        path.unlink()
