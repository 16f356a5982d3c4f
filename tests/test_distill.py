"""Knowledge distillation: the loss against a hand-computed example, the teacher stage's stored logits."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from models.distill import DistillationLoss, LabelAccuracy, pack_targets
from pipeline.core import config
from pipeline.core.labels import CLASSES
from pipeline.data.teacher_logits import read_teacher_logits
from pipeline.running import runner, stages, state
from pipeline.running.stages.teacher import teacher_params
from tests.conftest import tiny_overrides


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_distillation_loss_matches_hand_computation():
    student = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], np.float32)
    teacher = np.array([[1.0, 1.5, -0.5], [3.0, -1.0, 0.0]], np.float32)
    labels = np.array([0, 2])
    T, w = 2.0, 0.3
    # by hand: CE on the label, KL(p_t || p_s) at temperature T, scaled by T^2
    ce = -np.log(_softmax(student)[np.arange(2), labels])
    pt, ps = _softmax(teacher / T), _softmax(student / T)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(axis=1)
    expected = ((1 - w) * ce + w * T * T * kl).mean()
    loss = DistillationLoss(temperature=T, weight=w)
    got = float(loss(tf.constant(pack_targets(labels, teacher)), tf.constant(student)))
    assert got == pytest.approx(expected, rel=1e-5)
    # by hand for the first sample: p_t = softmax([0.5, 0.75, -0.25]) = [0.3628, 0.4658, 0.1714],
    # p_s = softmax([1.0, 0.25, -0.5]) = [0.5898, 0.2786, 0.1316]; KL = -0.1763 + 0.2394 + 0.0453
    assert kl[0] == pytest.approx(0.1084, abs=2e-4)


def test_plain_labels_give_plain_cross_entropy_and_accuracy_reads_the_label():
    student = tf.constant([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    plain = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(tf.constant([0, 2]), student)
    assert float(DistillationLoss(2.0, 0.9)(tf.constant([0, 2]), student)) == pytest.approx(float(plain), rel=1e-6)
    acc = LabelAccuracy(name="accuracy")
    acc.update_state(tf.constant(pack_targets([0, 0], np.zeros((2, 3)))), student)
    assert float(acc.result()) == 0.5


def test_weight_and_temperature_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(temperature=0.0)
    with pytest.raises(ValueError, match="weight must be in"):
        DistillationLoss(weight=1.5)


@pytest.mark.slow
def test_teacher_logits_are_stored_reused_and_recomputed(tmp_path, tiny_dataset):
    def params(**extra):
        sets = {
            "distill.enabled": "true",
            "distill.teacher.channels": "[8, 8, 16, 16]",
            "distill.teacher.hidden_units": 16,
            "distill.teacher.epochs": 1,
            "train.epochs": 1,
            **extra,
        }
        return config.load(None, tiny_overrides(tmp_path, tiny_dataset, **sets))

    first = runner.run_stages(params(), tmp_path, ["prepare", "teacher", "train"])
    stored = np.load(tmp_path / "teacher/logits.npz")
    index = pd.read_csv(tmp_path / "prepare/index.csv")
    assert stored["logits"].shape == (int((index.split == "train").sum()), 10)
    assert stored["members"].shape[0] == 1 and np.isfinite(stored["logits"]).all()
    assert sorted(stored["filenames"]) == sorted(index[index.split == "train"].filename)
    assert "teacher_macro_accuracy" in first["teacher"]
    history = json.loads((tmp_path / "train/history.json").read_text())["history"]
    assert np.isfinite(history["loss"]).all() and "accuracy" in history

    # same settings: the stored logits are reused (file untouched), the student too
    mtime = (tmp_path / "teacher/logits.npz").stat().st_mtime_ns
    again = runner.run_stages(params(), tmp_path, ["prepare", "teacher", "train"])
    assert again["teacher"] == {"reused": True} and again["train"] == {"reused": True}
    assert (tmp_path / "teacher/logits.npz").stat().st_mtime_ns == mtime

    # a student-only setting: teacher reused, student retrained
    third = runner.run_stages(params(**{"distill.temperature": 3.0}), tmp_path, ["prepare", "teacher", "train"])
    assert third["teacher"] == {"reused": True} and "reused" not in third["train"]

    # (the student's device augmentations leave the key of teachers trained without them: the
    # settings_of checks of test_teachers_leave_out_the_device_augmentations_unless_asked, no training)

    # (another teacher setting recomputes the teacher and, through its output's digest, the student: the
    # teacher's key holds distill.teacher, test_teachers_leave_out_the_device_augmentations_unless_asked,
    # and a stage's key holds its upstream outputs' digests, tests/test_runner.py)

    # the stored logits are an importable teacher (distill.teacher.logits) for another run, in class order
    names = stored["filenames"].tolist()
    imported = read_teacher_logits(tmp_path / "teacher/logits.npz", names)
    latest = np.load(tmp_path / "teacher/logits.npz")
    assert [str(c) for c in latest["classes"]] == list(CLASSES)
    np.testing.assert_allclose(np.stack([imported[n] for n in names]), latest["logits"], rtol=1e-6)


def test_teachers_leave_out_the_device_augmentations_unless_asked():
    """``teacher_params`` switches the device augmentations off by default; the key leaves their settings out."""
    on = ["augment.device_response.enabled=true", "augment.freq_mixstyle.enabled=true", "distill.enabled=true"]
    plain = config.load(None, on)
    member = teacher_params(plain, 0)
    assert not member.augment.device_response.enabled and not member.augment.freq_mixstyle.enabled
    assert member.augment.specaugment == plain.augment.specaugment and member.augment.time_shift.enabled
    assert sorted(stages.get("teacher").settings_of(plain)["augment"]) == ["specaugment", "time_shift"]

    both = config.load(None, [*on, "distill.teacher.device_augmentations=true"])
    member = teacher_params(both, 1)
    assert member.augment.device_response.enabled and member.augment.freq_mixstyle.enabled
    assert member.seed == both.seed + 2000
    assert {"device_response", "freq_mixstyle"} <= set(stages.get("teacher").settings_of(both)["augment"])

    # an imported teacher is a file read: the network, front end, augmentation and training settings are not in it
    imported = config.load(None, [*on, "distill.teacher.logits=teacher.csv"])
    assert sorted(stages.get("teacher").settings_of(imported)) == ["data", "distill.teacher", "seed"]


@pytest.mark.parametrize(
    ("student", "teacher", "expected"),
    [(False, None, False), (False, True, True), (True, False, False), (True, None, True)],
)
def test_teachers_have_their_own_specaugment_switch(student, teacher, expected):
    """``distill.teacher.specaugment`` sets the teachers' SpecAugment++ (null: the student's), the rest of
    SpecAugment++'s settings stay the run's, and the switch is in the teacher's key but not the student's."""
    modes = "[shift, masks]" if student else "[shift]"  # the masks TTA mode needs the student's SpecAugment++
    sets = ["distill.enabled=true", f"augment.specaugment.enabled={str(student).lower()}", f"augment.tta.modes={modes}"]
    if teacher is not None:
        sets.append(f"distill.teacher.specaugment={str(teacher).lower()}")
    params = config.load(None, sets)
    member = teacher_params(params, 0)
    assert member.augment.specaugment.enabled is expected
    assert dataclasses.replace(member.augment.specaugment, enabled=True) == dataclasses.replace(
        params.augment.specaugment, enabled=True
    )
    assert params.augment.specaugment.enabled is student  # the student's own switch is untouched
    flipped = config.load(None, [*sets, f"distill.teacher.specaugment={str(not expected).lower()}"])
    teacher_stage = stages.get("teacher")
    assert teacher_stage.settings_of(flipped) != teacher_stage.settings_of(params)
    assert teacher_params(flipped, 0).augment.specaugment.enabled is (not expected)


def test_teacher_is_skipped_without_distillation(tmp_path, tiny_dataset):
    p = config.load(None, tiny_overrides(tmp_path, tiny_dataset))
    assert not [s for s in runner.registry.STAGES if s.name == "teacher"][0].active(p)
    assert state.active_upstream(stages.get("train"), p) == ("prepare",)
