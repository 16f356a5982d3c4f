"""Shared helpers of the benchmarks: machine facts, medians, measured cases in child processes, JSON, MLflow.

The machines these run on are shared and noisy, so every benchmark compares against a
reference measured in the same run (a ratio) and reports medians of several repeats, with
the load average before and after.

Peak memory. ``tracemalloc`` sees only Python allocations, not TensorFlow's, so memory is
measured as the resident set of a fresh process: :func:`run_child` runs one measured case in
a child started with ``spawn`` (a new interpreter, no TensorFlow state inherited from the
parent) and returns the child's peak resident set together with the case's own result. Inside
a case, :func:`memory_mark` splits the peak into phases (imports, setup, measured run): it reads
``VmHWM`` (the peak since the last reset) from ``/proc/self/status`` and resets it through
``/proc/self/clear_refs`` (Linux >= 4.0), so each phase's peak is its own. That reset also
lowers the high-water mark behind ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, so the
child's whole peak (``peak_rss_mb``) is the largest of the phase peaks, the final ``VmHWM``
and ``ru_maxrss``.

Usage in a benchmark script (run as ``python benchmarks/bench_x.py``, which puts this directory
on ``sys.path``; the measured functions must be module-level and the script guarded by
``if __name__ == "__main__":``, because ``spawn`` re-imports it in the child)::

    import _common
    parser = _common.parser(__doc__)
    args = parser.parse_args()
    out = _common.run_child(case_function, arg1, arg2)   # {"result": ..., "memory": {...}}
    _common.emit("input", figures, args)                 # prints JSON, logs to MLflow with --mlflow
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("benchmarks")

MB = 1024.0 * 1024.0

# --------------------------------------------------------------------------- machine facts


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """CPU count and model, memory, Python and package versions (without importing TensorFlow)."""
    try:
        mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB / 1024.0
    except (ValueError, OSError):
        mem_total = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": round(mem_total, 1) if mem_total else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow"),
        "tf_keras": _version("tf-keras"),
        "tensorflow_io": _version("tensorflow-io"),
        "librosa": _version("librosa"),
        "numpy": _version("numpy"),
    }


# --------------------------------------------------------------------------- timing


def summarize(seconds: list[float]) -> dict:
    """Median, min, max and count of a list of durations (seconds, rounded to 0.1 ms)."""
    if not seconds:
        raise ValueError("summarize: no durations")
    return {
        "median_s": round(statistics.median(seconds), 4),
        "min_s": round(min(seconds), 4),
        "max_s": round(max(seconds), 4),
        "n": len(seconds),
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds taken by one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Durations of each callable over ``repeats`` rounds, interleaved so that all see the same load.

    Each callable is called ``warmup`` times first (tracing, caches), untimed.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn))
    return times


def rate(count: float, seconds: float, digits: int = 2) -> float:
    """``count / seconds`` rounded (items per second)."""
    return round(count / seconds, digits) if seconds > 0 else math.inf


def ratio(a: float, b: float, digits: int = 3) -> float:
    return round(a / b, digits) if b else math.inf


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least-squares ``y = intercept + slope * x`` with R^2 (for scaling curves)."""
    n = len(xs)
    if n < 2:
        raise ValueError("linear_fit needs at least two points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot else 1.0
    return {"slope": slope, "intercept": intercept, "r2": round(r2, 4)}


# --------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set of this process in MiB (``VmRSS``)."""
    kb = _status_kb("VmRSS")
    return round(kb / 1024.0, 1) if kb is not None else None


def peak_rss_mb() -> float:
    """Peak resident set of this process in MiB since start (``ru_maxrss``; KiB on Linux)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024.0 if sys.platform != "darwin" else kb / MB, 1)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        return True
    except OSError:
        return False


_MARKS: dict[str, dict] = {}


def memory_mark(phase: str) -> dict:
    """Record the peak and current resident set (MiB) since the previous mark, then reset the peak.

    Call at the end of each phase of a measured case (``"imports"``, ``"setup"``, ``"run"``); the
    marks are returned by :func:`run_child` under ``memory.phases``. Without ``clear_refs`` the
    peaks are cumulative (``phase_peaks_cumulative`` is then true).
    """
    hwm = _status_kb("VmHWM")
    mark = {"peak_mb": round(hwm / 1024.0, 1) if hwm is not None else peak_rss_mb(), "end_mb": rss_mb()}
    mark["reset"] = _reset_peak()
    _MARKS[phase] = mark
    return mark


def _child_main(conn, fn, args, kwargs) -> None:
    # The parent's stdout carries only the JSON result: the child's output (Keras progress
    # lines, C++ logs) goes to stderr.
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _MARKS.clear()
    start_rss = rss_mb()
    _reset_peak()
    try:
        result = fn(*args, **kwargs)
        # clear_refs also resets the kernel's high-water mark behind ru_maxrss, so the whole
        # child's peak is the largest of the phase peaks, the last VmHWM and ru_maxrss.
        hwm = _status_kb("VmHWM")
        peaks = [m["peak_mb"] for m in _MARKS.values()] + [peak_rss_mb()]
        if hwm is not None:
            peaks.append(round(hwm / 1024.0, 1))
        memory = {
            "peak_rss_mb": max(peaks),
            "start_rss_mb": start_rss,
            "phases": {k: {"peak_mb": v["peak_mb"], "end_mb": v["end_mb"]} for k, v in _MARKS.items()},
            "phase_peaks_cumulative": not all(v["reset"] for v in _MARKS.values()),
        }
        conn.send(("ok", result, memory))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", None))
    finally:
        conn.close()


def run_child(fn: Callable, *args, **kwargs) -> dict:
    """Run ``fn(*args, **kwargs)`` in a fresh ``spawn`` process; returns ``{"result", "memory"}``.

    ``memory.peak_rss_mb`` is the child's whole peak resident set (interpreter, imports,
    TensorFlow runtime and the case); ``memory.phases`` holds the phases marked with
    :func:`memory_mark`. Raises ``RuntimeError`` with the child's traceback if it failed.
    """
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child_conn, fn, args, kwargs))
    proc.start()
    child_conn.close()
    try:
        status, payload, memory = parent_conn.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"benchmark child {getattr(fn, '__name__', fn)} died (exit code {proc.exitcode})") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark child {getattr(fn, '__name__', fn)} failed:\n{payload}")
    return {"result": payload, "memory": memory}


# --------------------------------------------------------------------------- command line and output


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark has: ``--quick``, ``--mlflow``, ``--tracking-uri``."""
    p = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc,
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a minute or two")
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="also log the figures as metrics to the project's MLflow store (experiment 'benchmarks')",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI for --mlflow (default: the project's, tracking.uri of configs/default.yaml)",
    )
    return p


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logger.setLevel(logging.INFO)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = obj
    return out


def numeric_metrics(result: dict) -> dict[str, float]:
    """Finite int/float leaves of ``result`` with dotted names (lists and booleans left out)."""
    flat = _flatten(result)
    return {
        k: float(v)
        for k, v in flat.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def log_mlflow(name: str, result: dict, tracking_uri: str | None = None) -> str:
    """Log ``result`` to MLflow: numeric leaves as metrics, the whole JSON as an artifact; returns the run id.

    The store is the project's (``pipeline.running.tracking.setup`` with the default config, or
    ``tracking_uri``), the experiment ``benchmarks``, the run named after the benchmark.
    """
    from pipeline.core import config
    from pipeline.running import tracking

    overrides = ["tracking.experiment=benchmarks"]
    if tracking_uri:
        overrides.append(f"tracking.uri={tracking_uri}")
        if tracking_uri.startswith("sqlite:///"):  # a store of its own: artifacts next to its database
            overrides.append(f"tracking.artifact_root={Path(tracking_uri[len('sqlite:///') :]).parent}")
    params = config.load("default", overrides)
    tracking.setup(params)
    import mlflow

    facts = result.get("machine", {})
    tags = {"benchmark": name, **{f"machine.{k}": str(v) for k, v in facts.items()}}
    if tracking.git_commit():
        tags["git.commit"] = tracking.git_commit()
    with mlflow.start_run(run_name=f"bench-{name}", tags=tags) as run:
        settings = result.get("settings", {})
        if settings:
            mlflow.log_params({k: str(v)[:500] for k, v in _flatten(settings).items()})
        metrics = numeric_metrics({k: v for k, v in result.items() if k not in ("settings", "machine")})
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_dict(result, f"bench_{name}.json")
        return run.info.run_id


def emit(name: str, figures: dict, args: argparse.Namespace, *, load_before: list[float] | None = None) -> dict:
    """Print one JSON object (benchmark name, figures, machine facts, load averages); log it with ``--mlflow``."""
    result = {
        "benchmark": name,
        **figures,
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    if getattr(args, "mlflow", False):
        result["mlflow_run_id"] = log_mlflow(name, result, getattr(args, "tracking_uri", None))
    print(json.dumps(result))
    sys.stdout.flush()
    return result


# --------------------------------------------------------------------------- seeds x variants of the project's stages

GRID_METRICS = ("macro_accuracy", "log_loss")
GRID_GROUPS = ("overall", "seen", "unseen")


def grid_parser(doc: str | None, *, epochs: int) -> argparse.ArgumentParser:
    """:func:`parser` plus the flags of a seeds x variants benchmark (synthetic set, epochs, seeds, config)."""
    p = parser(doc)
    p.add_argument("--clips", type=int, default=1500, help="clips in the synthetic set (70%% train, 30%% evaluate)")
    p.add_argument("--epochs", type=int, default=epochs, help="training epochs of every run (the same budget)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--config", default="default")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=None, help="generate (or reuse) the synthetic set here and keep it")
    p.add_argument("--workdir", type=Path, default=None, help="keep the runs' work directories here")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every run (repeatable)",
    )
    p.add_argument("--verbose", action="store_true", help="stage logs on stderr")
    return p


def stages_child(
    config_name: str, overrides: list[str], workdir: str, verbose: bool, stages: list[str], force: bool
) -> dict:
    """Child of :func:`seeds_by_variants`: run ``stages`` with the project's runner; the headline figures.

    Returns:
      Per group (``overall``, ``seen``, ``unseen``; None when the evaluate split has no such
      devices) ``macro_accuracy`` and ``log_loss`` of the plain predictions on the evaluate split,
      the complexity, the epochs and training seconds (``train/history.json``), the final train
      and validation accuracy, the wall time and, when a teacher ran, its macro accuracy.
    """
    import logging

    import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow)

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        force=True,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from pipeline.core import config
    from pipeline.running import runner

    memory_mark("imports")
    params = config.load(config_name, overrides)
    work = Path(workdir)
    start = time.perf_counter()
    results = runner.run_stages(params, work, stages, force=force)
    seconds = time.perf_counter() - start
    memory_mark("run")
    metrics = json.loads((work / "evaluate" / "metrics.json").read_text())
    history = json.loads((work / "train" / "history.json").read_text())["history"]
    plain = metrics["splits"]["evaluate"]["plain"]
    groups = {"overall": plain["overall"], **plain["per_device_group"]}
    out = {g: {k: groups[g][k] for k in GRID_METRICS} if g in groups else None for g in GRID_GROUPS}
    out.update(
        {
            "n_evaluate": plain["overall"]["n"],
            "unseen_devices": groups.get("unseen", {}).get("devices"),
            "complexity": metrics["complexity"],
            "epochs": len(history.get("epoch_seconds", [])),
            "train_seconds": round(sum(history.get("epoch_seconds", [])), 1),
            "final_train_accuracy": history.get("accuracy", [None])[-1],
            "final_val_accuracy": history.get("val_accuracy", [None])[-1],
            # learning curves: per epoch, the training accuracy (on augmented batches) and the validation one
            "curves": {k: [round(v, 4) for v in history.get(k, [])] for k in ("accuracy", "val_accuracy")},
            "wall_seconds": round(seconds, 1),
        }
    )
    if "teacher" in results and not results["teacher"].get("reused"):
        out["teacher_macro_accuracy"] = results["teacher"].get("teacher_macro_accuracy")
    out["per_device"] = {d: m["macro_accuracy"] for d, m in plain["per_device"].items()}
    if "device_specific" in metrics:  # the specialize stage ran: general against specialized per device
        ds = metrics["device_specific"]
        out["device_specific"] = {"devices": ds["devices"], "overall": {k: ds["overall"][k] for k in GRID_METRICS}}
    if "training_data" in metrics:
        out["training_data"] = metrics["training_data"]
    compressed = work / "compress" / "metrics.json"
    if "compress" in results and compressed.is_file():
        cm = json.loads(compressed.read_text())
        out["int8"] = cm.get("tflite")
        if "devices" in cm:
            out["device_models"] = cm["devices"]
    return out


def seeds_by_variants(
    name: str,
    args: argparse.Namespace,
    variants: dict[str, list[str]],
    *,
    stages: list[str],
    force: bool = False,
    extra: list[str] = (),
    configs: dict[str, str] | None = None,
) -> list[dict]:
    """Generate one synthetic set, then run ``stages`` for every seed x variant, each in a fresh child process.

    Runs are ordered seed by seed, so every variant sees the same machine load. Every run gets the
    same data (``--clips``, ``--data-seed``), ``--epochs``, TTA off, an MLflow store in the work
    folder (experiment ``bench-<name>``, run ``<variant>-seed<seed>``), then ``extra``, the
    variant's overrides and ``--set``.

    Args:
      name: the benchmark's name.
      args: from :func:`grid_parser`.
      variants: variant name -> its config overrides.
      stages: the stages each run runs (inactive ones, e.g. ``teacher`` without distillation, are skipped).
      force: rerun complete stages of a kept ``--workdir``.
      extra: overrides for every run, before the variant's.
      configs: variant name -> the configuration it loads (default ``--config``).

    In a variant's overrides ``{work}`` stands for the runs' parent folder and ``{seed}`` for the
    seed, so a variant can read an earlier variant's outputs of the same seed (e.g. import its
    teacher: ``distill.teacher.logits={work}/kd-seed{seed}/teacher/logits.npz``).

    Returns:
      One dict per run: ``variant``, ``seed``, the :func:`stages_child` figures and ``peak_rss_mb``.
    """
    import tempfile

    from pipeline.data import synthetic

    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    runs = []
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        root = args.root or Path(tmp) / "data"
        synthetic.generate(root, n_clips=args.clips, seed=args.data_seed, workers=2, progress=False)
        base = args.workdir or Path(tmp) / "work"
        base.mkdir(parents=True, exist_ok=True)
        store = base / "mlruns"
        for seed in seeds:
            for variant, settings in variants.items():
                overrides = [
                    f"data.source={root.resolve()}",
                    f"seed={seed}",
                    f"train.epochs={args.epochs}",
                    "augment.tta.enabled=false",
                    "train.progress_bar=false",
                    *extra,
                    f"tracking.uri=sqlite:///{(store / 'mlflow.db').resolve()}",
                    f"tracking.artifact_root={store.resolve()}",
                    f"tracking.experiment=bench-{name}",
                    f"tracking.run_name={variant}-seed{seed}",
                    *(
                        item.replace("{work}", os.fspath(base.resolve())).replace("{seed}", str(seed))
                        for item in settings
                    ),
                    *args.set,
                ]
                logger.info("%s, seed %d (%d epochs on %d clips)", variant, seed, args.epochs, args.clips)
                out = run_child(
                    stages_child,
                    (configs or {}).get(variant, args.config),
                    overrides,
                    os.fspath(base / f"{variant}-seed{seed}"),
                    args.verbose,
                    stages,
                    force,
                )
                run = {"variant": variant, "seed": seed, **out["result"], "peak_rss_mb": out["memory"]["peak_rss_mb"]}
                logger.info(
                    "%s seed %d: %s",
                    variant,
                    seed,
                    json.dumps(
                        {g: run[g] for g in GRID_GROUPS}
                        | {"train_accuracy": run["final_train_accuracy"], "s": run["wall_seconds"]}
                    ),
                )
                runs.append(run)
                with open(base / "runs.jsonl", "a", encoding="utf-8") as fh:  # each run as it ends: a long grid
                    fh.write(json.dumps(run) + "\n")  # that stops early keeps what it measured
    return runs


def seed_stats(values: list[float]) -> dict:
    """Mean, sample std (``ddof=1``, 0 for one seed), min, max, n and the values, rounded to 4 decimals."""
    from pipeline.core.stats import summary

    return summary(values, digits=4, single=0.0)


def by_variant(runs: list[dict], variants: list[str]) -> dict[str, dict]:
    """Per variant: group -> metric -> :func:`seed_stats` over seeds (groups every run of the variant has)."""
    out = {}
    for v in variants:
        rs = sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"])
        out[v] = {
            g: {k: seed_stats([r[g][k] for r in rs]) for k in GRID_METRICS}
            for g in GRID_GROUPS
            if rs and all(r[g] is not None for r in rs)
        }
    return out


def paired_difference(runs: list[dict], a: str, b: str) -> dict:
    """Per group and metric, the per-seed difference ``a - b`` over their common seeds.

    Returns:
      group -> metric -> :func:`seed_stats` of the differences plus ``better_on_seeds`` (``"k/n"``:
      seeds where ``a`` has the higher accuracy, or the lower log loss); groups some run lacks are left out.
    """
    seeds_a = {r["seed"]: r for r in runs if r["variant"] == a}
    seeds_b = {r["seed"]: r for r in runs if r["variant"] == b}
    common = sorted(set(seeds_a) & set(seeds_b))
    out: dict = {}
    for g in GRID_GROUPS:
        if not common or not all(seeds_a[s][g] is not None and seeds_b[s][g] is not None for s in common):
            continue
        out[g] = {}
        for k in GRID_METRICS:
            d = [seeds_a[s][g][k] - seeds_b[s][g][k] for s in common]
            better = sum(1 for x in d if (x > 0 if k == "macro_accuracy" else x < 0))
            out[g][k] = {**seed_stats(d), "better_on_seeds": f"{better}/{len(d)}"}
    return out
