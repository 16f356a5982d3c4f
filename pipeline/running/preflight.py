"""Checks of the environment before any work: a bad option fails in seconds, naming the option and the path.

``python -m pipeline.run`` calls :func:`check` after the configuration is valid and before a
stage starts; a problem raises :class:`EnvironmentProblem` (exit status 2). What is checked:

* ``--workdir``: it is a folder (or can be created) and a file can be written in it.
* ``tracking.uri``: a ``sqlite:///`` store's folder is writable and an existing file is an SQLite
  database; a ``file:`` store's folder is writable; an ``http(s)://`` server answers within
  ``timeout`` seconds (MLflow itself retries for minutes before it gives up).
* ``tracking.artifact_root``: a local folder that can be created and written.
"""

from __future__ import annotations

import os
import signal
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"


class EnvironmentProblem(Exception):
    """The machine cannot run the job as configured; the message names the option and the path."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C, so runs end KILLED and temporary files are removed."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")
        self.signum = signum


_RECEIVED: list[int] = []


def received_signal() -> int | None:
    """The SIGTERM that arrived in the last :func:`terminate_as_interrupt` block, or None.

    TensorFlow can swallow :class:`Terminated` raised inside one of its calls and raise another error in
    its place (a collective aborted by the other worker's exit); the CLI asks this to still exit as terminated.
    """
    return _RECEIVED[-1] if _RECEIVED else None


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (then the default again)."""
    _RECEIVED.clear()

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM ends the process at once
        _RECEIVED.append(signum)
        raise Terminated(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _writable_folder(option: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EnvironmentProblem(f"{option}: {folder} exists and is not a folder") from None
    except OSError as exc:
        raise EnvironmentProblem(f"{option}: cannot create the folder {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise EnvironmentProblem(f"{option}: {folder} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise EnvironmentProblem(f"{option}: cannot write in {folder}: {exc.strerror or exc}") from None


def check_workdir(workdir: Path) -> None:
    _writable_folder("--workdir", Path(workdir))


def _sqlite_path(option: str, uri: str) -> Path:
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        raise EnvironmentProblem(f"{option}: {uri!r}: use sqlite:///<path to a database file>")
    return Path(path)


def _check_sqlite(option: str, db: Path, *, allow_empty: bool) -> None:
    """Refuse a file that cannot be read or is not an SQLite database (an empty one: only if not ``allow_empty``)."""
    try:
        with open(db, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise EnvironmentProblem(f"{option}: cannot read {db}: {exc.strerror or exc}") from None
    if (head or not allow_empty) and head != SQLITE_MAGIC:
        raise EnvironmentProblem(f"{option}: {db} is not an SQLite database (an MLflow store)")


def check_tracking(uri: str, artifact_root: str, *, timeout: float = 5.0) -> None:
    """Raise :class:`EnvironmentProblem` if the MLflow store or the artifact folder cannot be used."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        db = _sqlite_path("tracking.uri", uri)
        _writable_folder("tracking.uri", db.parent if str(db.parent) else Path("."))
        if db.exists():
            if db.is_dir():
                raise EnvironmentProblem(f"tracking.uri: {db} is a folder, not an SQLite database file")
            _check_sqlite("tracking.uri", db, allow_empty=True)
            if not os.access(db, os.W_OK):
                raise EnvironmentProblem(f"tracking.uri: {db} is read-only")
    elif parsed.scheme in ("http", "https"):
        _probe_server("tracking.uri", uri, parsed, timeout)
    elif parsed.scheme in ("", "file"):
        _writable_folder("tracking.uri", Path(parsed.path if parsed.scheme == "file" else uri))
    else:
        raise EnvironmentProblem(
            f"tracking.uri: unsupported scheme {parsed.scheme!r} in {uri!r} (sqlite:///, file:, http(s):// or a folder)"
        )
    art = urllib.parse.urlparse(artifact_root)
    if art.scheme in ("", "file"):
        _writable_folder("tracking.artifact_root", Path(art.path if art.scheme == "file" else artifact_root))


def _probe_server(option: str, uri: str, parsed: urllib.parse.ParseResult, timeout: float) -> None:
    health = urllib.parse.urlunparse(parsed._replace(path=parsed.path.rstrip("/") + "/health", query=""))
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            response.read(64)
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EnvironmentProblem(
            f"{option}: the MLflow server {uri} did not answer within {timeout:.0f} s ({reason})"
        ) from None


def check_tracking_readable(uri: str, *, option: str = "tracking.uri", timeout: float = 5.0) -> None:
    """Raise :class:`EnvironmentProblem` unless an existing MLflow store can be read; create nothing.

    For reading a registered model (``python -m pipeline.predict --model models:/...``): a
    ``sqlite:///`` database file must exist and be SQLite (MLflow would create an empty one and
    then report the model "not found"); a ``file:`` or folder store must exist; an ``http(s)://``
    server must answer within ``timeout`` seconds (MLflow retries for minutes).
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        db = _sqlite_path(option, uri)
        if not db.is_file():
            raise EnvironmentProblem(
                f"{option}: no MLflow store at {db.resolve()} ({uri}; relative paths start in "
                f"{Path.cwd()}): give the store that holds the model"
            )
        _check_sqlite(option, db, allow_empty=False)
    elif parsed.scheme in ("http", "https"):
        _probe_server(option, uri, parsed, timeout)
    elif parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri)
        if not folder.is_dir():
            raise EnvironmentProblem(f"{option}: no MLflow store folder at {folder}")
    else:
        raise EnvironmentProblem(
            f"{option}: unsupported scheme {parsed.scheme!r} in {uri!r} (sqlite:///, file:, http(s):// or a folder)"
        )


def check(workdir: Path, uri: str, artifact_root: str, *, track: bool = True) -> None:
    """All environment checks of a run (tracking ones only when it records to MLflow)."""
    check_workdir(workdir)
    if track:
        check_tracking(uri, artifact_root)
