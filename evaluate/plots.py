"""Figures for the evaluation and report stages (PNG, matplotlib Agg).

Every function draws on its own ``matplotlib.figure.Figure`` rendered by the Agg canvas:
no pyplot, so no global figure registry, no GUI backend and nothing left open (the figure
is released when the function returns). Each writes the PNG to a temporary name next to
``path`` and renames it, creating the parent directory, and returns ``path`` as a Path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from evaluate.metrics import (
    CLASSES,
    DEVICE_GROUPS,
    DEVICE_TO_GROUP,
    DEVICES,
    normalize_device,
)

logger = logging.getLogger(__name__)

DPI = 120
# Reference points of the tech report's Table 1 (TAU22 development split, 1 byte/parameter).
REPORT_REFERENCE_POINTS: tuple[dict, ...] = (
    {"name": "DCASE2022 baseline", "size_bytes": 46_512, "accuracy": 0.429, "log_loss": 1.575},
    {"name": "Report model", "size_bytes": 75_562, "accuracy": 0.603, "log_loss": 1.295},
)
GROUP_STYLE = {
    "real": {"color": "#1f77b4", "hatch": "", "label": "real (A, B, C)"},
    "seen": {"color": "#ff7f0e", "hatch": "", "label": "simulated, seen (S1-S3)"},
    "unseen": {"color": "#d62728", "hatch": "///", "label": "simulated, unseen (S4-S6)"},
}


def _new_figure(figsize) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from pipeline.core.files import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        fig.clear()
    logger.info("wrote %s", path)
    return path


def plot_confusion_matrix(
    cm,
    class_names: Sequence[str] = CLASSES,
    path="confusion_matrix.png",
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> Path:
    """Draws a confusion matrix (rows: true class, columns: predicted class).

    Args:
      cm: K x K counts (``compute_metrics(...)["confusion_matrix"]``).
      class_names: the K class names, tick labels of both axes.
      path: output PNG.
      normalize: divide each row by its total (a row without clips stays 0); cells then
        show the recall of the true class spread over the predictions.
      title: figure title (the clip count is appended).
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"cm: expected shape ({k}, {k}) for {k} class_names, got {cm.shape}")
    if not np.all(np.isfinite(cm)) or cm.min() < 0:
        raise ValueError("cm: counts must be finite and non-negative")
    total = int(round(cm.sum()))
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        vmax, fmt = 1.0, "{:.2f}"
    else:
        values = cm
        vmax, fmt = max(cm.max(), 1.0), "{:.0f}"

    size = max(4.5, 0.6 * k + 2.5)
    fig = _new_figure((size + 1.0, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of the true class" if normalize else "clips")
    font = 9 if k <= 10 else 7
    for i in range(k):
        for j in range(k):
            v = values[i, j]
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                fontsize=font,
                color="white" if v > 0.5 * vmax else "black",
            )
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(class_names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    suffix = " (row-normalised)" if normalize else ""
    ax.set_title(f"{title}{suffix}, {total} clips")
    return _save(fig, path)


def plot_device_accuracy(
    per_device: Mapping[str, Mapping],
    path="device_accuracy.png",
    title: str = "Accuracy per device",
    metric: str = "macro_accuracy",
    num_classes: int = len(CLASSES),
) -> Path:
    """Bar chart of accuracy per device, A..S6, coloured by device group.

    Args:
      per_device: ``compute_metrics(...)["per_device"]``: ``{device: {metric: value, n}}``
        (device names in any case). Devices absent from it are left out.
      path: output PNG.
      title: figure title.
      metric: the key to plot; default ``macro_accuracy`` (DCASE's accuracy, the mean of
        class-wise accuracy); ``accuracy`` for the plain fraction correct.
      num_classes: K, for the chance line at 1 / K.

    Real, seen-simulated and unseen-simulated devices get distinct colours (unseen also
    hatched) and a legend; each group's mean over its devices (unweighted) is drawn as a
    dotted line across its bars and written above them.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes: need at least 2, got {num_classes}")
    data = {normalize_device(d): v for d, v in per_device.items()}
    devices = [d for d in DEVICES if d in data]
    if not devices:
        raise ValueError("per_device: no device to plot")
    values = []
    for d in devices:
        if metric not in data[d] or data[d][metric] is None:
            raise ValueError(f"per_device: device {d} has no value for {metric!r}")
        values.append(float(data[d][metric]))
    values = np.asarray(values)

    fig = _new_figure((max(6.0, 0.75 * len(devices) + 3.0), 4.8))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(devices))
    groups = [DEVICE_TO_GROUP[d] for d in devices]
    for xi, v, g in zip(x, values, groups, strict=True):
        st = GROUP_STYLE[g]
        ax.bar(xi, v, width=0.7, color=st["color"], hatch=st["hatch"], edgecolor="black", linewidth=0.6)
    chance = 1.0 / num_classes
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1.0)

    for g in DEVICE_GROUPS:
        idx = [i for i, gg in enumerate(groups) if gg == g]
        if not idx:
            continue
        mean = float(values[idx].mean())
        lo, hi = min(idx) - 0.4, max(idx) + 0.4
        ax.hlines(mean, lo, hi, colors="black", linestyles=":", linewidth=1.8)
        ax.text(
            (lo + hi) / 2,
            1.04,
            f"{g} mean\n{100 * mean:.1f}%",
            ha="center",
            va="bottom",
            fontsize=8,
            color=GROUP_STYLE[g]["color"],
            fontweight="bold",
        )

    labels = []
    for d in devices:
        n = data[d].get("n")
        value = f"{100 * float(data[d][metric]):.1f}%"
        labels.append(f"{d}\n{value}\nn={n}" if n is not None else f"{d}\n{value}")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlim(-0.6, len(devices) - 0.4)
    ax.set_ylim(0.0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_yticklabels([f"{int(t * 100)}%" for t in np.linspace(0, 1, 6)])
    ax.set_xlabel("Device")
    ylabels = {
        "macro_accuracy": "Accuracy (macro-average of class-wise accuracy)",
        "accuracy": "Accuracy (fraction of clips correct)",
    }
    ax.set_ylabel(ylabels.get(metric, metric))
    ax.set_title(title)
    handles = [
        Patch(
            facecolor=GROUP_STYLE[g]["color"],
            hatch=GROUP_STYLE[g]["hatch"],
            edgecolor="black",
            label=GROUP_STYLE[g]["label"],
        )
        for g in DEVICE_GROUPS
        if g in groups
    ]
    handles.append(Line2D([], [], color="grey", linestyle="--", label=f"chance (1/{num_classes})"))
    handles.append(Line2D([], [], color="black", linestyle=":", linewidth=2, label="group mean"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _find(history: Mapping, *names):
    for name in names:
        if name in history and len(history[name]):
            return name
    return None


def plot_training_curves(
    history: Mapping[str, Sequence[float]],
    path="training_curves.png",
    title: str = "Training curves",
) -> Path:
    """Loss and accuracy per epoch (training and validation), and the learning rate.

    Args:
      history: Keras ``History.history``: ``loss``, ``val_loss``, ``accuracy`` (or
        ``sparse_categorical_accuracy``/``acc``) and ``val_`` twins, optionally ``lr``
        or ``learning_rate``. Missing series are skipped; the learning-rate panel is drawn
        only when a learning rate is present.
      path: output PNG.
      title: figure title.
    """
    acc_key = _find(history, "accuracy", "sparse_categorical_accuracy", "categorical_accuracy", "acc")
    panels = []
    if _find(history, "loss", "val_loss"):
        panels.append(("Loss", [("loss", "training"), ("val_loss", "validation")], False))
    if acc_key or _find(history, f"val_{acc_key}", "val_accuracy"):
        key = acc_key or "accuracy"
        panels.append(("Accuracy", [(key, "training"), (f"val_{key}", "validation")], False))
    lr_key = _find(history, "lr", "learning_rate")
    if lr_key:
        panels.append(("Learning rate", [(lr_key, "learning rate")], True))
    if not panels:
        raise ValueError(f"history: no loss, accuracy or learning-rate series (keys: {sorted(history)})")
    for name, series in history.items():
        arr = np.asarray(series, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"history[{name!r}]: expected a list of numbers per epoch")

    fig = _new_figure((4.6 * len(panels), 4.0))
    for i, (ylabel, series, log_scale) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key, label in series:
            if key not in history or not len(history[key]):
                continue
            y = np.asarray(history[key], dtype=np.float64)
            epochs = np.arange(1, len(y) + 1)
            ax.plot(
                epochs,
                y,
                marker="o" if len(y) <= 30 else None,
                markersize=3,
                linestyle="-" if label != "validation" else "--",
                label=label,
            )
        if log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_size_vs_accuracy(
    points: Sequence[Mapping],
    path="size_vs_accuracy.png",
    limit_bytes: int = 128_000,
    title: str = "Model size vs accuracy",
    include_reference: bool = True,
) -> Path:
    """Scatter of model size (KB, 1 KB = 1000 bytes) against accuracy.

    Args:
      points: dicts with ``name``, ``size_bytes``, ``accuracy`` (a fraction in [0, 1]) and
        optionally ``macs`` (added to the label in millions).
      path: output PNG.
      limit_bytes: the DCASE2022 model-size limit, drawn as a vertical line.
      title: figure title.
      include_reference: also draw the tech report's two reference points (DCASE2022
        baseline and the report's model, both measured on TAU22), as grey diamonds labelled
        "TAU22 (report)" so they are not mistaken for this run's figures.
    """
    pts = []
    for i, p in enumerate(points):
        for key in ("name", "size_bytes", "accuracy"):
            if key not in p:
                raise ValueError(f"points[{i}]: missing key {key!r}")
        acc, size = float(p["accuracy"]), float(p["size_bytes"])
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"points[{i}]: accuracy {acc} not in [0, 1] (pass a fraction)")
        if not size > 0:
            raise ValueError(f"points[{i}]: size_bytes must be positive, got {size}")
        pts.append((str(p["name"]), size, acc, p.get("macs")))
    if not pts and not include_reference:
        raise ValueError("points: nothing to plot")

    fig = _new_figure((7.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    xs = [limit_bytes / 1000]
    if include_reference:
        for ref in REPORT_REFERENCE_POINTS:
            x, y = ref["size_bytes"] / 1000, 100 * ref["accuracy"]
            xs.append(x)
            ax.scatter([x], [y], marker="D", s=60, facecolors="none", edgecolors="dimgrey", linewidths=1.5, zorder=3)
            ax.annotate(
                f"{ref['name']}\nTAU22 (report)",
                (x, y),
                xytext=(-8, 0),
                textcoords="offset points",
                fontsize=8,
                color="dimgrey",
                style="italic",
                ha="right",
                va="center",
            )
    # Labels alternate above and below (in order of size) so that neighbours do not collide.
    for rank, (name, size, acc, macs) in enumerate(sorted(pts, key=lambda t: t[1])):
        x, y = size / 1000, 100 * acc
        xs.append(x)
        ax.scatter([x], [y], marker="o", s=50, color="#1f77b4", edgecolors="black", zorder=4)
        label = name if macs is None else f"{name} ({float(macs) / 1e6:.2f} MMACs)"
        above = rank % 2 == 0
        ax.annotate(
            label,
            (x, y),
            xytext=(6, 7 if above else -7),
            textcoords="offset points",
            fontsize=8,
            va="bottom" if above else "top",
        )
    ax.axvline(limit_bytes / 1000, color="#d62728", linestyle="--", linewidth=1.2)
    ax.text(
        limit_bytes / 1000,
        2,
        f" limit {limit_bytes / 1000:g} KB",
        color="#d62728",
        fontsize=8,
        rotation=90,
        va="bottom",
        ha="right",
    )

    ax.set_xlim(0, max(xs) * 1.25)
    ax.set_ylim(0, 100)
    ax.set_xlabel("Model size (KB, int8 bytes by the DCASE convention)")
    ax.set_ylabel("Accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    handles = [
        Line2D([], [], marker="o", linestyle="", color="#1f77b4", markeredgecolor="black", label="this pipeline"),
        Line2D([], [], color="#d62728", linestyle="--", label="DCASE2022 size limit"),
    ]
    if include_reference:
        handles.insert(
            1,
            Line2D(
                [],
                [],
                marker="D",
                linestyle="",
                markerfacecolor="none",
                markeredgecolor="dimgrey",
                label="TAU22 (report), reference",
            ),
        )
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_ablation(rows: Sequence[Mapping], path="ablation.png", title: str = "Recipe ablation") -> Path:
    """Grouped bars: macro accuracy overall and on unseen devices per recipe, mean +/- std over runs.

    Args:
      rows: :func:`evaluate.ablation.ablation` rows (``recipe``, ``runs``, ``overall``, ``unseen``).
      path: output PNG.
      title: figure title.
    """
    if not rows:
        raise ValueError("rows: no recipe to plot")
    names = [f"{r['recipe']}\n(n={r['runs']})" for r in rows]
    x = np.arange(len(rows))
    fig = _new_figure((max(5.0, 1.3 * len(rows) + 2), 3.8))
    ax = fig.add_subplot()
    for offset, group, style in ((-0.2, "overall", GROUP_STYLE["real"]), (0.2, "unseen", GROUP_STYLE["unseen"])):
        mean = [100 * r[group]["mean"] if r.get(group) else np.nan for r in rows]
        std = [100 * r[group]["std"] if r.get(group) else 0.0 for r in rows]
        ax.bar(
            x + offset,
            mean,
            width=0.38,
            yerr=std,
            capsize=3,
            color=style["color"],
            hatch=style["hatch"],
            label="overall" if group == "overall" else "unseen devices (S4-S6)",
        )
    ax.set_xticks(x, names)
    ax.set_ylabel("macro accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_sweep(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    path="summary.png",
    title: str = "Sweep: mean +/- std over seeds",
) -> Path:
    """One panel per metric: each setting's mean with a +/- std error bar (a sweep's summary).

    Args:
      labels: one label per setting (combination), the y tick labels.
      series: ``(metric title, means, stds)`` per metric, each list aligned with ``labels``;
        NaN means are not drawn, NaN stds (one seed) draw no bar.
      path: output PNG.
      title: figure title.

    Returns:
      ``path`` as a Path.
    """
    if not labels or not series:
        raise ValueError(f"plot_sweep: need at least one setting and one metric, got {len(labels)} and {len(series)}")
    for name, means, stds in series:
        if len(means) != len(labels) or len(stds) != len(labels):
            raise ValueError(
                f"plot_sweep: metric {name!r} has {len(means)} means and {len(stds)} stds for {len(labels)} settings"
            )
    y = np.arange(len(labels))
    fig = _new_figure((3.2 * len(series) + 3.0, 0.45 * len(labels) + 1.8))
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    for ax, (name, means, stds) in zip(axes, series, strict=True):
        means = np.asarray(means, dtype=float)
        stds = np.nan_to_num(np.asarray(stds, dtype=float), nan=0.0)
        ax.errorbar(means, y, xerr=stds, fmt="o", capsize=4, color=GROUP_STYLE["real"]["color"])
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
