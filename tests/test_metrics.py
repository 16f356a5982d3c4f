"""Tests for evaluate.metrics against hand-computed values.

The worked example (3 classes x, y, z; 6 clips; devices A, B, S1, S4):

  clip  true  probs (x, y, z)     device  pred  correct  -log p(true)
  0     x     0.7  0.2  0.1       "a"     x     yes      -ln 0.7  = 0.35667494393873245
  1     x     0.6  0.3  0.1       "A"     x     yes      -ln 0.6  = 0.5108256237659907
  2     x     0.4  0.5  0.1       "S1"    y     no       -ln 0.4  = 0.916290731874155
  3     y     0.2  0.6  0.2       "s1"    y     yes      -ln 0.6  = 0.5108256237659907
  4     y     0.5  0.25 0.25      "S4"    x     no       -ln 0.25 = 1.3862943611198906
  5     z     0.0  1.0  0.0       "b"     y     no       -ln 1e-15 = 34.538776394910684 (clipped)

Class z is never predicted; devices B and S4 have one clip each; clip 5 has
probabilities exactly 0 and 1.
"""

import json

import numpy as np
import pandas as pd
import pytest

from evaluate import metrics as M

NAMES = ("x", "y", "z")
Y = np.array([0, 0, 0, 1, 1, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.4, 0.5, 0.1],
        [0.2, 0.6, 0.2],
        [0.5, 0.25, 0.25],
        [0.0, 1.0, 0.0],
    ]
)
DEV = np.array(["a", "A", "S1", "s1", "S4", "b"])

L07, L06, L04, L025 = 0.35667494393873245, 0.5108256237659907, 0.916290731874155, 1.3862943611198906
L_CLIP = 34.538776394910684  # -ln(1e-15)
LN10 = 2.302585092994046


@pytest.fixture(scope="module")
def m():
    return M.compute_metrics(Y, P, DEV, class_names=NAMES)


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def test_constants():
    assert M.CLASSES == (
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
    )
    assert M.DEVICES == ("A", "B", "C", "S1", "S2", "S3", "S4", "S5", "S6")
    assert M.DEVICE_GROUPS == {"real": ("A", "B", "C"), "seen": ("S1", "S2", "S3"), "unseen": ("S4", "S5", "S6")}


def test_overall(m):
    o = m["overall"]
    assert o["n"] == 6
    assert o["accuracy"] == approx(3 / 6)
    # class-wise recall: x 2/3, y 1/2, z 0/1 -> mean 7/18
    assert o["macro_accuracy"] == approx(7 / 18)
    total = L07 + L06 + L04 + L06 + L025 + L_CLIP
    assert o["log_loss"] == approx(total / 6)
    ll_x, ll_y, ll_z = (L07 + L06 + L04) / 3, (L06 + L025) / 2, L_CLIP
    assert o["macro_log_loss"] == approx((ll_x + ll_y + ll_z) / 3)
    pc = o["per_class"]
    assert list(pc) == ["x", "y", "z"]
    assert pc["x"] == {"n": 3, "accuracy": approx(2 / 3), "log_loss": approx(ll_x)}
    assert pc["y"] == {"n": 2, "accuracy": approx(0.5), "log_loss": approx(ll_y)}
    # never predicted: recall 0; its clip has p = 0 -> clipped, finite loss
    assert pc["z"] == {"n": 1, "accuracy": 0.0, "log_loss": approx(ll_z)}


def test_confusion_matrix(m):
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]


def test_per_device(m):
    pd_ = m["per_device"]
    # lower-case names normalised; order follows DEVICES
    assert list(pd_) == ["A", "B", "S1", "S4"]
    assert pd_["A"] == {
        "n": 2,
        "accuracy": 1.0,
        "macro_accuracy": 1.0,
        "log_loss": approx((L07 + L06) / 2),
        "macro_log_loss": approx((L07 + L06) / 2),
    }
    # one clip each
    assert pd_["B"] == {
        "n": 1,
        "accuracy": 0.0,
        "macro_accuracy": 0.0,
        "log_loss": approx(L_CLIP),
        "macro_log_loss": approx(L_CLIP),
    }
    assert pd_["S4"] == {
        "n": 1,
        "accuracy": 0.0,
        "macro_accuracy": 0.0,
        "log_loss": approx(L025),
        "macro_log_loss": approx(L025),
    }
    # S1: x wrong, y right -> recall 0 and 1
    assert pd_["S1"] == {
        "n": 2,
        "accuracy": 0.5,
        "macro_accuracy": 0.5,
        "log_loss": approx((L04 + L06) / 2),
        "macro_log_loss": approx((L04 + L06) / 2),
    }


def test_per_device_class(m):
    pdc = m["per_device_class"]
    assert list(pdc) == ["A", "B", "S1", "S4"]
    assert pdc["A"]["x"] == {"n": 2, "accuracy": 1.0, "log_loss": approx((L07 + L06) / 2)}
    assert pdc["A"]["y"] == {"n": 0, "accuracy": None, "log_loss": None}
    assert pdc["S1"]["x"] == {"n": 1, "accuracy": 0.0, "log_loss": approx(L04)}
    assert pdc["S1"]["y"] == {"n": 1, "accuracy": 1.0, "log_loss": approx(L06)}
    assert pdc["B"]["z"] == {"n": 1, "accuracy": 0.0, "log_loss": approx(L_CLIP)}


def test_device_groups(m):
    g = m["per_device_group"]
    assert list(g) == ["real", "seen", "unseen"]
    # real = A + B = clips 0, 1, 5: 2 of 3 correct; recall x 1, z 0 -> 0.5
    assert g["real"]["devices"] == ["A", "B"]
    assert g["real"]["n"] == 3
    assert g["real"]["accuracy"] == approx(2 / 3)
    assert g["real"]["macro_accuracy"] == approx(0.5)
    assert g["real"]["log_loss"] == approx((L07 + L06 + L_CLIP) / 3)
    assert g["real"]["macro_log_loss"] == approx(((L07 + L06) / 2 + L_CLIP) / 2)
    assert g["seen"]["devices"] == ["S1"]
    assert g["seen"]["macro_accuracy"] == approx(0.5)
    assert g["unseen"]["devices"] == ["S4"]
    assert g["unseen"]["accuracy"] == 0.0
    assert m["per_device_group_class"]["real"]["x"] == {"n": 2, "accuracy": 1.0, "log_loss": approx((L07 + L06) / 2)}


def test_only_present_groups():
    m = M.compute_metrics([0, 1], [[0.9, 0.1], [0.2, 0.8]], ["s2", "S3"], class_names=("p", "q"))
    assert list(m["per_device"]) == ["S2", "S3"]
    assert list(m["per_device_group"]) == ["seen"]
    assert m["per_device_group"]["seen"]["accuracy"] == 1.0


def test_schema_and_json(m):
    assert set(m) == {
        "class_names",
        "overall",
        "per_device",
        "per_device_group",
        "per_device_class",
        "per_device_group_class",
        "confusion_matrix",
    }
    assert set(m["overall"]) == {"n", "accuracy", "macro_accuracy", "log_loss", "macro_log_loss", "per_class"}
    for s in m["per_device"].values():
        assert set(s) == {"n", "accuracy", "macro_accuracy", "log_loss", "macro_log_loss"}
    # strict JSON: no NaN, only builtin types
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m


def test_no_devices():
    m = M.compute_metrics(Y, P, class_names=NAMES)
    assert m["per_device"] == {} and m["per_device_group"] == {} and m["per_device_class"] == {}
    assert m["overall"]["accuracy"] == approx(0.5)


def test_probability_one_for_true_class_and_float32():
    # p(true) = 1 exactly -> clipped to 1 - 1e-15: loss about 1e-15, not 0 or negative
    m = M.compute_metrics([1], [[0.0, 1.0, 0.0]], class_names=NAMES)
    assert 0.0 < m["overall"]["log_loss"] < 1e-14
    # float32 input: our clipping (in float64) still gives -ln(1e-15), where sklearn 1.9
    # would clip at float32 eps (-ln 1.19e-7 = 15.9)
    m = M.compute_metrics([0], np.array([[0.0, 1.0, 0.0]], np.float32), class_names=NAMES)
    assert m["overall"]["log_loss"] == approx(L_CLIP)


def test_ten_classes_uniform_and_perfect():
    y = np.arange(10).repeat(2)
    m = M.compute_metrics(y, np.full((20, 10), 0.1))
    assert m["overall"]["log_loss"] == approx(LN10)
    assert m["overall"]["macro_log_loss"] == approx(LN10)
    # argmax of a uniform row is class 0 -> 2 of 20 correct, recall 1 for airport only
    assert m["overall"]["accuracy"] == approx(0.1)
    assert m["overall"]["macro_accuracy"] == approx(0.1)
    assert m["overall"]["per_class"]["airport"]["accuracy"] == 1.0
    m = M.compute_metrics(y, np.eye(10)[y])
    assert m["overall"]["macro_accuracy"] == 1.0
    assert m["overall"]["log_loss"] < 1e-13


def test_class_absent_from_y_true_is_left_out_of_macro():
    # class z has no clip but is predicted once: macro over x and y only
    m = M.compute_metrics([0, 1, 1], [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]], class_names=NAMES)
    assert m["overall"]["macro_accuracy"] == approx((1.0 + 0.5) / 2)
    assert m["overall"]["per_class"]["z"] == {"n": 0, "accuracy": None, "log_loss": None}
    l08, l01 = 0.2231435513142097, 2.3025850929940455  # -ln 0.8, -ln 0.1
    assert m["overall"]["macro_log_loss"] == approx((l08 + (l01 + l08) / 2) / 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(probs=[0.5, 0.5, 0.0]), "probs: expected a 2-D"),
        (dict(probs=np.full((6, 2), 0.5)), "probs: 2 columns but 3 class_names"),
        (dict(probs=np.where(np.arange(18).reshape(6, 3) == 4, np.nan, P)), "probs: contains NaN"),
        (dict(probs=P * 2.0), r"probs: values must lie in \[0, 1\]"),
        (dict(probs=P - 0.5), r"probs: values must lie in \[0, 1\]"),
        (dict(probs=P * 0.9), "probs: rows must sum to 1"),
        (dict(y_true=[0, 1, 2]), "y_true: 3 labels but probs has 6 rows"),
        (dict(y_true=[0, 0, 0, 1, 1, 3]), r"y_true: label 3 out of range \[0, 2\]"),
        (dict(y_true=[0, 0, 0, 1, 1, -1]), r"y_true: label -1 out of range"),
        (dict(y_true=[0, 0, 0, 1, 1, 1.5]), "y_true: expected integer"),
        (dict(y_true=list("abcdef")), "y_true: expected integer"),
        (dict(devices=["A", "A", "S1", "S1", "S4", "D"]), "devices: unknown device 'D'"),
        (dict(devices=["A", "B"]), "devices: expected 6 names"),
        (dict(class_names=("x", "x", "z")), "class_names: duplicate"),
    ],
)
def test_validation_errors(kwargs, match):
    args = dict(y_true=Y, probs=P, devices=DEV, class_names=NAMES)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        M.compute_metrics(**args)


def test_empty_input():
    with pytest.raises(ValueError, match=r"probs: no clips"):
        M.compute_metrics(np.zeros(0, int), np.zeros((0, 3)), class_names=NAMES)


def test_results_tables(m):
    acc, ll = M.results_tables(m)
    cols = ["all", "A", "B", "S1", "S4", "real", "seen", "unseen"]
    assert list(acc.columns) == cols and list(ll.columns) == cols
    assert list(acc.index) == ["x", "y", "z", "overall"]
    assert acc.loc["x", "all"] == approx(2 / 3)
    assert acc.loc["overall", "all"] == approx(7 / 18)  # DCASE accuracy: class average
    assert acc.loc["overall", "real"] == approx(0.5)
    assert acc.loc["x", "S1"] == 0.0 and acc.loc["y", "S1"] == 1.0
    assert np.isnan(acc.loc["y", "A"]) and np.isnan(ll.loc["z", "S1"])
    assert ll.loc["z", "B"] == approx(L_CLIP)
    assert ll.loc["overall", "S1"] == approx((L04 + L06) / 2)
    assert ll.loc["overall", "all"] == approx(m["overall"]["macro_log_loss"])


def test_write_tables(m, tmp_path):
    out = tmp_path / "tables"
    paths = M.write_tables(m, out)
    assert sorted(p.name for p in out.iterdir()) == ["per_class.csv", "per_device.csv"]
    dev = pd.read_csv(paths["per_device"], index_col=0)
    assert list(dev.index) == ["A", "B", "S1", "S4", "real", "seen", "unseen", "overall"]
    assert list(dev.columns) == ["n", "accuracy", "macro_accuracy", "log_loss", "macro_log_loss"]
    assert dev.loc["overall", "n"] == 6 and dev.loc["B", "n"] == 1
    assert dev.loc["real", "accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert dev.loc["overall", "macro_accuracy"] == pytest.approx(7 / 18, abs=1e-6)
    cls = pd.read_csv(paths["per_class"], index_col=0)
    assert list(cls.index) == ["x", "y", "z", "overall"]
    assert list(cls.columns[:4]) == ["all_accuracy", "all_log_loss", "A_accuracy", "A_log_loss"]
    assert len(cls.columns) == 16
    assert cls.loc["z", "B_log_loss"] == pytest.approx(L_CLIP, abs=1e-6)
    assert np.isnan(cls.loc["y", "A_accuracy"])


def test_predictions_frame():
    probs = [[0.1, 0.2, 0.7], [0.3, 0.6, 0.1]]
    df = M.predictions_frame(["f0.wav", "f1.wav"], [2, 0], probs, NAMES)
    assert list(df.columns) == ["filename", "true_label", "predicted_label", "x", "y", "z"]
    assert df["true_label"].tolist() == ["z", "x"]
    assert df["predicted_label"].tolist() == ["z", "y"]
    assert df["y"].tolist() == [0.2, 0.6]
    df = M.predictions_frame(["f0.wav"], None, [[0.1, 0.2, 0.7]], NAMES)
    assert list(df.columns) == ["filename", "predicted_label", "x", "y", "z"]
    with pytest.raises(ValueError, match="probs: expected shape"):
        M.predictions_frame(["f0.wav"], None, [[0.5, 0.5]], NAMES)


def test_flatten_for_mlflow(m):
    flat = M.flatten_for_mlflow(m)
    stats = ["accuracy", "macro_accuracy", "log_loss", "macro_log_loss"]
    expected = set(stats)
    expected |= {f"device_{d}_{s}" for d in ("A", "B", "S1", "S4") for s in stats}
    expected |= {f"group_{g}_{s}" for g in ("real", "seen", "unseen") for s in stats}
    expected |= {f"class_{c}_{s}" for c in NAMES for s in ("accuracy", "log_loss")}
    assert set(flat) == expected
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["macro_accuracy"] == approx(7 / 18)
    assert flat["device_B_log_loss"] == approx(L_CLIP)
    assert flat["group_unseen_accuracy"] == 0.0
    assert flat["class_x_accuracy"] == approx(2 / 3)
    pre = M.flatten_for_mlflow(m, prefix="int8")
    assert pre["int8_accuracy"] == flat["accuracy"] and len(pre) == len(flat)
    assert "test/accuracy" in M.flatten_for_mlflow(m, prefix="test/")


def test_flatten_skips_none_and_sanitises():
    m = M.compute_metrics([0, 0], [[0.9, 0.1], [0.6, 0.4]], class_names=("a b", "c:d"))
    flat = M.flatten_for_mlflow(m)
    assert "class_a b_accuracy" in flat  # space is allowed by MLflow
    assert "class_c_d_accuracy" not in flat  # class c:d has no clip -> None -> skipped
    m = M.compute_metrics([1], [[0.1, 0.9]], class_names=("a", "c:d"))
    assert "class_c_d_accuracy" in M.flatten_for_mlflow(m)
