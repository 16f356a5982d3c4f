"""Imported teacher logits (``distill.teacher.logits``): the reader's checks and the teacher stage that uses them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_overrides

from pipeline.core import config, files
from pipeline.core.labels import CLASSES
from pipeline.data.teacher_logits import TeacherLogitsError, read_teacher_logits
from pipeline.running import runner
from pipeline.running.stages import StageError

EXAMPLE = Path(__file__).parent / "data" / "teacher_logits_example.csv"
NAMES = [f"audio/{c}-lisbon-{100 + i}-{4000 + i}-0-a.wav" for i, c in enumerate(CLASSES)]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in row) for row in [header, *rows]) + "\n")
    return path


def _one_hot_rows(names, classes=CLASSES, hot=None) -> list[list]:
    """A row per name: 5.0 for class ``hot[i]`` (default: the i-th class), 0.0 elsewhere, columns in ``classes``."""
    rows = []
    for i, name in enumerate(names):
        target = CLASSES[i % len(CLASSES)] if hot is None else hot[i]
        rows.append([name, *[5.0 if c == target else 0.0 for c in classes]])
    return rows


def test_the_shipped_example_reads_in_the_project_class_order():
    table = read_teacher_logits(EXAMPLE, NAMES)
    assert sorted(table) == sorted(NAMES)  # base names (x.wav) are the dataset's audio/x.wav
    for i, name in enumerate(NAMES):
        assert table[name].shape == (len(CLASSES),) and table[name].dtype == np.float32
        assert int(np.argmax(table[name])) == i and table[name][i] == pytest.approx(4.0)  # the header is reversed


def test_the_header_says_which_column_is_which_class(tmp_path):
    shuffled = list(np.random.default_rng(1).permutation(CLASSES))
    a = read_teacher_logits(_write_csv(tmp_path / "a.csv", ["filename", *CLASSES], _one_hot_rows(NAMES)), NAMES)
    b = read_teacher_logits(
        _write_csv(tmp_path / "b.csv", ["filename", *shuffled], _one_hot_rows(NAMES, shuffled)), NAMES
    )
    for name in NAMES:
        np.testing.assert_array_equal(a[name], b[name])


def test_npz_reads_like_csv(tmp_path):
    logits = np.random.default_rng(2).normal(size=(len(NAMES), len(CLASSES)))
    np.savez(tmp_path / "t.npz", filenames=np.array(NAMES), classes=np.array(CLASSES[::-1]), logits=logits[:, ::-1])
    table = read_teacher_logits(tmp_path / "t.npz", NAMES)
    np.testing.assert_allclose(np.stack([table[n] for n in NAMES]), logits, rtol=1e-6)


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (
            ["filename", *CLASSES],
            _one_hot_rows(NAMES[:-1]),
            r"1 of the 10 training clip\(s\) have no logits, e.g. audio/tram",
        ),
        (["filename", *CLASSES[:-1], "trams"], _one_hot_rows(NAMES), r"unknown class name\(s\) in the header: trams"),
        (["filename", *CLASSES[:-1], "trams"], _one_hot_rows(NAMES), r"no column for class\(es\): tram"),
        (["filename", *CLASSES[:-1], "bus"], _one_hot_rows(NAMES), r"class\(es\) named more than once: bus"),
        (["filename", *CLASSES], _one_hot_rows([*NAMES, NAMES[0]]), r"listed more than once \(rows 1 and 11\)"),
        (["filename", *CLASSES], [[NAMES[0], "nan", *[0.0] * 9], *_one_hot_rows(NAMES[1:])], "a logit is not finite"),
        (
            ["filename", *CLASSES],
            [[NAMES[0], "high", *[0.0] * 9], *_one_hot_rows(NAMES[1:])],
            "airport is not a number",
        ),
        (["filename", *CLASSES], [[NAMES[0], 1.0], *_one_hot_rows(NAMES[1:])], r"line 2: 2 fields, the header has 11"),
        (["name", *CLASSES], _one_hot_rows(NAMES), "no 'filename' column"),
    ],
)
def test_each_problem_is_named_with_the_file(tmp_path, header, rows, message):
    path = _write_csv(tmp_path / "t.csv", header, rows)
    with pytest.raises(TeacherLogitsError, match=message) as err:
        read_teacher_logits(path, NAMES)
    assert str(err.value).startswith(f"teacher logits {path} (distill.teacher.logits)")


def test_unusable_files_are_named(tmp_path):
    with pytest.raises(TeacherLogitsError, match="no such file"):
        read_teacher_logits(tmp_path / "absent.csv", NAMES)
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(TeacherLogitsError, match=r"unknown format '.json'"):
        read_teacher_logits(tmp_path / "t.json", NAMES)
    np.savez(tmp_path / "t.npz", filenames=np.array(NAMES), logits=np.zeros((10, 10)))
    with pytest.raises(TeacherLogitsError, match="no array classes"):
        read_teacher_logits(tmp_path / "t.npz", NAMES)
    np.savez(tmp_path / "u.npz", filenames=np.array(NAMES), classes=np.array(CLASSES), logits=np.zeros((9, 10)))
    with pytest.raises(TeacherLogitsError, match=r"logits has shape \[9, 10\]; filenames and classes say \[10, 10\]"):
        read_teacher_logits(tmp_path / "u.npz", NAMES)


@pytest.mark.slow
def test_the_teacher_stage_imports_logits_and_is_keyed_by_the_file(tmp_path, tiny_dataset):
    work = tmp_path / "work"
    index = pd.read_csv(
        runner.run_stages(config.load(None, tiny_overrides(work, tiny_dataset)), work, ["prepare"], track=False)[
            "prepare"
        ]["index"]
    )
    labelled = index[index.label >= 0]
    names = labelled.filename.tolist()
    hot = [CLASSES[label] for label in labelled.label]  # a perfect teacher
    path = _write_csv(tmp_path / "teacher.csv", ["filename", *CLASSES], _one_hot_rows(names, hot=hot))
    overrides = tiny_overrides(
        work, tiny_dataset, **{"distill.enabled": "true", "distill.teacher.logits": str(path), "train.epochs": 1}
    )
    params = config.load(None, overrides)
    first = runner.run_stages(params, work, ["prepare", "teacher", "train"], track=False)
    assert first["teacher"]["teacher_macro_accuracy"] == pytest.approx(1.0)
    stored = np.load(work / "teacher" / "logits.npz")
    train_names = stored["filenames"].tolist()
    assert set(train_names) == set(index[index.split == "train"].filename)
    assert [CLASSES[i] for i in stored["logits"].argmax(1)] == [hot[names.index(n)] for n in train_names]
    assert json.loads((work / "teacher" / "metrics.json").read_text())["imported"] == str(path)
    assert not any((work / "teacher").glob("teacher1"))  # no teacher was trained

    runner.run_stages(params, work, ["evaluate", "report"], track=False)
    report = (work / "report" / "report.md").read_text()
    assert f"- Distillation teacher (imported from `{path}`): macro accuracy 100.0%" in report
    assert "The teacher is not better" not in report

    again = runner.run_stages(params, work, ["teacher"], track=False)
    assert again["teacher"] == {"reused": True}
    _write_csv(path, ["filename", *CLASSES], _one_hot_rows(names, hot=hot[1:] + hot[:1]))  # the file changed
    third = runner.run_stages(params, work, ["teacher"], track=False)
    assert "teacher_macro_accuracy" in third["teacher"] and third["teacher"]["teacher_macro_accuracy"] < 1.0

    _write_csv(path, ["filename", *CLASSES], _one_hot_rows(names[1:], hot=hot[1:]))
    with pytest.raises(StageError, match=f"teacher logits {path}"):
        runner.run_stages(params, work, ["teacher"], track=False)
    assert files.read_marker(work / "teacher") is None  # no marker: nothing later takes the failed import as good
    with pytest.raises(StageError, match="teacher is missing or incomplete: run --stage teacher first"):
        runner.run_stages(params, work, ["train"], track=False)


def test_the_report_says_plainly_when_the_teacher_is_not_better():
    from evaluate.report import _teacher_lines

    student = {"overall": {"macro_accuracy": 0.5}, "per_device_group": {"unseen": {"macro_accuracy": 0.4}}}
    strong = _teacher_lines(
        {"members": 2, "teacher_macro_accuracy": 0.6, "teacher_unseen_macro_accuracy": 0.55}, student
    )
    assert strong == [
        "- Distillation teacher (ensemble of 2 trained here): macro accuracy 60.0% (unseen devices 55.0%) against "
        "this run's student 50.0% (unseen 40.0%)."
    ]
    weak = _teacher_lines({"imported": "t.csv", "teacher_macro_accuracy": 0.45}, student)
    assert weak[0].startswith("- Distillation teacher (imported from `t.csv`): macro accuracy 45.0%")
    assert weak[1].startswith("- **The teacher is not better than the student it teaches** (45.0% against 50.0%)")
    assert "not scored" in _teacher_lines({"imported": "t.csv"}, student)[0]
