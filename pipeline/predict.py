"""Command line: classify your own recordings with a trained model.

``python -m pipeline.predict PATH... [--model WORKDIR|PACKAGE_DIR|MODEL.keras|models:/NAME/VERSION]
[--engine int8|float] [--window-seconds S] [--hop-seconds S] [--output predictions.csv]
[--windows-output windows.csv]``

Inputs: files, folders (recursive; every regular file in a folder is an input, so a stray file that
is not audio is reported, not skipped) and globs. WAV (PCM 16/24/32-bit, float 32/64-bit, any rate
and channel count) is read by the package's own reader (:mod:`pipeline.asc_infer.wavfile`); FLAC and
OGG/Vorbis by ``soundfile`` (libsndfile) when it is installed. Every recording is streamed: mono
downmix, resampling to the model's rate, windows of ``--window-seconds`` every ``--hop-seconds``,
the last padded. Only one window's input range is read at a time, and the float engine scores at
most :data:`BATCH` windows at once, so memory does not grow with the recording's length.

Engines. ``int8`` (default): the deployable package's runtime (:mod:`pipeline.asc_infer`: float
front end + int8 TFLite classifier), the same code path as the installed package. ``float``: the
Keras model of the train stage on the same windows. A recording's probabilities are the mean of
its windows' softmax probabilities.

Outputs (written atomically): one row per file ``file, scene, <one column per class>, windows,
seconds``; with ``--windows-output`` one row per window ``file, window, start_s, end_s, scene,
<probabilities>``. Files that cannot be read are listed with the reason at the end (stderr); the
exit status is 1 if any failed, 2 for a usage error (bad ``--model``, a non-positive window or hop,
no inputs found) and 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import itertools
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline import asc_infer
from pipeline.core import files

logger = logging.getLogger("pipeline.predict")

BATCH = 64  # windows per float-engine batch
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
SOUNDFILE_SUFFIXES = (".flac", ".ogg", ".oga")


class UsageError(ValueError):
    """A bad command line (model, window, inputs): exit status 2."""


# --------------------------------------------------------------------------- inputs


def expand_inputs(paths: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named by ``paths`` (files, folders walked recursively, globs), in order, without repeats.

    Returns:
      ``(files, problems)``: the regular files found, and ``(path, reason)`` for paths that name
      nothing or folders that cannot be listed.
    """
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
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
            if path.is_dir():
                def onerror(exc, _path=path):
                    problems.append((exc.filename or str(_path), f"cannot list the folder: {exc.strerror or exc}"))

                for folder, dirs, names in os.walk(path, onerror=onerror):
                    dirs.sort()
                    found.extend(Path(folder) / n for n in sorted(names))
            else:
                found.append(path)
    seen: set[str] = set()
    unique = []
    for path in found:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, problems


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
    if path.is_dir():
        raise asc_infer.InputError(name, "is a folder")
    try:
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


# --------------------------------------------------------------------------- engines


class Int8Engine:
    """The deployable package's runtime: float front end + int8 TFLite classifier, one window at a time."""

    name = "int8"

    def __init__(self, model_dir: Path):
        self.model = asc_infer.load_model(model_dir)
        self.labels = self.model.labels
        self.sample_rate = self.model.sample_rate
        self.window_seconds, self.hop_seconds = self.model.window_seconds, self.model.hop_seconds

    def probabilities(self, windows: list[np.ndarray]) -> np.ndarray:
        """float64 ``[len(windows), n_classes]``."""
        return np.stack([self.model.window_probabilities(w) for w in windows])


class FloatEngine:
    """The train stage's Keras model (waveform in, logits out) on the runtime's windows, :data:`BATCH` at a time."""

    name = "float"

    def __init__(self, keras_path: Path):
        import tf_keras

        import augment  # noqa: F401 - registers the augmentation layers for loading models
        import models.asc  # noqa: F401 - registers the model's layers
        from pipeline.core import config
        from pipeline.core.labels import CLASSES

        params_file = keras_path.parent / "params.yaml"
        if not params_file.is_file():
            raise UsageError(f"{params_file} is missing: the float engine reads the model's audio settings from "
                             "the params.yaml that the train stage writes next to model.keras")
        params = config.load(params_file)
        self.model = tf_keras.models.load_model(keras_path)
        self.clip_samples = params.audio.clip_samples
        if self.model.inputs[0].shape[-1] not in (None, self.clip_samples):
            raise UsageError(f"{keras_path} takes {self.model.inputs[0].shape[-1]} samples; {params_file} says "
                             f"{self.clip_samples}")
        self.labels = list(CLASSES)
        self.sample_rate = params.audio.sample_rate_hz
        self.window_seconds = self.hop_seconds = self.clip_samples / self.sample_rate

    def probabilities(self, windows: list[np.ndarray]) -> np.ndarray:
        """float64 ``[len(windows), n_classes]``: softmax per clip piece, mean over each window's pieces."""
        pieces = [asc_infer.clip_pieces(w, self.clip_samples) for w in windows]
        logits = self.model.predict_on_batch(np.concatenate(pieces))
        probs = asc_infer.softmax(np.asarray(logits))
        bounds = np.cumsum([0] + [len(p) for p in pieces])
        return np.stack([probs[a:b].mean(axis=0) for a, b in itertools.pairwise(bounds)])


def _workdir_model(path: Path, engine: str) -> Path | None:
    if engine == "float" and (path / "train" / "model.keras").is_file():
        return path / "train" / "model.keras"
    if engine == "int8" and (path / "compress" / "package").is_dir():
        return path / "compress" / "package"
    return None


def resolve_model(spec: str, engine: str | None, tracking_uri: str, scratch: Path | None = None) -> tuple[str, Path]:
    """``(engine, path)`` for ``--model`` and ``--engine``.

    ``spec``: a workdir (``compress/package`` for int8, ``train/model.keras`` for float), a package
    folder, a model folder (holding ``model.json``), a ``.keras`` file (float) or
    ``models:/NAME/VERSION`` (int8; downloaded with :func:`pipeline.serving.package_from_registry`
    into ``scratch``, or a new temporary folder when ``None``).

    Raises:
      UsageError: the model cannot be found or does not fit the engine.
    """
    if spec.startswith(("models:/", "runs:/")):
        if engine == "float":
            raise UsageError(f"--model {spec}: a registered model is the int8 package; use --engine int8")
        from pipeline import serving

        try:
            return "int8", serving.package_from_registry(spec, tracking_uri, scratch)
        except Exception as exc:  # the registry's own errors (no such model, unreachable store)
            raise UsageError(f"--model {spec}: {exc}") from exc
    path = Path(spec)
    if path.is_file():
        if path.suffix != ".keras":
            raise UsageError(f"--model {spec}: a model file must be a .keras file (float engine)")
        if engine == "int8":
            raise UsageError(f"--model {spec} is a Keras model: use --engine float, or give the package folder")
        return "float", path
    if not path.is_dir():
        raise UsageError(f"--model {spec}: no such file or folder")
    engine = engine or "int8"
    found = _workdir_model(path, engine)
    if found is not None:
        return engine, found
    if engine == "int8" and ((path / "model.json").is_file() or (path / "asc_infer" / "model" / "model.json").is_file()):
        return engine, path
    wanted = "compress/package (run --stage compress)" if engine == "int8" else "train/model.keras"
    raise UsageError(f"--model {spec}: not a workdir holding {wanted}, nor a package folder")


def make_engine(engine: str, path: Path):
    """The engine for ``path``; a model that cannot be loaded is a :class:`UsageError` naming it (exit 2)."""
    try:
        return Int8Engine(path) if engine == "int8" else FloatEngine(path)
    except UsageError:
        raise
    except Exception as exc:  # a broken package, params.yaml or .keras file: one line, exit 2
        raise UsageError(f"--model {path}: cannot load the {engine} model: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- prediction


def predict_file(engine, path: Path, *, window_seconds: float | None, hop_seconds: float | None,
                 batch: int = BATCH) -> tuple[np.ndarray, list[tuple[float, np.ndarray]], float]:
    """One file's mean probabilities, its per-window ``(start_s, probabilities)`` and its duration.

    Raises:
      asc_infer.InputError: the file cannot be read.
    """
    rec = asc_infer.make_recording(str(path), open_source(path), engine, window_seconds=window_seconds,
                                   hop_seconds=hop_seconds)
    rows: list[tuple[float, np.ndarray]] = []
    starts, pending = [], []
    for start, window in rec.windows():
        starts.append(start)
        pending.append(window)
        if len(pending) == batch:
            rows.extend(zip(starts, engine.probabilities(pending)))
            starts, pending = [], []
    if pending:
        rows.extend(zip(starts, engine.probabilities(pending)))
    return np.mean([p for _, p in rows], axis=0), rows, rec.seconds


@contextlib.contextmanager
def _csv_out(path: Path | None) -> Iterator:
    if path is None:
        yield None
        return
    with files.atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        yield csv.writer(fh)


def run(args: argparse.Namespace) -> int:
    """Predict every input; returns the exit status."""
    for what in ("window_seconds", "hop_seconds"):
        value = getattr(args, what)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{what.replace('_', '-')} must be a positive number of seconds, got {value}")
    with tempfile.TemporaryDirectory(prefix="asc-predict-") as scratch:  # a registry download lives here
        return _run(args, *resolve_model(args.model, args.engine, args.tracking_uri, Path(scratch)))


def _run(args: argparse.Namespace, engine_name: str, model_path: Path) -> int:
    inputs, failed = expand_inputs(args.paths)
    if not inputs:
        missing = "; ".join(f"{p}: {r}" for p, r in failed)
        raise UsageError(f"no input files found{': ' + missing if missing else ''}")
    engine = make_engine(engine_name, model_path)
    for what in ("window_seconds", "hop_seconds"):
        value = getattr(args, what)
        if value is not None and round(value * engine.sample_rate) < 1:
            raise UsageError(f"--{what.replace('_', '-')} {value} is shorter than one sample at {engine.sample_rate} Hz")
    logger.info("predict: %d file(s) with the %s engine (%s)", len(inputs), engine_name, model_path)
    from tqdm import tqdm

    labels = list(engine.labels)
    done = 0
    with _csv_out(args.output) as out, _csv_out(args.windows_output) as wout:
        out.writerow(["file", "scene", *labels, "windows", "seconds"])
        if wout is not None:
            wout.writerow(["file", "window", "start_s", "end_s", "scene", *labels])
        for path in tqdm(inputs, desc="predict", unit="file", disable=None):
            try:
                probs, rows, seconds = predict_file(engine, path, window_seconds=args.window_seconds,
                                                    hop_seconds=args.hop_seconds)
            except asc_infer.InputError as exc:
                failed.append((str(path), exc.reason))
                continue
            out.writerow([str(path), labels[int(np.argmax(probs))], *map(float, probs), len(rows), seconds])
            done += 1
            if wout is not None:
                width = args.window_seconds or engine.window_seconds
                for i, (start, p) in enumerate(rows):
                    wout.writerow([str(path), i, start, min(start + width, seconds), labels[int(np.argmax(p))],
                                   *map(float, p)])
    logger.info("predict: wrote %d row(s) to %s%s", done, args.output,
                f" and windows to {args.windows_output}" if args.windows_output else "")
    if failed:
        sys.stderr.write(f"{len(failed)} input(s) failed:\n" + "".join(f"  {p}: {r}\n" for p, r in failed))
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Classify recordings with a trained model: one CSV row per file (and optionally per window). "
                    "Reads WAV (PCM 16/24/32-bit, float 32/64-bit; any rate and channel count) with the package's "
                    "own reader, and FLAC and OGG/Vorbis through soundfile (libsndfile) when it is installed. "
                    "Recordings are downmixed to mono, resampled to the model's rate and streamed in windows.",
        epilog="Example: python -m pipeline.predict recordings/ --model work --output predictions.csv")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="files, folders (recursive: every file in them is an input) or glob patterns")
    parser.add_argument("--model", default="work", metavar="WORKDIR|PACKAGE_DIR|MODEL.keras|models:/NAME/VERSION",
                        help="a workdir (int8: compress/package, float: train/model.keras), a package folder, a "
                             ".keras file or a registered model URI (default: work)")
    parser.add_argument("--engine", choices=("int8", "float"), default=None,
                        help="int8: the shipped TFLite package (default); float: the Keras model of train "
                             "(default for a .keras --model)")
    parser.add_argument("--window-seconds", type=float, default=None, metavar="S",
                        help="window length (default: the model's clip length)")
    parser.add_argument("--hop-seconds", type=float, default=None, metavar="S",
                        help="hop between window starts (default: the window length)")
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"), metavar="CSV",
                        help="per-file CSV (default: predictions.csv)")
    parser.add_argument("--windows-output", type=Path, default=None, metavar="CSV", help="per-window CSV")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                        help=f"MLflow store for models:/ URIs (default: {DEFAULT_TRACKING_URI})")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
