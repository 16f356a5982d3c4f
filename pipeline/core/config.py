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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from pipeline.core.hashing import digest

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def _f(default, **meta):
    """A dataclass field with validation metadata (``choices``, ``min``, ``max``, ``help``)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple default")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SyntheticParams:
    """The built-in synthetic dataset (same on-disk layout as TAU22)."""

    n_clips: int = _f(2000, min=30, help="clips in the whole set (train + evaluate)")
    n_cities: int = _f(6, min=2, max=10, help="cities (TAU city names)")
    workers: int = _f(0, min=0, help="generator processes; 0 = all cores")


@dataclass(frozen=True)
class AudioParams:
    """Audio decoding and the log-mel front end (librosa's meaning for each name)."""

    sample_rate_hz: int = _f(44100, min=8000, max=192000)
    clip_seconds: float = _f(1.0, min_exclusive=0.0, max=60.0)
    n_fft: int = _f(2048, min=16)
    win_length: Optional[int] = _f(None, min=16, help="window length in samples; null = n_fft")
    hop_length: int = _f(1024, min=1)
    n_mels: int = _f(256, min=8, max=512)
    fmin_hz: float = _f(0.0, min=0.0)
    fmax_hz: Optional[float] = _f(None, min_exclusive=0.0, help="null = sample_rate_hz / 2")
    window: str = _f("hann", choices=("hann", "hamming"))
    center: bool = _f(True)
    power: float = _f(2.0, choices=(1.0, 2.0))
    mel_scale: str = _f("slaney", choices=("slaney", "htk"))
    log: str = _f("natural", choices=("natural", "db"))
    log_offset: float = _f(1e-10, min_exclusive=0.0)

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate_hz * self.clip_seconds))

    @property
    def frames(self) -> int:
        """Log-mel frames per clip, librosa's count (44 for 1 s at 44.1 kHz, hop 1024, centred)."""
        if self.center:
            return 1 + self.clip_samples // self.hop_length
        return 1 + (self.clip_samples - self.n_fft) // self.hop_length


@dataclass(frozen=True)
class DataParams:
    """Where the data comes from and how tf.data reads it."""

    source: str = _f("synthetic", help="'synthetic' or the path of a TAU22 development set")
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    cache: str = _f("none", choices=("none", "memory"),
                    help="memory: decode every clip once and keep the waveforms in RAM (small sets only)")
    num_parallel_calls: int = _f(-1, min=-1, help="-1 = tf.data.AUTOTUNE")
    max_train_clips: int = _f(0, min=0, help="use at most this many train clips (0 = all)")
    max_eval_clips: int = _f(0, min=0, help="use at most this many evaluate clips (0 = all)")


@dataclass(frozen=True)
class ModelParams:
    """The network: the report's separable CNN ('asc') or the DCASE2022 baseline."""

    name: str = _f("asc", choices=("asc", "baseline"))
    channels: tuple = _f((64, 128, 128, 128), item=int, help="output channels of each block")
    attention_reduction: int = _f(32, min=1)
    attention_min_channels: int = _f(8, min=1)
    hidden_units: int = _f(128, min=1)
    dropout: float = _f(0.1, min=0.0, max=0.95)


@dataclass(frozen=True)
class SpecAugmentParams:
    """SpecAugment++ (Wang et al. 2021) on the input log-mel and after blocks."""

    enabled: bool = _f(True)
    mode: str = _f("mm", choices=("zm", "mm", "cm"))
    positions: tuple = _f(
        ("input", "block1", "block2", "block3", "block4"),
        choices=("input", "block1", "block2", "block3", "block4"),
        help="where masks apply; a subset of input, block1..block4",
    )
    time_width_fraction: float = _f(
        0.1, min=0.0, max=1.0,
        help="max time-mask width / frames at each position, rounded; a width that rounds to 0 is raised to 1 "
             "(models.asc.specaugment_widths lists them)")
    freq_width_fraction: float = _f(
        0.1, min=0.0, max=1.0,
        help="max freq-mask width / bins at each position, rounded; a width that rounds to 0 is raised to 1")
    n_time_masks: int = _f(1, min=0, max=8)
    n_freq_masks: int = _f(1, min=0, max=8)


@dataclass(frozen=True)
class TimeShiftParams:
    """Time rolling with wrap-around by eta ~ round(N(0, std_frames)) frames."""

    enabled: bool = _f(True)
    std_frames: float = _f(10.0, min=0.0)


@dataclass(frozen=True)
class TTAParams:
    """Test-time augmentation: the mean softmax of n_copies augmented copies, per mode.

    ``modes``: ``shift`` = circular time shifts (the time shift of training); ``masks`` = the
    training SpecAugment++ masks switched on (input and hidden positions, filled as ``mask_fill``),
    as the report's reference code (valeoai/SP4ASC) runs its copies. The evaluate stage runs every listed
    mode; the first one's results keep the plain ``tta`` names. Each costs n_copies x the
    classifier's MACs per clip.
    """

    enabled: bool = _f(True)
    n_copies: int = _f(30, min=1, max=256)
    modes: tuple = _f(
        ("shift", "masks"),
        choices=("shift", "masks"),
        help="TTA modes the evaluate stage runs, in order; the first one's outputs are named tta, the others tta_<mode>",
    )
    mask_fill: str = _f(
        "zm", choices=("zm", "mm", "cm"),
        help="fill of the SpecAugment++ stripes in the masks mode: zm = zero (at the input: the input BatchNorm's "
             "mean per bin), as SP4ASC; mm/cm mix in another clip of the batch, so a clip's prediction depends on "
             "its batch-mates (DCASE asks for each clip to be classified on its own)",
    )
    chunk_copies: int = _f(5, min=1, help="copies per forward pass (bounds memory: chunk_copies x evaluate.batch_size rows)")


@dataclass(frozen=True)
class FreqMixStyleParams:
    """Freq-MixStyle (Schmid et al. 2022) on the input log-mel: per-bin mean/std mixed between clips.

    Defaults: CP-JKU's DCASE2022 submission (p 0.6, alpha 0.3; their DCASE2023 code uses 0.8, 0.4).
    """

    enabled: bool = _f(False)
    p: float = _f(0.6, min=0.0, max=1.0, help="probability that a training batch is mixed")
    alpha: float = _f(0.3, min_exclusive=0.0, help="mixing weights ~ Beta(alpha, alpha), per clip")
    eps: float = _f(1e-6, min_exclusive=0.0, help="added to each bin's variance")


@dataclass(frozen=True)
class DeviceResponseParams:
    """Device impulse response augmentation (Morocutti et al. 2023) of the training waveforms."""

    enabled: bool = _f(False)
    p: float = _f(0.4, min=0.0, max=1.0, help="probability per training clip (0.4 as in the DIR code)")
    folder: Optional[str] = _f(None, help="folder of impulse-response WAV files (searched recursively); "
                                          "null = the built-in random device generator")
    n_generated: int = _f(64, min=1, help="devices in the generated bank (when folder is null)")
    max_ir_samples: int = _f(4096, min=1, help="impulse responses are cut to this many samples")
    rms_normalize: bool = _f(True, help="scale each augmented clip back to its own RMS level")
    seed_offset: int = _f(0, min=0, help="added to the layer's seed (seed + 17 + offset): another "
                                         "generated bank and draw sequence")


@dataclass(frozen=True)
class AugmentParams:
    specaugment: SpecAugmentParams = field(default_factory=SpecAugmentParams)
    time_shift: TimeShiftParams = field(default_factory=TimeShiftParams)
    tta: TTAParams = field(default_factory=TTAParams)
    freq_mixstyle: FreqMixStyleParams = field(default_factory=FreqMixStyleParams)
    device_response: DeviceResponseParams = field(default_factory=DeviceResponseParams)


@dataclass(frozen=True)
class TrainParams:
    """Training recipe (tech report section 4.1)."""

    epochs: int = _f(150, min=1)
    batch_size: int = _f(32, min=1, help="global batch (all replicas together)")
    optimizer: str = _f("adamw", choices=("adamw", "adam", "sgd"))
    learning_rate: float = _f(1e-3, min_exclusive=0.0, max=10.0)
    min_learning_rate: float = _f(1e-5, min=0.0)
    weight_decay: float = _f(1e-5, min=0.0)
    schedule: str = _f("cosine", choices=("cosine", "constant"))
    strategy: str = _f("default", choices=("default", "mirrored"))
    deterministic: bool = _f(False, help="tf.config.experimental.enable_op_determinism")
    progress_bar: bool = _f(True, help="Keras progress bar per epoch (the one-line epoch log is always written)")


@dataclass(frozen=True)
class TeacherParams:
    """Teacher networks for knowledge distillation: the report's network, wider, trained by the same recipe.

    Teacher size is limited by training time only, not by the DCASE limits.
    """

    members: int = _f(1, min=1, max=10, help="teachers in the ensemble (seeds seed+1000*k); their logits are averaged")
    channels: tuple = _f((128, 256, 256, 256), item=int, help="output channels of each teacher block")
    hidden_units: int = _f(256, min=1)
    epochs: Optional[int] = _f(None, min=1, help="teacher epochs; null = train.epochs")


@dataclass(frozen=True)
class DistillParams:
    """Knowledge distillation (Hinton et al. 2015) from the teacher stage's stored logits."""

    enabled: bool = _f(False, help="train the student on (1-weight) CE + weight T^2 KL(teacher || student)")
    temperature: float = _f(2.0, min_exclusive=0.0, max=100.0)
    weight: float = _f(0.5, min=0.0, max=1.0, help="weight of the distillation term; the label term has 1 - weight")
    teacher: TeacherParams = field(default_factory=TeacherParams)


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = _f(32, min=1)
    splits: tuple = _f(("evaluate",), choices=("evaluate", "test"))


@dataclass(frozen=True)
class CompressParams:
    """Pruning, quantization-aware training and int8 TFLite export (TFMOT)."""

    prune: bool = _f(False, help="magnitude pruning before quantization (costs accuracy on short fine-tuning)")
    target_sparsity: float = _f(0.5, min=0.0, max=0.99)
    prune_epochs: int = _f(2, min=1)
    qat: bool = _f(True)
    qat_epochs: int = _f(1, min=1)
    ptq: bool = _f(True, help="also export post-training quantization (no QAT) for comparison")
    fine_tune_learning_rate: float = _f(1e-4, min_exclusive=0.0)
    representative_clips: int = _f(200, min=1)
    input_type: str = _f("int8", choices=("int8", "uint8", "float32"))
    output_type: str = _f("int8", choices=("int8", "uint8", "float32"))


@dataclass(frozen=True)
class TrackingParams:
    uri: str = _f("sqlite:///mlruns/mlflow.db", help="MLflow tracking URI")
    artifact_root: str = _f("mlruns", help="artifact location for new experiments")
    experiment: str = _f("asc-dcase22", help="MLflow experiment name")
    run_name: Optional[str] = _f(None, help="parent run name; null = derived from model/config/data/seed")


@dataclass(frozen=True)
class Params:
    """The whole parameter tree; ``name`` is the config's name (for run names and tags)."""

    name: str = _f("default", help="config name (run names, tags); defaults to the YAML file name")
    seed: int = _f(42, min=0, max=2**31 - 1, help="one seed for Python, NumPy, TensorFlow, data order, augmentations, synthetic data")
    audio: AudioParams = field(default_factory=AudioParams)
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    train: TrainParams = field(default_factory=TrainParams)
    distill: DistillParams = field(default_factory=DistillParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    compress: CompressParams = field(default_factory=CompressParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)

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

    def replace(self, **overrides: str) -> "Params":
        """A new Params with dotted-key overrides given as strings (``{"train.epochs": "3"}``)."""
        return apply_overrides(self, [f"{k}={v}" for k, v in overrides.items()])


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


# --------------------------------------------------------------------------- building


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp, value, meta: dict):
    """Check ``value`` against annotation ``tp`` and the field metadata; return it typed."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, args[0], value, meta)
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
    elif tp is str:
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


def _cross_check(p: Params) -> None:
    """Constraints that span several fields."""
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
        raise ConfigError(f"audio.clip_seconds: {a.clip_seconds} s is shorter than half a window "
                          f"(audio.n_fft={a.n_fft}); reflect padding needs more samples")
    if p.model.name == "asc" and (frames < 16 or a.n_mels < 16):
        raise ConfigError(f"audio: the network pools 4 times by 2, so it needs at least 16 frames and 16 mel bins; "
                          f"got {frames} frames (audio.clip_seconds={a.clip_seconds}, audio.hop_length={a.hop_length})"
                          f" and audio.n_mels={a.n_mels}")
    if p.model.name == "baseline" and round(a.clip_seconds * 44100) < 44100:
        raise ConfigError(f"audio.clip_seconds: the DCASE2022 baseline needs 1-s clips (51 frames), "
                          f"got {a.clip_seconds}")
    # SpecAugment++: widths that merely *round* to 0 at a position (the report's 0.1 of 5 or 2 frames)
    # are raised to 1 (augment.specaugment.max_widths); an explicit 0 with masks requested is refused,
    # since raising it would contradict the setting (n_<axis>_masks: 0 switches an axis off).
    s = p.augment.specaugment
    for axis in ("time", "freq") if s.enabled else ():
        fraction, count = getattr(s, f"{axis}_width_fraction"), getattr(s, f"n_{axis}_masks")
        if fraction == 0 and count > 0:
            raise ConfigError(
                f"augment.specaugment.{axis}_width_fraction: 0 makes the {count} {axis} mask(s) zero-width at every "
                f"position ({', '.join(s.positions)}); set augment.specaugment.n_{axis}_masks: 0 to switch them off")
    # TTA: every mode must have something to vary, or its N copies are N identical passes.
    modes = p.augment.tta.modes if p.augment.tta.enabled else ()
    if "masks" in modes and not s.enabled:
        raise ConfigError("augment.tta.modes: 'masks' switches on the training SpecAugment++ masks, but "
                          "augment.specaugment.enabled is false; remove 'masks' or enable SpecAugment++")
    if "masks" in modes and s.n_time_masks == 0 and s.n_freq_masks == 0:
        raise ConfigError("augment.tta.modes: 'masks' switches on the training SpecAugment++ masks, but "
                          "augment.specaugment.n_time_masks and n_freq_masks are both 0")
    if "shift" in modes and p.augment.time_shift.std_frames == 0:
        raise ConfigError("augment.tta.modes: 'shift' draws time shifts of std augment.time_shift.std_frames "
                          "frames, which is 0, so every copy would be the same; remove 'shift' or set std_frames > 0")
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


def _parse_value(text: str):
    """A ``--set`` value: YAML scalar/list syntax (``3``, ``1e-3``, ``true``, ``[64, 128]``)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


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
        _set_dotted(tree, key, _parse_value(text.strip()))
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
