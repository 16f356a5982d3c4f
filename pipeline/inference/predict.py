"""Command line: classify your own recordings with a trained model.

``python -m pipeline.predict PATH... [--model WORKDIR|PACKAGE_DIR|MODEL.keras|models:/NAME/VERSION]
[--engine int8|float] [--window-seconds S] [--hop-seconds S] [--output predictions.csv]
[--windows-output windows.csv]``

Models: :mod:`pipeline.inference.predict_models`. Inputs (:mod:`pipeline.inference.predict_files`):
files, folders (recursive; every regular file in a folder is an input, so a stray file that is not
audio is reported, not skipped; CSV files this command wrote are skipped and counted) and globs.
Every named path is used or reported with a reason: a folder with no file, a FIFO or another
non-regular file (never opened), a dangling link. WAV (PCM 16/24/32-bit, float 32/64-bit, 1 to 384
kHz, any channel count) is read by the package's own reader
(:mod:`pipeline.inference.asc_infer.wavfile`); FLAC and OGG/Vorbis by ``soundfile`` (libsndfile)
when it is installed. Every recording is streamed: mono downmix, resampling to the model's rate,
windows of ``--window-seconds`` every ``--hop-seconds`` (both at most 600 s). No window runs past
the end: the last one is moved back to end at the recording's end, and only a recording shorter than
one clip is zero-padded (the ``padded_seconds`` column). Only one window's input range is read at a
time, and the float engine scores at most :data:`BATCH` windows at once, so memory does not grow
with the recording's length.

Engines. ``int8`` (default): the deployable package's runtime (:mod:`pipeline.inference.asc_infer`: float
front end + int8 TFLite classifier), the same code path as the installed package. ``float``: the
Keras model of the train stage on the same windows. A recording's probabilities are the weighted
mean of its windows' softmax probabilities, every sample counting once (overlapping windows share
it). With ``--model WORKDIR`` the package must come from the workdir's current ``train/`` output
(``model.json`` records it), else the command refuses and names the stage to rerun; an explicit
``--engine int8`` uses it anyway, with a warning. A ``models:/`` URI needs a store that exists
and answers (checked in seconds, nothing created).

Outputs (written atomically; refused before any work when an output is an input, a folder, a
symbolic link or another non-regular file, or both outputs are one file): one row per file
``file, scene, <one column per class>, windows, seconds, padded_seconds``; with
``--windows-output`` one row per window ``file, window, start_s, end_s, weight, scene,
<probabilities>`` (the file's row is the weighted sum of its window rows). Files that cannot be
read or scored (MemoryError included) are listed with the reason at the end (stderr); the other
files' rows are written. The exit status is 1 if any failed, 2 for a usage error (bad ``--model``,
a stale package, an unreachable store, a bad window or hop, a bad output, no inputs found) and 0
otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import itertools
import json
import logging
import math
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import files
from pipeline.inference import asc_infer
from pipeline.inference.predict_files import UsageError, check_outputs, expand_inputs, open_source, read_file_list
from pipeline.inference.predict_models import package_info, resolve_model

logger = logging.getLogger("pipeline.predict")

BATCH = 64  # windows per float-engine batch
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


# --------------------------------------------------------------------------- engines


class Int8Engine:
    """The deployable package's runtime: float front end + int8 TFLite classifier, one clip at a time."""

    name = "int8"

    def __init__(self, model_dir: Path):
        self.model = asc_infer.load_model(model_dir)
        self.labels = self.model.labels
        self.sample_rate = self.model.sample_rate
        self.window_samples = self.model.window_samples
        self.window_seconds, self.hop_seconds = self.model.window_seconds, self.model.hop_seconds

    def probabilities(self, windows: list[np.ndarray]) -> np.ndarray:
        """float64 ``[len(windows), n_classes]``."""
        return np.stack([self.model.window_probabilities(w) for w in windows])

    def for_device(self, device: str | None):
        """This engine with ``device``'s own classifier (DCASE2025 packages), or itself (the general model)."""
        chosen = self.model.for_device(device)
        if chosen is self.model:
            return self
        view = copy.copy(self)
        view.model = chosen
        return view


def _audio_settings(params_file: Path):
    """The ``audio`` section of a train folder's ``params.yaml`` (the train stage's settings), validated.

    Only the audio settings matter to the float engine; the rest of the tree takes its defaults, so a
    file holding only the settings the train stage depends on loads whatever the run's other settings were.
    """
    import yaml

    from pipeline.core import config

    try:
        tree = yaml.safe_load(params_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{params_file}: cannot be read as YAML ({exc})") from None
    audio = tree.get("audio") if isinstance(tree, dict) else None
    if not isinstance(audio, dict):
        raise UsageError(f"{params_file} has no audio section: the float engine reads the model's audio settings there")
    try:
        return config.load(None, [f"audio.{key}={json.dumps(value)}" for key, value in audio.items()]).audio
    except config.ConfigError as exc:
        raise UsageError(f"{params_file}: {exc}") from None


class FloatEngine:
    """The train stage's Keras model (waveform in, logits out) on the runtime's windows, :data:`BATCH` at a time."""

    name = "float"

    def __init__(self, keras_path: Path):
        import tf_keras

        import augment  # noqa: F401 - registers the augmentation layers for loading models
        import models.asc  # noqa: F401 - registers the model's layers
        from pipeline.core.labels import CLASSES

        params_file = keras_path.parent / "params.yaml"
        if not params_file.is_file():
            raise UsageError(
                f"{params_file} is missing: the float engine reads the model's audio settings from "
                "the params.yaml that the train stage writes next to model.keras"
            )
        audio = _audio_settings(params_file)
        self.model = tf_keras.models.load_model(keras_path)
        self.clip_samples = self.window_samples = audio.clip_samples
        if self.model.inputs[0].shape[-1] not in (None, self.clip_samples):
            raise UsageError(
                f"{keras_path} takes {self.model.inputs[0].shape[-1]} samples; {params_file} says {self.clip_samples}"
            )
        self.labels = list(CLASSES)
        self.sample_rate = audio.sample_rate_hz
        self.window_seconds = self.hop_seconds = self.clip_samples / self.sample_rate

    def for_device(self, device: str | None):
        """The float engine has no device models: always the general model."""
        return self

    def probabilities(self, windows: list[np.ndarray]) -> np.ndarray:
        """float64 ``[len(windows), n_classes]``: softmax per clip piece, weighted mean over each window's pieces."""
        cut = [asc_infer.clip_pieces(w, self.clip_samples) for w in windows]
        logits = self.model.predict_on_batch(np.concatenate([pieces for pieces, _ in cut]))
        probs = asc_infer.softmax(np.asarray(logits))
        bounds = np.cumsum([0] + [len(pieces) for pieces, _ in cut])
        spans = itertools.pairwise(bounds)
        return np.stack([weights @ probs[a:b] for (_, weights), (a, b) in zip(cut, spans, strict=True)])


def make_engine(engine: str, path: Path):
    """The engine for ``path``; a model that cannot be loaded is a :class:`UsageError` naming it (exit 2)."""
    try:
        return Int8Engine(path) if engine == "int8" else FloatEngine(path)
    except UsageError:
        raise
    except Exception as exc:  # a broken package, params.yaml or .keras file: one line, exit 2
        raise UsageError(f"--model {path}: cannot load the {engine} model: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- prediction


@dataclass
class FileResult:
    """One recording's prediction.

    Attributes:
      probabilities: float64 ``[n_classes]``, the weighted mean of the windows' (every sample counts once).
      windows: ``(start_s, end_s, weight, probabilities)`` per window.
      seconds: the recording's duration.
      padded_seconds: zero padding added (only a recording shorter than one clip is padded).
    """

    probabilities: np.ndarray
    windows: list[tuple[float, float, float, np.ndarray]]
    seconds: float
    padded_seconds: float


def predict_file(
    engine, path: Path, *, window_seconds: float | None, hop_seconds: float | None, batch: int = BATCH
) -> FileResult:
    """One file's prediction (see :class:`FileResult`).

    Raises:
      asc_infer.InputError: the file cannot be read.
    """
    rec = asc_infer.make_recording(
        str(path), open_source(path), engine, window_seconds=window_seconds, hop_seconds=hop_seconds
    )
    probs: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    for _, window in rec.windows():
        pending.append(window)
        if len(pending) == batch:
            probs.extend(engine.probabilities(pending))
            pending = []
    if pending:
        probs.extend(engine.probabilities(pending))
    weights = rec.weights()
    rows = [(*rec.bounds(i), float(weights[i]), p) for i, p in enumerate(probs)]
    return FileResult(weights @ np.stack(probs), rows, rec.seconds, rec.padding_seconds)


@contextlib.contextmanager
def _csv_out(path: Path | None) -> Iterator:
    if path is None:
        yield None
        return
    with files.atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        yield csv.writer(fh)


def check_seconds(args: argparse.Namespace) -> None:
    """``--window-seconds`` and ``--hop-seconds``: finite, positive, at most ``asc_infer.MAX_WINDOW_SECONDS``; the hop
    at least ``MIN_HOP_SECONDS`` (the window is checked against the model's clip once the model is loaded)."""
    for what in ("window_seconds", "hop_seconds"):
        value = getattr(args, what)
        option = f"--{what.replace('_', '-')}"
        if value is None:
            continue
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{option} must be a positive number of seconds, got {value}")
        if what == "hop_seconds" and value < asc_infer.recording.MIN_HOP_SECONDS:
            raise UsageError(
                f"{option} {value:g} is shorter than {asc_infer.recording.MIN_HOP_SECONDS:g} seconds (the "
                "shortest hop: it bounds the number of windows)"
            )
        if value > asc_infer.MAX_WINDOW_SECONDS:
            raise UsageError(
                f"{option} {value:g} is longer than {asc_infer.MAX_WINDOW_SECONDS:g} seconds (the "
                "longest window or hop: a window is held in memory whole)"
            )


def run(args: argparse.Namespace) -> int:
    """Predict every input; returns the exit status."""
    check_seconds(args)
    check_outputs({"--output": args.output, "--windows-output": args.windows_output}, [])
    with tempfile.TemporaryDirectory(prefix="asc-predict-") as scratch:  # a registry download lives here
        return _run(args, *resolve_model(args.model, args.engine, args.tracking_uri, Path(scratch)))


def _run(args: argparse.Namespace, engine_name: str, model_path: Path) -> int:
    inputs, failed, skipped = expand_inputs(args.paths)
    listed: dict[Path, str | None] = {}
    if args.list is not None:
        extra, listed, problems = read_file_list(args.list)
        inputs += [p for p in extra if p not in inputs]
        failed += problems
    check_outputs({"--output": args.output, "--windows-output": args.windows_output}, inputs)
    if skipped:
        logger.info("predict: skipped %d CSV file(s) in the input folders that this command wrote earlier", skipped)
    if not inputs:
        missing = "; ".join(f"{p}: {r}" for p, r in failed)
        raise UsageError(f"no input files found{': ' + missing if missing else ''}")
    engine = make_engine(engine_name, model_path)
    clip_seconds = engine.window_samples / engine.sample_rate
    if args.window_seconds is not None and round(args.window_seconds * engine.sample_rate) < engine.window_samples:
        raise UsageError(
            f"--window-seconds {args.window_seconds:g} is shorter than the model's clip "
            f"({clip_seconds:g} s): every window would be zero-padded"
        )
    info = package_info(model_path) if engine_name == "int8" else {}
    logger.info(
        "predict: %d file(s) with the %s engine (%s%s)",
        len(inputs),
        engine_name,
        model_path,
        f", from training run {info['train_run_id']}" if info.get("train_run_id") else "",
    )
    from tqdm import tqdm

    labels = list(engine.labels)
    done = 0
    told: set[str] = set()

    def engine_for(path: Path):
        """The engine of ``path``'s device: ``--list`` column, else ``--device``, else the TAU name suffix."""
        device = listed.get(path) or args.device or asc_infer.device_from_filename(path.name)
        device = device.strip().lower() if device else None
        chosen = engine.for_device(device) if device else engine
        if device and device not in told:
            told.add(device)
            own = chosen is not engine
            logger.info(
                "predict: device %s: %s", device, "its own model" if own else "no model of its own: the general model"
            )
        return chosen, (f"device {device}" if chosen is not engine else "general")

    with _csv_out(args.output) as out, _csv_out(args.windows_output) as wout:
        out.writerow(["file", "scene", *labels, "windows", "seconds", "padded_seconds", "model"])
        if wout is not None:
            wout.writerow(["file", "window", "start_s", "end_s", "weight", "scene", *labels])
        for path in tqdm(inputs, desc="predict", unit="file", disable=None):
            try:
                chosen, which = engine_for(path)
                got = predict_file(chosen, path, window_seconds=args.window_seconds, hop_seconds=args.hop_seconds)
            except asc_infer.InputError as exc:
                failed.append((str(path), exc.reason))
                continue
            except MemoryError:
                failed.append((str(path), "out of memory while reading or scoring it"))
                continue
            except Exception as exc:  # one file never loses the others' results; the reason is listed
                logger.debug("predict: %s failed", path, exc_info=True)
                failed.append((str(path), f"{type(exc).__name__}: {exc}"))
                continue
            out.writerow(
                [
                    str(path),
                    labels[int(np.argmax(got.probabilities))],
                    *map(float, got.probabilities),
                    len(got.windows),
                    got.seconds,
                    got.padded_seconds,
                    which,
                ]
            )
            done += 1
            if wout is not None:
                for i, (start, end, weight, p) in enumerate(got.windows):
                    wout.writerow([str(path), i, start, end, weight, labels[int(np.argmax(p))], *map(float, p)])
    logger.info(
        "predict: wrote %d row(s) to %s%s",
        done,
        args.output,
        f" and windows to {args.windows_output}" if args.windows_output else "",
    )
    if failed:
        sys.stderr.write(f"{len(failed)} input(s) failed:\n" + "".join(f"  {p}: {r}\n" for p, r in failed))
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Classify recordings with a trained model: one CSV row per file (and optionally per window). "
        "Reads WAV (PCM 16/24/32-bit, float 32/64-bit; 1 to 384 kHz, any channel count) with the "
        "package's own reader, and FLAC and OGG/Vorbis through soundfile (libsndfile) when it is "
        "installed. Recordings are downmixed to mono, resampled to the model's rate and streamed in "
        "windows; no window runs past the end of a recording.",
        epilog="Example: python -m pipeline.predict recordings/ --model work --output predictions.csv",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files, folders (recursive: every file in them is an input, except CSV files this "
        "command wrote) or glob patterns",
    )
    parser.add_argument(
        "--list",
        type=Path,
        default=None,
        metavar="CSV",
        help="a CSV (or tab-separated) list of recordings: a file or filename column, optionally a device or "
        "device_id column (DCASE2025 device IDs)",
    )
    parser.add_argument(
        "--device",
        default=None,
        metavar="ID",
        help="the recording device of every input (a, b, c, s1, ...): a package with device-specific models "
        "uses that device's model; default: the --list column, else the TAU file-name suffix (-a.wav), "
        "else the general model",
    )
    parser.add_argument(
        "--model",
        default="work",
        metavar="WORKDIR|PACKAGE_DIR|MODEL.keras|models:/NAME/VERSION",
        help="a workdir (int8: compress/package, refused when made from another training run than "
        "train/; float: train/model.keras), a package folder, a .keras file or a registered "
        "model URI (default: work)",
    )
    parser.add_argument(
        "--engine",
        choices=("int8", "float"),
        default=None,
        help="int8: the shipped TFLite package (default; given explicitly, a workdir's package is "
        "used even when train/ has changed since); float: the Keras model of train "
        "(default for a .keras --model)",
    )
    parser.add_argument(
        "--window-seconds",
        type=float,
        default=None,
        metavar="S",
        help=f"window length (default: the model's clip length; at least that, at most "
        f"{asc_infer.MAX_WINDOW_SECONDS:g})",
    )
    parser.add_argument(
        "--hop-seconds",
        type=float,
        default=None,
        metavar="S",
        help=f"hop between window starts (default: the window length; "
        f"{asc_infer.recording.MIN_HOP_SECONDS:g} to {asc_infer.MAX_WINDOW_SECONDS:g})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("predictions.csv"),
        metavar="CSV",
        help="per-file CSV (default: predictions.csv); never an input, a folder or a non-regular file",
    )
    parser.add_argument("--windows-output", type=Path, default=None, metavar="CSV", help="per-window CSV")
    parser.add_argument(
        "--tracking-uri",
        default=DEFAULT_TRACKING_URI,
        help=f"MLflow store for models:/ URIs (default: {DEFAULT_TRACKING_URI}); it must exist",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.paths and args.list is None:
        parser.error("name at least one PATH, or --list CSV")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
