"""Mean and standard deviation over seeds: the one definition (sample standard deviation, ``ddof=1``).

Used by the sweep summaries, the report's ablation and the benchmarks.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

DDOF = 1  # sample standard deviation: the seeds are a sample of the runs one could make


def mean_std(values: Iterable[float], *, single: float = math.nan) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of ``values``.

    Args:
      values: the numbers (e.g. one metric over seeds).
      single: the standard deviation reported for one value, where ``ddof=1`` is undefined
        (NaN by default; 0.0 where a table wants a number).

    Returns:
      ``(mean, std)``; ``(nan, nan)`` for no values.
    """
    xs = [float(v) for v in values]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else single


def summary(values: Iterable[float], *, digits: int | None = None, single: float = 0.0) -> dict:
    """``{"mean", "std", "min", "max", "n", "values"}`` of ``values`` (:func:`mean_std`), optionally rounded.

    Args:
      values: at least one number.
      digits: round every figure to this many decimals (None: not rounded).
      single: the standard deviation of one value (see :func:`mean_std`).

    Returns:
      The figures.

    Raises:
      ValueError: no values.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("summary: no values")
    mean, std = mean_std(xs, single=single)

    def r(x: float) -> float:
        return round(x, digits) if digits is not None else x

    return {
        "mean": r(mean),
        "std": r(std),
        "min": r(min(xs)),
        "max": r(max(xs)),
        "n": len(xs),
        "values": [r(x) for x in xs],
    }
