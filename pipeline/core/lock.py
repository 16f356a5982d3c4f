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
from collections.abc import Iterator
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
        super().__init__(f"workdir {workdir} is in use by {who}{after}; wait for it to finish, pass --wait-lock SECONDS "
                         f"to wait, or use another --workdir")


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
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": command[:300]}


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, *, wait_seconds: float = 0.0, poll_seconds: float = 0.5) -> Iterator[Path]:
    """Hold ``<workdir>/.lock`` for the block; raise :class:`WorkdirLocked` if a live process holds it.

    Args:
      workdir: the folder to lock (created if missing).
      wait_seconds: how long to wait for the holder to finish (0: refuse at once).
      poll_seconds: how often to retry while waiting.

    Raises:
      WorkdirLocked: naming the holder's PID, host, start time and command.
      OSError: the folder cannot be created or the lock file cannot be opened (for example a
        read-only workdir); the caller reports it as an environment error.
    """
    import fcntl

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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    next_note = 0.0
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                waited = time.monotonic() - start
                if waited >= wait_seconds:
                    raise WorkdirLocked(folder, _read(fd), waited) from None
                if waited >= next_note:
                    logger.info("waiting up to %.0f s for the lock on %s, held by %s", wait_seconds, folder,
                                describe(_read(fd)))
                    next_note += 30.0
                time.sleep(poll_seconds)
        previous = _read(fd)
        if previous:
            logger.warning("workdir %s: taking over a stale lock left by %s (that process is gone)",
                           folder, describe(previous))
        _write(fd, _me())
    except BaseException:
        os.close(fd)
        raise
    _held[key] = [fd, 1]
    try:
        yield path
    finally:
        del _held[key]
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock
