"""One frozen, typed parameter tree for the whole pipeline.

``Params`` is loaded from YAML (``configs/*.yaml``), overridden by ``--set a.b=c`` pairs and
validated before any work starts. It is passed explicitly to every builder and stage
(YAMNet's ``Params`` style). Every field has a default, so a YAML file lists only what it
changes. Units are in the names (``sample_rate_hz``, ``clip_seconds``).

Validation is declarative: a field's ``metadata`` may hold ``choices`` (allowed values),
``min``/``max`` (inclusive bounds) or ``min_exclusive``. Any unknown key, wrong type or
out-of-range value raises :class:`ConfigError` naming the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import dotted
from pipeline.core.hashing import digest
from pipeline.core.labels import SEEN_DEVICES
from pipeline.core.params import (  # noqa: F401  (the section classes, re-exported: config.TrainParams etc.)
    AudioParams,
    AugmentParams,
    CompressParams,
    DataParams,
    DeviceResponseParams,
    DistillParams,
    EvaluateParams,
    FreqMixStyleParams,
    ModelParams,
    SearchParams,
    SpecAugmentParams,
    SpecializeParams,
    SyntheticParams,
    TeacherParams,
    TimeShiftParams,
    TrackingParams,
    TrainParams,
    TTAParams,
    _f,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


@dataclasses.dataclass(frozen=True)
class Params:
    """The whole parameter tree; ``name`` is the config's name (for run names and tags)."""

    name: str = _f("default", help="config name (run names, tags); defaults to the YAML file name")
    seed: int = _f(
        42,
        min=0,
        max=2**31 - 1,
        help="one seed for Python, NumPy, TensorFlow, data order, augmentations, synthetic data",
    )
    audio: AudioParams = dataclasses.field(default_factory=AudioParams)
    data: DataParams = dataclasses.field(default_factory=DataParams)
    model: ModelParams = dataclasses.field(default_factory=ModelParams)
    augment: AugmentParams = dataclasses.field(default_factory=AugmentParams)
    train: TrainParams = dataclasses.field(default_factory=TrainParams)
    distill: DistillParams = dataclasses.field(default_factory=DistillParams)
    specialize: SpecializeParams = dataclasses.field(default_factory=SpecializeParams)
    evaluate: EvaluateParams = dataclasses.field(default_factory=EvaluateParams)
    compress: CompressParams = dataclasses.field(default_factory=CompressParams)
    tracking: TrackingParams = dataclasses.field(default_factory=TrackingParams)
    search: SearchParams = dataclasses.field(default_factory=SearchParams)

    def to_dict(self) -> dict:
        return _to_plain(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (tuples joined by commas), for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix, obj):
            for key, value in obj.items():
                name = f"{prefix}{key}"
                if isinstance(value, dict):
                    walk(name + ".", value)
                elif isinstance(value, (list, tuple)):
                    out[name] = ",".join(str(v) for v in value)
                else:
                    out[name] = value

        walk("", self.to_dict())
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, *sections: str) -> str:
        """SHA-256 (16 hex) of the named sections (all when none), for reuse decisions."""
        data = self.to_dict()
        if sections:
            data = {s: data[s] for s in sections}
        return digest(data)

    def replace(self, **overrides: str) -> Params:
        """A new Params with dotted-key overrides given as strings (``{"train.epochs": "3"}``)."""
        return apply_overrides(self, [f"{k}={v}" for k, v in overrides.items()])


# --------------------------------------------------------------------------- building


def _type_name(tp) -> str:
    """``int``, ``float``, ...; ``int or null`` for ``int | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp, value, meta: dict):
    """Check ``value`` against annotation ``tp`` and the field metadata; return it typed."""
    value = _typed(key, tp, value, meta)
    check = meta.get("check")
    problem = check(value) if check is not None and value is not None else None
    if problem:
        raise ConfigError(f"{key}: {problem}")
    return value


def _typed(key: str, tp, value, meta: dict):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _typed(key, args[0], value, meta)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):  # NaN passes every range comparison; inf is never a setting here
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif tp is str:
        if meta.get("numbers_as_text") and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # data.train_split=25: YAML reads a number
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    elif tp is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        value = tuple(value)
        choices = meta.get("choices")
        if choices is not None:
            bad = [v for v in value if v not in choices]
            if bad:
                raise ConfigError(f"{key}: unknown value(s) {bad}; allowed: {list(choices)}")
            if len(set(value)) != len(value):
                raise ConfigError(f"{key}: duplicate values in {list(value)}")
        elif meta.get("item") is int:
            try:
                value = tuple(int(v) if isinstance(v, str) else v for v in value)
            except ValueError:
                raise ConfigError(f"{key}: expected a list of positive integers, got {list(value)}") from None
            for v in value:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ConfigError(f"{key}: expected a list of positive integers, got {list(value)}")
        if not value:
            raise ConfigError(f"{key}: must not be empty")
        return value
    else:  # pragma: no cover - programming error
        raise TypeError(f"unsupported field type {tp} for {key}")

    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {list(choices)}")
    lo, hi, lo_ex = meta.get("min"), meta.get("max"), meta.get("min_exclusive")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: {value!r} is below the minimum {lo}{_range(meta)}")
    if lo_ex is not None and value <= lo_ex:
        raise ConfigError(f"{key}: {value!r} must be greater than {lo_ex}{_range(meta)}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: {value!r} is above the maximum {hi}{_range(meta)}")
    return value


def _range(meta: dict) -> str:
    lo = meta.get("min", meta.get("min_exclusive"))
    hi = meta.get("max")
    left = "(" if "min_exclusive" in meta else "["
    return f" (allowed range {left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}])"


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {[prefix + k for k in unknown]}; allowed under "
            f"'{prefix.rstrip('.') or '<top>'}': {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key + ".")
        else:
            kwargs[name] = _coerce(key, tp, value, dict(fields[name].metadata))
    return cls(**kwargs)


def typed_value(key: str, value):
    """``value`` as the field ``key`` holds it once validated (``"1e-3"`` -> ``0.001``), without cross-field checks.

    Sweeps compare their values this way: two spellings of one setting are one cell.

    Args:
      key: a dotted key of :class:`Params` (a field or a whole section).
      value: as :func:`parse_value` returns it.

    Returns:
      The typed value (a section: its plain dict with defaults filled in).

    Raises:
      ConfigError: an unknown key, or a value of the wrong type, out of range or refused by the field's check.
    """
    cls, prefix = Params, ""
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise ConfigError(
                f"unknown key {prefix + part!r}; allowed under '{prefix.rstrip('.') or '<top>'}': {sorted(fields)}"
            )
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                return _to_plain(_build(tp, value if value is not None else {}, key + "."))
            return _coerce(key, tp, value, dict(fields[part].metadata))
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{key}: {prefix + part} is a {_type_name(tp)} setting, not a section")
        cls, prefix = tp, prefix + part + "."
    raise ConfigError(f"malformed key {key!r}")  # pragma: no cover - split never returns an empty list


def _cross_check(p: Params) -> None:
    """Constraints that span several fields."""
    held = p.data.validation
    if "evaluate" in held and len(held) > 1:
        raise ConfigError(f"data.validation: 'evaluate' or training devices, not both; got {list(held)}")
    if "evaluate" not in held and len(held) >= len(SEEN_DEVICES):
        raise ConfigError(f"data.validation: holding out every training device {list(held)} leaves nothing to train on")
    a = p.audio
    nyquist = a.sample_rate_hz / 2
    if a.fmax_hz is not None and a.fmax_hz > nyquist:
        raise ConfigError(f"audio.fmax_hz: {a.fmax_hz} is above the Nyquist frequency {nyquist}")
    fmax = a.fmax_hz if a.fmax_hz is not None else nyquist
    if a.fmin_hz >= fmax:
        raise ConfigError(f"audio.fmin_hz: {a.fmin_hz} must be below fmax ({fmax})")
    if a.win_length is not None and a.win_length > a.n_fft:
        raise ConfigError(f"audio.win_length: {a.win_length} must not exceed audio.n_fft ({a.n_fft})")
    if a.hop_length > a.clip_samples:
        raise ConfigError(f"audio.hop_length: {a.hop_length} exceeds the clip ({a.clip_samples} samples)")
    if p.train.min_learning_rate > p.train.learning_rate:
        raise ConfigError(
            f"train.min_learning_rate: {p.train.min_learning_rate} exceeds train.learning_rate "
            f"({p.train.learning_rate})"
        )
    if len(p.model.channels) != 4 and p.model.name == "asc":
        raise ConfigError(f"model.channels: the report's network has 4 blocks, got {list(p.model.channels)}")
    frames = a.frames
    if a.center and a.clip_samples <= a.n_fft // 2:
        raise ConfigError(
            f"audio.clip_seconds: {a.clip_seconds} s is shorter than half a window "
            f"(audio.n_fft={a.n_fft}); reflect padding needs more samples"
        )
    if p.model.name == "asc" and (frames < 16 or a.n_mels < 16):
        raise ConfigError(
            f"audio: the network pools 4 times by 2, so it needs at least 16 frames and 16 mel bins; "
            f"got {frames} frames (audio.clip_seconds={a.clip_seconds}, audio.hop_length={a.hop_length})"
            f" and audio.n_mels={a.n_mels}"
        )
    if p.model.name == "cpmobile":
        if frames < 16 or a.n_mels < 16:
            raise ConfigError(
                f"audio: CP-Mobile strides 4 times by 2, so it needs at least 16 frames and 16 mel bins; got "
                f"{frames} frames and audio.n_mels={a.n_mels}"
            )
        hidden = [pos for pos in p.augment.specaugment.positions if pos != "input"]
        if p.augment.specaugment.enabled and hidden:
            raise ConfigError(
                f"augment.specaugment.positions: model.name=cpmobile masks only its input (positions: [input]); "
                f"got {list(p.augment.specaugment.positions)}"
            )
    if p.model.name == "baseline" and round(a.clip_seconds * 44100) < 44100:
        raise ConfigError(
            f"audio.clip_seconds: the DCASE2022 baseline needs 1-s clips (51 frames), got {a.clip_seconds}"
        )
    # SpecAugment++: widths that merely *round* to 0 at a position (the report's 0.1 of 5 or 2 frames)
    # are raised to 1 (augment.specaugment.max_widths); an explicit 0 with masks requested is refused,
    # since raising it would contradict the setting (n_<axis>_masks: 0 switches an axis off).
    s = p.augment.specaugment
    for axis in ("time", "freq") if s.enabled else ():
        fraction, count = getattr(s, f"{axis}_width_fraction"), getattr(s, f"n_{axis}_masks")
        if fraction == 0 and count > 0:
            raise ConfigError(
                f"augment.specaugment.{axis}_width_fraction: 0 makes the {count} {axis} mask(s) zero-width at every "
                f"position ({', '.join(s.positions)}); set augment.specaugment.n_{axis}_masks: 0 to switch them off"
            )
    # TTA: every mode must have something to vary, or its N copies are N identical passes.
    modes = p.augment.tta.modes if p.augment.tta.enabled else ()
    if "masks" in modes and not s.enabled:
        raise ConfigError(
            "augment.tta.modes: 'masks' switches on the training SpecAugment++ masks, but "
            "augment.specaugment.enabled is false; remove 'masks' or enable SpecAugment++"
        )
    if "masks" in modes and s.n_time_masks == 0 and s.n_freq_masks == 0:
        raise ConfigError(
            "augment.tta.modes: 'masks' switches on the training SpecAugment++ masks, but "
            "augment.specaugment.n_time_masks and n_freq_masks are both 0"
        )
    if "shift" in modes and p.augment.time_shift.std_frames == 0:
        raise ConfigError(
            "augment.tta.modes: 'shift' draws time shifts of std augment.time_shift.std_frames "
            "frames, which is 0, so every copy would be the same; remove 'shift' or set std_frames > 0"
        )
    if p.augment.tta.chunk_copies > p.augment.tta.n_copies:
        raise ConfigError(
            f"augment.tta.chunk_copies: {p.augment.tta.chunk_copies} exceeds augment.tta.n_copies "
            f"({p.augment.tta.n_copies})"
        )
    src = p.data.source
    if src != "synthetic" and not src:
        raise ConfigError("data.source: empty; use 'synthetic' or a dataset path")


def from_dict(data: dict) -> Params:
    params = _build(Params, data or {})
    _cross_check(params)
    return params


def parse_value(text: str):
    """A ``--set`` value: YAML scalar/list syntax (``3``, ``1e-3``, ``true``, ``[64, 128]``)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(params: Params | dict, overrides: list[str]) -> Params:
    """Apply ``key=value`` overrides (dotted keys) and validate the result."""
    tree = params.to_dict() if isinstance(params, Params) else dict(params)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=3")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: malformed key {key!r}")
        dotted.put(tree, key, parse_value(text.strip()))
    return from_dict(tree)


def resolve_config_path(config: str | Path | None) -> Path:
    """``None`` -> configs/default.yaml; a bare name (``paper``) -> configs/<name>.yaml."""
    if config is None:
        return CONFIG_DIR / "default.yaml"
    path = Path(config)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{config}.yaml"
    return path


def load(config: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Load a YAML config (see :func:`resolve_config_path`), apply overrides, validate."""
    path = resolve_config_path(config)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    data.setdefault("name", path.stem)
    params = from_dict(data)
    return apply_overrides(params, overrides or [])


def describe() -> list[tuple[str, str, Any, str]]:
    """Rows (key, type, default, help/allowed) of every config key, for the README and --help."""
    rows = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = prefix + f.name
            if dataclasses.is_dataclass(tp):
                walk(tp, key + ".")
                continue
            meta = dict(f.metadata)
            default = f.default if f.default is not dataclasses.MISSING else None
            notes = []
            if "choices" in meta:
                notes.append("one of " + ", ".join(map(str, meta["choices"])))
            if any(k in meta for k in ("min", "max", "min_exclusive")):
                notes.append(_range(meta).strip(" ()"))
            if "help" in meta:
                notes.append(meta["help"])
            rows.append((key, _type_name(tp).replace("typing.", ""), default, "; ".join(notes)))

    walk(Params, "")
    return rows


def markdown_table() -> str:
    """The README's configuration table, one row per key (``python -m pipeline.core.config`` prints it)."""

    def shown(value) -> str:
        if value is None:
            return "null"
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        return str(value)

    rows = ["| key | type | default | allowed / meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{key}` | {tp} | `{shown(default)}` | {notes} |" for key, tp, default, notes in describe()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
