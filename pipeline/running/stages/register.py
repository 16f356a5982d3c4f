"""``register``: log the package ``compress`` built as a pyfunc model and register it as a new version.

The stage's own settings are ``tracking.uri`` and ``tracking.registered_model``: with the
package's digest they form its reuse key, so changing the name (or the store) registers the
same package again under the new name, and ``compress`` is reused. ``tracking.registered_model:
''`` logs the pyfunc model into this stage's run without registering it.

The version's tags come from the package's own files (``asc_infer/model/metrics.json``,
``complexity.json``, ``model.json``): the int8 metrics and cost, the config, the data, and the
provenance the package carries (``train_output``: the SHA-256 of the ``train/model.keras`` it was
made from, ``train_run_id``: that training run), so ``models:/NAME/VERSION`` leads back to its
training run. ``registered.json`` records where the model went.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.core import files
from pipeline.core.config import Params
from pipeline.core.hashing import digest, file_digest
from pipeline.running.stages.base import Context, StageError

logger = logging.getLogger(__name__)

PROVENANCE = ("train_output", "train_run_id")  # model.json keys copied onto the version's tags


def package_digest(package_dir: Path) -> str:
    """SHA-256 (16 hex) of a package folder: every file's relative path and content (``__pycache__`` left out).

    Args:
      package_dir: the folder holding ``asc_infer/``.

    Returns:
      The digest; equal folders give equal digests wherever they are.
    """
    package_dir = Path(package_dir)
    listing = sorted(
        (p.relative_to(package_dir).as_posix(), file_digest(p))
        for p in package_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    return digest(listing)


def _read(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path} is missing: the package is incomplete; rerun --stage compress --force") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"{path} is not readable JSON ({exc}); rerun --stage compress --force") from None
    if not isinstance(obj, dict):
        raise StageError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def version_tags(package_dir: Path, data_name: str) -> dict[str, str]:
    """The tags of a registered version, read from the package's files.

    Args:
      package_dir: the package folder (``asc_infer/model/`` holds ``model.json``, ``metrics.json``,
        ``complexity.json``).
      data_name: ``synthetic`` or the dataset folder's name.

    Returns:
      ``int8_macro_accuracy``, ``int8_log_loss`` (4 decimals), ``int8_size_bytes``, ``int8_macs``,
      ``int8_params``, ``within_limits`` (``true``/``false``), ``config``, ``model``, ``data`` and,
      when ``model.json`` holds them, ``train_output`` and ``train_run_id``.

    Raises:
      StageError: a file is missing or lacks a value (named).
    """
    model_dir = Path(package_dir) / "asc_infer" / "model"
    info, metrics, cost = (_read(model_dir / name) for name in ("model.json", "metrics.json", "complexity.json"))
    try:
        overall = metrics["int8"]["overall"]
        tags = {
            "int8_macro_accuracy": f"{overall['macro_accuracy']:.4f}",
            "int8_log_loss": f"{overall['log_loss']:.4f}",
        }
    except (KeyError, TypeError) as exc:
        raise StageError(
            f"{model_dir / 'metrics.json'} lacks int8.overall.{exc}; rerun --stage compress --force"
        ) from None
    try:
        limits = cost["limits"]
        within = cost["size_bytes"] <= limits["max_bytes"] and cost["macs"] <= limits["max_macs"]
        tags.update(
            {
                "int8_size_bytes": str(cost["size_bytes"]),
                "int8_macs": str(cost["macs"]),
                "int8_params": str(cost["params"]),
                "within_limits": str(bool(within)).lower(),
            }
        )
    except (KeyError, TypeError) as exc:
        raise StageError(f"{model_dir / 'complexity.json'} lacks {exc}; rerun --stage compress --force") from None
    missing = [k for k in ("config", "model") if k not in info]
    if missing:
        raise StageError(f"{model_dir / 'model.json'} lacks {missing}; rerun --stage compress --force")
    tags.update({"config": str(info["config"]), "model": str(info["model"]), "data": data_name})
    absent = [k for k in PROVENANCE if info.get(k) in (None, "")]
    if absent:
        logger.warning(
            "register: %s holds no %s: the version will not name its training run",
            model_dir / "model.json",
            " or ".join(absent),
        )
    tags.update({k: str(info[k]) for k in PROVENANCE if k not in absent})
    return tags


def register(ctx: Context) -> dict:
    """Log ``compress/package/`` as a pyfunc model in this stage's run and register it (``tracking.registered_model``).

    Writes ``registered.json``: ``registered_model`` (``null`` when not registered), ``version``,
    ``model_uri`` (``models:/NAME/VERSION``, or ``runs:/RUN_ID/model`` when only logged; ``null``
    with an in-memory recorder), ``logged_model_uri``, ``run_id``, ``package``, ``package_digest``,
    ``compress_run_id`` and ``tags``.
    """
    package_dir = ctx.input("compress", "package", missing_ok=True)
    if package_dir is None or not (package_dir / "asc_infer" / "__init__.py").is_file():
        package_dir = package_dir or ctx.inputs["compress"] / "package"
        raise StageError(f"{package_dir} holds no package (no asc_infer/__init__.py); rerun --stage compress --force")
    tags = version_tags(package_dir, ctx.data_name)
    compress_marker = ctx.marker("compress")
    tags["compress_run_id"] = str(compress_marker.get("run_id", ""))
    tags["package_digest"] = package_digest(package_dir)
    where = ctx.record.package(package_dir, tags) or {}
    name = ctx.params.tracking.registered_model
    version = where.get("version")
    result = {
        "registered_model": name if version is not None else None,
        "version": version,
        "model_uri": where.get("model_uri"),
        "logged_model_uri": where.get("logged_model_uri"),
        "run_id": ctx.record.run_id,
        "package": str(package_dir.resolve()),
        "package_digest": tags["package_digest"],
        "compress_run_id": tags["compress_run_id"],
        "tags": tags,
    }
    files.write_json(ctx.out / "registered.json", result)
    ctx.record.artifact(ctx.out / "registered.json")
    ctx.facts.update(registered_model=result["registered_model"], version=version, model_uri=result["model_uri"])
    if version is not None:
        logger.info(
            "register: %s (run %s; predict with --model %s)",
            result["model_uri"],
            ctx.record.run_id,
            result["model_uri"],
        )
    elif where:
        logger.info("register: logged %s without registering it (tracking.registered_model is '')", result["model_uri"])
    else:
        logger.info("register: package kept in memory (no MLflow store)")
    return {"registered": ctx.out / "registered.json", "model_uri": result["model_uri"]}


def summary_lines(folder: Path, params: Params) -> list[str]:
    """The closing summary's line of a complete ``register`` folder: the registered model's URI.

    Args:
      folder: the stage's complete folder.
      params: the run's parameter tree (``tracking.uri``).

    Returns:
      One line, or none when nothing was logged.
    """
    reg = json.loads((folder / "registered.json").read_text())
    if reg.get("version") is not None:
        return [
            f"  registry: {reg['model_uri']} (python -m pipeline.predict FILES --model {reg['model_uri']} "
            f"--tracking-uri {params.tracking.uri})"
        ]
    if reg.get("model_uri"):
        return [f"  registry: not registered (tracking.registered_model is ''); logged as {reg['model_uri']}"]
    return []
