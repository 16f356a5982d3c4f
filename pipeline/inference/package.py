"""The deployable inference package: one installable folder an application needs to classify scenes.

:func:`build_package` writes ``out/package/``::

    package/
      pyproject.toml        name asc-infer; depends on numpy; extras litert (ai-edge-litert), tf (tensorflow)
      README.md             the three-line usage
      asc_infer/            the runtime API (copied from pipeline/inference/asc_infer/: __init__, wavfile, resample)
        model/
          frontend.tflite   float log-mel front end, waveform [1, clip_samples] -> log-mel
          model_int8.tflite int8 classifier, batch 1, log-mel -> logits
          model.json        labels, sample rate, clip samples, default window/hop, config name, version
          metrics.json      the compress stage's metrics on the evaluate split (int8, overall and per device)
          complexity.json   NeSsi params, size bytes, MACs, and the DCASE limits

and ``out/package.tar.gz`` of the same folder. Both are built beside their destination and renamed
into place, so a killed run never leaves a half-written package.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from pipeline.core import files
from pipeline.core.config import Params
from pipeline.core.labels import CLASSES

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "asc_infer"
RUNTIME_MODULES = ("__init__.py", "recording.py", "wavfile.py", "resample.py")
PACKAGE_VERSION = "0.1.0"

_README = """# asc-infer: acoustic scene classification ({config})

    import asc_infer
    model = asc_infer.load_model()   # the bundled int8 model; asc_infer.check_complexity(model) -> DCASE limits
    probs = asc_infer.predict(model, asc_infer.load_inputs(["clip.wav"]))   # [n_files, {n}] in model.labels order

Install: `pip install .[litert]` (or `.[tf]`: TensorFlow's interpreter). Classes: {labels}.
"""

_PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "asc-infer"
version = "{version}"
description = "Acoustic scene classification (DCASE Task 1 style): int8 TFLite model and its runtime API"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["numpy"]

[project.optional-dependencies]
litert = ["ai-edge-litert"]
tf = ["tensorflow"]

[tool.setuptools]
packages = ["asc_infer"]

[tool.setuptools.package-data]
asc_infer = ["model/*", "model/devices/*"]
"""


def project_version() -> dict[str, str | None]:
    """The project's version (installed metadata or setup.cfg) and git commit (``None`` when unknown)."""
    root = Path(__file__).resolve().parents[1]
    version = None
    try:
        version = importlib.metadata.version("asc-pipeline")
    except importlib.metadata.PackageNotFoundError:
        cfg = root / "setup.cfg"
        if cfg.is_file():
            for line in cfg.read_text().splitlines():
                if line.replace(" ", "").startswith("version="):
                    version = line.split("=", 1)[1].strip()
                    break
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=root, check=False
        )
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"version": version, "commit": commit}


def model_info(params: Params, provenance: dict | None = None) -> dict:
    """The ``model.json`` of a package built with ``params``.

    Args:
      params: the run's parameters.
      provenance: where the classifier came from: ``train_output`` (the SHA-256 of the train
        stage's ``model.keras``, as its completion marker records it) and ``train_run_id`` (its
        MLflow run). ``pipeline.predict --model WORKDIR`` compares ``train_output`` with the
        workdir's current ``train/`` to refuse a stale package.
    """
    a = params.audio
    return {
        **(provenance or {}),
        "labels": list(CLASSES),
        "sample_rate": a.sample_rate_hz,
        "clip_samples": a.clip_samples,
        "window_seconds": a.clip_samples / a.sample_rate_hz,
        "hop_seconds": a.clip_samples / a.sample_rate_hz,
        "config": params.name,
        "model": params.model.name,
        "n_mels": a.n_mels,
        "project": project_version(),
        "inputs": "waveform at sample_rate, mono; windows of clip_samples; frontend.tflite -> model_int8.tflite",
        "outputs": "logits per window; probabilities = softmax, averaged over a recording's windows",
    }


def build_package(
    out: Path,
    *,
    frontend_tflite: bytes,
    classifier_tflite: bytes,
    params: Params,
    metrics: dict,
    complexity: dict,
    provenance: dict | None = None,
    device_models: dict[str, dict] | None = None,
) -> Path:
    """Write the installable package ``out/package/`` (and ``out/package.tar.gz``), atomically.

    Args:
      out: the folder to write into (the compress stage's folder).
      frontend_tflite: the float front end (waveform ``[1, clip_samples]`` -> log-mel).
      classifier_tflite: the shipped int8 classifier (batch 1).
      params: the run's parameters (audio settings, config name).
      metrics: what goes into ``metrics.json`` (the int8 metrics on the evaluate split).
      complexity: what goes into ``complexity.json`` (``params``, ``size_bytes``, ``macs``, ``limits``).
      provenance: the training run it came from (see :func:`model_info`).
      device_models: DCASE2025 device-specific classifiers, device ID -> ``{"tflite": bytes, **figures}``
        (figures: ``size_bytes``, ``macs``, ``within_limits``, ...); written as ``model/devices/<id>.tflite``
        and listed in ``model/devices.json``. They share the front end; other devices use the general model.

    Returns:
      the package folder ``out/package``.
    """
    if not frontend_tflite or not classifier_tflite:
        raise ValueError("build_package: empty TFLite bytes (frontend_tflite or classifier_tflite)")
    for key in ("params", "size_bytes", "macs", "limits"):
        if key not in complexity:
            raise ValueError(f"build_package: complexity lacks {key!r} (has {sorted(complexity)})")
    missing = [m for m in RUNTIME_MODULES if not (SOURCE / m).is_file()]
    if missing:
        raise FileNotFoundError(f"build_package: {SOURCE} lacks {', '.join(missing)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "package"
    info = model_info(params, provenance)
    tmp = Path(tempfile.mkdtemp(prefix=".package.", dir=out))
    try:
        pkg = tmp / "asc_infer"
        (pkg / "model").mkdir(parents=True)
        for name in RUNTIME_MODULES:
            shutil.copyfile(SOURCE / name, pkg / name)
        (pkg / "model" / "frontend.tflite").write_bytes(frontend_tflite)
        (pkg / "model" / "model_int8.tflite").write_bytes(classifier_tflite)
        for name, obj in (("model.json", info), ("metrics.json", metrics), ("complexity.json", complexity)):
            files.write_json(pkg / "model" / name, obj)
        if device_models:
            (pkg / "model" / "devices").mkdir()
            listing = {}
            for device, entry in sorted(device_models.items()):
                if not entry.get("tflite"):
                    raise ValueError(f"build_package: device model {device!r} has no TFLite bytes")
                (pkg / "model" / "devices" / f"{device}.tflite").write_bytes(entry["tflite"])
                listing[device] = {
                    "file": f"devices/{device}.tflite",
                    **{k: v for k, v in entry.items() if k != "tflite"},
                }
            files.write_json(pkg / "model" / "devices.json", listing)
        (tmp / "pyproject.toml").write_text(_PYPROJECT.format(version=PACKAGE_VERSION))
        (tmp / "README.md").write_text(
            _README.format(config=params.name, n=len(info["labels"]), labels=", ".join(info["labels"]))
        )
        old = out / ".package.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    with files.atomic_path(out / "package.tar.gz", suffix=".tar.gz") as archive, tarfile.open(archive, "w:gz") as tar:
        tar.add(final, arcname="asc-infer")
    logger.info(
        "package: wrote %s (%d + %d bytes of TFLite) and %s",
        final,
        len(frontend_tflite),
        len(classifier_tflite),
        out / "package.tar.gz",
    )
    return final
