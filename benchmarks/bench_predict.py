"""Prediction on long recordings: real-time factor and peak memory of the int8 and float engines.

Usage::

    python benchmarks/bench_predict.py [--quick] [--model WORKDIR] [--seconds 600] [--rounds 1] [--mlflow]

What runs: ``pipeline.inference.predict.predict_file`` (the CLI's per-file path: streamed WAV reading, mono
downmix, resampling to the model's rate, 1-s windows, engine) on two long recordings written once
into a temporary folder: ``stereo48k`` (``--seconds`` of 48 kHz stereo 16-bit noise + tone: the
resampling path) and ``mono44k`` (the same length at 44.1 kHz mono: no resampling). Engines:
``int8`` (the package runtime: float TFLite front end + int8 TFLite classifier, one window per
invoke) and ``float`` (the train stage's Keras model, 64 windows per batch). The model: the
workdir's ``compress/package`` and ``train/model.keras`` (``--model``, default ``work``) when both
exist, else an untrained network of ``configs/default.yaml`` packaged the same way in a preparation
child (speed and memory do not depend on the weights).

Each (engine, recording) case runs in a fresh child process (``_common.run_child``). Figures:
``realtime_factor`` = seconds of audio per wall-clock second of ``predict_file`` (higher is
faster), ``seconds`` its wall time, ``windows``; memory: ``peak_rss_mb`` (the whole child),
``setup_peak_mb`` (imports + model load) and ``run_peak_mb`` (the prediction alone; with bounded
streaming it stays near the setup figure however long the file is). ``--rounds`` repeats every
case; figures are medians. Machines are shared: compare engines within one run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import _common

CASES = (("int8", "stereo48k"), ("int8", "mono44k"), ("float", "stereo48k"), ("float", "mono44k"))
FILES = {"stereo48k": (48000, 2), "mono44k": (44100, 1)}


def write_recording(path: str, seconds: float, rate: int, channels: int) -> None:
    """``seconds`` of noise + a 440 Hz tone, written in 10-s blocks (never all in memory)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    total, block = int(seconds * rate), 10 * rate
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16") as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / rate
            x = 0.1 * rng.standard_normal((n, channels)) + 0.2 * np.sin(2 * np.pi * 440 * t)[:, None]
            f.write(x.astype(np.float32))


def prepare_case(out: str, config_name: str) -> dict:
    """An untrained network of ``config_name``: ``train/model.keras`` + params.yaml and ``compress/package``."""
    import numpy as np

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)
    from evaluate import compress as cz
    from evaluate.complexity import tflite_complexity
    from evaluate.complexity.rules import MAX_BYTES, MAX_MACS
    from models import asc
    from pipeline.core import config, files
    from pipeline.inference import package

    params = config.load(config_name)
    model = asc.build_model(params)
    root = Path(out)
    (root / "train").mkdir(parents=True, exist_ok=True)
    model.save(root / "train" / "model.keras")
    files.write_text(root / "train" / "params.yaml", params.to_yaml())
    frontend = asc.frontend_model(model)
    rng = np.random.default_rng(0)
    rep = frontend(0.1 * rng.standard_normal((8, params.audio.clip_samples)).astype("float32"), training=False)
    int8 = cz.to_tflite(asc.export_classifier(model, params), rep.numpy())
    cz.write_bytes(root / "model_int8.tflite", int8)
    cost = tflite_complexity(root / "model_int8.tflite")
    cx = {k: cost[k] for k in ("params", "size_bytes", "macs")}
    cx["limits"] = {"max_bytes": MAX_BYTES, "max_macs": MAX_MACS}
    package.build_package(
        root / "compress",
        frontend_tflite=cz.frontend_tflite(frontend),
        classifier_tflite=int8,
        params=params,
        metrics={},
        complexity=cx,
    )
    return {"config": config_name, "macs": cx["macs"], "size_bytes": cx["size_bytes"]}


def predict_case(engine: str, model_path: str, wav: str) -> dict:
    """One engine on one long file: wall time of ``predict_file`` and its memory phases."""
    import time

    import pipeline.core.env  # noqa: F401
    from pipeline.inference import predict

    _common.memory_mark("imports")
    eng = predict.Int8Engine(Path(model_path)) if engine == "int8" else predict.FloatEngine(Path(model_path))
    _common.memory_mark("setup")
    start = time.perf_counter()
    got = predict.predict_file(eng, Path(wav), window_seconds=None, hop_seconds=None)
    wall = time.perf_counter() - start
    _common.memory_mark("run")
    return {"seconds": wall, "audio_seconds": got.seconds, "windows": len(got.windows)}


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--model", default="work", help="workdir with compress/package and train/model.keras")
    p.add_argument("--config", default="default", help="config of the untrained fallback network")
    p.add_argument("--seconds", type=float, default=600.0, help="length of each recording (default 600)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    _common.setup_logging(args.verbose)
    if args.quick:
        args.seconds, args.rounds = 20.0, 1
    load_before = _common.load_average()
    with tempfile.TemporaryDirectory(prefix="bench_predict.") as tmp:
        workdir = Path(args.model)
        model_source = str(workdir)
        if not ((workdir / "compress" / "package").is_dir() and (workdir / "train" / "model.keras").is_file()):
            _common.logger.info("no trained model in %s: packaging an untrained %s network", workdir, args.config)
            _common.run_child(prepare_case, tmp, args.config)
            workdir, model_source = Path(tmp), f"untrained {args.config}"
        paths = {}
        for name, (rate, channels) in FILES.items():
            paths[name] = os.path.join(tmp, f"{name}.wav")
            _common.run_child(write_recording, paths[name], args.seconds, rate, channels)
        runs: dict[str, list[dict]] = {}
        for r in range(args.rounds):
            for engine, name in CASES:
                _common.logger.info("round %d/%d: %s on %s", r + 1, args.rounds, engine, name)
                model = workdir / ("compress/package" if engine == "int8" else "train/model.keras")
                runs.setdefault(f"{engine}_{name}", []).append(
                    _common.run_child(predict_case, engine, str(model), paths[name])
                )
    figures = {}
    for case, outs in runs.items():
        wall = _common.median([o["result"]["seconds"] for o in outs])
        audio = outs[0]["result"]["audio_seconds"]
        phases = outs[-1]["memory"]["phases"]
        figures[case] = {
            "realtime_factor": _common.rate(audio, wall),
            "seconds": round(wall, 3),
            "audio_seconds": audio,
            "windows": outs[0]["result"]["windows"],
            "peak_rss_mb": _common.median([o["memory"]["peak_rss_mb"] for o in outs]),
            "setup_peak_mb": phases.get("setup", {}).get("peak_mb"),
            "run_peak_mb": phases.get("run", {}).get("peak_mb"),
            "runs": [round(o["result"]["seconds"], 3) for o in outs],
        }
    settings = {
        "model": model_source,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "quick": args.quick,
        "files": {k: {"sample_rate": v[0], "channels": v[1]} for k, v in FILES.items()},
    }
    _common.emit("predict", {"settings": settings, **figures}, args, load_before=load_before)


if __name__ == "__main__":
    main()
