"""One workdir, one writer: an advisory lock file naming its holder.

A run takes ``<workdir>/.lock`` before it touches the workdir and holds it until it ends. The
lock is a ``flock`` on that file (the kernel releases it when the holder exits, however it
exits, so a lock is never left behind by a killed run), and the file holds who holds it: PID,
host, start time and command line, so a second run can say whom it is waiting for::

    workdir work is in use by PID 4242 on host ml-01 since 2026-12-04T05:01:10Z
    (python -m pipeline.run --stage train); wait for it, or pass --wait-lock SECONDS

A lock file that still names a holder but is not locked was left by a process that died (for
example ``kill -9``): it is taken over, and the takeover is logged with the dead holder's
facts. The file is never deleted (deleting it would let two runs lock two different files);
releasing truncates it.

Re-entrant within a process: nested ``workdir_lock`` calls on the same folder (a sweep running
many runs in one process) share the one lock.

:func:`file_lock` is the one ``flock`` primitive under it; the MLflow store's creation lock
(:mod:`pipeline.running.tracking`) and the one-process-per-sweep-folder lock (:mod:`pipeline.scaling.sweep`) use it too.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_held: dict[str, list] = {}  # resolved folder -> [fd, depth]


class WorkdirLocked(RuntimeError):
    """Another live process holds the workdir's lock; the message names it."""

    def __init__(self, workdir: Path, holder: dict, waited: float):
        self.workdir, self.holder = workdir, holder
        who = describe(holder)
        after = f" (waited {waited:.0f} s)" if waited else ""
        super().__init__(
            f"workdir {workdir} is in use by {who}{after}; wait for it to finish, pass --wait-lock SECONDS "
            f"to wait, or use another --workdir"
        )


def describe(holder: dict) -> str:
    """``PID 4242 on host ml-01 since <time> (<command>)`` from a lock file's content."""
    if not holder:
        return "another process (the lock file names no holder)"
    text = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("since"):
        text += f" since {holder['since']}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    return text


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        return json.loads(raw.decode()) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"unreadable": raw[:200].decode(errors="replace")}


def _write(fd: int, holder: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    os.fsync(fd)


def _me() -> dict:
    command = " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "python"
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command[:300],
    }


class LockBusy(RuntimeError):
    """:func:`file_lock` gave up: another process holds the lock file (``holder``: its content)."""

    def __init__(self, path: Path, holder: dict, waited: float):
        self.path, self.holder, self.waited = path, holder, waited
        super().__init__(f"{path} is locked by {describe(holder)} (waited {waited:.0f} s)")


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike,
    *,
    wait_seconds: float | None = None,
    poll_seconds: float = 0.5,
    busy: Callable[[dict, float], BaseException] | None = None,
) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing, never truncated here) for the block.

    Args:
      path: the lock file; its folder must exist.
      wait_seconds: None: block until the lock is free; else give up after this many seconds
        (0: at once), logging whom it waits for every 30 s.
      poll_seconds: how often to retry while waiting with a limit.
      busy: ``busy(holder, waited)`` builds the exception raised on giving up (``holder``: the lock
        file's JSON content, ``{}`` when empty); default :class:`LockBusy`.

    Returns:
      (yields) the open file descriptor (closed, and the lock released, when the block ends).

    Raises:
      LockBusy: or what ``busy`` builds, when the lock stays held for ``wait_seconds``.
      OSError: the lock file cannot be opened.
    """
    import fcntl

    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if wait_seconds is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            _acquire(fd, path, wait_seconds, poll_seconds, busy)
        yield fd
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def _acquire(fd: int, path: Path, wait_seconds: float, poll_seconds: float, busy) -> None:
    import fcntl

    start = time.monotonic()
    next_note = 0.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            waited = time.monotonic() - start
            if waited >= wait_seconds:
                raise (busy or (lambda holder, w: LockBusy(path, holder, w)))(_read(fd), waited) from None
            if waited >= next_note:
                logger.info(
                    "waiting up to %.0f s for the lock on %s, held by %s",
                    wait_seconds,
                    path.parent,
                    describe(_read(fd)),
                )
                next_note += 30.0
            time.sleep(poll_seconds)


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, *, wait_seconds: float = 0.0, poll_seconds: float = 0.5) -> Iterator[Path]:
    """Hold ``<workdir>/.lock`` for the block; raise :class:`WorkdirLocked` if a live process holds it.

    Args:
      workdir: the folder to lock (created if missing).
      wait_seconds: how long to wait for the holder to finish (0: refuse at once).
      poll_seconds: how often to retry while waiting.

    Returns:
      (yields) the lock file's path.

    Raises:
      WorkdirLocked: naming the holder's PID, host, start time and command.
      OSError: the folder cannot be created or the lock file cannot be opened (for example a
        read-only workdir); the caller reports it as an environment error.
    """
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.fspath(folder.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder / LOCK_NAME
        finally:
            _held[key][1] -= 1
        return
    path = folder / LOCK_NAME
    with file_lock(
        path,
        wait_seconds=wait_seconds,
        poll_seconds=poll_seconds,
        busy=lambda holder, waited: WorkdirLocked(folder, holder, waited),
    ) as fd:
        previous = _read(fd)
        if previous:
            logger.warning(
                "workdir %s: taking over a stale lock left by %s (that process is gone)", folder, describe(previous)
            )
        _write(fd, _me())
        _held[key] = [fd, 1]
        try:
            yield path
        finally:
            del _held[key]
            os.ftruncate(fd, 0)
