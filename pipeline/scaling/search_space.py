"""A search space file: one dotted config key per line of YAML, each with a range or a list of choices.

.. code-block:: yaml

    augment.freq_mixstyle.p: {low: 0.0, high: 0.9}            # float, uniform
    train.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true} # float, log-uniform
    augment.device_response.p: {low: 0.0, high: 0.8, step: 0.1} # float on a grid
    distill.teacher.members: {low: 1, high: 4, type: int}     # integer (log and step allowed too)
    augment.specaugment.mode: {choices: [zm, mm, cm]}         # categorical (any value the key takes)

Every key must be a setting of the configuration (:func:`pipeline.core.config.typed_value`), and
both ends of a range and every choice must be values that key accepts (its type and allowed range),
so a range never reaches outside what the configuration allows. ``low < high``; ``log`` needs
``low > 0`` and no ``step``; ``high - low`` is a whole number of steps. ``seed``, ``name``,
``tracking.*``, ``search.*`` and ``data.validation`` cannot be searched (the study has one seed,
one store and one validation split to compare trials on). Every problem raises a
:class:`~pipeline.core.config.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import config, dotted
from pipeline.core.config import ConfigError

FORBIDDEN = ("seed", "name", "tracking", "search", "data.validation")
RANGE_FIELDS = {"low", "high", "log", "step", "type"}


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched key: a float or int range, or choices (values as the configuration holds them)."""

    key: str
    kind: str  # "float", "int" or "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()  # the typed values

    @property
    def tokens(self) -> tuple:
        """The choices as Optuna stores them: scalars as they are, lists as their JSON text."""
        return tuple(_token(v) for v in self.choices)

    def distribution(self):
        """The Optuna distribution of this dimension."""
        from optuna import distributions

        if self.kind == "categorical":
            return distributions.CategoricalDistribution(self.tokens)
        if self.kind == "int":
            return distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def value(self, sampled: Any) -> Any:
        """The configuration value of an Optuna parameter value (a choice's token back to its value)."""
        if self.kind == "categorical":
            return self.choices[self.tokens.index(sampled)]
        return int(sampled) if self.kind == "int" else float(sampled)

    def describe(self) -> dict:
        """A plain dict of the dimension (for the search id and the logs)."""
        if self.kind == "categorical":
            return {"choices": [list(v) if isinstance(v, tuple) else v for v in self.choices]}
        spec = {"low": self.low, "high": self.high, "type": self.kind}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


@dataclasses.dataclass(frozen=True)
class Space:
    """A parsed search space: its file and one :class:`Dimension` per key, in the file's order."""

    path: Path
    dims: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dims]

    def distributions(self) -> dict:
        """``{key: optuna distribution}`` for ``study.ask``."""
        return {d.key: d.distribution() for d in self.dims}

    def values(self, params: dict) -> dict[str, Any]:
        """Optuna's parameter values of a trial -> ``{key: configuration value}``."""
        return {d.key: d.value(params[d.key]) for d in self.dims if d.key in params}

    def describe(self) -> dict:
        return {d.key: d.describe() for d in self.dims}


def _token(value: Any) -> Any:
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else value


def load_space(path: str | Path) -> Space:
    """Read and check a search space file (see the module docstring for its form).

    Args:
      path: the YAML file.

    Returns:
      The :class:`Space`.

    Raises:
      ConfigError: the file is missing, not YAML, not a mapping or empty; or a key is unknown, a
        section, forbidden, or its spec is malformed, out of the key's allowed range, empty or
        inconsistent. The message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"search space {path}: expected a mapping of config keys to ranges or choices, e.g. "
            "'train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}'"
        )
    dims = []
    for key, spec in data.items():
        try:
            dims.append(parse_dimension(str(key), spec))
        except ConfigError as exc:
            raise ConfigError(f"search space {path}: {key}: {exc}") from None
    return Space(path, tuple(dims))


def parse_dimension(key: str, spec: Any) -> Dimension:
    """One ``key: spec`` entry of a search space.

    Args:
      key: the dotted config key.
      spec: ``{low, high[, log][, step][, type]}`` or ``{choices: [...]}``.

    Returns:
      The checked :class:`Dimension`.

    Raises:
      ConfigError: what is wrong (the caller adds the file and the key).
    """
    if not key or any(not part for part in key.split(".")):
        raise ConfigError("malformed key")
    if any(key == f or key.startswith(f + ".") for f in FORBIDDEN):
        raise ConfigError(
            "cannot be searched (seed, name, tracking.*, search.* and data.validation are fixed for a "
            "study: it compares every trial on one validation split with one seed and one store)"
        )
    try:
        current = dotted.get(config.Params().to_dict(), key)
    except (KeyError, TypeError):
        config.typed_value(key, None)  # raises, naming the unknown part and what is allowed there
        raise ConfigError("unknown key") from None  # pragma: no cover - typed_value raised
    if isinstance(current, dict):
        raise ConfigError("is a section, not a setting; search its keys one by one")
    if not isinstance(spec, dict):
        raise ConfigError(f"expected {{low: .., high: ..}} or {{choices: [..]}}, got {spec!r}")
    if "choices" in spec:
        return _choices(key, spec)
    unknown = sorted(set(spec) - RANGE_FIELDS)
    if unknown or not {"low", "high"} <= set(spec):
        raise ConfigError(
            f"expected low and high (optional: log, step, type) or choices; got {sorted(spec)}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    kind = spec.get("type", "float")
    if kind not in ("float", "int"):
        raise ConfigError(f"type {kind!r}: expected float or int")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"log {log!r}: expected true or false")
    low, high, step = (_number(spec.get(name), name, kind) for name in ("low", "high", "step"))
    for name, end in (("low", low), ("high", high)):
        try:  # the ends must be values the key accepts: its type and allowed range
            config.typed_value(key, end)
        except ConfigError as exc:
            hint = " (an integer setting: give type: int)" if kind == "float" and "integer" in str(exc) else ""
            raise ConfigError(f"{name} {end!r} is not a value of the key: {exc}{hint}") from None
    if not low < high:
        raise ConfigError(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"log: true needs low > 0, got low {low}")
    if step is not None:
        if log:
            raise ConfigError("log and step cannot be combined (a log range is continuous)")
        if step <= 0:
            raise ConfigError(f"step {step}: must be > 0")
        count = (high - low) / step
        if abs(count - round(count)) > 1e-9 * max(1.0, abs(count)):
            raise ConfigError(f"high - low ({high - low:g}) is not a whole number of steps of {step}")
    return Dimension(key, kind, low, high, log, step)


def _number(value: Any, name: str, kind: str) -> float | int | None:
    if value is None:
        if name in ("low", "high"):
            raise ConfigError(f"{name} is missing")
        return None
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} {value!r}: expected an integer (type: int)")
        return value
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} {value!r}: expected a finite number")
    return float(value)


def _choices(key: str, spec: dict) -> Dimension:
    extra = sorted(set(spec) - {"choices"})
    if extra:
        raise ConfigError(f"choices cannot be combined with {extra}")
    raw = spec["choices"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"choices: expected a non-empty list, got {raw!r}")
    typed, seen = [], {}
    for item in raw:
        try:
            value = config.typed_value(key, item)
        except ConfigError as exc:
            raise ConfigError(f"choice {item!r}: {exc}") from None
        if repr(value) in seen:
            raise ConfigError(f"choices {seen[repr(value)]!r} and {item!r} are the same value {value!r}")
        seen[repr(value)] = item
        typed.append(value)
    return Dimension(key, "categorical", choices=tuple(typed))
