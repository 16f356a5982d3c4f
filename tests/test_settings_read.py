"""The real stages read only the settings their records declare (their reuse keys depend on them).

Each stage's function runs on a tiny synthetic set with a :class:`RecordingParams` view of the
parameters, which records the dotted path of every setting read (through the whole call tree:
the training task, the input pipeline, the model builder, the compressor). A read outside the
record's ``settings`` (or inside its ``exclude``) would let the runner reuse outputs made with
another value of that setting: a stale reuse.
"""

from __future__ import annotations

import pytest
from conftest import tiny_overrides
from test_architecture import RecordingParams, undeclared_reads

from pipeline.core import config
from pipeline.running import runner, stages
from pipeline.running.stages import Context, MemoryRecorder

pytestmark = pytest.mark.slow


def _run_recorded(name: str, params, workdir, scratch) -> set[str]:
    """The settings ``name``'s function reads, run into ``scratch`` on the complete upstream of ``workdir``."""
    stage = stages.get(name)
    reads: set[str] = set()
    out = scratch / name
    out.mkdir(parents=True)
    inputs = {up: workdir / up for up in (*stage.upstream, *stage.optional) if (workdir / up).is_dir()}
    ctx = Context(
        params=RecordingParams(params, "", reads),
        workdir=workdir,
        out=out,
        inputs=inputs,
        record=MemoryRecorder(),
        outputs={up: dict(stages.get(up).outputs) for up in inputs},
        settings=stage.settings_of(params),
    )
    stage.function(ctx)
    return reads


def test_train_evaluate_and_compress_read_only_their_declared_settings(tmp_path, tiny_dataset):
    # Holding out a device takes every branch the default takes and more (the validation split).
    params = config.load(None, tiny_overrides(tmp_path, tiny_dataset, **{"train.epochs": 1, "data.validation": "s3"}))
    workdir = tmp_path / "work"
    runner.run_stages(params, workdir, ["prepare", "train"], track=False)
    found = {}
    for name in ("train", "evaluate", "compress"):
        reads = _run_recorded(name, params, workdir, tmp_path / "recorded")
        assert reads, name
        found[name] = undeclared_reads(stages.get(name), reads, stages.OUTPUT_NEUTRAL, params=params)
    assert found == {"train": [], "evaluate": [], "compress": []}


@pytest.mark.extended  # long: outside the default run (docs/tests.md)
def test_the_teacher_reads_only_its_declared_settings(tmp_path, tiny_dataset):
    # the student's device augmentations on: teachers that leave them out must not read them (their key
    # leaves them out, so a change of them reuses the teachers); with device_augmentations they are read
    sets = {
        "train.epochs": 1,
        "data.validation": "s3",
        "distill.enabled": "true",
        "distill.teacher.channels": "[8, 8, 16, 16]",
        "distill.teacher.hidden_units": 16,
        "augment.device_response.enabled": "true",
        "augment.freq_mixstyle.enabled": "true",
    }
    workdir = tmp_path / "work"
    for device in ("false", "true"):
        params = config.load(
            None, tiny_overrides(tmp_path, tiny_dataset, **sets, **{"distill.teacher.device_augmentations": device})
        )
        runner.run_stages(params, workdir, ["prepare"], track=False)
        reads = _run_recorded("teacher", params, workdir, tmp_path / f"recorded-{device}")
        assert undeclared_reads(stages.get("teacher"), reads, stages.OUTPUT_NEUTRAL, params=params) == [], device
        assert any(r.startswith("augment.device_response") for r in reads) == (device == "true")
        # the member's params.yaml is a config file of the member: its network, seed and augmentations
        member = config.load(tmp_path / f"recorded-{device}" / "teacher" / "teacher1" / "params.yaml")
        assert list(member.model.channels) == [8, 8, 16, 16] and member.seed == params.seed + 1000
        assert member.augment.device_response.enabled == (device == "true") and not member.distill.enabled


def test_specialize_reads_only_its_declared_settings(tmp_path, tiny_dataset):
    sets = {"train.epochs": 1, "specialize.enabled": "true", "specialize.devices": "[a]", "specialize.epochs": 1}
    params = config.load(None, tiny_overrides(tmp_path, tiny_dataset, **sets))
    workdir = tmp_path / "work"
    runner.run_stages(params, workdir, ["prepare", "train"], track=False)
    reads = _run_recorded("specialize", params, workdir, tmp_path / "recorded")
    assert any(r.startswith("specialize.") for r in reads)
    assert undeclared_reads(stages.get("specialize"), reads, stages.OUTPUT_NEUTRAL, params=params) == []
    # the fine-tuned copy's params.yaml is a config file of it: its own epochs, seed, no distillation
    tuned = config.load(tmp_path / "recorded" / "specialize" / "a" / "params.yaml")
    assert tuned.train.epochs == 1 and tuned.seed == params.seed + 5000 and not tuned.distill.enabled
