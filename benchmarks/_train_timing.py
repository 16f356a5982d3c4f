"""Per-epoch timings of the training task's ``fit``, measured from outside: no patched library code.

``pipeline.running.task.fit(params, out, ..., record)`` (the train and teacher stages' fit) takes the
recorder its epochs log to. :class:`EpochClock`
is such a recorder (wrapping the real one, so MLflow's cost stays in the figures): the epoch-end
callback (``pipeline.running.training.EpochEnd``) calls ``record.metrics(logs, step=epoch)`` first thing
after the epoch's steps and validation, with ``epoch_seconds``, ``train_seconds`` and
``validation_seconds`` in ``logs``; then it saves ``best.keras`` (when validation improved),
writes ``history.json`` and the checkpoint (``checkpoints/latest.json`` last). So, per epoch:

* the callback starts when ``metrics`` is called (clock read on entry) and its logging ends when
  ``metrics`` returns (``log_seconds``);
* the modification times of ``best.keras``, ``history.json`` and ``checkpoints/latest.json``,
  read at the next epoch's ``metrics`` call (and by :meth:`EpochClock.finish` after the run),
  end ``best_save_seconds``, ``history_seconds`` and ``checkpoint_seconds``;
  ``callback_seconds`` runs from the ``metrics`` call to ``latest.json``.

File times come from the kernel's coarse clock: the callback figures are good to a few
milliseconds. Wall-clock times (``time.time()``) throughout, as file times are.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.running.stages.base import MemoryRecorder, Recorder


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except FileNotFoundError:
        return None


class EpochClock(Recorder):
    """A recorder for ``pipeline.running.task.fit`` that times each epoch's callback; the rest goes to ``inner``.

    Args:
      out: the folder ``fit`` writes (its ``out`` argument).
      inner: the recorder that really records (default: a :class:`MemoryRecorder`).

    Attributes:
      epochs: per epoch: ``epoch``, ``start`` (wall time the epoch began), ``train_seconds``,
        ``validation_seconds``, ``epoch_seconds`` (from the callback's logs), ``log_seconds``,
        ``best_save_seconds``, ``history_seconds``, ``checkpoint_seconds``, ``callback_seconds``
        and ``callback_end`` (wall time), the last five once the next epoch began or :meth:`finish` ran.
    """

    def __init__(self, out: Path, inner: Recorder | None = None):
        self.inner = inner if inner is not None else MemoryRecorder()
        super().__init__(self.inner.run_id)
        self.out = Path(out)
        self.epochs: list[dict] = []

    def metrics(self, values, step=None) -> None:
        entry = time.time()
        if "epoch_seconds" not in values:  # not an epoch's logs (e.g. the model's complexity)
            self.inner.metrics(values, step)
            return
        self._close()
        self.inner.metrics(values, step)
        self.epochs.append(
            {
                "epoch": step,
                "start": entry - float(values["epoch_seconds"]),
                **{k: float(values[k]) for k in ("train_seconds", "validation_seconds", "epoch_seconds")},
                "_entry": entry,
                "_exit": time.time(),
            }
        )

    def _close(self) -> None:
        """Time the last epoch's callback from the files it wrote (called before they are written again)."""
        if not self.epochs or "callback_seconds" in self.epochs[-1]:
            return
        e = self.epochs[-1]
        entry, logged = e.pop("_entry"), e.pop("_exit")
        best = _mtime(self.out / "best.keras")
        saved = best is not None and best > logged
        history = _mtime(self.out / "history.json") or logged
        end = _mtime(self.out / "checkpoints" / "latest.json") or history
        after_best = best if saved else logged
        e.update(
            {
                "log_seconds": logged - entry,
                "best_save_seconds": max(0.0, best - logged) if saved else 0.0,
                "history_seconds": max(0.0, history - after_best),
                "checkpoint_seconds": max(0.0, end - history),
                "callback_seconds": max(0.0, end - entry),
                "callback_end": end,
            }
        )

    def finish(self) -> list[dict]:
        """Close the last epoch (call after ``fit`` returned); returns :attr:`epochs`."""
        self._close()
        return self.epochs

    def tags(self, values) -> None:
        self.inner.tags(values)

    def artifact(self, path, folder=None) -> None:
        self.inner.artifact(path, folder)

    def dict(self, obj, name) -> None:
        self.inner.dict(obj, name)

    def model(self, model, example_input) -> None:
        self.inner.model(model, example_input)

    def package(self, path, tags):
        return self.inner.package(path, tags)
