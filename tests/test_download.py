"""The dataset downloader against a local HTTP server on 127.0.0.1 serving small fake archives.

Resume after a cut connection (HTTP Range), a corrupted file named, a 404, an unreachable host, too
little disk space, an interrupted unpack that ``prepare`` refuses and the next run finishes, a zip
whose members would land outside the folder, and a second run that downloads nothing.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from pipeline.data import download as dl
from pipeline.data import tau
from pipeline.data.__main__ import main
from pipeline.data.manifests import MANIFESTS, TAU22_DEV, TAU24_SPLITS, Manifest, RemoteFile, manifest_from_json
from tests.tau_fixture import write_tau

FOLDER = "TAU-fake-development"


class Server:
    """Serves ``files`` (path -> bytes) with Range support; ``cuts[path] = [n, ...]`` closes the
    connection after n bytes on successive requests; every request's path and Range header is logged."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cuts: dict[str, list[int]] = {}
        self.errors: dict[str, list[int]] = {}  # HTTP statuses answered first, one per request
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.log.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if server.errors.get(self.path):
                    self.send_error(server.errors[self.path].pop(0), "Service Unavailable")
                    return
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m:
                    start = int(m.group(1))
                    if start >= len(body):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[start:]
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                cuts = server.cuts.get(self.path)
                if cuts:
                    self.wfile.write(rest[: cuts.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(rest)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _record(server: Server, tmp_path: Path) -> Manifest:
    """A tiny TAU-layout set in two archives (one holds the top folder, one does not) and a split list."""
    src = tmp_path / "src"
    write_tau(src, n_per_class=1)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    meta = {f"{FOLDER}/{p.relative_to(src).as_posix()}": p.read_bytes() for p in files if p.suffix == ".csv"}
    audio = {p.relative_to(src).as_posix(): p.read_bytes() for p in files if p.suffix == ".wav"}
    split = b"filename\tscene_label\n" + b"".join(
        f"{name}\t{name.split('/')[1].split('-')[0]}\n".encode() for name in list(audio)[:5]
    )
    blobs = {"fake.meta.zip": _zip(meta), "fake.audio.1.zip": _zip(audio), "split5.csv": split}
    out = []
    for name, blob in blobs.items():
        server.files[f"/record/{name}"] = blob
        kind, dest = ("tsv", f"splits/{name}") if name.endswith(".csv") else ("zip", None)
        size, md5 = (None, None) if kind == "tsv" else (len(blob), hashlib.md5(blob).hexdigest())
        out.append(RemoteFile(name, f"{server.url}/record/{name}", size, md5, kind, dest))
    return Manifest("fake", "a fake record", "tests/test_download.py", FOLDER, tuple(out))


def _get(m: Manifest, to: Path, **kw) -> dl.Outcome:
    return dl.download(m, to, progress=False, backoff=0, timeout=10, **kw)


def test_download_verifies_unpacks_into_the_folder_prepare_reads_and_a_second_run_fetches_nothing(server, tmp_path):
    m = _record(server, tmp_path)
    out = _get(m, tmp_path / "data")
    root = tmp_path / "data" / FOLDER
    assert out.root == root and not out.already_complete
    assert out.fetched == ["fake.meta.zip", "fake.audio.1.zip", "split5.csv"]
    assert out.bytes_fetched == sum(len(b) for b in server.files.values())
    index = tau.read_index(root)  # the layout prepare takes, audio from the archive without the top folder
    assert (
        len(index) == 10 * (3 + 2) and (root / "splits/split5.csv").read_bytes() == server.files["/record/split5.csv"]
    )
    marker = json.loads((root / "_DOWNLOADED_fake.json").read_text())
    assert [f["name"] for f in marker["files"]] == [f.name for f in m.files]
    assert not dl.incomplete_markers(root)
    n = len(server.log)
    again = _get(m, tmp_path / "data")
    assert again.already_complete and again.fetched == [] and len(server.log) == n  # not one request


def test_a_cut_connection_is_kept_and_resumed_with_a_range_request(server, tmp_path):
    m = _record(server, tmp_path)
    blob = server.files["/record/fake.audio.1.zip"]
    server.cuts["/record/fake.audio.1.zip"] = [1000]
    with pytest.raises(dl.DownloadError, match=r"fake\.audio\.1\.zip: the download failed after 1 attempt.*rerun"):
        _get(m, tmp_path / "data", retries=0)
    part = tmp_path / "data/.downloads/fake/fake.audio.1.zip.part"
    assert part.stat().st_size == 1000
    assert (tmp_path / "data/.downloads/fake/fake.meta.zip").is_file()  # verified, kept
    server.log.clear()
    out = _get(m, tmp_path / "data")
    assert server.log == [
        ("/record/fake.audio.1.zip", "bytes=1000-"),
        ("/record/split5.csv", None),
    ]  # the meta archive is not fetched again, the audio archive from byte 1000
    assert out.fetched == ["fake.audio.1.zip", "split5.csv"] and out.reused == ["fake.meta.zip"]
    assert out.bytes_fetched == len(blob) - 1000 + len(server.files["/record/split5.csv"])
    tau.read_index(out.root)


def test_cut_connections_are_retried_within_one_run(server, tmp_path):
    m = _record(server, tmp_path)
    server.cuts["/record/fake.audio.1.zip"] = [700, 300]
    out = _get(m, tmp_path / "data", retries=2)
    ranges = [r for p, r in server.log if p == "/record/fake.audio.1.zip"]
    assert ranges == [None, "bytes=700-", "bytes=1000-"]
    tau.read_index(out.root)


def test_a_corrupted_file_is_named_deleted_and_nothing_is_marked_complete(server, tmp_path):
    m = _record(server, tmp_path)
    good = server.files["/record/fake.audio.1.zip"]
    server.files["/record/fake.audio.1.zip"] = good[:-10] + bytes(10)  # same size, other bytes
    with pytest.raises(dl.DownloadError) as e:
        _get(m, tmp_path / "data")
    msg = str(e.value)
    assert "fake.audio.1.zip: checksum mismatch: MD5" in msg and hashlib.md5(good).hexdigest() in msg
    downloads = tmp_path / "data/.downloads/fake"
    assert not (downloads / "fake.audio.1.zip").exists() and not (downloads / "fake.audio.1.zip.part").exists()
    assert not (tmp_path / "data" / FOLDER / "_DOWNLOADED_fake.json").exists()
    server.files["/record/fake.audio.1.zip"] = good  # the mirror repaired: the next run fetches that file only
    server.log.clear()
    _get(m, tmp_path / "data")
    assert [p for p, _ in server.log] == ["/record/fake.audio.1.zip", "/record/split5.csv"]


def test_a_wrong_size_and_a_list_without_a_filename_column_are_named(server, tmp_path):
    m = _record(server, tmp_path)
    server.files["/record/fake.meta.zip"] += b"x"
    with pytest.raises(dl.DownloadError, match=r"fake\.meta\.zip: checksum mismatch: size .* published size"):
        _get(m, tmp_path / "a")
    m = _record(server, tmp_path / "b")
    server.files["/record/split5.csv"] = b"name,label\nx,y\n"
    with pytest.raises(dl.DownloadError, match=r"split5\.csv: not a tab-separated list with a 'filename' column"):
        _get(m, tmp_path / "b")


def test_404_and_an_unreachable_host_are_clear(server, tmp_path):
    m = _record(server, tmp_path)
    del server.files["/record/fake.audio.1.zip"]
    with pytest.raises(dl.DownloadError, match=r"fake\.audio\.1\.zip: HTTP 404 .*record may have moved"):
        _get(m, tmp_path / "data")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    offline = Manifest("off", "t", "t", FOLDER, (RemoteFile("x.zip", f"http://127.0.0.1:{port}/x.zip", 10, "0" * 32),))
    with pytest.raises(
        dl.DownloadError, match=rf"x\.zip: cannot reach 127\.0\.0\.1:{port} \(offline\?\) after 2 attempt"
    ):
        _get(offline, tmp_path / "off", retries=1)


def test_too_little_disk_space_stops_before_any_request(server, tmp_path, monkeypatch):
    m = _record(server, tmp_path)
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: type("U", (), {"free": 100})())
    with pytest.raises(
        dl.DownloadError,
        match=(
            r"fake: needs about [\d.]+ [kM]B free under .*data "
            r"\([\d.]+ [kM]B to download, about [\d.]+ [kM]B unpacked\), but 100 B are free"
        ),
    ):
        _get(m, tmp_path / "data")
    assert server.log == []


def test_an_interrupted_unpack_is_refused_by_prepare_and_finished_by_the_next_run(server, tmp_path, monkeypatch):
    m = _record(server, tmp_path)
    real = dl._unpack_zip
    calls = []

    def failing(archive, to, folder, progress):
        calls.append(archive.name)
        if archive.name == "fake.audio.1.zip":
            raise KeyboardInterrupt  # killed while unpacking the second archive
        real(archive, to, folder, progress)

    monkeypatch.setattr(dl, "_unpack_zip", failing)
    with pytest.raises(KeyboardInterrupt):
        _get(m, tmp_path / "data")
    root = tmp_path / "data" / FOLDER
    assert [p.name for p in dl.incomplete_markers(root)] == ["_INCOMPLETE_fake.json"]
    with pytest.raises(tau.DatasetError, match=r"the download of fake into this folder did not finish: rerun"):
        tau.read_index(root)
    monkeypatch.setattr(dl, "_unpack_zip", real)
    out = _get(m, tmp_path / "data")
    assert out.fetched == [] and out.unpacked == ["fake.audio.1.zip", "split5.csv"]  # the meta archive was done
    assert not dl.incomplete_markers(root)
    tau.read_index(root)


def test_a_member_outside_the_folder_is_refused(server, tmp_path):
    blob = _zip({"../evil.txt": b"x"})
    server.files["/evil.zip"] = blob
    m = Manifest(
        "evil",
        "t",
        "t",
        FOLDER,
        (RemoteFile("evil.zip", f"{server.url}/evil.zip", len(blob), hashlib.md5(blob).hexdigest()),),
    )
    with pytest.raises(dl.DownloadError, match=r"evil\.zip: member '\.\./evil\.txt' would land outside"):
        _get(m, tmp_path / "data")
    assert not (tmp_path / "evil.txt").exists()


def test_cli_with_a_json_manifest_and_its_errors(server, tmp_path, capsys):
    m = _record(server, tmp_path)
    spec = tmp_path / "fake.json"
    spec.write_text(
        json.dumps(
            {
                "key": m.key,
                "title": m.title,
                "source": m.source,
                "folder": m.folder,
                "files": [vars(f) for f in m.files],
            }
        )
    )
    assert manifest_from_json(spec) == m
    args = [
        "download",
        "--manifest",
        str(spec),
        "--to",
        str(tmp_path / "data"),
        "--no-progress",
        "--log-level",
        "ERROR",
    ]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"fake: complete in {tmp_path / 'data' / FOLDER}" in out and "fake: already complete" in out
    del server.files["/record/fake.audio.1.zip"]
    assert main([*args[:4], str(tmp_path / "other"), *args[5:]]) == 1
    assert "download fake failed: fake.audio.1.zip: HTTP 404" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["download", "tau99", "--to", str(tmp_path)])
    assert e.value.code == 2 and "unknown record(s) ['tau99']" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"key": "b", "title": "t", "source": "s", "folder": "f", "files": [{"name": "a/b", "url": "u"}]})
    )
    with pytest.raises(SystemExit):
        main(["download", "--manifest", str(bad), "--to", str(tmp_path)])
    assert "bad.json: files[0]: RemoteFile.name 'a/b': a plain file name is expected" in capsys.readouterr().err


def test_the_built_in_manifests():
    assert list(MANIFESTS) == ["tau22-dev", "tau22-eval", "tau24-splits"]
    assert len(TAU22_DEV.files) == 18 and TAU22_DEV.known_bytes == 27_503_592_469
    first = TAU22_DEV.files[2]  # as listed by dcase_util's TAUUrbanAcousticScenes_2022_Mobile_DevelopmentSet
    assert first.name == "TAU-urban-acoustic-scenes-2022-mobile-development.audio.1.zip"
    assert first.url == "https://zenodo.org/record/6337421/files/" + first.name
    assert (first.size, first.md5) == (1_736_050_960, "8be14bdbd844481dce059ab31fbd2239")
    assert len(MANIFESTS["tau22-eval"].files) == 10
    assert all(f.md5 and f.size for k in ("tau22-dev", "tau22-eval") for f in MANIFESTS[k].files)
    assert TAU24_SPLITS.folder == TAU22_DEV.folder  # the splits land in the development folder's splits/
    assert [f.dest for f in TAU24_SPLITS.files][:2] == ["splits/split5.csv", "splits/split10.csv"]
    with pytest.raises(ValueError, match="md5 'xyz' is not 32 lowercase hex digits"):
        RemoteFile("a.zip", "http://x/a.zip", 1, "xyz")
    with pytest.raises(ValueError, match=r"dest '\.\./x' must stay inside"):
        RemoteFile("a.csv", "http://x/a.csv", kind="tsv", dest="../x")


def test_a_busy_server_is_retried_and_a_resumed_unpack_needs_no_room_for_what_is_unpacked(
    server, tmp_path, monkeypatch
):
    m = _record(server, tmp_path)
    server.errors["/record/fake.meta.zip"] = [503, 503]
    out = _get(m, tmp_path / "data", retries=2)
    assert [p for p, _ in server.log].count("/record/fake.meta.zip") == 3 and "fake.meta.zip" in out.fetched
    # an unpack interrupted after the meta archive: the rerun's space check leaves that archive out
    root = tmp_path / "data" / FOLDER
    (root / "_DOWNLOADED_fake.json").unlink()
    key = dl.manifest_digest(m)
    (root / "_INCOMPLETE_fake.json").write_text(json.dumps({"manifest_digest": key, "unpacked": ["fake.meta.zip"]}))
    seen = {}
    real = dl.check_space

    def spy(manifest, to, downloads, *, unpacked=()):
        seen["unpacked"] = unpacked
        return real(manifest, to, downloads, unpacked=unpacked)

    monkeypatch.setattr(dl, "check_space", spy)
    again = _get(m, tmp_path / "data")
    assert seen["unpacked"] == ("fake.meta.zip",) and again.unpacked == ["fake.audio.1.zip", "split5.csv"]
