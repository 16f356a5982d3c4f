"""Inference: latency per 1-second clip, clips/s and peak memory of float Keras, int8 TFLite and TTA (N = 30).

Usage::

    python benchmarks/bench_inference.py [--quick] [--model PATH.keras] [--config default] [--set KEY=VALUE ...]
                                         [--batch 32] [--latency-calls 50] [--repeats 5] [--rounds 2]
                                         [--copies 30] [--mlflow]

The network is the configured one (``configs/default.yaml``: the report's network at 128 mel
bins), built by ``models.asc.build_model`` with its initial weights, or a trained ``.keras`` model
(``--model work/train/model.keras``; speed does not depend on the weights). A preparation child
saves it, converts its classifier (``asc.export_classifier``) to an int8 TFLite model with
``evaluate.compress.to_tflite`` (batch 1, calibrated on the log-mels of a small synthetic set)
and its front end to a float TFLite model (``evaluate.compress.frontend_tflite``). Then each
case runs in its own fresh child process, so that its peak resident memory is its own:

* ``keras_float``: the float Keras model, waveform in (LogMel front end + classifier), softmax
  out, in a ``tf.function``; TensorFlow's default thread pools (all cores).
* ``keras_float_1thread``: the same on one thread (intra-op and inter-op), to compare with TFLite.
* ``tflite_int8``: the int8 classifier through ``evaluate.compress.TFLiteClassifier`` with
  ``num_threads=1`` (log-mel in; what DCASE counts), with the float TFLite front end on one
  thread before it; end to end = front end + classifier, one clip at a time.
* ``tta``: test-time augmentation as the evaluate stage runs it (``asc.tta_predictor(model,
  params).probabilities`` after the float front end, in one ``tf.function``; ``--copies``
  copies in chunks of ``augment.tta.chunk_copies``); default threads.

Latency: median of ``--latency-calls`` calls on one clip (batch 1, after warm-up). Throughput:
median of ``--repeats`` calls on a batch of ``--batch`` clips (Keras and TTA; TFLite runs one clip
per invoke, so its clips/s is 1 / latency). ``--rounds`` runs every case's child that many times
in turn; figures are medians over all rounds. Peak memory: ``peak_rss_mb`` is the child's whole
peak resident set (Python, TensorFlow, model, run); ``memory_phases`` splits it into imports,
model setup and the measured runs (``latency``: batch 1; ``batch``: batch ``--batch``; ``run``
for TFLite) with ``_common.memory_mark``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import _common

CASES = ("keras_float", "keras_float_1thread", "tflite_int8", "tta")


def _tf(one_thread: bool = False):
    import tensorflow as tf

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)

    if one_thread:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def _load_model(path: str):
    import tf_keras

    import augment  # noqa: F401 - registers the custom layers
    from models import asc  # noqa: F401

    return tf_keras.models.load_model(path)


def prepare_case(
    workdir: str, model_path: str | None, config_name: str, overrides: list[str], data_root: str, calibration_clips: int
) -> dict:
    """Child: the model file, the int8 classifier and float front end TFLite files, and the test clips."""
    import numpy as np

    _tf()
    from evaluate import compress
    from models import asc
    from pipeline.core import config
    from pipeline.data import inputs
    from pipeline.data import tau as data

    params = config.load(config_name, overrides)
    model = _load_model(model_path) if model_path else asc.build_model(params)
    work = Path(workdir)
    model.save(work / "model.keras")
    index = data.read_index(data_root).drop_duplicates("filename").reset_index(drop=True)
    ds = inputs.eval_dataset(index, data_root, params.audio, params.data, 64)
    waves = np.concatenate([w.numpy() for w, _ in ds])
    np.save(work / "waves.npy", waves)
    frontend = asc.frontend_model(model)
    logmels = frontend(waves[:calibration_clips], training=False).numpy()
    classifier = asc.export_classifier(model, params)
    (work / "classifier_int8.tflite").write_bytes(compress.to_tflite(classifier, logmels))
    (work / "frontend_float.tflite").write_bytes(compress.frontend_tflite(frontend))
    return {
        "params": int(asc.get_classifier(model).count_params()),
        "model": params.model.name,
        "n_mels": params.audio.n_mels,
        "clips": len(waves),
        "logmel_shape": list(logmels.shape[1:]),
        "int8_bytes": (work / "classifier_int8.tflite").stat().st_size,
    }


def _time_step(tf, step, waves, batch: int, calls: int, repeats: int):
    """Latency of one clip and time of one batch of ``step``, with memory marks between phases."""
    import numpy as np  # imported in the measured child process, like everything else here

    one, many = tf.constant(waves[:1]), tf.constant(np.resize(waves, (batch, waves.shape[1])))
    _common.memory_mark("setup")
    latency = _latency(lambda: step(one).numpy(), calls)
    _common.memory_mark("latency")
    throughput = _latency(lambda: step(many).numpy(), repeats, warmup=1)
    _common.memory_mark("batch")
    return latency, throughput


def _latency(fn, calls: int, warmup: int = 3) -> list[float]:
    import time

    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def keras_case(workdir: str, batch: int, calls: int, repeats: int, one_thread: bool) -> dict:
    """Child: float Keras model, waveform -> softmax, batch 1 latency and batch throughput."""
    import numpy as np

    tf = _tf(one_thread)
    _common.memory_mark("imports")
    model = _load_model(os.fspath(Path(workdir) / "model.keras"))
    waves = np.load(Path(workdir) / "waves.npy")
    step = tf.function(lambda w: tf.nn.softmax(model(w, training=False)), reduce_retracing=True)
    latency, throughput = _time_step(tf, step, waves, batch, calls, repeats)
    return {
        "latency_s": latency,
        "batch_s": throughput,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }


def tflite_case(workdir: str, calls: int) -> dict:
    """Child: float TFLite front end + int8 TFLite classifier, one thread each, one clip per invoke."""
    import numpy as np

    tf = _tf(True)
    from evaluate import compress

    _common.memory_mark("imports")
    work = Path(workdir)
    classifier = compress.TFLiteClassifier((work / "classifier_int8.tflite").read_bytes(), num_threads=1)
    front = tf.lite.Interpreter(model_content=(work / "frontend_float.tflite").read_bytes(), num_threads=1)
    front.allocate_tensors()
    f_in, f_out = front.get_input_details()[0]["index"], front.get_output_details()[0]["index"]
    waves = np.load(work / "waves.npy")
    clip = waves[:1].astype(np.float32)

    def frontend():
        front.set_tensor(f_in, clip)
        front.invoke()
        return front.get_tensor(f_out)

    logmel = frontend()
    _common.memory_mark("setup")
    t_front = _latency(frontend, calls)
    t_class = _latency(lambda: classifier.probabilities(logmel), calls)
    t_both = _latency(lambda: classifier.probabilities(frontend()), calls)
    _common.memory_mark("run")
    return {
        "frontend_s": t_front,
        "classifier_s": t_class,
        "latency_s": t_both,
        "input_type": str(classifier.input["dtype"].__name__),
    }


def tta_case(
    workdir: str, config_name: str, overrides: list[str], batch: int, calls: int, repeats: int, copies: int
) -> dict:
    """Child: TTA with ``copies`` copies after the float front end, as the evaluate stage runs it."""
    import numpy as np

    tf = _tf()
    from models import asc
    from pipeline.core import config

    _common.memory_mark("imports")
    chunk = min(config.load(config_name, overrides).augment.tta.chunk_copies, copies)  # must not exceed n_copies
    params = config.load(
        config_name, overrides + [f"augment.tta.n_copies={copies}", f"augment.tta.chunk_copies={chunk}"]
    )
    model = _load_model(os.fspath(Path(workdir) / "model.keras"))
    waves = np.load(Path(workdir) / "waves.npy")
    frontend = asc.frontend_model(model)
    predictor = asc.tta_predictor(model, params)
    step = tf.function(lambda w: predictor.probabilities(frontend(w, training=False)), reduce_retracing=True)
    latency, throughput = _time_step(tf, step, waves, batch, calls, repeats)
    return {
        "latency_s": latency,
        "batch_s": throughput,
        "n_copies": predictor.n_copies,
        "chunk_copies": predictor.chunk_copies,
    }


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--model", default=None, help="a trained .keras model (default: the configured model, untrained)")
    p.add_argument("--config", default="default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--batch", type=int, default=32, help="clips per call for throughput (evaluate.batch_size)")
    p.add_argument("--latency-calls", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5, help="batch calls for throughput")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--copies", type=int, default=30, help="TTA copies")
    p.add_argument("--clips", type=int, default=64, help="synthetic clips for calibration and inputs")
    p.add_argument("--cases", default=",".join(CASES))
    args = p.parse_args()
    _common.setup_logging()
    if args.quick:
        args.latency_calls, args.repeats, args.rounds = 15, 2, 1
    cases = [c for c in args.cases.split(",") if c]
    if any(c not in CASES for c in cases):
        p.error(f"--cases: choose from {CASES}")
    load_before = _common.load_average()

    from pipeline.data import synthetic

    runs: dict[str, list] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        data_root = Path(tmp) / "data"
        synthetic.generate(data_root, n_clips=max(30, args.clips), seed=0, workers=1, progress=False)
        prep = _common.run_child(
            prepare_case, tmp, args.model, args.config, list(args.set), os.fspath(data_root), min(args.clips, 64)
        )["result"]
        for r in range(args.rounds):
            for case in cases:
                _common.logger.info("round %d/%d: %s", r + 1, args.rounds, case)
                if case.startswith("keras_float"):
                    out = _common.run_child(
                        keras_case, tmp, args.batch, args.latency_calls, args.repeats, case.endswith("1thread")
                    )
                elif case == "tflite_int8":
                    out = _common.run_child(tflite_case, tmp, args.latency_calls)
                else:
                    out = _common.run_child(
                        tta_case,
                        tmp,
                        args.config,
                        list(args.set),
                        args.batch,
                        max(5, args.latency_calls // 5),
                        max(2, args.repeats // 2),
                        args.copies,
                    )
                runs[case].append(out)

    def ms(values):
        return round(1000 * _common.median(values), 3)

    figures: dict = {}
    for case, outs in runs.items():
        res = [o["result"] for o in outs]
        lat = [t for r in res for t in r["latency_s"]]
        block = {
            "latency_ms": ms(lat),
            "latency_ms_min": round(1000 * min(lat), 3),
            "latency_clips_per_s": _common.rate(1, _common.median(lat)),
        }
        if "batch_s" in res[0]:
            bs = [t for r in res for t in r["batch_s"]]
            block["batch"] = args.batch
            block["batch_ms"] = ms(bs)
            block["clips_per_s"] = _common.rate(args.batch, _common.median(bs))
        else:
            block["clips_per_s"] = block["latency_clips_per_s"]
        if case == "tflite_int8":
            block["frontend_ms"] = ms([t for r in res for t in r["frontend_s"]])
            block["classifier_ms"] = ms([t for r in res for t in r["classifier_s"]])
            block["classifier_clips_per_s"] = _common.rate(1000, block["classifier_ms"])
            block["threads"] = 1
        if case == "tta":
            block["n_copies"], block["chunk_copies"] = res[0]["n_copies"], res[0]["chunk_copies"]
        if case.startswith("keras_float"):
            block["intra_op_threads"] = res[0]["intra_op_threads"]
        block["peak_rss_mb"] = max(o["memory"]["peak_rss_mb"] for o in outs)
        block["memory_phases"] = outs[-1]["memory"]["phases"]
        figures[case] = block
    if "tta" in figures and "keras_float" in figures:
        tta, plain = figures["tta"], figures["keras_float"]
        figures["tta_vs_float_latency"] = _common.ratio(tta["latency_ms"], plain["latency_ms"], 2)
        figures["tta_vs_float_batch_time"] = _common.ratio(tta["batch_ms"], plain["batch_ms"], 2)
    if "tflite_int8" in figures and "keras_float_1thread" in figures:
        figures["tflite_int8_vs_keras_1thread_latency"] = _common.ratio(
            figures["tflite_int8"]["latency_ms"], figures["keras_float_1thread"]["latency_ms"], 3
        )
    settings = {
        "config": args.config,
        "overrides": args.set,
        "model_file": args.model or "untrained (build_model)",
        "model": prep["model"],
        "classifier_params": prep["params"],
        "n_mels": prep["n_mels"],
        "logmel_shape": prep["logmel_shape"],
        "int8_tflite_file_bytes": prep["int8_bytes"],
        "batch": args.batch,
        "latency_calls": args.latency_calls,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "tta_copies": args.copies,
        "quick": args.quick,
    }
    _common.emit("inference", {"settings": settings, **figures}, args, load_before=load_before)


if __name__ == "__main__":
    main()
