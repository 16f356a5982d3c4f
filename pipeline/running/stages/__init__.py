"""The pipeline's stages, declared once.

``STAGES`` is the only place a stage is declared: the CLI's ``--stage`` choices, the order of
``--stage all``, the reuse key, the upstream checks, the parent run's headline metrics and the
README's stage table (``python -m pipeline.running.stages`` prints it; a test keeps the README equal),
the closing summary (each record's ``summary``) and the multi-worker role (``distributed``) all
come from it. Adding a stage is one record here and one function ``f(ctx) -> dict`` that asks for
upstream outputs by name (``ctx.input(stage, name)``, from the upstream record's ``outputs``).
No stage module imports another: what several stages share lives outside ``pipeline/running/stages``
(the training task: :mod:`pipeline.running.task`).
"""

from __future__ import annotations

from pipeline.running.stages.base import Context, MemoryRecorder, Recorder, Stage, StageError, train_split_facts
from pipeline.running.stages.compress import compress
from pipeline.running.stages.compress import summary_lines as compress_summary
from pipeline.running.stages.evaluate import evaluate
from pipeline.running.stages.evaluate import summary_lines as evaluate_summary
from pipeline.running.stages.prepare import data_name, dataset_facts, prepare
from pipeline.running.stages.register import register
from pipeline.running.stages.register import summary_lines as register_summary
from pipeline.running.stages.report import report
from pipeline.running.stages.report import summary_lines as report_summary
from pipeline.running.stages.specialize import specialize, specialize_unused
from pipeline.running.stages.specialize import summary_lines as specialize_summary
from pipeline.running.stages.teacher import teacher, teacher_facts, teacher_unused
from pipeline.running.stages.train import train

# Settings sections that shape the trained network (TTA only changes evaluation).
_TRAINING = (
    "seed",
    "audio",
    "data",
    "model",
    "augment",
    "train",
    "distill.enabled",
    "distill.temperature",
    "distill.weight",
)
_SPLIT_LIST = "the `data.train_split` list"
_CHECKS = ("data.scan_audio", "data.strict_checks")  # prepare's business: its outputs' digest covers them
# Settings no stage output depends on: how fast clips are decoded, not which values come out (the cached
# and the parallel pipelines give the same elements in the same order: tests/test_inputs.py). A stage may
# read them without declaring them; tests/test_settings_read.py checks every other read is declared.
OUTPUT_NEUTRAL = ("data.cache", "data.num_parallel_calls")


def _teacher_external(params):
    """The imported logits file's digest and, with ``data.train_split``, its list's digest."""
    split = train_split_facts(params)
    return teacher_facts(params) if split is None else {"teacher": teacher_facts(params), "train_split": split}


STAGES: tuple[Stage, ...] = (
    Stage(
        "prepare",
        prepare,
        main_output="index.csv",
        settings=("data.scan_audio", "data.strict_checks"),
        outputs={
            "index": "index.csv",
            "summary": "summary.json",
            "counts": "summary.csv",
            "audio_scan": "audio_scan.csv",
        },
        external=dataset_facts,
        reads="the dataset (`data.source`)",
        writes="`prepare/index.csv` (filename, scene_label, label, city, identifier, device, split, WAV header "
        "facts, content hash), `summary.json` (with the dataset checks' warnings), `summary.csv` (clips per split x "
        "class x device), `audio_scan.csv` (per clip: content hash, peak, clipped fraction)",
    ),
    Stage(
        "teacher",
        teacher,
        upstream=("prepare",),
        main_output="logits.npz",
        outputs={"logits": "logits.npz", "metrics": "metrics.json"},
        settings=("seed", "audio", "data", "model", "augment", "train", "distill.teacher"),
        exclude=("augment.tta", *_CHECKS),
        unused=teacher_unused,
        unused_note="not `augment.device_response`, `augment.freq_mixstyle` unless "
        "`distill.teacher.device_augmentations`; an imported teacher (`distill.teacher.logits`): only `seed`, "
        "`data`, `distill.teacher` and the file's digest",
        resumable=True,
        distributed=True,
        external=_teacher_external,
        external_note="the `data.train_split` list",
        when=lambda params: params.distill.enabled,
        headline=("teacher_macro_accuracy", "teacher_log_loss", "teacher_unseen_macro_accuracy"),
        reads="`prepare/` (only with `distill.enabled`)",
        writes="`teacher/logits.npz` (the ensemble's logits for the training clips), `metrics.json`, "
        "`teacherK/` (each member's model and checkpoints)",
    ),
    Stage(
        "train",
        train,
        upstream=("prepare", "teacher"),
        main_output="model.keras",
        outputs={"model": "model.keras", "best": "best.keras", "history": "history.json", "curves": "curves.png"},
        settings=_TRAINING,
        exclude=("augment.tta", *_CHECKS),
        external=train_split_facts,
        external_note=_SPLIT_LIST,
        resumable=True,
        distributed=True,
        reads="`prepare/`",
        writes="`train/model.keras`, `best.keras` (best validation loss), `history.json`, `curves.png`, `checkpoints/`",
    ),
    Stage(
        "specialize",
        specialize,
        upstream=("prepare", "train"),
        main_output="models.json",
        outputs={"models": "models.json", "metrics": "metrics.json"},
        settings=(*_TRAINING, "specialize"),
        exclude=("augment.tta", *_CHECKS),
        unused=specialize_unused,
        unused_note="not `distill` (no distillation while fine-tuning), not `augment.device_response`, "
        "`augment.freq_mixstyle` unless `specialize.device_augmentations`",
        external=train_split_facts,
        external_note=_SPLIT_LIST,
        resumable=True,
        when=lambda params: params.specialize.enabled,
        summary=specialize_summary,
        reads="`prepare/`, `train/` (only with `specialize.enabled`)",
        writes="`specialize/<device>/model.keras` (the general model fine-tuned on that device's clips), "
        "`models.json` (device -> model), `metrics.json`",
    ),
    Stage(
        "evaluate",
        evaluate,
        upstream=("prepare", "train"),
        optional=("specialize",),
        main_output="metrics.json",
        outputs={
            "metrics": "metrics.json",
            "per_device": "per_device.csv",
            "per_class": "per_class.csv",
            "predictions": "predictions.csv",
            "confusion_matrix": "confusion_matrix.png",
            "device_accuracy": "device_accuracy.png",
            "training_curves": "training_curves.png",
            "size_vs_accuracy": "size_vs_accuracy.png",
        },
        settings=(
            "seed",
            "name",
            "audio",
            "model.name",
            "augment",
            "evaluate",
            "data.max_eval_clips",
            "data.max_train_clips",
            "data.validation",
            "data.train_split",
        ),
        external=train_split_facts,
        external_note=_SPLIT_LIST,
        headline=(
            "macro_accuracy",
            "log_loss",
            "tta_macro_accuracy",
            "tta_log_loss",
            "tta_macs_per_clip",
            "tta_masks_macro_accuracy",
            "tta_masks_log_loss",
            "tta_masks_macs_per_clip",
            "group_unseen_macro_accuracy",
            "group_seen_macro_accuracy",
            "model_params",
            "model_macs",
            "model_int8_bytes_estimate",
        ),
        summary=evaluate_summary,
        reads="`prepare/`, `train/`",
        writes="`evaluate/metrics.json`, `per_device.csv`, `per_class.csv`, `predictions.csv` (and `*_tta.*`, "
        "`*_tta_masks.*` per TTA mode), plots",
    ),
    Stage(
        "compress",
        compress,
        upstream=("prepare", "train"),
        optional=("specialize",),
        main_output="model_int8.tflite",
        outputs={
            "model_int8": "model_int8.tflite",
            "model_int8_ptq": "model_int8_ptq.tflite",
            "frontend": "frontend.tflite",
            "metrics": "metrics.json",
            "package": "package",
            "package_archive": "package.tar.gz",
        },
        settings=("seed", "name", "audio", "model", "compress", "train", "data", "evaluate.batch_size"),
        exclude=_CHECKS,
        external=train_split_facts,
        external_note=_SPLIT_LIST,
        headline=("int8_macro_accuracy", "int8_log_loss", "int8_size_bytes", "int8_macs", "int8_accuracy_drop"),
        summary=compress_summary,
        reads="`prepare/`, `train/`",
        writes="`compress/model_int8.tflite`, `model_int8_ptq.tflite`, `frontend.tflite`, `metrics.json`, "
        "`package/` (the installable `asc_infer` package), `package.tar.gz`",
    ),
    Stage(
        "report",
        report,
        upstream=("prepare", "evaluate"),
        optional=("compress", "teacher"),
        main_output="report.md",
        outputs={"markdown": "report.md", "html": "report.html"},
        summary=report_summary,
        reads="`prepare/`, `evaluate/`, `compress/` and `teacher/` (when complete)",
        writes="`report/report.md`, `report.html` and the plots",
    ),
    # Last: a registry that is down costs nothing else of --stage all; nothing reads its outputs.
    Stage(
        "register",
        register,
        upstream=("compress",),
        main_output="registered.json",
        outputs={"registered": "registered.json"},
        settings=("tracking.uri", "tracking.registered_model"),
        summary=register_summary,
        reads="`compress/package/`",
        writes="`register/registered.json` (model URI, version, run id, package digest, the version's tags); "
        "in the MLflow store: the package as a pyfunc model of its run and a new version of "
        "`tracking.registered_model` tagged with the int8 metrics and the training run",
    ),
)

NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def get(name: str, registry: tuple[Stage, ...] = STAGES) -> Stage:
    """The record of stage ``name``."""
    for stage in registry:
        if stage.name == name:
            return stage
    raise StageError(f"unknown stage {name!r}; available: {', '.join(s.name for s in registry)}")


def table(registry: tuple[Stage, ...] = STAGES) -> str:
    """The README's stage table (markdown), made from the records."""
    rows = [
        "| stage | reads | writes under `--workdir` (default `work/`) | reused when these are unchanged |",
        "| --- | --- | --- | --- |",
    ]
    for stage in registry:
        parts = [f"`{s}`" for s in stage.settings or ()]
        parts += [f"not `{s}`" for s in stage.exclude]
        parts += [stage.unused_note] if stage.unused_note else []
        parts += [stage.external_note] if stage.external else []
        parts += [f"`{up}/` outputs" for up in stage.upstream]
        reuse = "never reused: always runs" if stage.settings is None else ", ".join(parts)
        reuse += "; an interrupted run resumes" if stage.resumable else ""
        rows.append(f"| `{stage.name}` | {stage.reads} | {stage.writes} | {reuse} |")
    return "\n".join(rows)


__all__ = [
    "NAMES",
    "STAGES",
    "Context",
    "MemoryRecorder",
    "Recorder",
    "Stage",
    "StageError",
    "data_name",
    "get",
    "table",
]
