"""Sweeps: a grid of settings x seeds, each cell its own parent run, stages shared by reuse key.

``python -m pipeline.run --stage all --sweep augment.specaugment.mode=zm,mm,cm --sweep
model.channels=[32,64,64,64],[64,128,128,128] --seeds 0,1,2 [--shard I/N] [--summary-only]``

- A ``--sweep KEY=V1,V2,...`` value list is split on commas at bracket depth 0 (``[1,2],[3,4]`` is
  two values); each value is parsed as YAML exactly like a ``--set`` value. The grid is the
  product of the dimensions in the order given; ``--seeds`` sets ``seed``. Every combination x
  seed is validated (:func:`pipeline.core.config.load`) before any work.
- The sweep id (12 hex) is a digest of the base configuration (without ``seed``, ``tracking.*``
  and the swept keys), the grid and the seeds: a rerun or another shard of the same sweep shares it.
- Each cell (combination x seed) runs :func:`pipeline.running.runner.run_stages` in its own folder
  ``<workdir>/sweeps/<id>/runs/c<i>-seed<s>/``, whose stage folders are links to
  ``<workdir>/sweeps/<id>/stages/<stage>/<reuse key>/``: a stage whose settings and inputs match
  (same key) runs once for the sweep. ``runs/*/data`` links to ``<workdir>/data`` (the built-in
  synthetic set is generated once there, as in a single run).
- A cell whose latest parent run of this sweep is FINISHED for the same stages is skipped; other
  cells run, reusing every complete stage folder. A failing cell is recorded (its MLflow runs
  FAILED, the error in the ``sweep_error`` tag and the summary) and the sweep goes on.
- ``--shard I/N`` (1-based, ``1 <= I <= N``) runs cells ``k`` with ``k % N == I - 1`` of the
  (combination x seed) list (combination-major); the union over ``I`` is the grid.

Summaries: :mod:`pipeline.scaling.sweep_summary`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.core import config, dotted, files
from pipeline.core.config import ConfigError, Params
from pipeline.core.hashing import digest
from pipeline.core.lock import file_lock
from pipeline.running import runner
from pipeline.running import stages as registry
from pipeline.scaling import sweep_summary

logger = logging.getLogger(__name__)

FORBIDDEN = ("seed", "tracking", "name")  # --seeds sets the seed; one store and one name for the sweep
_OPEN, _CLOSE = "[{(", "]})"


def split_values(text: str) -> list[str]:
    """Split ``text`` on commas outside brackets and quotes: ``"[1,2],[3,4]" -> ["[1,2]", "[3,4]"]``.

    Args:
      text: the part after ``KEY=`` of a ``--sweep`` argument.

    Returns:
      The stripped value texts, in order.

    Raises:
      ConfigError: unbalanced brackets or quotes, or an empty value (``a,,b``, a trailing comma).
    """
    items, current, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                raise ConfigError(f"unbalanced {ch!r} in {text!r}")
        elif ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if depth or quote:
        raise ConfigError(f"unclosed {'quote' if quote else 'bracket'} in {text!r}")
    items.append("".join(current).strip())
    if any(not item for item in items):
        raise ConfigError(f"empty value in {text!r} (two commas in a row or a comma at an end)")
    return items


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One ``--sweep KEY=V1,V2`` axis: the dotted key, the value texts (as ``--set`` gets them)."""

    key: str
    texts: tuple[str, ...]

    @property
    def values(self) -> list:
        return [config.parse_value(t) for t in self.texts]


def parse_sweep(arg: str) -> Dimension:
    """Parse one ``--sweep`` argument and check each value's type against its key.

    Args:
      arg: ``KEY=V1,V2,...``.

    Returns:
      The :class:`Dimension` (the value texts as given).

    Raises:
      ConfigError: naming the argument: bad syntax, a key that cannot be swept, a value of the wrong
        type, or two values equal once typed (``1e-3,0.001``; ``true,True``; ``[8,8,16,16],'8,8,16,16'``).
    """
    if "=" not in arg:
        raise ConfigError(f"--sweep {arg!r}: expected KEY=V1,V2,..., e.g. augment.specaugment.mode=zm,mm")
    key, text = (part.strip() for part in arg.split("=", 1))
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--sweep {arg!r}: malformed key {key!r}")
    if key.split(".")[0] in FORBIDDEN:
        raise ConfigError(
            f"--sweep {arg!r}: {key} cannot be swept (use --seeds for seeds; the sweep has one "
            "tracking store and one config name)"
        )
    try:
        texts = split_values(text)
    except ConfigError as exc:
        raise ConfigError(f"--sweep {arg!r}: {exc}") from None
    try:  # compared as the config holds them: 1e-3 and 0.001, or "0.001" and 0.001, are one setting
        typed = [repr(config.typed_value(key, config.parse_value(t))) for t in texts]
    except ConfigError as exc:
        raise ConfigError(f"--sweep {arg!r}: {exc}") from None
    groups: dict[str, list[str]] = {}
    for t, value in zip(texts, typed, strict=True):
        groups.setdefault(value, []).append(t)
    dupes = [f"{sorted(same)} (all {value} as {key})" for value, same in groups.items() if len(same) > 1]
    if dupes:
        raise ConfigError(f"--sweep {arg!r}: duplicate value(s) {'; '.join(dupes)}: each would plan the same cells")
    return Dimension(key, tuple(texts))


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2" -> (0, 1, 2)``; non-negative, distinct integers, else a :class:`ConfigError`."""
    try:
        seeds = tuple(int(t) for t in split_values(text))
    except (ConfigError, ValueError):
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: seeds must be distinct and >= 0")
    return seeds


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3" -> (2, 3)``: the 1-based index I and the count N, ``1 <= I <= N``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"--shard {text!r}: expected I/N with 1 <= I <= N (1-based), e.g. 1/3")
    return int(match[1]), int(match[2])


def shard_cells(cells: list, index: int, count: int) -> list:
    """The ``index``-th (1-based) of ``count`` interleaved slices: cells ``k`` with ``k % count == index - 1``."""
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: expected 1 <= index <= count")
    return [cell for k, cell in enumerate(cells) if k % count == index - 1]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One combination x seed: the unit of work, one parent MLflow run."""

    combo: int
    seed: int
    settings: tuple[tuple[str, str], ...]  # (key, value text) per dimension

    @property
    def name(self) -> str:
        return f"c{self.combo}-seed{self.seed}"

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.settings] + [f"seed={self.seed}"]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A validated grid: its id, dimensions, seeds, the base config and every cell's Params."""

    sweep_id: str
    dims: tuple[Dimension, ...]
    seeds: tuple[int, ...]
    base: Params
    cells: tuple[Cell, ...]
    params: dict[str, Params]  # by cell name

    def combo_label(self, combo: int) -> str:
        cell = next(c for c in self.cells if c.combo == combo)
        return " ".join(f"{k}={v}" for k, v in cell.settings) or "base"

    @property
    def combos(self) -> list[int]:
        return sorted({c.combo for c in self.cells})


def plan(config_path, overrides: list[str], sweeps: list[str], seeds: str | None) -> Sweep:
    """Parse and validate a sweep: every combination x seed through :func:`config.load` before any work.

    Args:
      config_path: ``--config`` (None: the default config).
      overrides: the ``--set`` (and ``--data``) overrides, applied before the swept values.
      sweeps: the ``--sweep KEY=V1,V2`` arguments.
      seeds: the ``--seeds`` text, or None for the base config's seed.

    Returns:
      The :class:`Sweep` (cells combination-major: every seed of combination 0 first).

    Raises:
      ConfigError: bad syntax, a duplicate key, or a combination that does not validate (named).
    """
    base = config.load(config_path, overrides)
    dims = tuple(parse_sweep(arg) for arg in sweeps)
    keys = [d.key for d in dims]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--sweep: key(s) given twice: {sorted({k for k in keys if keys.count(k) > 1})}")
    seed_list = parse_seeds(seeds) if seeds is not None else (base.seed,)
    for key in keys:
        if any(o.split("=", 1)[0].strip() == key for o in overrides):
            logger.warning("--sweep %s overrides the --set value of the same key", key)
    tree = base.to_dict()
    for dropped in ("seed", "tracking", *keys):
        tree = dotted.without(tree, dropped)
    sweep_id = digest({"base": tree, "grid": [[d.key, d.values] for d in dims], "seeds": list(seed_list)})[:12]
    cells, params = [], {}
    for combo, values in enumerate(itertools.product(*(d.texts for d in dims))):
        for seed in seed_list:
            cell = Cell(combo, seed, tuple(zip(keys, values, strict=True)))
            run_name = f"tracking.run_name=sweep-{sweep_id[:6]}-{cell.name}"  # the column title in MLflow's compare
            try:
                params[cell.name] = config.load(config_path, [*overrides, *cell.overrides, run_name])
            except ConfigError as exc:
                label = ", ".join(f"{k}={v}" for k, v in cell.settings) or "the base config"
                raise ConfigError(f"--sweep combination {label} (seed {seed}): {exc}") from None
            cells.append(cell)
    return Sweep(sweep_id, dims, seed_list, base, tuple(cells), params)


def with_upstream(stage: str, stages: tuple = registry.STAGES) -> list[str]:
    """``stage`` and every stage it reads, transitively, in registry order (``all``: every stage).

    A sweep cell starts from an empty folder, so ``--stage evaluate`` in a sweep runs prepare,
    (teacher,) train and evaluate; complete ones are reused by their reuse key.
    """
    if stage == "all":
        return [s.name for s in stages]
    needed, todo = set(), [stage]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(registry.get(name, stages).upstream)
    return [s.name for s in stages if s.name in needed]


class _SharedFolders:
    """The runner's ``folder`` hook: ``<root>/stages/<stage>/<key>``; ``force`` reruns each key once."""

    def __init__(self, root: Path, force: bool):
        self.root, self.force, self.forced = root, force, set()

    def __call__(self, stage: str, key: str) -> Path:
        path = self.root / "stages" / stage / key
        if self.force and (stage, key) not in self.forced:
            self.forced.add((stage, key))
            files.clear_marker(path)  # the runner then reruns it; later cells of this invocation reuse it
        return path


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """One process per sweep folder (two would write the same shared stage folders)."""
    root.mkdir(parents=True, exist_ok=True)

    def busy(holder: dict, waited: float) -> Exception:
        return registry.StageError(
            f"another process is running this sweep in {root}; give each concurrent shard its own --workdir"
        )

    with file_lock(root / ".lock", wait_seconds=0, busy=busy):
        yield


def _clear_tf_session() -> None:
    if "tf_keras" in sys.modules:  # free the previous cell's graphs (one process runs many cells)
        sys.modules["tf_keras"].backend.clear_session()


def run_sweep(
    sweep: Sweep,
    workdir: Path,
    names: list[str],
    *,
    shard: tuple[int, int] = (1, 1),
    force: bool = False,
    summary_only: bool = False,
    stages: tuple = registry.STAGES,
    rerun_changed_code: bool = False,
) -> tuple[int, str]:
    """Run this shard's cells, then write and log the summaries.

    Args:
      sweep: from :func:`plan`.
      workdir: the base workdir (the sweep lives in ``<workdir>/sweeps/<id>/``).
      names: the stages each cell runs.
      shard: (I, N), 1-based.
      force: rerun every stage once in this invocation (and cells MLflow holds as finished).
      summary_only: run nothing; write the whole grid's summary from MLflow.
      rerun_changed_code: rerun the shared stages made by other code (once: later cells reuse
        them) and run the cells MLflow holds as finished (their other stages are reused).
      stages: the stage registry (tests register toy stages).

    Returns:
      (exit status: 0 when every cell in scope finished, else 1; a closing text for the terminal).

    Raises:
      ConfigError: a multi-worker TF_CONFIG or ``train.strategy=multi_worker`` (a sweep runs in one
        process: :func:`pipeline.scaling.distributed.refuse_sweep`), before anything is written.
    """
    from pipeline.scaling import distributed  # here: it imports the stages

    distributed.refuse_sweep(sweep.params)
    workdir = Path(workdir).resolve()
    root = workdir / "sweeps" / sweep.sweep_id
    label = ",".join(names)
    mine = shard_cells(list(sweep.cells), *shard)
    store = sweep_summary.Store(sweep.base)
    logger.info(
        "sweep %s: %d combination(s) x %d seed(s) = %d cells; %s: %d cell(s); folder %s",
        sweep.sweep_id,
        len(sweep.combos),
        len(sweep.seeds),
        len(sweep.cells),
        f"shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "this run",
        0 if summary_only else len(mine),
        root,
    )
    errors: dict[str, dict] = {}  # cells failed in this invocation
    with _exclusive(root):
        if not summary_only:
            _run_cells(
                sweep,
                mine,
                root,
                workdir,
                names,
                label,
                force,
                stages,
                store,
                errors,
                rerun_changed_code=rerun_changed_code,
            )
        latest = store.latest(sweep.sweep_id)
        written = []
        if shard[1] > 1 and not summary_only:
            scope = f"shard-{shard[0]}-of-{shard[1]}"
            written.append(sweep_summary.write(sweep, mine, latest, errors, root / scope, scope, store))
        pending = [
            c.name
            for c in sweep.cells
            if c.name not in errors and sweep_summary.status(latest.get(c.name)) in ("missing", "running")
        ]
        if shard[1] == 1 or summary_only or not pending:
            written.append(sweep_summary.write(sweep, list(sweep.cells), latest, errors, root, "grid", store))
        else:
            logger.info(
                "sweep %s: the whole grid's summary waits for %d cell(s) (%s); it is written by the shard "
                "that finishes last, or by --summary-only",
                sweep.sweep_id,
                len(pending),
                ", ".join(pending[:10]) + (", ..." if len(pending) > 10 else ""),
            )
    ranking = [
        line
        for path in written
        if path.parent == root and (root / "dcase2024.csv").is_file()  # the whole grid's, not a shard's
        for line in sweep_summary.dcase2024_lines(sweep_summary.read_table(root / "dcase2024.csv"))
    ]
    scope_cells = list(sweep.cells) if summary_only else mine
    bad = [c.name for c in scope_cells if c.name in errors or sweep_summary.status(latest.get(c.name)) != "finished"]
    text = "\n".join(
        [
            f"Sweep {sweep.sweep_id}: {len(scope_cells) - len(bad)}/{len(scope_cells)} cell(s) finished"
            + (f"; not finished: {', '.join(bad)}" if bad else ""),
            *(f"  {path}" for path in written),
            *ranking,
            (
                f"  MLflow: runs tagged sweep_id = '{sweep.sweep_id}' in experiment "
                f"'{sweep.base.tracking.experiment}' ({sweep.base.tracking.uri})"
            ),
        ]
    )
    return (1 if bad else 0), text


def _run_cells(
    sweep: Sweep,
    cells: list[Cell],
    root: Path,
    workdir: Path,
    names: list[str],
    label: str,
    force: bool,
    stages: tuple,
    store,
    errors: dict[str, dict],
    *,
    rerun_changed_code: bool = False,
) -> None:
    from tqdm import tqdm

    before = store.latest(sweep.sweep_id)
    folders = _SharedFolders(root, force)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    for cell in tqdm(cells, desc=f"sweep {sweep.sweep_id}", unit="cell", disable=None):
        prev = before.get(cell.name)
        if (
            not force
            and not rerun_changed_code
            and sweep_summary.status(prev) == "finished"
            and prev.data.tags.get("sweep_stages") == label
        ):
            logger.info(
                "sweep cell %s: done in MLflow run %s; skipped (--force reruns it; --rerun-changed-code "
                "checks its stages' code)",
                cell.name,
                prev.info.run_id,
            )
            continue
        run_dir = root / "runs" / cell.name
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "data").is_symlink():
            (run_dir / "data").symlink_to(workdir / "data", target_is_directory=True)
        attempt = uuid.uuid4().hex
        params = sweep.params[cell.name]
        tags = {
            "sweep_id": sweep.sweep_id,
            "sweep_role": "run",
            "sweep_combo": f"c{cell.combo}",
            "sweep_cell": cell.name,
            "sweep_stages": label,
            "sweep_attempt": attempt,
            **{f"sweep.{k}": v for k, v in cell.settings},
        }
        logger.info("sweep cell %s: %s, seed %d", cell.name, sweep.combo_label(cell.combo), cell.seed)
        try:
            runner.run_stages(
                params,
                run_dir,
                names,
                stages=stages,
                folder=folders,
                parent_tags=tags,
                rerun_changed_code=rerun_changed_code,
            )
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            logger.error("sweep cell %s failed: %s (the sweep goes on)", cell.name, message)
            logger.debug("traceback", exc_info=True)
            errors[cell.name] = {
                "error": message,
                "run_id": store.tag_attempt(attempt, {"sweep_error": message[:4000]}),
            }
        finally:
            _clear_tf_session()
