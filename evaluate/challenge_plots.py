"""Plots of the DCASE2024/2025 challenge figures: accuracy against the fraction of training data (the
data-efficiency subsets) and general against device-specific models, in the style of :mod:`evaluate.plots`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evaluate.plots import GROUP_STYLE, _new_figure, _save


def plot_data_fraction(
    percents: Sequence[int],
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    path="dcase2024.png",
    title: str = "Accuracy against the fraction of training data",
) -> Path:
    """Macro accuracy against the share of the training split used (the DCASE2024 data-efficiency view).

    Args:
      percents: the subsets on the x axis (log scale), e.g. ``(5, 10, 25, 50, 100)``.
      series: ``(label, means, stds)`` per line (one per setting), aligned with ``percents``; accuracies
        in [0, 1]; NaN means are not drawn, NaN stds draw no bar.
      path: output PNG.
      title: figure title.

    Returns:
      ``path`` as a Path.
    """
    if not percents or not series:
        raise ValueError("plot_data_fraction: need at least one subset and one series")
    fig = _new_figure((6.0, 4.0))
    ax = fig.subplots()
    x = np.asarray(percents, dtype=float)
    for label, means, stds in series:
        if len(means) != len(x) or len(stds) != len(x):
            raise ValueError(f"plot_data_fraction: series {label!r} has {len(means)} values for {len(x)} subsets")
        m = 100 * np.asarray(means, dtype=float)
        e = 100 * np.nan_to_num(np.asarray(stds, dtype=float), nan=0.0)
        ax.errorbar(x, m, yerr=e, fmt="o-", capsize=4, label=label)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{int(p)} %" for p in x])
    ax.minorticks_off()
    ax.set_xlabel("training data (share of the training split)")
    ax.set_ylabel("macro accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_general_vs_specialized(devices: dict, path="device_specific.png", title: str = "") -> Path:
    """Per device: the general model's and the device's own model's macro accuracy, side by side (DCASE2025).

    Args:
      devices: ``{device: {"general": acc, "specialized": acc, "n": clips}}`` (accuracies in [0, 1];
        devices without evaluate clips, ``general`` None, are left out).
      path: output PNG.
      title: appended to the figure title.

    Returns:
      ``path`` as a Path.
    """
    shown = {d: r for d, r in devices.items() if r.get("general") is not None}
    if not shown:
        raise ValueError("plot_general_vs_specialized: no device with evaluate clips")
    names = list(shown)
    x = np.arange(len(names))
    fig = _new_figure((1.0 * len(names) + 3.0, 3.6))
    ax = fig.subplots()
    general = [100 * shown[d]["general"] for d in names]
    special = [100 * shown[d]["specialized"] for d in names]
    ax.bar(x - 0.2, general, 0.4, label="general model", color="#7f7f7f")
    ax.bar(x + 0.2, special, 0.4, label="device's own model", color=GROUP_STYLE["real"]["color"])
    for i in range(len(names)):
        ax.annotate(f"{special[i] - general[i]:+.1f}", (x[i] + 0.2, special[i]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{d.upper()}\n(n={shown[d]['n']})" for d in names])
    ax.set_ylabel("macro accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"General against device-specific models {title}".strip(), fontsize=10)
    return _save(fig, path)
