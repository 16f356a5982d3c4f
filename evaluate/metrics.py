"""DCASE2022 Task 1 metrics: accuracy and multi-class log loss, overall, per device, per class.

The challenge (DCASE2022 Task 1, "Low-complexity acoustic scene classification with
multiple devices") scores a system with two numbers, both also reported per recording
device and per scene class:

* **accuracy**: the macro average of the class-wise accuracy (the recall of each class,
  averaged over the classes), which is what ``sklearn.metrics.balanced_accuracy_score``
  computes. It is stored here as ``macro_accuracy``; ``accuracy`` is the plain fraction of
  clips classified correctly (the two coincide on a class-balanced set such as the TAU22
  evaluation split).
* **log loss**: multi-class cross-entropy on the softmax output. ``log_loss`` is the mean
  over clips (``sklearn.metrics.log_loss``, as the DCASE2022 baseline code computes it);
  ``macro_log_loss`` is the mean of the class-wise log losses, the "Average" row of the
  baseline's results table. The two coincide on a class-balanced set.

Probabilities are clipped to ``[1e-15, 1 - 1e-15]`` and each row renormalised to sum to one
before any log loss is taken, so a probability of exactly 0 for the true class contributes
``-log(1e-15) = 34.539`` rather than infinity. This is the clipping scikit-learn applied with
its former default ``eps=1e-15``; scikit-learn 1.5 removed the ``eps`` argument and 1.9 clips
at the machine epsilon of the input dtype (2.2e-16 for float64, 1.2e-7 for float32), so we
clip ourselves, in float64, to keep the figure independent of the sklearn version and of the
model's output dtype. Renormalisation changes a clipped row by at most ``K * 1e-15``.

Devices: ``A``, ``B``, ``C`` are real devices; ``S1``-``S3`` are simulated devices seen in
training; ``S4``-``S6`` are simulated devices that appear only in the test split. The group
names are ``real``, ``seen`` and ``unseen``: ``seen`` is short for "simulated, seen in
training" (the real devices are seen in training too, but are grouped under ``real``), which
matches how DCASE result tables split the devices.

Classes absent from a subset: a class with no clip in ``y_true`` (overall, for a device or for
a group) has ``n = 0`` and ``accuracy``/``log_loss`` ``None`` in the class-wise entries, and is
left out of ``macro_accuracy`` and ``macro_log_loss`` (balanced_accuracy_score's behaviour:
the average runs over the classes present in ``y_true``). A class that is never predicted
simply has a recall of 0 for its clips.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, log_loss

from pipeline.core.labels import CLASSES, DEVICES  # the one list of classes and devices

logger = logging.getLogger(__name__)

# "seen" = simulated devices seen in training; "unseen" = simulated, test split only.
DEVICE_GROUPS: dict[str, tuple[str, ...]] = {
    "real": ("A", "B", "C"),
    "seen": ("S1", "S2", "S3"),
    "unseen": ("S4", "S5", "S6"),
}
DEVICE_TO_GROUP: dict[str, str] = {d: g for g, ds in DEVICE_GROUPS.items() for d in ds}

# Probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] before taking logs.
PROB_EPS = 1e-15
# Tolerances for validating probabilities: rows must sum to 1 within ROW_SUM_ATOL and lie
# in [-RANGE_ATOL, 1 + RANGE_ATOL] (float32 softmax and TTA averaging are well within both).
ROW_SUM_ATOL = 1e-3
RANGE_ATOL = 1e-6

_SUMMARY_KEYS = ("n", "accuracy", "macro_accuracy", "log_loss", "macro_log_loss")
_MLFLOW_BAD_CHARS = re.compile(r"[^0-9A-Za-z_\-. /]")


# --------------------------------------------------------------------------- validation


def normalize_device(name) -> str:
    """Returns the canonical (upper-case) device name, e.g. ``"s1" -> "S1"``.

    Raises:
      ValueError: if ``name`` is not one of ``DEVICES`` (case-insensitive).
    """
    canon = str(name).strip().upper()
    if canon not in DEVICES:
        raise ValueError(f"devices: unknown device {name!r}; expected one of {list(DEVICES)}")
    return canon


def _validate(y_true, probs, devices, class_names):
    """Checks and converts compute_metrics' inputs; returns (y, probs, devices, class_names)."""
    class_names = tuple(str(c) for c in class_names)
    if len(class_names) < 2:
        raise ValueError(f"class_names: need at least 2 classes, got {list(class_names)}")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names: duplicate names in {list(class_names)}")

    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"probs: expected a 2-D array [N, K], got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.number) or np.issubdtype(p.dtype, np.complexfloating):
        raise ValueError(f"probs: expected real numbers, got dtype {p.dtype}")
    n, k = p.shape
    if n == 0:
        raise ValueError("probs: no clips (N = 0)")
    if k != len(class_names):
        raise ValueError(f"probs: {k} columns but {len(class_names)} class_names; they must match")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        bad = np.argwhere(~np.isfinite(p))[0]
        raise ValueError(f"probs: contains NaN or infinity (first at row {bad[0]}, column {bad[1]})")
    if p.min() < -RANGE_ATOL or p.max() > 1 + RANGE_ATOL:
        raise ValueError(
            f"probs: values must lie in [0, 1] (got min {p.min():.6g}, max {p.max():.6g}); "
            "pass softmax probabilities, not logits"
        )
    row_sums = p.sum(axis=1)
    off = np.abs(row_sums - 1.0) > ROW_SUM_ATOL
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(
            f"probs: rows must sum to 1 (within {ROW_SUM_ATOL}); row {row} sums to "
            f"{row_sums[row]:.6g} ({int(off.sum())} such rows)"
        )

    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true: expected a 1-D array [N], got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"y_true: {y.shape[0]} labels but probs has {n} rows")
    if np.issubdtype(y.dtype, np.bool_) or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"y_true: expected integer class indices, got dtype {y.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("y_true: expected integer class indices, got non-integer values")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        bad = int(y[(y < 0) | (y >= k)][0])
        raise ValueError(f"y_true: label {bad} out of range [0, {k - 1}] for {k} classes")

    devs = None
    if devices is not None:
        d = np.asarray(devices)
        if d.ndim != 1 or d.shape[0] != n:
            raise ValueError(f"devices: expected {n} names (shape [N]), got shape {d.shape}")
        cache: dict = {}
        for name in set(d.tolist()):
            cache[name] = normalize_device(name)
        devs = np.array([cache[x] for x in d.tolist()], dtype=object)
    return y, p, devs, class_names


def clip_probabilities(probs) -> np.ndarray:
    """Clips to ``[PROB_EPS, 1 - PROB_EPS]`` in float64 and renormalises each row."""
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_EPS, 1.0 - PROB_EPS)
    return p / p.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- metrics


def _float(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _log_loss(y, p, k) -> float:
    # p is already clipped; sklearn's own clipping (dtype eps) leaves it unchanged.
    return float(log_loss(y, p, labels=list(range(k))))


def _class_wise(y, p, y_pred, class_names) -> dict:
    """{class: {n, accuracy (recall), log_loss}} for all classes (None where n = 0)."""
    k = len(class_names)
    cm = confusion_matrix(y, y_pred, labels=list(range(k)))
    out = {}
    for c, name in enumerate(class_names):
        n_c = int(cm[c].sum())
        if n_c == 0:
            out[name] = {"n": 0, "accuracy": None, "log_loss": None}
            continue
        mask = y == c
        out[name] = {
            "n": n_c,
            "accuracy": float(cm[c, c] / n_c),
            "log_loss": _log_loss(y[mask], p[mask], k),
        }
    return out


def _summary(y, p, y_pred, class_wise) -> dict:
    """{n, accuracy, macro_accuracy, log_loss, macro_log_loss} of one subset."""
    with warnings.catch_warnings():
        # Classes predicted but absent from y_true are ignored by design (module docstring).
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        # A subset with one class (e.g. a device with one clip) is fine: recall of that class.
        warnings.filterwarnings("ignore", message="A single label was found")
        macro_acc = balanced_accuracy_score(y, y_pred)
    losses = [v["log_loss"] for v in class_wise.values() if v["n"] > 0]
    return {
        "n": int(y.shape[0]),
        "accuracy": float(np.mean(y_pred == y)),
        "macro_accuracy": float(macro_acc),
        "log_loss": _log_loss(y, p, p.shape[1]),
        "macro_log_loss": float(np.mean(losses)),
    }


def compute_metrics(y_true, probs, devices=None, class_names: Sequence[str] = CLASSES) -> dict:
    """Computes the DCASE2022 Task 1 metrics, overall, per device, per group and per class.

    Args:
      y_true: int class indices, shape [N], in ``[0, K)``.
      probs: float probabilities, shape [N, K], each row summing to 1 (softmax output,
        possibly averaged over test-time augmentations). Predictions are ``argmax(probs)``
        (first index on ties).
      devices: optional device names, shape [N] (``"A"``.. ``"S6"``, any case:
        ``"a"``, ``"s1"`` are normalised to upper case). Unknown names raise ValueError.
      class_names: the K class names, in label order (default ``CLASSES``).

    Returns:
      A JSON-serialisable dict (plain Python ints, floats, None, lists, dicts)::

        {
          "class_names": [K names],
          "overall": {n, accuracy, macro_accuracy, log_loss, macro_log_loss,
                      per_class: {class: {n, accuracy, log_loss}}},
          "per_device": {device: {n, accuracy, macro_accuracy, log_loss, macro_log_loss}},
          "per_device_group": {group: {..same keys.., devices: [present devices]}},
          "per_device_class": {device: {class: {n, accuracy, log_loss}}},
          "per_device_group_class": {group: {class: {n, accuracy, log_loss}}},
          "confusion_matrix": K x K list of lists (rows: true class, columns: predicted),
        }

      ``per_device*`` hold only the devices (in ``DEVICES`` order) and groups present, and
      are empty dicts when ``devices`` is None. Group metrics pool the clips of the group's
      devices. Class-wise entries list every class; a class without clips in the subset has
      ``n = 0`` and ``None`` metrics. ``accuracy`` of a class is its recall.

    Raises:
      ValueError: naming the argument and what is wrong (shapes, NaN, range, row sums,
        label range, unknown device).
    """
    y, p_raw, devs, class_names = _validate(y_true, probs, devices, class_names)
    k = len(class_names)
    p = clip_probabilities(p_raw)
    y_pred = np.argmax(p_raw, axis=1)

    def subset(mask):
        ys, ps, yps = y[mask], p[mask], y_pred[mask]
        cw = _class_wise(ys, ps, yps, class_names)
        return _summary(ys, ps, yps, cw), cw

    overall, overall_cw = subset(np.ones_like(y, dtype=bool))
    overall["per_class"] = overall_cw

    per_device, per_device_class = {}, {}
    per_group, per_group_class = {}, {}
    if devs is not None:
        present = [d for d in DEVICES if np.any(devs == d)]
        for d in present:
            per_device[d], per_device_class[d] = subset(devs == d)
        for g, members in DEVICE_GROUPS.items():
            here = [d for d in members if d in present]
            if not here:
                continue
            summary, cw = subset(np.isin(devs, here))
            summary["devices"] = here
            per_group[g], per_group_class[g] = summary, cw

    cm = confusion_matrix(y, y_pred, labels=list(range(k)))
    result = {
        "class_names": list(class_names),
        "overall": overall,
        "per_device": per_device,
        "per_device_group": per_group,
        "per_device_class": per_device_class,
        "per_device_group_class": per_group_class,
        "confusion_matrix": [[int(v) for v in row] for row in cm],
    }
    logger.info(
        "metrics on %d clips: accuracy %.4f, macro accuracy %.4f, log loss %.4f",
        overall["n"],
        overall["accuracy"],
        overall["macro_accuracy"],
        overall["log_loss"],
    )
    return result


# --------------------------------------------------------------------------- tables


def _columns(metrics: Mapping) -> list[tuple[str, Mapping, Mapping]]:
    """[(column name, summary dict, class-wise dict)] for all, devices, groups."""
    cols = [("all", metrics["overall"], metrics["overall"]["per_class"])]
    for d, summary in metrics["per_device"].items():
        cols.append((d, summary, metrics["per_device_class"][d]))
    for g, summary in metrics["per_device_group"].items():
        cols.append((g, summary, metrics["per_device_group_class"][g]))
    return cols


def results_tables(metrics: Mapping) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (accuracy_df, logloss_df) in the layout of the DCASE results table.

    Rows: the classes, then ``"overall"``. Columns: ``"all"``, the devices present (A..S6
    order), then the groups present (real, seen, unseen). Cells are class-wise accuracy
    (recall, a fraction in [0, 1]) and class-wise log loss; NaN where a column has no clip
    of that class. The ``"overall"`` row is the average over classes, as in the DCASE
    baseline's table: ``macro_accuracy`` and ``macro_log_loss`` of the column.
    """
    class_names = list(metrics["class_names"])
    acc, ll = {}, {}
    for name, summary, cw in _columns(metrics):
        acc[name] = [cw[c]["accuracy"] for c in class_names] + [summary["macro_accuracy"]]
        ll[name] = [cw[c]["log_loss"] for c in class_names] + [summary["macro_log_loss"]]
    index = pd.Index(class_names + ["overall"], name="class")
    accuracy_df = pd.DataFrame(acc, index=index, dtype=float)
    logloss_df = pd.DataFrame(ll, index=index, dtype=float)
    return accuracy_df, logloss_df


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    from pipeline.core.files import atomic_path

    with atomic_path(path) as tmp:
        df.to_csv(tmp, float_format="%.6f")


def write_tables(metrics: Mapping, out_dir) -> dict[str, Path]:
    """Writes ``per_device.csv`` and ``per_class.csv`` under ``out_dir``.

    ``per_device.csv``: one row per device present, then per group present, then
    ``overall``; columns ``n, accuracy, macro_accuracy, log_loss, macro_log_loss``.

    ``per_class.csv`` (wide, the DCASE table's layout): one row per class, then ``overall``;
    for each column of ``results_tables`` (``all``, devices, groups) two columns
    ``<column>_accuracy`` and ``<column>_log_loss`` side by side, so a device's figures read
    together. The long form is one ``df.melt`` away.

    Files are written to temporary names in ``out_dir`` and renamed, so a reader never sees
    a half-written table. Returns ``{"per_device": path, "per_class": path}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rows = {}
    for d, s in metrics["per_device"].items():
        rows[d] = s
    for g, s in metrics["per_device_group"].items():
        rows[g] = s
    rows["overall"] = metrics["overall"]
    per_device = pd.DataFrame(
        [[rows[r][k] for k in _SUMMARY_KEYS] for r in rows],
        index=pd.Index(list(rows), name="device"),
        columns=list(_SUMMARY_KEYS),
    )
    per_device["n"] = per_device["n"].astype(int)

    accuracy_df, logloss_df = results_tables(metrics)
    per_class = pd.DataFrame(index=accuracy_df.index)
    for col in accuracy_df.columns:
        per_class[f"{col}_accuracy"] = accuracy_df[col]
        per_class[f"{col}_log_loss"] = logloss_df[col]

    paths = {"per_device": out_dir / "per_device.csv", "per_class": out_dir / "per_class.csv"}
    _write_csv_atomic(per_device, paths["per_device"])
    _write_csv_atomic(per_class, paths["per_class"])
    logger.info("wrote %s and %s", paths["per_device"], paths["per_class"])
    return paths


def predictions_frame(filenames, y_true, probs, class_names: Sequence[str] = CLASSES) -> pd.DataFrame:
    """One row per clip: filename, true_label, predicted_label, one probability per class.

    Args:
      filenames: clip names, shape [N].
      y_true: int class indices [N], or None for unlabelled clips (the ``true_label``
        column is then omitted).
      probs: probabilities [N, K]; the predicted label is the argmax.
      class_names: the K class names; labels are written as names and the probability
        columns are named after the classes (the DCASE submission layout).
    """
    class_names = [str(c) for c in class_names]
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(class_names):
        raise ValueError(f"probs: expected shape [N, {len(class_names)}] for {len(class_names)} classes, got {p.shape}")
    names = np.asarray(filenames).astype(str)
    if names.shape != (p.shape[0],):
        raise ValueError(f"filenames: expected {p.shape[0]} names, got shape {names.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs: contains NaN or infinity")
    frame = {"filename": names}
    if y_true is not None:
        y = np.asarray(y_true)
        if y.shape != (p.shape[0],):
            raise ValueError(f"y_true: expected {p.shape[0]} labels, got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(class_names):
            raise ValueError(f"y_true: expected integer labels in [0, {len(class_names) - 1}]")
        frame["true_label"] = [class_names[i] for i in y]
    frame["predicted_label"] = [class_names[i] for i in np.argmax(p, axis=1)]
    for c, name in enumerate(class_names):
        frame[name] = p[:, c]
    return pd.DataFrame(frame)


# --------------------------------------------------------------------------- MLflow


def _mlflow_name(name: str) -> str:
    return _MLFLOW_BAD_CHARS.sub("_", name)


def flatten_for_mlflow(metrics: Mapping, prefix: str = "") -> dict[str, float]:
    """Flattens compute_metrics output to ``{name: float}`` for ``mlflow.log_metrics``.

    Names (before the prefix): ``accuracy``, ``macro_accuracy``, ``log_loss``,
    ``macro_log_loss``; ``device_<D>_<metric>`` (e.g. ``device_A_accuracy``);
    ``group_<g>_<metric>`` (e.g. ``group_unseen_macro_accuracy``); and
    ``class_<c>_accuracy``, ``class_<c>_log_loss`` (e.g. ``class_airport_accuracy``).
    Counts (``n``), undefined (None) values and the device x class cells (in the CSV
    tables instead) are left out. ``prefix`` is joined with ``_`` unless it already ends
    with one of ``_-./ `` (so ``"test"`` gives ``test_accuracy``, ``"int8/"`` gives
    ``int8/accuracy``). Characters MLflow rejects are replaced by ``_``.
    """
    if prefix and prefix[-1] not in "_-./ ":
        prefix = prefix + "_"
    out: dict[str, float] = {}

    def put(name, value):
        value = _float(value)
        if value is not None:
            out[_mlflow_name(prefix + name)] = value

    metric_keys = [k for k in _SUMMARY_KEYS if k != "n"]
    for key in metric_keys:
        put(key, metrics["overall"][key])
    for d, s in metrics["per_device"].items():
        for key in metric_keys:
            put(f"device_{d}_{key}", s[key])
    for g, s in metrics["per_device_group"].items():
        for key in metric_keys:
            put(f"group_{g}_{key}", s[key])
    for c, s in metrics["overall"]["per_class"].items():
        put(f"class_{c}_accuracy", s["accuracy"])
        put(f"class_{c}_log_loss", s["log_loss"])
    return out
