"""Download a dataset record, check every file, unpack it into the folder ``--data`` takes.

``python -m pipeline.data download tau22-dev --to /data`` fetches the files of
:data:`pipeline.data.manifests.TAU22_DEV`, verifies each one's published size and MD5, and unpacks
the archives into ``/data/TAU-urban-acoustic-scenes-2022-mobile-development``.

Folders under ``--to``::

    .downloads/<key>/<file>          verified downloads (kept unless --delete-archives)
    .downloads/<key>/<file>.part     a partial download; the next run resumes it (HTTP Range)
    .downloads/<key>/verified.json   the files already verified (name, size, mtime): not hashed again
    <folder>/                        the dataset, as ``prepare`` reads it
    <folder>/_INCOMPLETE_<key>.json  present while unpacking: ``prepare`` refuses the folder
    <folder>/_DOWNLOADED_<key>.json  written last, when every file is in place: a second run does nothing

Failures name the file: an unreachable host (offline), an HTTP error (404: the record moved), a
size or checksum mismatch (the bad file is deleted, so the next run fetches it again), a cut
connection (retried ``retries`` times from where it stopped, then kept as ``.part`` for the next
run), too little free disk space (checked before any download).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.core.files import atomic_path, write_json
from pipeline.core.hashing import digest
from pipeline.data.manifests import Manifest, RemoteFile

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
# unpacked bytes per archive byte assumed by the disk-space check (WAV barely compresses)
UNPACK_FACTOR = 1.1
DOWNLOADS = ".downloads"
TRANSIENT = (429, 500, 502, 503, 504)  # HTTP statuses retried like a cut connection


class DownloadError(RuntimeError):
    """A download cannot complete; the message names the file and what to do."""


class _Cut(Exception):
    """The connection ended before the announced length (retried from where it stopped)."""


def incomplete_markers(root: str | os.PathLike) -> list[Path]:
    """The ``_INCOMPLETE_<key>.json`` files in a dataset folder (an unpack that did not finish)."""
    return sorted(Path(root).glob("_INCOMPLETE_*.json"))


def done_marker(to: str | os.PathLike, manifest: Manifest) -> Path:
    return Path(to) / manifest.folder / f"_DOWNLOADED_{manifest.key}.json"


def manifest_digest(manifest: Manifest) -> str:
    return digest(
        [manifest.key, manifest.folder, [[f.name, f.url, f.size, f.md5, f.kind, f.dest] for f in manifest.files]]
    )


@dataclass
class Outcome:
    """What one :func:`download` did.

    Attributes:
      root: the dataset folder (what ``--data`` takes).
      already_complete: the record was complete before this run: nothing was fetched.
      fetched: files downloaded (fully or the rest of a partial one) in this run.
      reused: files already downloaded and verified.
      bytes_fetched: bytes received in this run.
      unpacked: archives unpacked (or lists copied) in this run.
    """

    root: Path
    already_complete: bool = False
    fetched: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    bytes_fetched: int = 0
    unpacked: list[str] = field(default_factory=list)


def _gb(n: float) -> str:
    """Bytes for people: ``27.50 GB``, ``7.3 MB``, ``100 B``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def check_space(manifest: Manifest, to: Path, downloads: Path, *, unpacked: tuple[str, ...] = ()) -> None:
    """Refuse to start when the files still to fetch and unpack do not fit on the disk under ``to``
    (archives an interrupted run already unpacked, ``unpacked``, need no more room).

    Raises:
      DownloadError: naming the bytes needed and free.
    """
    fetch = 0
    for f in manifest.files:
        if f.size is None or (downloads / f.name).is_file():
            continue
        part = downloads / (f.name + ".part")
        fetch += f.size - (min(part.stat().st_size, f.size) if part.is_file() else 0)
    expand = int(UNPACK_FACTOR * sum(f.size or 0 for f in manifest.files if f.kind == "zip" and f.name not in unpacked))
    need = fetch + expand
    free = shutil.disk_usage(to).free
    if need > free:
        raise DownloadError(
            f"{manifest.key}: needs about {_gb(need)} free under {to} ({_gb(fetch)} to download, about "
            f"{_gb(expand)} unpacked), but {_gb(free)} are free; free some space or choose another --to"
        )


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _fetch(f: RemoteFile, downloads: Path, *, retries: int, timeout: float, backoff: float, progress: bool) -> int:
    """Download ``f`` to ``downloads/<name>.part`` (resuming it); return the bytes received."""
    from tqdm.auto import tqdm

    part = downloads / (f.name + ".part")
    received = 0
    failures = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        if f.size is not None and offset > f.size:
            logger.warning("%s: the partial download is larger than the published size: starting again", f.name)
            part.unlink()
            offset = 0
        if f.size is not None and offset == f.size:
            return received
        headers = {"User-Agent": "asc-pipeline (python urllib)"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(f.url, headers=headers), timeout=timeout) as resp:
                if offset and resp.status != 206:  # the server ignored the Range request: start again
                    logger.warning("%s: the server does not resume downloads: starting again from 0", f.name)
                    offset = 0
                length = resp.headers.get("Content-Length")
                length = int(length) if length is not None and length.isdigit() else None
                total = f.size if f.size is not None else (offset + length if length is not None else None)
                with (
                    open(part, "ab" if offset else "wb") as out,
                    tqdm(
                        total=total,
                        initial=offset,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=f.name,
                        disable=not progress,
                        leave=False,
                    ) as bar,
                ):
                    got = 0
                    while chunk := resp.read(CHUNK):
                        out.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
                received += got
                if length is not None and got < length:
                    raise _Cut(f"the connection closed after {got} of {length} bytes")
                return received
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # nothing left to send: the partial file is whole (checked next)
                return received
            if e.code in TRANSIENT and failures < retries:  # busy or failing server: wait and try again
                failures += 1
                logger.warning(
                    "%s: HTTP %d %s; retrying (attempt %d of %d)", f.name, e.code, e.reason, failures + 1, retries + 1
                )
                time.sleep(backoff * 2 ** (failures - 1))
                continue
            hint = " (the record may have moved or the file was withdrawn)" if e.code == 404 else ""
            raise DownloadError(f"{f.name}: HTTP {e.code} {e.reason} from {f.url}{hint}") from None
        except (_Cut, urllib.error.URLError, http.client.HTTPException, OSError) as e:
            failures += 1
            now = part.stat().st_size if part.is_file() else 0
            unreachable = isinstance(e, urllib.error.URLError) and now == offset
            if failures > retries:
                host = urllib.request.urlparse(f.url).netloc
                kept = f"; {now} bytes are kept in {part}: rerun the same command to resume" if now else ""
                what = f"cannot reach {host} (offline?)" if unreachable else "the download failed"
                raise DownloadError(
                    f"{f.name}: {what} after {failures} attempt(s): {_reason(e)} [{f.url}]{kept}"
                ) from None
            logger.warning(
                "%s: %s; retrying from byte %d (attempt %d of %d)", f.name, _reason(e), now, failures + 1, retries + 1
            )
            time.sleep(backoff * 2 ** (failures - 1))


def _md5(path: Path, progress: bool) -> str:
    from tqdm.auto import tqdm

    h = hashlib.md5()
    with (
        open(path, "rb") as fh,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"md5 {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _check_tsv(path: Path, name: str) -> None:
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
            rows = sum(1 for line in fh if line.strip())
    except (OSError, UnicodeDecodeError) as e:
        raise DownloadError(f"{name}: not a readable text file: {e}") from None
    if "filename" not in header:
        raise DownloadError(f"{name}: not a tab-separated list with a 'filename' column (header {header[:4]})")
    if rows == 0:
        raise DownloadError(f"{name}: a header and no rows")


def _verify(f: RemoteFile, part: Path, progress: bool) -> None:
    """Check a finished download; delete it when it is bad (the next run fetches it again)."""
    size = part.stat().st_size
    problem = None
    if f.size is not None and size != f.size:
        problem = f"size {size} bytes, the published size is {f.size}"
    elif f.md5 is not None:
        got = _md5(part, progress)
        if got != f.md5:
            problem = f"MD5 {got}, the published MD5 is {f.md5}"
    if problem is None and f.kind == "tsv":
        try:
            _check_tsv(part, f.name)
        except DownloadError:
            part.unlink()
            raise
    if problem is not None:
        part.unlink()
        raise DownloadError(
            f"{f.name}: checksum mismatch: {problem} [{f.url}]; the file was deleted: rerun to fetch it again"
        )


def _read_verified(downloads: Path) -> dict:
    try:
        return json.loads((downloads / "verified.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _unpack_zip(archive: Path, to: Path, folder: str, progress: bool) -> None:
    """Unpack ``archive`` so its files land in ``to/folder`` (whether or not the zip holds that folder)."""
    from tqdm.auto import tqdm

    try:
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
            for info in infos:
                parts = PurePosixPath(info.filename).parts
                if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise DownloadError(
                        f"{archive.name}: member {info.filename!r} would land outside {to}: not unpacked"
                    )
            tops = {PurePosixPath(i.filename).parts[0] for i in infos if i.filename.strip("/")}
            target = to if tops == {folder} else to / folder
            with tqdm(
                total=sum(i.file_size for i in infos),
                unit="B",
                unit_scale=True,
                desc=f"unpack {archive.name}",
                disable=not progress,
                leave=False,
            ) as bar:
                for info in infos:
                    z.extract(info, target)
                    bar.update(info.file_size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise DownloadError(f"{archive.name}: not a valid zip archive ({e}); delete it and rerun") from None


def _unpacked_before(root: Path, key: str) -> list[str]:
    """The files an interrupted unpack of the same manifest finished (its ``_INCOMPLETE_`` marker), or []."""
    for marker in incomplete_markers(root):
        try:
            earlier = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if earlier.get("manifest_digest") == key:
            return list(earlier.get("unpacked", []))
    return []


def download(
    manifest: Manifest,
    to: str | os.PathLike,
    *,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 2.0,
    delete_archives: bool = False,
) -> Outcome:
    """Fetch, verify and unpack every file of ``manifest`` under ``to``; resume whatever an earlier run left.

    Args:
      manifest: the record (:data:`pipeline.data.manifests.MANIFESTS` or a JSON manifest).
      to: the parent folder; the dataset lands in ``to/manifest.folder``.
      progress: tqdm bars for downloads, checksums and unpacking.
      retries: attempts after the first when a connection fails or is cut (each resumes).
      timeout: seconds without data before an attempt fails.
      backoff: seconds before the first retry (doubling).
      delete_archives: delete each archive once unpacked (the next run then re-fetches nothing:
        the completion marker says the record is in place).

    Returns:
      An :class:`Outcome`.

    Raises:
      DownloadError: naming the file (unreachable host, HTTP error, checksum mismatch, bad archive,
        too little disk space).
    """
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    root = to / manifest.folder
    key = manifest_digest(manifest)
    done = done_marker(to, manifest)
    outcome = Outcome(root=root)
    if done.is_file():
        try:
            same = json.loads(done.read_text()).get("manifest_digest") == key
        except (OSError, json.JSONDecodeError):
            same = False
        if same and not incomplete_markers(root):
            logger.info("%s: complete in %s (%s): nothing to download", manifest.key, root, done.name)
            outcome.already_complete = True
            return outcome
    downloads = to / DOWNLOADS / manifest.key
    downloads.mkdir(parents=True, exist_ok=True)
    check_space(manifest, to, downloads, unpacked=tuple(_unpacked_before(root, key)))

    verified = _read_verified(downloads)
    for i, f in enumerate(manifest.files, 1):
        final = downloads / f.name
        record = verified.get(f.name)
        if final.is_file():
            st = final.stat()
            if record == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": f.md5, "url": f.url}:
                outcome.reused.append(f.name)
                continue
            os.replace(final, downloads / (f.name + ".part"))  # checked again below, without refetching
        logger.info("%s: file %d of %d: %s", manifest.key, i, len(manifest.files), f.name)
        got = _fetch(f, downloads, retries=retries, timeout=timeout, backoff=backoff, progress=progress)
        part = downloads / (f.name + ".part")
        _verify(f, part, progress)
        os.replace(part, final)
        st = final.stat()
        verified[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": f.md5, "url": f.url}
        write_json(downloads / "verified.json", verified)
        (outcome.fetched if got else outcome.reused).append(f.name)
        outcome.bytes_fetched += got

    root.mkdir(parents=True, exist_ok=True)
    pending = root / f"_INCOMPLETE_{manifest.key}.json"
    finished = _unpacked_before(root, key)  # archives an interrupted run unpacked completely: not again
    note = "unpacking; rerun the download to finish"
    write_json(pending, {"key": manifest.key, "manifest_digest": key, "note": note, "unpacked": finished})
    done.unlink(missing_ok=True)
    for f in manifest.files:
        source = downloads / f.name
        if f.name in finished:
            continue
        if f.kind == "zip":
            logger.info("%s: unpacking %s", manifest.key, f.name)
            _unpack_zip(source, to, manifest.folder, progress)
        else:
            with atomic_path(root / f.dest) as tmp:
                shutil.copyfile(source, tmp)
        outcome.unpacked.append(f.name)
        finished.append(f.name)
        write_json(pending, {"key": manifest.key, "manifest_digest": key, "note": note, "unpacked": finished})
    write_json(
        done,
        {
            "key": manifest.key,
            "title": manifest.title,
            "source": manifest.source,
            "manifest_digest": key,
            "files": [{"name": f.name, "size": f.size, "md5": f.md5} for f in manifest.files],
        },
    )
    pending.unlink()
    if delete_archives:
        for f in manifest.files:
            (downloads / f.name).unlink(missing_ok=True)
        verified = {}
        write_json(downloads / "verified.json", verified)
    logger.info(
        "%s: complete in %s (%d file(s) fetched, %s; %d reused)",
        manifest.key,
        root,
        len(outcome.fetched),
        _gb(outcome.bytes_fetched),
        len(outcome.reused),
    )
    return outcome
