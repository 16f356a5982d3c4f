"""``python -m pipeline.submit``: the official results file's format (DCASE2024/2025 Task 1: tab-separated
``filename``, ``scene_label`` and one score column per class in the official order, one row per listed
file), the meta YAML and the package beside it."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.inference import asc_infer
from pipeline.inference.submit import device_of, main, results_columns

# The header of the official results file, as the DCASE2024 submission validator checks it
# (toni-heittola/dcase2024_task1_submission_validator) and the baselines write it.
OFFICIAL_HEADER = [
    "filename",
    "scene_label",
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
]


def test_header_and_device_names():
    assert results_columns() == OFFICIAL_HEADER
    assert device_of("audio/airport-lisbon-1000-40000-0-s1.wav") == "s1"
    assert device_of("audio/bus-lyon-1-2-3-a.wav") == "a" and device_of("17.wav") is None


@pytest.fixture(scope="module")
def evaluated(shipped_workdir, tiny_dataset, tmp_path_factory):
    """A copy of the shipped workdir (prepare, train, compress) with its evaluate stage run: the meta YAML's
    development results come from ``evaluate/metrics.json``."""
    from conftest import tiny_overrides

    from pipeline.core import config
    from pipeline.running import runner

    workdir, _ = shipped_workdir
    copy = tmp_path_factory.mktemp("submit-work")
    for name in ("prepare", "train", "compress"):
        shutil.copytree(workdir / name, copy / name)
    sets = {"compress.prune": "false", "train.epochs": 2, "augment.tta.enabled": "false"}
    runner.run_stages(config.load(None, tiny_overrides(copy, tiny_dataset, **sets)), copy, ["evaluate"], track=False)
    return copy


@pytest.mark.slow
def test_a_submission_folder_for_fold1_test(evaluated, tiny_dataset, tmp_path, capsys):
    workdir = evaluated
    out = tmp_path / "submission"
    label = "Doe_TST_task1_1"
    args = [str(workdir), "--data", str(tiny_dataset), "--out", str(out), "--label", label, "--no-progress"]
    assert main([*args, "--log-level", "WARNING"]) == 0
    listed = pd.read_csv(tiny_dataset / "evaluation_setup/fold1_test.csv", sep="\t")
    with open(out / f"{label}.output.csv", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == OFFICIAL_HEADER
    body = rows[1:]
    assert [r[0] for r in body] == [f.split("/", 1)[1] for f in listed.filename]  # one row per file, in order
    scores = np.array([[float(v) for v in r[2:]] for r in body])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-4)
    assert [r[1] for r in body] == [OFFICIAL_HEADER[2 + k] for k in scores.argmax(axis=1)]
    # the scores are the shipped model's probabilities
    model = asc_infer.load_model(workdir / "compress/package")
    first = asc_infer.predict(model, [str(tiny_dataset / listed.filename[0])])[0]
    np.testing.assert_allclose(scores[0], first, atol=2e-6)
    meta = yaml.safe_load((out / f"{label}.meta.yaml").read_text())
    assert meta["submission"]["label"] == label and meta["submission"]["name"] == "FILL IN"
    cx = model.complexity
    assert meta["system"]["complexity"]["macs"] == cx["macs"]
    assert meta["system"]["complexity"]["total_model_size"] == cx["size_bytes"]
    dev = meta["results"]["development_dataset"]["general"]
    assert set(dev["class_wise"]) == set(OFFICIAL_HEADER[2:]) and "a" in dev["device_wise"]
    assert (out / label / "asc_infer" / "model" / "model_int8.tflite").is_file()
    assert "wrote" in capsys.readouterr().out


def test_bad_inputs_are_named(evaluated, tmp_path, capsys):
    workdir = evaluated
    assert main([str(workdir), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no evaluation_setup/fold1_test.csv" in capsys.readouterr().err
    assert main([str(workdir), "--data", str(tmp_path), "--label", "bad label"]) == 2
    assert "Lastname_INST_task1_N" in capsys.readouterr().err
    (tmp_path / "evaluation_setup").mkdir()
    (tmp_path / "evaluation_setup/fold1_test.csv").write_text("filename\naudio/missing.wav\n")
    assert main([str(workdir), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "1 listed file(s) do not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failed_package_copy_leaves_no_results_file_and_no_half_folder(
    evaluated, tiny_dataset, tmp_path, monkeypatch, capsys
):
    """A copy that fails part-way (a full disk) leaves neither a results file nor a half package; the next
    run completes the folder."""
    import pipeline.inference.submit as submit_module

    out, label = tmp_path / "submission", "Doe_TST_task1_2"
    args = [str(evaluated), "--data", str(tiny_dataset), "--out", str(out), "--label", label, "--no-progress"]
    assert main(args) == 0
    real_copytree = shutil.copytree

    def full_disk(src, dst, *a, **k):
        if str(src).endswith(".tflite"):
            raise OSError(28, "No space left on device")
        return shutil.copy2(src, dst, *a, **k)

    def failing_copytree(src, dst, *args, **kwargs):  # a nested folder's call passes copy_function on itself
        if args:
            return real_copytree(src, dst, *args, **kwargs)
        return real_copytree(src, dst, copy_function=full_disk, **kwargs)

    monkeypatch.setattr(submit_module.shutil, "copytree", failing_copytree)
    assert main(args) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not (out / f"{label}.output.csv").exists()  # the earlier results file went first
    assert sorted(p.name for p in out.iterdir()) == [label, f"{label}.meta.yaml"]  # no staged folder left
    assert (out / label / "asc_infer" / "model" / "model_int8.tflite").is_file()  # the earlier package, whole
    monkeypatch.setattr(submit_module.shutil, "copytree", real_copytree)
    assert main(args) == 0 and (out / f"{label}.output.csv").is_file()
