"""Which model ``python -m pipeline.predict`` uses: ``--model`` and ``--engine`` resolved, and checked.

``--model`` names a workdir (``compress/package`` for int8, ``train/model.keras`` for float), a
package folder, a model folder, a ``.keras`` file or a ``models:/NAME/VERSION`` URI
(:func:`resolve_model`). A workdir's package made from another training run than its current
``train/`` output is refused unless ``--engine int8`` is given (:func:`check_fresh`); a
registry store must exist and answer before anything is downloaded (:func:`check_store`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.core import files
from pipeline.inference.predict_files import UsageError

logger = logging.getLogger("pipeline.predict")


def _workdir_model(path: Path, engine: str) -> Path | None:
    if engine == "float" and (path / "train" / "model.keras").is_file():
        return path / "train" / "model.keras"
    if engine == "int8" and (path / "compress" / "package").is_dir():
        return path / "compress" / "package"
    return None


def package_info(package: Path) -> dict:
    """The ``model.json`` of a package folder (``{}`` when it cannot be read)."""
    for candidate in (package / "asc_infer" / "model" / "model.json", package / "model.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                return {}
    return {}


def check_fresh(workdir: Path, package: Path, explicit: bool) -> None:
    """Refuse a workdir's package made from another training run than its current ``train/`` output.

    The package's ``model.json`` holds ``train_output`` (the digest of the ``model.keras`` it was
    made from) and ``train_run_id``; ``train/_SUCCESS.json`` holds the digest of the current one.

    Args:
      workdir: the ``--model`` workdir.
      package: its ``compress/package``.
      explicit: ``--engine int8`` was given: use the package anyway, with a warning.

    Raises:
      UsageError: they differ and ``explicit`` is False (names the stage to rerun).
    """
    info = package_info(package)
    made_from = info.get("train_output")
    marker = files.read_marker(workdir / "train") or {}
    current = marker.get("output")
    if current is None and (workdir / "train" / "_RUNNING.json").is_file():
        what = (
            f"{workdir / 'train'} is being retrained, or its retraining was interrupted (train/_RUNNING.json, "
            f"no complete run): {package} may come from the training run it replaces"
        )
        if explicit:
            logger.warning("predict: %s; using the package because --engine int8 was given", what)
            return
        raise UsageError(
            f"{what}; finish it (python -m pipeline.run --stage train --workdir {workdir}), then rerun "
            "--stage compress, or pass --engine int8 to use this package anyway"
        )
    if made_from is None or current is None:
        logger.warning(
            "predict: cannot tell whether %s was made from %s (%s): it may be stale",
            package,
            workdir / "train",
            "the package predates provenance records" if made_from is None else "train/ holds no complete run",
        )
        return
    if made_from == current:
        return
    what = (
        f"{package} was made from another training run ({str(made_from)[:12]}, MLflow run "
        f"{info.get('train_run_id')}) than the current {workdir / 'train'} ({str(current)[:12]}, MLflow run "
        f"{marker.get('run_id')})"
    )
    if explicit:
        logger.warning("predict: %s; using the package because --engine int8 was given", what)
        return
    raise UsageError(
        f"{what}: rerun the compress stage (python -m pipeline.run --stage compress --workdir {workdir} "
        "with the same --config/--set), or choose: --engine float (the current model) or --engine int8 "
        "(this package anyway)"
    )


def check_store(uri: str) -> None:
    """Refuse, in seconds, a registry store that cannot answer, without creating anything.

    An ``http(s)://`` server gets :func:`pipeline.running.preflight.check_tracking_readable`'s probe; a
    ``sqlite:///`` file or a store folder must already exist (a missing one would be created
    empty by MLflow, which then reports the model as "not found").
    """
    from pipeline.running import preflight

    try:
        preflight.check_tracking_readable(uri, option="--tracking-uri")
    except preflight.EnvironmentProblem as exc:
        raise UsageError(str(exc)) from None


def resolve_model(spec: str, engine: str | None, tracking_uri: str, scratch: Path | None = None) -> tuple[str, Path]:
    """``(engine, path)`` for ``--model`` and ``--engine``.

    ``spec``: a workdir (``compress/package`` for int8, ``train/model.keras`` for float), a package
    folder, a model folder (holding ``model.json``), a ``.keras`` file (float) or
    ``models:/NAME/VERSION`` (int8; downloaded with :func:`pipeline.inference.registry.package_from_registry`
    into ``scratch``, or a new temporary folder when ``None``). A workdir's package made from
    another training run than its ``train/`` is refused unless ``engine`` is given
    (:func:`check_fresh`).

    Raises:
      UsageError: the model cannot be found, does not fit the engine, is stale, or its store does not answer.
    """
    if spec.startswith(("models:/", "runs:/")):
        if engine == "float":
            raise UsageError(f"--model {spec}: a registered model is the int8 package; use --engine int8")
        check_store(tracking_uri)
        from pipeline.inference import registry

        try:
            return "int8", registry.package_from_registry(spec, tracking_uri, scratch)
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
    chosen = engine or "int8"
    found = _workdir_model(path, chosen)
    if found is not None:
        if chosen == "int8":
            check_fresh(path, found, explicit=engine is not None)
        return chosen, found
    is_package = (path / "model.json").is_file() or (path / "asc_infer" / "model" / "model.json").is_file()
    if chosen == "int8" and is_package:
        inside = path.resolve()
        if inside.name == "package" and inside.parent.name == "compress" and (inside.parent.parent / "train").is_dir():
            check_fresh(inside.parent.parent, path, explicit=engine is not None)  # a workdir's package, named directly
        return chosen, path
    wanted = "compress/package (run --stage compress)" if chosen == "int8" else "train/model.keras"
    raise UsageError(f"--model {spec}: not a workdir holding {wanted}, nor a package folder")
