"""The one SHA-256 helper set: 16-hex digests of JSON-able facts, bytes and files."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

DIGEST_CHARS = 16


def digest_bytes(blob: bytes) -> str:
    """SHA-256 of ``blob``, first 16 hex characters."""
    return hashlib.sha256(blob).hexdigest()[:DIGEST_CHARS]


def digest(obj) -> str:
    """SHA-256 (16 hex) of a JSON-able object with sorted keys: a key of settings and inputs."""
    return digest_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def file_digest(path: str | os.PathLike) -> str | None:
    """SHA-256 (16 hex) of a file's content, read in 1 MiB blocks; ``None`` when it is not a file."""
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:DIGEST_CHARS]


def stat_file_digest(path: str | os.PathLike) -> str | None:
    """:func:`file_digest`, read once per (resolved path, size, modification time): a stage's key is computed
    several times in one run (its own, a downstream stage's upstream check, the report's optional inputs)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    st = path.stat()
    return _cached_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str | None:
    return file_digest(path)
