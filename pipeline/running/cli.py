"""Command line: ``python -m pipeline.run --stage STAGE [options]``.

This module only parses arguments, loads the validated Params and calls
:func:`pipeline.running.runner.run_stages`; the stage names come from the records in
:mod:`pipeline.running.stages`, and all work lives in the stages.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from pathlib import Path

from pipeline.core import config

logger = logging.getLogger("pipeline")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.running.stages import NAMES

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Low-complexity acoustic scene classification (DCASE2022 Task 1) pipeline.",
        epilog="Example: python -m pipeline.run --stage all --set train.epochs=3 --set audio.n_mels=128",
    )
    parser.add_argument(
        "--stage",
        required=True,
        choices=(*NAMES, "all"),
        help="stage to run; 'all' runs every stage in order under one MLflow parent run",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="YAML config file, or a name under configs/ such as 'paper' (default: configs/default.yaml)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="synthetic|PATH",
        help="'synthetic' for the built-in dataset (generated into the workdir once), "
        "or the path of a TAU22 development set; overrides data.source",
    )
    parser.add_argument(
        "--workdir", default="work", type=Path, metavar="DIR", help="directory for all stage outputs (default: work)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key with a YAML value, e.g. --set train.epochs=3; repeatable",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="rerun stages whose outputs are complete for the same settings (default: reuse them)",
    )
    parser.add_argument(
        "--rerun-changed-code",
        action="store_true",
        help="rerun stages whose complete outputs were made by other code (the project source files "
        "the stage imports, digested in its marker), and the stages after them; default: reuse "
        "them with one warning line per stage",
    )
    sweep = parser.add_argument_group(
        "sweeps",
        "a grid of settings x seeds, each cell its own MLflow parent run, "
        "written to <workdir>/sweeps/<sweep id>/ (see pipeline/scaling/sweep.py)",
    )
    sweep.add_argument(
        "--sweep",
        dest="sweeps",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="sweep one config key over values (split on commas outside brackets, each parsed "
        "like a --set value), e.g. --sweep model.channels=[32,64,64,64],[64,128,128,128]; "
        "repeatable: the grid is the product",
    )
    sweep.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2,...",
        help="run every combination with each of these seeds (sets `seed`), e.g. 0,1,2",
    )
    sweep.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only the I-th (1-based) of N interleaved slices of the (combination x seed) "
        "list, e.g. 1/3 on one machine, 2/3 and 3/3 on others sharing the tracking server; with "
        "--search: of the study's trials",
    )
    sweep.add_argument(
        "--summary-only",
        action="store_true",
        help="run nothing: write the whole grid's summary from the runs in MLflow",
    )
    search = parser.add_argument_group(
        "searches",
        "an Optuna study over the settings, tuned on the held-out validation devices (data.validation), "
        "written to <workdir>/search/<search id>/ (see pipeline/scaling/search.py)",
    )
    search.add_argument(
        "--search",
        default=None,
        type=Path,
        metavar="SPACE.yaml",
        help="search the settings this file ranges over (KEY: {low: .., high: .. [, log: true] [, step: ..] "
        "[, type: int]} or KEY: {choices: [..]}), e.g. configs/search/dcase22-kd.yaml",
    )
    search.add_argument(
        "--trials",
        type=trials_arg,
        default=None,
        metavar="N",
        help="the study's total of trials (a rerun runs only the missing ones; a larger N adds more)",
    )
    parser.add_argument(
        "--wait-lock",
        type=seconds_arg,
        default=0.0,
        metavar="SECONDS",
        help="if another run holds the workdir, wait up to SECONDS for it (default: refuse at once)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging verbosity (default: INFO)",
    )
    return parser


def seconds_arg(text: str) -> float:
    """A finite number of seconds >= 0 (argparse type: a bad value exits 2 naming the option)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def trials_arg(text: str) -> int:
    """A whole number of trials >= 1 (argparse type: a bad value exits 2 naming the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of trials, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 trial, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.insert(0, f"data.source={args.data}")
    if args.search is not None or args.trials is not None:
        return _search(args, overrides)
    if args.sweeps or args.seeds is not None or args.shard is not None or args.summary_only:
        return _sweep(args, overrides)
    try:
        params = config.load(args.config, overrides)  # before TensorFlow is imported: a bad value fails in ms
    except config.ConfigError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return 2
    from pipeline.running import preflight
    from pipeline.scaling import distributed

    try:
        cluster = distributed.cluster_of(params)  # TF_CONFIG checked before any work (multi_worker only)
        if cluster is not None and params.train.batch_size % cluster.num_workers:
            raise config.ConfigError(
                f"train.batch_size: {params.train.batch_size} is the global batch and must be a "
                f"multiple of the {cluster.num_workers} workers of TF_CONFIG"
            )
    except config.ConfigError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return 2
    worker = cluster is not None and not cluster.is_chief  # writes nothing under the workdir, no MLflow
    try:
        preflight.check(args.workdir, params.tracking.uri, params.tracking.artifact_root, track=not worker)
    except preflight.EnvironmentProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from pipeline.core.lock import WorkdirLocked
    from pipeline.data.tau import DatasetError
    from pipeline.running import runner, stages

    names = list(stages.NAMES) if args.stage == "all" else [args.stage]
    try:
        with preflight.terminate_as_interrupt():
            results = runner.run_stages(
                params,
                args.workdir,
                names,
                force=args.force,
                wait_lock=args.wait_lock,
                rerun_changed_code=args.rerun_changed_code,
            )
    except WorkdirLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (DatasetError, stages.StageError, config.ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except preflight.Terminated as exc:
        print(f"{exc}: the stage's MLflow run is marked KILLED; rerun the same command to resume", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        logger.debug("traceback", exc_info=True)
        if (signum := preflight.received_signal()) is not None:  # TF replaced Terminated by its own error
            name = signal.Signals(signum).name
            print(f"terminated by signal {name} (the stage then failed with {type(exc).__name__})", file=sys.stderr)
            return 128 + signum
        print(
            f"error: stage failed with {type(exc).__name__}: {exc}\n"
            "The traceback is logged as error.txt in the stage's MLflow run "
            "(or rerun with --log-level DEBUG).",
            file=sys.stderr,
        )
        return 1
    if worker:
        print(f"worker {cluster.rank} of {cluster.num_workers}: done (the chief writes the outputs)")
        return 0
    print(runner.summary(params, args.workdir, results))
    return 0


def _sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    """``--sweep``/``--seeds``: validate the whole grid (exit 2 naming a bad value), then run this shard."""
    from pipeline.running import stages
    from pipeline.scaling import distributed, sweep

    try:
        if not args.sweeps and args.seeds is None:
            raise config.ConfigError(
                "--shard and --summary-only need a sweep (--sweep KEY=V1,V2 and/or --seeds) or a search "
                "(--search SPACE.yaml --trials N; --shard only)"
            )
        shard = sweep.parse_shard(args.shard) if args.shard is not None else (1, 1)
        if args.summary_only and args.shard is not None:
            raise config.ConfigError("--summary-only summarises the whole grid: drop --shard")
        plan = sweep.plan(args.config, overrides, args.sweeps, args.seeds)
        distributed.refuse_sweep(plan.params)  # before the lock: one process runs every cell
    except config.ConfigError as exc:
        print(f"error: invalid sweep: {exc}", file=sys.stderr)
        return 2
    names = sweep.with_upstream(args.stage)  # a cell starts empty: the stage and what it reads
    from pipeline.core.lock import WorkdirLocked, workdir_lock
    from pipeline.running import preflight

    try:  # the cells share the base store and the workdir's data/
        base = config.load(args.config, overrides)
        preflight.check(args.workdir, base.tracking.uri, base.tracking.artifact_root)
    except (config.ConfigError, preflight.EnvironmentProblem) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with preflight.terminate_as_interrupt(), workdir_lock(args.workdir, wait_seconds=args.wait_lock):
            code, text = sweep.run_sweep(
                plan,
                args.workdir,
                names,
                shard=shard,
                force=args.force,
                rerun_changed_code=args.rerun_changed_code,
                summary_only=args.summary_only,
            )
    except WorkdirLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except preflight.Terminated as exc:
        print(
            f"{exc}: the cell's MLflow runs are marked KILLED; rerun the same command to finish the sweep",
            file=sys.stderr,
        )
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except stages.StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(text)
    return code


def _search(args: argparse.Namespace, overrides: list[str]) -> int:
    """``--search SPACE.yaml --trials N``: check everything (exit 2 naming what is wrong), then run this shard."""
    from pipeline.running import preflight, stages
    from pipeline.scaling import search, sweep

    try:
        if args.search is None or args.trials is None:
            raise config.ConfigError("--search SPACE.yaml and --trials N go together: give both")
        if args.sweeps or args.seeds is not None:
            raise config.ConfigError("--search cannot be combined with --sweep/--seeds: search or sweep, not both")
        if args.summary_only:
            raise config.ConfigError(
                "--summary-only is a sweep option; rerunning the same --search command when every trial is "
                "done writes the search's summaries without running anything"
            )
        shard = sweep.parse_shard(args.shard) if args.shard is not None else (1, 1)
        names = sweep.with_upstream(args.stage)  # a trial starts empty: the stage and what it reads
        plan = search.plan(args.config, overrides, args.search, args.trials, names)
        preflight.check(args.workdir, plan.base.tracking.uri, plan.base.tracking.artifact_root)
        search.open_storage(plan, args.workdir)  # an unreachable database or a missing driver: named now
    except config.ConfigError as exc:
        print(f"error: invalid search: {exc}", file=sys.stderr)
        return 2
    except preflight.EnvironmentProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import optuna

    optuna.logging.disable_default_handler()  # its lines go through this logging setup
    optuna.logging.enable_propagation()
    try:
        with preflight.terminate_as_interrupt():
            code, text = search.run_search(
                plan, args.workdir, shard=shard, force=args.force, rerun_changed_code=args.rerun_changed_code
            )
    except preflight.Terminated as exc:
        print(f"{exc}: the running trial is marked FAIL; rerun the same command to run its slot again", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume the search", file=sys.stderr)
        return 130
    except (stages.StageError, config.ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
