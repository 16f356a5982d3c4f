"""Command line: ``python -m pipeline.run --stage STAGE [options]``.

This module only parses arguments, loads the validated Params and calls
:func:`pipeline.runner.run_stages`; the stage names come from the records in
:mod:`pipeline.stages`, and all work lives in the stages.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.core import config

logger = logging.getLogger("pipeline")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.stages import NAMES

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Low-complexity acoustic scene classification (DCASE2022 Task 1) pipeline.",
        epilog="Example: python -m pipeline.run --stage all --set train.epochs=3 --set audio.n_mels=128",
    )
    parser.add_argument("--stage", required=True, choices=(*NAMES, "all"),
                        help="stage to run; 'all' runs every stage in order under one MLflow parent run")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML config file, or a name under configs/ such as 'paper' "
                             "(default: configs/default.yaml)")
    parser.add_argument("--data", default=None, metavar="synthetic|PATH",
                        help="'synthetic' for the built-in dataset (generated into the workdir once), "
                             "or the path of a TAU22 development set; overrides data.source")
    parser.add_argument("--workdir", default="work", type=Path, metavar="DIR",
                        help="directory for all stage outputs (default: work)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key with a YAML value, e.g. --set train.epochs=3; repeatable")
    parser.add_argument("--force", action="store_true",
                        help="rerun stages whose outputs are complete for the same settings (default: reuse them)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="logging verbosity (default: INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.insert(0, f"data.source={args.data}")
    try:
        params = config.load(args.config, overrides)
    except config.ConfigError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return 2

    from pipeline import runner, stages
    from pipeline.data import DatasetError

    names = list(stages.NAMES) if args.stage == "all" else [args.stage]
    try:
        results = runner.run_stages(params, args.workdir, names, force=args.force)
    except (DatasetError, stages.StageError, config.ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one paragraph for the user, the traceback in the log
        logger.debug("traceback", exc_info=True)
        print(f"error: stage failed with {type(exc).__name__}: {exc}\n"
              "The traceback is logged as error.txt in the stage's MLflow run "
              "(or rerun with --log-level DEBUG).", file=sys.stderr)
        return 1
    print(runner.summary(params, args.workdir, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
