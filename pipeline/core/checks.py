"""Argument checks of the layers and helpers: one function per kind of value.

Each returns the value in its plain Python type or raises ``ValueError`` whose message starts with
the argument's name and ends with the bad value's ``repr`` (``"n_fft must be an integer >= 1, got
0"``). Pure Python: no NumPy or TensorFlow import, so the foundations can use it too. NumPy
integers and floats pass (they register as ``numbers.Integral`` / ``numbers.Real``); ``bool`` is
never accepted as a number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


def check_int(name: str, value: Any, minimum: int = 0, *, odd: bool = False) -> int:
    """``value`` as an int ``>= minimum`` (and odd with ``odd``); ``ValueError`` naming ``name`` otherwise."""
    kind = "an odd integer" if odd else "an integer"
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
        or (odd and value % 2 == 0)
    ):
        raise ValueError(f"{name} must be {kind} >= {minimum}, got {value!r}")
    return int(value)


def check_real(name: str, value: Any, minimum: float = 0.0, *, exclusive: bool = False) -> float:
    """``value`` as a finite float ``>= minimum`` (``> minimum`` with ``exclusive``).

    Raises ``ValueError`` naming ``name`` and the value otherwise.
    """
    shown = int(minimum) if float(minimum).is_integer() else minimum  # "> 0", not "> 0.0"
    bound = f"> {shown}" if exclusive else f">= {shown}"
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < minimum
        or (exclusive and value == minimum)
    ):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool; ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable, *, allow_none: bool = False):
    """``value`` if it is one of ``choices`` (or None with ``allow_none``); ``ValueError`` otherwise."""
    choices = tuple(choices)
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or value not in choices:
        what = f"None or one of {choices}" if allow_none else f"one of {choices}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value
