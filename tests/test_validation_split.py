"""Leave-devices-out validation (``data.validation``): tuning that does not peek at the evaluate split.

With training devices held out (``data.validation=s3``), exactly those devices' training clips leave
training and become the validation split (early stopping, ``best.keras``); the evaluate split is
untouched, and the evaluate stage and the report give the pseudo-unseen figures next to the real
unseen ones.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import tiny_overrides

from pipeline.core import config
from pipeline.core.config import ConfigError
from pipeline.running import runner
from pipeline.running.stages import StageError
from pipeline.running.stages.base import clips, held_out_devices, validation_split


def _index() -> pd.DataFrame:
    rows = []
    for split, devices in (("train", ("A", "B", "C", "S1", "S2", "S3")), ("evaluate", ("A", "S3", "S4"))):
        for d in devices:
            for k in range(3):
                rows.append({"filename": f"audio/{split}-{d}-{k}.wav", "split": split, "device": d, "label": k})
    return pd.DataFrame(rows)


def test_held_out_devices_leave_training_and_nothing_else():
    index = _index()
    params = config.load(None, ["data.validation=s3,s1"])
    assert held_out_devices(params) == ("S3", "S1") and validation_split(params) == "validation"
    train, val, ev = (clips(index, s, params) for s in ("train", "validation", "evaluate"))
    everything = clips(index, "train", config.load(None))
    assert set(val.filename) == set(everything[everything.device.isin(["S1", "S3"])].filename)
    assert set(train.filename) == set(everything.filename) - set(val.filename)  # exactly those clips, nothing else
    assert sorted(set(train.device)) == ["A", "B", "C", "S2"]
    assert ev.equals(clips(index, "evaluate", config.load(None)))  # the evaluate split is untouched


def test_the_default_validates_on_the_evaluate_split():
    index, params = _index(), config.load(None)
    assert held_out_devices(params) == () and validation_split(params) == "evaluate"
    assert clips(index, "validation", params).equals(clips(index, "evaluate", params))
    assert len(clips(index, "train", params)) == 18


def test_the_subsample_is_drawn_before_the_hold_out():
    index = _index()
    params = config.load(None, ["data.validation=s3", "data.max_train_clips=10"])
    base = clips(index, "train", config.load(None, ["data.max_train_clips=10"]))
    train, val = clips(index, "train", params), clips(index, "validation", params)
    assert sorted([*train.filename, *val.filename]) == sorted(base.filename)
    assert set(val.device) <= {"S3"} and "S3" not in set(train.device)


def test_a_device_without_training_clips_is_named():
    index = _index()
    index = index[~((index.split == "train") & (index.device == "S2"))]
    with pytest.raises(
        StageError, match=r"data.validation: device\(s\) s2 have no clip in the training split \(it has a, b"
    ):
        clips(index, "train", config.load(None, ["data.validation=s2"]))


@pytest.mark.parametrize(
    "value, message",
    [
        ("evaluate,s3", "'evaluate' or training devices, not both"),
        ("a,b,c,s1,s2,s3", "leaves nothing to train on"),
        ("s4", "unknown value"),  # an unseen device cannot be held out of training: it is not in it
        ("s3,s3", "duplicate values"),
    ],
)
def test_bad_validation_settings_are_refused_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=message) as err:
        config.load(None, [f"data.validation={value}"])
    assert "data.validation" in str(err.value)


@pytest.mark.slow
def test_a_run_with_a_held_out_device_reports_pseudo_unseen_and_real_unseen(tmp_path, tiny_dataset):
    overrides = tiny_overrides(tmp_path, tiny_dataset, **{"train.epochs": 1, "data.validation": "s3"})
    params = config.load(None, overrides)
    runner.run_stages(params, tmp_path, ["prepare", "train", "evaluate", "report"], track=False)
    index = pd.read_csv(tmp_path / "prepare" / "index.csv")
    held = index[(index.split == "train") & (index.device == "S3") & (index.label >= 0)]
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert metrics["held_out_devices"] == ["S3"]
    val = metrics["splits"]["validation"]["plain"]
    assert val["overall"]["n"] == len(held) > 0 and set(val["per_device"]) == {"S3"}
    assert metrics["splits"]["evaluate"]["plain"]["overall"]["n"] == int((index.split == "evaluate").sum())
    history = json.loads((tmp_path / "train" / "history.json").read_text())["history"]
    assert len(history["val_loss"]) == 1  # validated (on the held-out clips) once per epoch
    report = (tmp_path / "report" / "report.md").read_text()
    assert "**Pseudo-unseen validation** (training devices S3 held out" in report
    assert f"their {len(held)} training clips left training" in report
