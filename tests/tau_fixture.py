"""A tiny dataset in the exact TAU22 development layout, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

CLASSES = (
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


def tone(seconds=1.0, rate=44100, freq=440.0, amp=0.5, channels=1, seed=0):
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    x = amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    x = x.astype("float32")
    if channels > 1:
        x = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    return x


def write_tau(
    root: Path,
    *,
    n_per_class: int = 1,
    subtype: str = "PCM_24",
    rate: int = 44100,
    devices_train=("a", "b", "s1"),
    devices_eval=("a", "s4"),
) -> dict:
    """Write meta.csv, the three fold1 CSVs and 24-bit mono 1-s WAVs; returns the rows written."""
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "evaluation_setup").mkdir(parents=True, exist_ok=True)
    meta, train, evaluate = [], [], []
    k = 0
    for ci, scene in enumerate(CLASSES):
        for i in range(n_per_class):
            for split, devices, loc in (("train", devices_train, 100 + i), ("evaluate", devices_eval, 200 + i)):
                for dev in devices:
                    name = f"audio/{scene}-lyon-{loc}-{1000 + i}-0-{dev}.wav"
                    sf.write(root / name, tone(rate=rate, freq=200 + 50 * ci, seed=k), rate, subtype=subtype)
                    k += 1
                    meta.append((name, scene, f"lyon-{loc}", dev))
                    (train if split == "train" else evaluate).append((name, scene))
    _write(root / "meta.csv", ("filename", "scene_label", "identifier", "source_label"), meta)
    _write(root / "evaluation_setup/fold1_train.csv", ("filename", "scene_label"), train)
    _write(root / "evaluation_setup/fold1_evaluate.csv", ("filename", "scene_label"), evaluate)
    _write(root / "evaluation_setup/fold1_test.csv", ("filename",), [(f,) for f, _ in evaluate])
    return {"meta": meta, "train": train, "evaluate": evaluate}


def _write(path: Path, header, rows, sep="\t"):
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
