"""DCASE2024 data-efficiency subsets (``data.train_split``) and the sweep's DCASE2024 ranking score."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_overrides

from pipeline.core import config
from pipeline.core.config import ConfigError
from pipeline.data import splits
from pipeline.running import runner
from pipeline.running.stages.base import clips, train_split_facts
from pipeline.scaling import sweep as sweeps
from pipeline.scaling import sweep_summary


def _train(n_scenes=3, segments=20, clips_per_segment=4) -> pd.DataFrame:
    rows = []
    for s in range(n_scenes):
        for g in range(segments):
            for k in range(clips_per_segment):
                dev = ("a", "b", "s1", "s2")[k % 4]
                rows.append((f"audio/scene{s}-lyon-{100 + g}-{2000 + g}-{k}-{dev}.wav", f"scene{s}"))
    return pd.DataFrame(rows, columns=["filename", "scene_label"])


def test_make_splits_are_nested_whole_segments_scene_balanced_and_seeded(tmp_path):
    train = _train()
    counts = splits.make_splits(train, tmp_path / "a", seed=3)
    assert counts == {5: 12, 10: 24, 25: 60, 50: 120, 100: 240}  # whole 4-clip segments: 1, 2, 5, 10, 20 per scene
    lists = {p: pd.read_csv(tmp_path / "a" / f"split{p}.csv", sep="\t") for p in splits.SUBSETS}
    assert list(lists[5].columns) == ["filename", "scene_label"]
    for small, large in zip(splits.SUBSETS, splits.SUBSETS[1:], strict=False):
        assert set(lists[small].filename) <= set(lists[large].filename)
    for p, table in lists.items():
        assert table.scene_label.value_counts().nunique() == 1  # every scene the same share
        segs = table.filename.map(splits.segment_of)
        assert (segs.value_counts() == 4).all(), p  # a recording segment is whole or absent
    assert set(lists[100].filename) == set(train.filename)
    splits.make_splits(train, tmp_path / "b", seed=3)
    splits.make_splits(train, tmp_path / "c", seed=4)
    same = (tmp_path / "a/split25.csv").read_text() == (tmp_path / "b/split25.csv").read_text()
    other = (tmp_path / "a/split25.csv").read_text() == (tmp_path / "c/split25.csv").read_text()
    assert same and not other
    assert splits.segment_of("audio/airport-lisbon-1000-40000-3-a.wav") == "airport-lisbon-1000-40000"


def test_the_built_in_set_writes_its_lists_in_the_official_form(tiny_dataset):
    train = pd.read_csv(tiny_dataset / "evaluation_setup/fold1_train.csv", sep="\t")
    full = pd.read_csv(tiny_dataset / "splits/split100.csv", sep="\t")
    assert sorted(full.filename) == sorted(train.filename)
    prev: set = set()
    for p in splits.SUBSETS:
        names = set(splits.read_split(tiny_dataset / f"splits/split{p}.csv"))
        assert prev <= names and names <= set(train.filename)
        prev = names


def _index(root) -> pd.DataFrame:
    train = _train()
    rows = [
        {"filename": f, "split": "train", "device": f.rsplit("-", 1)[1][:-4].upper(), "label": int(s[-1])}
        for f, s in zip(train.filename, train.scene_label, strict=True)
    ]
    rows += [{"filename": f"audio/e{k}-s4.wav", "split": "evaluate", "device": "S4", "label": k % 3} for k in range(9)]
    index = pd.DataFrame(rows)
    index.attrs["root"] = str(root)
    return index


def test_train_split_restricts_training_to_the_listed_clips_and_nothing_else(tmp_path):
    index = _index(tmp_path)
    splits.make_splits(_train(), tmp_path / "splits", seed=0)
    listed = set(pd.read_csv(tmp_path / "splits/split25.csv", sep="\t").filename)
    params = config.load(None, ["data.train_split=25"])
    assert params.data.train_split == "25"  # YAML reads a number; the setting keeps its text
    train = clips(index, "train", params)
    assert set(train.filename) == listed and len(train) == 60
    assert clips(index, "evaluate", params).equals(clips(index, "evaluate", config.load(None)))
    # a path works the same way, and the subsample and the hold-out come after the list
    custom = tmp_path / "mine.csv"
    custom.write_text("filename\tscene_label\n" + "".join(f"{f}\tx\n" for f in sorted(listed)[:30]))
    both = config.load(None, [f"data.train_split={custom}", "data.max_train_clips=20", "data.validation=s1"])
    tr, val = clips(index, "train", both), clips(index, "validation", both)
    assert len(tr) + len(val) == 20 and set(tr.filename) | set(val.filename) <= set(sorted(listed)[:30])
    assert set(val.device) == {"S1"} and "S1" not in set(tr.device)


def test_bad_split_lists_are_named(tmp_path):
    index = _index(tmp_path)
    with pytest.raises(splits.SplitError, match=r"no splits/split5\.csv; for TAU22: python -m pipeline\.data download"):
        clips(index, "train", config.load(None, ["data.train_split=5"]))
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,scene_label\naudio/x.wav,airport\n")
    with pytest.raises(splits.SplitError, match=r"(?s)bad\.csv: 1 problem.*no 'filename' column.*comma-separated\?"):
        clips(index, "train", config.load(None, [f"data.train_split={bad}"]))
    bad.write_text("filename\naudio/nowhere-1-a.wav\n" + index.filename[0] + "\n")
    with pytest.raises(
        splits.SplitError, match=r"1 of its 2 file\(s\) are not in the training split, e\.g\. audio/nowhere"
    ):
        clips(index, "train", config.load(None, [f"data.train_split={bad}"]))
    bad.write_text(f"filename\n{index.filename[0]}\n{index.filename[0]}\n")
    with pytest.raises(splits.SplitError, match=r"line 3: audio/scene0-lyon-100-2000-0-a\.wav listed twice"):
        clips(index, "train", config.load(None, [f"data.train_split={bad}"]))
    with pytest.raises(splits.SplitError, match="no such file"):
        clips(index, "train", config.load(None, [f"data.train_split={tmp_path / 'absent.csv'}"]))


@pytest.mark.parametrize("value, message", [("30", "'30' is not a DCASE2024 subset"), ("' '", "empty")])
def test_bad_train_split_values_are_refused_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=rf"data\.train_split: .*{message}"):
        config.load(None, [f"data.train_split={value}"])


def test_the_list_keys_the_stages_that_read_training_clips(tmp_path):
    custom = tmp_path / "mine.csv"
    custom.write_text("filename\nA\n")
    params = config.load(None, [f"data.train_split={custom}"])
    before = train_split_facts(params)
    custom.write_text("filename\nBB\n")  # another size: the digest is read once per (path, size, mtime)
    assert train_split_facts(params) != before  # an edited list is read again
    assert train_split_facts(config.load(None)) is None
    assert train_split_facts(config.load(None, ["data.train_split=25"])) == {"train_split": "25"}  # built-in set
    real = config.load(None, [f"data.source={tmp_path}", "data.train_split=25"])
    assert train_split_facts(real)["file"] == f"missing: {tmp_path / 'splits/split25.csv'}"


def test_the_dcase2024_score_is_the_mean_over_the_five_subsets(tmp_path):
    sweep = sweeps.plan(None, [], ["data.train_split=5,10,25,50,100", "train.epochs=1,2"], "0,1")
    accs = {"5": 0.40, "10": 0.45, "25": 0.50, "50": 0.53, "100": 0.57}
    rows = []
    for combo in sweep.combos:
        cell = next(c for c in sweep.cells if c.combo == combo)
        settings = dict(cell.settings)
        bump = 0.1 if settings["train.epochs"] == "2" else 0.0
        rows.append(
            {
                "combo": f"c{combo}",
                **settings,
                "macro_accuracy_mean": accs[settings["data.train_split"]] + bump,
                "macro_accuracy_std": 0.01,
            }
        )
    table = sweep_summary.dcase2024_table(sweep, pd.DataFrame(rows))
    assert list(table["train.epochs"]) == ["1", "2"]
    assert table.dcase2024_score.tolist() == pytest.approx([0.49, 0.59])
    assert table.split25_macro_accuracy.tolist() == pytest.approx([0.50, 0.60])
    lines = sweep_summary.dcase2024_lines(table)
    assert lines[0] == (
        "  DCASE2024 score (train.epochs=1): 49.00 %  "
        "[macro accuracy by subset: 5 %: 40.0, 10 %: 45.0, 25 %: 50.0, 50 %: 53.0, 100 %: 57.0]"
    )
    partial = pd.DataFrame(rows[:-1])  # one subset without a finished run: no score
    assert sweep_summary.dcase2024_table(sweep, partial).complete.tolist() == [True, False]
    four = sweeps.plan(None, [], ["data.train_split=5,10,25,50"], None)
    assert sweep_summary.dcase2024_table(four, pd.DataFrame(rows)) is None  # not the five subsets: no score
    from evaluate.challenge_plots import plot_data_fraction

    png = plot_data_fraction(splits.SUBSETS, [("a", [0.4, 0.45, 0.5, 0.53, 0.57], [np.nan] * 5)], tmp_path / "d.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_run_on_a_subset_trains_on_it_and_the_report_says_so(tmp_path, tiny_dataset):
    overrides = tiny_overrides(
        tmp_path, tiny_dataset, **{"train.epochs": 1, "data.train_split": 50, "augment.tta.enabled": "false"}
    )
    params = config.load(None, overrides)
    runner.run_stages(params, tmp_path, ["prepare", "train", "evaluate", "report"], track=False)
    listed = pd.read_csv(tiny_dataset / "splits/split50.csv", sep="\t")
    index = pd.read_csv(tmp_path / "prepare/index.csv")
    data = json.loads((tmp_path / "evaluate/metrics.json").read_text())["training_data"]
    assert data == {
        "train_split": "50",
        "train_clips": len(listed),
        "training_split_clips": int((index.split == "train").sum()),
    }
    assert 0 < len(listed) < data["training_split_clips"]
    report = (tmp_path / "report/report.md").read_text()
    assert f"**Training data** (`data.train_split=50`): {len(listed)} of the" in report
