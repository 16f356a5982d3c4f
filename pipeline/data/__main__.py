"""``python -m pipeline.data``: get a dataset onto disk.

    python -m pipeline.data list
    python -m pipeline.data download {tau22-dev,tau22-eval,tau24-splits} ... --to DIR
                                     [--manifest FILE.json ...] [--retries N] [--timeout S]
                                     [--delete-archives] [--no-progress] [--log-level LEVEL]

Exit status 0 when every record is in place, 1 when one cannot be (the message names the file),
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.data.download import DownloadError, download
from pipeline.data.manifests import MANIFESTS, manifest_from_json


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.data", description="Get a dataset onto disk.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the records this command knows, their files and where the lists come from")
    d = sub.add_parser("download", help="fetch, verify (size, MD5) and unpack records; resumes an earlier run")
    d.add_argument("records", nargs="*", metavar="RECORD", help=f"one or more of: {', '.join(MANIFESTS)}")
    d.add_argument("--to", required=True, help="parent folder; each record lands in its own folder under it")
    d.add_argument(
        "--manifest",
        action="append",
        default=[],
        metavar="FILE.json",
        help="a record described in JSON (e.g. a local mirror; see pipeline/data/manifests.py)",
    )
    d.add_argument("--retries", type=int, default=3, help="retries of a failed or cut connection (default 3)")
    d.add_argument("--timeout", type=float, default=60.0, help="seconds without data before an attempt fails")
    d.add_argument("--delete-archives", action="store_true", help="delete each archive once its record is unpacked")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.command == "list":
        for m in MANIFESTS.values():
            sys.stdout.write(f"{m.key}: {m.title}\n  into <--to>/{m.folder}; list from {m.source}\n")
            for f in m.files:
                size = f"{f.size:,} bytes" if f.size is not None else "size not published"
                sys.stdout.write(f"    {f.name}  {size}  md5 {f.md5 or 'not published'}\n")
        return 0
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    unknown = [r for r in args.records if r not in MANIFESTS]
    if unknown:
        p.error(f"unknown record(s) {unknown}; known: {', '.join(MANIFESTS)}")
    if not args.records and not args.manifest:
        p.error(f"name at least one record ({', '.join(MANIFESTS)}) or --manifest FILE")
    if args.retries < 0 or args.timeout <= 0:
        p.error("--retries must be >= 0 and --timeout > 0")
    try:
        manifests = [MANIFESTS[r] for r in args.records] + [manifest_from_json(f) for f in args.manifest]
    except ValueError as e:
        p.error(str(e))
    for m in manifests:
        try:
            out = download(
                m,
                args.to,
                progress=not args.no_progress,
                retries=args.retries,
                timeout=args.timeout,
                delete_archives=args.delete_archives,
            )
        except DownloadError as e:
            sys.stderr.write(f"download {m.key} failed: {e}\n")
            return 1
        sys.stdout.write(
            f"{m.key}: {'already complete' if out.already_complete else 'complete'} in {out.root} "
            f"({len(out.fetched)} file(s) fetched, {out.bytes_fetched:,} bytes)\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
