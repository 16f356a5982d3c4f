"""The parameter tree's shape: one frozen dataclass per section, with validation metadata.

A field's ``metadata`` may hold ``choices`` (allowed values), ``item`` (the type of a tuple's
items), ``numbers_as_text`` (a text field that takes a YAML number as its text), ``min``/``max``
(inclusive bounds), ``min_exclusive``, ``check`` (a function naming what is wrong with a value) and
``help``; :mod:`pipeline.core.config` holds the root
:class:`~pipeline.core.config.Params`, loads YAML and ``--set`` overrides into these classes and
validates every value against it. This module imports nothing of the configuration's loading.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Optional  # noqa: F401  (type hints resolved by name)

from pipeline.core.labels import SEEN_DEVICES


def _f(default, **meta):
    """A dataclass field with validation metadata (``choices``, ``min``, ``max``, ``check``, ``help``).

    ``check``: a function of the typed value returning why it is refused (a sentence) or ``None``.
    """
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
    win_length: int | None = _f(None, min=16, help="window length in samples; null = n_fft")
    hop_length: int = _f(1024, min=1)
    n_mels: int = _f(256, min=8, max=512)
    fmin_hz: float = _f(0.0, min=0.0)
    fmax_hz: float | None = _f(None, min_exclusive=0.0, help="null = sample_rate_hz / 2")
    window: str = _f("hann", choices=("hann", "hamming"))
    center: bool = _f(True)
    power: float = _f(2.0, choices=(1.0, 2.0))
    mel_scale: str = _f("slaney", choices=("slaney", "htk"))
    mel_norm: str = _f(
        "slaney",
        choices=("slaney", "none"),
        help="slaney: area-normalised mel triangles (librosa); none: peak 1 (torchaudio's default, the DCASE2024 "
        "baseline's)",
    )
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


TRAIN_SUBSETS = (5, 10, 25, 50, 100)  # the DCASE2024 Task 1 data-efficiency subsets, % of the training split


def train_split_problem(value: str) -> str | None:
    """Why a ``data.train_split`` value is refused (a number that is not a DCASE2024 subset), or None."""
    allowed = f"one of {', '.join(map(str, TRAIN_SUBSETS))}, or the path of a split CSV"
    if not value.strip():
        return f"empty: {allowed}"
    if value.strip().isdigit() and int(value) not in TRAIN_SUBSETS:
        return f"{value!r} is not a DCASE2024 subset: {allowed}"
    return None


@dataclass(frozen=True)
class DataParams:
    """Where the data comes from and how tf.data reads it."""

    source: str = _f("synthetic", help="'synthetic' or the path of a TAU22 development set")
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    cache: str = _f(
        "none",
        choices=("none", "memory"),
        help="memory: decode every clip once and keep the waveforms in RAM (small sets only)",
    )
    num_parallel_calls: int = _f(-1, min=-1, help="parallel decode calls; -1 = one per CPU core (at most 16)")
    max_train_clips: int = _f(0, min=0, help="use at most this many train clips (0 = all)")
    max_eval_clips: int = _f(0, min=0, help="use at most this many evaluate clips (0 = all)")
    validation: tuple = _f(
        ("evaluate",),
        choices=("evaluate", *(d.lower() for d in SEEN_DEVICES)),
        help="what training validates on (early stopping, best.keras): the evaluate split, or training devices "
        "held out as pseudo-unseen (e.g. s3 or s2,s3): their training clips leave training and become the "
        "validation split; tune on these, report on the evaluate split",
    )
    train_split: str | None = _f(
        None,
        check=train_split_problem,
        numbers_as_text=True,
        help="train on a DCASE2024 subset of the training split: 5, 10, 25, 50 or 100 (the dataset's "
        "splits/split<N>.csv; `python -m pipeline.data download tau24-splits` for TAU22, the built-in set writes "
        "its own) or the path of a tab-separated list with a filename column; null = the whole training split",
    )
    scan_audio: bool = _f(
        True,
        help="prepare reads every clip: content hashes (duplicates across splits), "
        "non-finite, silent and clipped clips (pipeline/data/audit.py)",
    )
    strict_checks: bool = _f(
        False,
        help="the dataset warnings of prepare (location overlap, unseen devices in "
        "training, silent clips, ...) are errors",
    )


@dataclass(frozen=True)
class ModelParams:
    """The network: the report's separable CNN ('asc'), the DCASE2022 baseline, or the DCASE2024/2025
    baseline, a simplified CP-Mobile ('cpmobile', models/cpmobile.py)."""

    name: str = _f("asc", choices=("asc", "baseline", "cpmobile"))
    channels: tuple = _f((64, 128, 128, 128), item=int, help="output channels of each block")
    attention_reduction: int = _f(32, min=1)
    attention_min_channels: int = _f(8, min=1)
    hidden_units: int = _f(128, min=1)
    dropout: float = _f(0.1, min=0.0, max=0.95)
    base_channels: int = _f(32, min=8, help="cpmobile: channels after the input convolutions")
    channels_multiplier: float = _f(1.8, min_exclusive=0.0, help="cpmobile: width growth per stage")
    expansion_rate: float = _f(2.1, min_exclusive=0.0, help="cpmobile: expansion of the inverted bottleneck")


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
        0.1,
        min=0.0,
        max=1.0,
        help="max time-mask width / frames at each position, rounded; a width that rounds to 0 is raised to 1 "
        "(models.asc.specaugment_widths lists them)",
    )
    freq_width_fraction: float = _f(
        0.1,
        min=0.0,
        max=1.0,
        help="max freq-mask width / bins at each position, rounded; a width that rounds to 0 is raised to 1",
    )
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
        help="TTA modes the evaluate stage runs, in order; the first one's outputs are named tta, "
        "the others tta_<mode>",
    )
    mask_fill: str = _f(
        "zm",
        choices=("zm", "mm", "cm"),
        help="fill of the SpecAugment++ stripes in the masks mode: zm = zero (at the input: the input BatchNorm's "
        "mean per bin), as SP4ASC; mm/cm mix in another clip of the batch, so a clip's prediction depends on "
        "its batch-mates (DCASE asks for each clip to be classified on its own)",
    )
    chunk_copies: int = _f(
        5, min=1, help="copies per forward pass (bounds memory: chunk_copies x evaluate.batch_size rows)"
    )


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
    folder: str | None = _f(
        None,
        help="folder of impulse-response WAV files (searched recursively); null = the built-in random device generator",
    )
    n_generated: int = _f(64, min=1, help="devices in the generated bank (when folder is null)")
    max_ir_samples: int = _f(4096, min=1, help="impulse responses are cut to this many samples")
    rms_normalize: bool = _f(True, help="scale each augmented clip back to its own RMS level")
    seed_offset: int = _f(
        0,
        min=0,
        help="added to the layer's seed (random stream `device_response`: seed + 17, + offset): another "
        "generated bank and draw sequence",
    )


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
    strategy: str = _f(
        "default",
        choices=("default", "mirrored", "multi_worker"),
        help="default: one device; mirrored: all local GPUs; multi_worker: "
        "MultiWorkerMirroredStrategy over the machines named by TF_CONFIG",
    )
    connect_timeout_seconds: float = _f(
        120.0,
        min_exclusive=0.0,
        help="multi_worker: seconds to wait for every peer in TF_CONFIG to come up "
        "before failing with an error naming the unreachable ones",
    )
    collective_timeout_seconds: float = _f(
        600.0,
        min=0.0,
        help="multi_worker: a collective (gradient all-reduce) that does not "
        "complete in this time fails the step (a dead peer); 0 = no limit",
    )
    worker_wait_seconds: float = _f(
        3600.0,
        min_exclusive=0.0,
        help="multi_worker, non-chief workers: seconds to wait for the chief's "
        "outputs of the stages before training (prepare, teacher)",
    )
    deterministic: bool = _f(False, help="tf.config.experimental.enable_op_determinism")
    progress_bar: bool = _f(True, help="Keras progress bar per epoch (the one-line epoch log is always written)")


@dataclass(frozen=True)
class TeacherParams:
    """Teacher networks for knowledge distillation: the report's network, wider, trained by the same recipe.

    Teacher size is limited by training time only, not by the DCASE limits.
    """

    members: int = _f(
        1,
        min=1,
        max=10,
        help="teachers in the ensemble (random stream `teacher`: seed + 1000*k); their logits are averaged",
    )
    channels: tuple = _f((128, 256, 256, 256), item=int, help="output channels of each teacher block")
    hidden_units: int = _f(256, min=1)
    epochs: int | None = _f(None, min=1, help="teacher epochs; null = train.epochs")
    device_augmentations: bool = _f(
        False,
        help="teachers train with the student's device response and Freq-MixStyle augmentations (true) or "
        "without them (false); time shift is the student's either way",
    )
    specaugment: bool | None = _f(
        None,
        help="teachers train with SpecAugment++ (true) or without it (false); null = as the student "
        "(augment.specaugment.enabled). A wider teacher needs a regulariser even when its small student does not",
    )
    logits: str | None = _f(
        None,
        help="imported teacher: a CSV or NPZ of logits computed elsewhere (filename + one column per class, "
        "named); the teacher stage reads and checks it instead of training teachers; null = train them",
    )


@dataclass(frozen=True)
class SpecializeParams:
    """DCASE2025 device-specific models (the ``specialize`` stage): a copy of the trained general model
    fine-tuned on each listed training device's clips; devices without one use the general model."""

    enabled: bool = _f(False, help="run the specialize stage (one fine-tuned model per device)")
    devices: tuple = _f(
        tuple(d.lower() for d in SEEN_DEVICES),
        choices=tuple(d.lower() for d in SEEN_DEVICES),
        help="the training devices that get their own model",
    )
    epochs: int = _f(10, min=1, help="fine-tuning epochs per device")
    learning_rate: float = _f(
        5e-4, min_exclusive=0.0, max=10.0, help="fine-tuning learning rate (cosine to train.min_learning_rate)"
    )
    layers: str = _f(
        "all",
        choices=("all", "batchnorm", "head"),
        help="what trains: every layer, the batch norms only (device-specific normalisation), or the head only",
    )
    device_augmentations: bool = _f(
        False,
        help="keep device responses and Freq-MixStyle while fine-tuning (they imitate other devices; the "
        "DCASE2025 baseline switches Freq-MixStyle off for its device models)",
    )


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


# MLflow's own rules, copied so that loading a config needs no ``import mlflow`` (about 1 s):
# mlflow/utils/validation.py (mlflow 3.17) ``_validate_model_name`` and ``path_not_unique`` for
# registered model names, plus the width of ``registered_models.name`` (``String(256)`` in
# mlflow/store/model_registry/dbmodels/models.py, enforced by PostgreSQL and MySQL stores);
# ``_validate_experiment_name`` and ``MAX_EXPERIMENT_NAME_LENGTH`` for experiment names.
# tests/test_config.py checks the copy against MLflow's validator.
MAX_REGISTERED_MODEL_NAME = 256
MAX_EXPERIMENT_NAME = 500


def registered_model_problem(name: str) -> str | None:
    """Why MLflow's Model Registry would refuse ``name`` (``None``: accepted; ``""`` means "do not register").

    Args:
      name: a ``tracking.registered_model`` value.

    Returns:
      A sentence naming the problem, or ``None``.
    """
    if name == "":
        return None
    if not name.strip():
        return f"{name!r} is blank; use '' to log the model without registering it"
    bad = [c for c in ("/", ":") if c in name]
    if bad:
        return f"{name!r} contains {' and '.join(map(repr, bad))}, which MLflow refuses in registered model names"
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(".."):
        return f"{name!r} would be read as the path {norm!r}; MLflow refuses such registered model names"
    if len(name) > MAX_REGISTERED_MODEL_NAME:
        return f"{len(name)} characters; MLflow's registry holds at most {MAX_REGISTERED_MODEL_NAME}"
    return None


def experiment_problem(name: str) -> str | None:
    """Why MLflow would refuse ``name`` as an experiment name (``None``: accepted)."""
    if name == "":
        return "empty; MLflow needs an experiment name"
    if len(name) > MAX_EXPERIMENT_NAME:
        return f"{len(name)} characters; MLflow allows at most {MAX_EXPERIMENT_NAME}"
    return None


@dataclass(frozen=True)
class TrackingParams:
    uri: str = _f("sqlite:///mlruns/mlflow.db", help="MLflow tracking URI")
    artifact_root: str = _f("mlruns", help="artifact location for new experiments")
    experiment: str = _f(
        "asc-dcase22", check=experiment_problem, help="MLflow experiment name (non-empty, at most 500 characters)"
    )
    run_name: str | None = _f(None, help="parent run name; null = derived from model/config/data/seed")
    registered_model: str = _f(
        "asc-scene-classifier",
        check=registered_model_problem,
        help="Model Registry name for the register stage (one new version per package "
        "it registers; no '/' or ':', at most 256 characters); empty = log the pyfunc "
        "model without registering it",
    )


def storage_problem(url: str) -> str | None:
    """Why ``url`` is not a database URL for Optuna's storage (``None``: it reads as one).

    Args:
      url: a ``search.storage`` value.

    Returns:
      A sentence naming the problem, or ``None``.
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S*", url):
        return (
            f"{url!r} is not a database URL; use e.g. sqlite:////shared/optuna.db or "
            "postgresql://user:password@host/optuna (null = a SQLite file in the search's folder)"
        )
    return None


@dataclass(frozen=True)
class SearchParams:
    """How ``python -m pipeline.run --search SPACE.yaml --trials N`` runs its Optuna study (not what it searches)."""

    storage: str | None = _f(
        None,
        check=storage_problem,
        help="Optuna storage, a database URL (SQLAlchemy: sqlite, postgresql, mysql) that every process and "
        "machine of one study shares; null = a SQLite file optuna.db in the search's folder under the workdir",
    )
    sampler_startup_trials: int = _f(10, min=0, help="TPE sampler: trials drawn at random before it models results")
    pruner_startup_trials: int = _f(5, min=0, help="median pruner: completed trials before it prunes any trial")
    pruner_warmup_epochs: int = _f(
        2, min=0, help="median pruner: epochs every trial trains before it can be pruned (at the end of a later epoch)"
    )
