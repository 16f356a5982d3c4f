"""Tests for evaluate.plots: each figure is a readable PNG of plausible size and content.

The figures were also inspected by eye when written (see the module docstrings).
"""

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib import _pylab_helpers

from evaluate import metrics as M
from evaluate import plots as P

ORANGE = (255, 127, 14)  # simulated, seen devices
RED = (214, 39, 40)  # simulated, unseen devices
BLUE = (31, 119, 180)  # real devices
DARKEST_BLUE = (8, 48, 107)  # "Blues" colormap at 1.0


def _read(path, min_hw=(300, 400), max_hw=(2500, 3000)):
    assert path.exists() and path.stat().st_size > 5_000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    h, w = img.shape[:2]
    assert min_hw[0] <= h <= max_hw[0] and min_hw[1] <= w <= max_hw[1], img.shape
    # not blank: a figure has both light background and dark ink
    assert img[..., :3].min() < 0.2 and img[..., :3].max() > 0.9
    # nothing left behind: no temporary files, no figure registered with pyplot
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert _pylab_helpers.Gcf.get_num_fig_managers() == 0
    return img


def _count(img, rgb, tol=3):
    px = np.round(img[..., :3] * 255).astype(int)
    return int(np.all(np.abs(px - np.array(rgb)) <= tol, axis=-1).sum())


@pytest.fixture(scope="module")
def metrics():
    rng = np.random.default_rng(0)
    n = 270
    y = np.tile(np.arange(10), 27)
    dev = np.repeat(np.array(M.DEVICES), 30)
    logits = rng.normal(size=(n, 10))
    logits[np.arange(n), y] += np.where(np.isin(dev, ["S4", "S5", "S6"]), 0.5, 2.5)
    p = np.exp(logits)
    return M.compute_metrics(y, p / p.sum(1, keepdims=True), dev)


def test_confusion_matrix(metrics, tmp_path):
    out = P.plot_confusion_matrix(metrics["confusion_matrix"], M.CLASSES, tmp_path / "a" / "cm.png")
    assert out == tmp_path / "a" / "cm.png"
    img = _read(out, min_hw=(500, 500))
    # identity matrix, row-normalised: diagonal cells at 1.0 are the colormap's darkest blue
    out2 = P.plot_confusion_matrix(np.eye(3) * 7, ["p", "q", "r"], tmp_path / "eye.png")
    assert _count(_read(out2), DARKEST_BLUE) > 3 * 1000
    # unnormalised counts: max cell 7 also maps to the darkest colour
    out3 = P.plot_confusion_matrix(np.eye(3) * 7, ["p", "q", "r"], tmp_path / "raw.png", normalize=False)
    assert _count(_read(out3), DARKEST_BLUE) > 3 * 1000
    # the 270-clip matrix has no cell at 1.0
    assert _count(img, DARKEST_BLUE) < _count(_read(out2), DARKEST_BLUE)
    with pytest.raises(ValueError, match=r"cm: expected shape \(10, 10\)"):
        P.plot_confusion_matrix(np.eye(3), M.CLASSES, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_device_accuracy(metrics, tmp_path):
    out = P.plot_device_accuracy(metrics["per_device"], tmp_path / "dev.png")
    img = _read(out)
    assert img.shape[1] > img.shape[0]  # landscape
    # the three groups are drawn in their three colours (bars + legend)
    for rgb in (BLUE, ORANGE, RED):
        assert _count(img, rgb) > 2000, rgb
    # only real devices (lower-case names accepted): no seen/unseen colour at all
    real_only = {d.lower(): v for d, v in metrics["per_device"].items() if d in "ABC"}
    img2 = _read(P.plot_device_accuracy(real_only, tmp_path / "real.png", metric="accuracy"))
    assert _count(img2, BLUE) > 2000
    assert _count(img2, ORANGE) == 0 and _count(img2, RED) == 0
    with pytest.raises(ValueError, match="has no value for 'f1'"):
        P.plot_device_accuracy(metrics["per_device"], tmp_path / "x.png", metric="f1")
    with pytest.raises(ValueError, match="unknown device 'D'"):
        P.plot_device_accuracy({"D": {"macro_accuracy": 0.5}}, tmp_path / "x.png")


def test_training_curves(tmp_path):
    epochs = 8
    hist = {
        "loss": list(np.linspace(2.3, 1.2, epochs)),
        "val_loss": list(np.linspace(2.3, 1.5, epochs)),
        "accuracy": list(np.linspace(0.1, 0.55, epochs)),
        "val_accuracy": list(np.linspace(0.1, 0.45, epochs)),
    }
    two = _read(P.plot_training_curves(hist, tmp_path / "two.png"))
    three = _read(
        P.plot_training_curves({**hist, "lr": [1e-3 * 0.9**i for i in range(epochs)]}, tmp_path / "three.png")
    )
    # the learning-rate panel is a third panel of the same size: wider image
    assert three.shape[1] > two.shape[1] * 1.3
    assert abs(three.shape[0] - two.shape[0]) < 20
    one = _read(P.plot_training_curves({"loss": hist["loss"]}, tmp_path / "one.png"))
    assert one.shape[1] < two.shape[1] * 0.75
    with pytest.raises(ValueError, match="history: no loss"):
        P.plot_training_curves({"foo": [1.0]}, tmp_path / "x.png")


def test_size_vs_accuracy(tmp_path):
    pts = [
        {"name": "asc float", "size_bytes": 76_138, "accuracy": 0.31, "macs": 29.1e6},
        {"name": "asc int8", "size_bytes": 80_200, "accuracy": 0.30},
        {"name": "too big", "size_bytes": 140_000, "accuracy": 0.50},
    ]
    img = _read(P.plot_size_vs_accuracy(pts, tmp_path / "size.png"))
    assert _count(img, RED) > 200  # the 128 KB limit line
    assert len(P.REPORT_REFERENCE_POINTS) == 2
    assert {p["size_bytes"] for p in P.REPORT_REFERENCE_POINTS} == {46_512, 75_562}
    assert {p["accuracy"] for p in P.REPORT_REFERENCE_POINTS} == {0.429, 0.603}
    no_ref = _read(P.plot_size_vs_accuracy(pts, tmp_path / "noref.png", include_reference=False))
    assert img.shape != no_ref.shape or not np.array_equal(img, no_ref)
    with pytest.raises(ValueError, match=r"accuracy 60.3 not in \[0, 1\]"):
        P.plot_size_vs_accuracy([{"name": "x", "size_bytes": 1, "accuracy": 60.3}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="missing key 'size_bytes'"):
        P.plot_size_vs_accuracy([{"name": "x", "accuracy": 0.3}], tmp_path / "x.png")
