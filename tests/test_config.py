import dataclasses

import pytest
import yaml

from pipeline.core import config
from pipeline.core.config import ConfigError, Params


def test_defaults_and_files_load():
    default = config.load()
    assert default.name == "default" and default.data.source == "synthetic"
    paper = config.load("paper")
    assert (paper.train.epochs, paper.train.batch_size, paper.train.optimizer) == (150, 32, "adamw")
    assert (paper.train.learning_rate, paper.train.min_learning_rate, paper.train.weight_decay) == (1e-3, 1e-5, 1e-5)
    assert (paper.audio.n_mels, paper.audio.n_fft, paper.audio.hop_length) == (256, 2048, 1024)
    assert paper.model.channels == (64, 128, 128, 128)


def test_overrides_are_typed():
    p = config.load(
        None,
        [
            "train.epochs=3",
            "audio.n_mels=128",
            "train.learning_rate=2e-3",
            "model.channels=[8, 16, 16, 16]",
            "audio.fmax_hz=null",
            "augment.specaugment.positions=input,block2",
            "train.deterministic=true",
        ],
    )
    assert p.train.epochs == 3 and isinstance(p.train.epochs, int)
    assert p.audio.n_mels == 128
    assert p.train.learning_rate == pytest.approx(2e-3) and isinstance(p.train.learning_rate, float)
    assert p.model.channels == (8, 16, 16, 16)
    assert p.augment.specaugment.positions == ("input", "block2")
    assert p.train.deterministic is True
    # frozen
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'epochs'"):
        p.train.epochs = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.epochs=0", ["train.epochs", "minimum 1"]),
        ("train.epochs=abc", ["train.epochs", "integer"]),
        ("train.epochs=2.5", ["train.epochs", "integer"]),
        ("train.learning_rate=-1", ["train.learning_rate", "greater than 0"]),
        ("train.optimizer=lamb", ["train.optimizer", "adamw"]),
        ("trian.epochs=3", ["trian", "allowed"]),
        ("train.epoch=3", ["train.epoch", "epochs"]),
        ("audio.window=boxcar", ["audio.window", "hann", "hamming"]),
        ("audio.center=maybe", ["audio.center", "true or false"]),
        ("audio.fmax_hz=30000", ["audio.fmax_hz", "Nyquist"]),
        ("audio.fmin_hz=9000", None),
        ("audio.win_length=4096", ["audio.win_length", "n_fft"]),
        ("model.channels=[64, -1, 8, 8]", ["model.channels", "positive integers"]),
        ("model.channels=[64, 64]", ["model.channels", "4 blocks"]),
        ("augment.specaugment.positions=[input, block9]", ["positions", "block9", "block4"]),
        ("augment.specaugment.mode=xx", ["augment.specaugment.mode", "mm"]),
        ("augment.tta.chunk_copies=100", ["chunk_copies", "n_copies"]),
        ("augment.tta.modes=[shift, flip]", ["augment.tta.modes", "flip", "shift", "masks"]),
        ("augment.tta.modes=[masks, masks]", ["augment.tta.modes", "duplicate"]),
        ("augment.tta.modes=[]", ["augment.tta.modes", "empty"]),
        ("augment.tta.mask_fill=noise", ["augment.tta.mask_fill", "zm", "mm", "cm"]),
        (
            "augment.specaugment.time_width_fraction=0",
            ["augment.specaugment.time_width_fraction", "zero-width", "n_time_masks: 0"],
        ),
        ("augment.specaugment.freq_width_fraction=0", ["augment.specaugment.freq_width_fraction", "n_freq_masks: 0"]),
        ("train.min_learning_rate=1", ["train.min_learning_rate", "learning_rate"]),
        ("seed=-3", ["seed", "minimum"]),
        ("train=3", ["train", "mapping"]),
        ("noequals", ["key=value"]),
    ],
)
def test_every_validation_error_names_the_key(override, words):
    if override == "audio.fmin_hz=9000":
        override, words = "audio.fmax_hz=8000", ["audio.fmin_hz"]
        with pytest.raises(ConfigError) as err:
            config.load(None, [override, "audio.fmin_hz=9000"])
    else:
        with pytest.raises(ConfigError) as err:
            config.load(None, [override])
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(listy)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"train": {"epochs": 2, "momentum": 0.9}}))
    with pytest.raises(ConfigError, match=r"train\.momentum"):
        config.load(unknown)


def test_flat_roundtrip_and_fingerprint():
    p = config.load()
    flat = p.flat()
    assert flat["train.epochs"] == p.train.epochs
    assert flat["model.channels"] == "64,128,128,128"
    assert config.from_dict(yaml.safe_load(p.to_yaml())) == p
    q = p.replace(**{"compress.target_sparsity": "0.7"})
    assert q.fingerprint("train", "model") == p.fingerprint("train", "model")
    assert q.fingerprint() != p.fingerprint()


def test_describe_lists_every_key():
    keys = [row[0] for row in config.describe()]
    assert "train.epochs" in keys and "augment.specaugment.mode" in keys
    assert len(keys) == len(Params().flat())


def test_docs_document_every_config_key():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    missing = [row[0] for row in config.describe() if f"`{row[0]}`" not in doc]
    assert not missing, f"config keys missing from docs/configuration.md: {missing}"
    assert config.markdown_table() in doc, "docs/configuration.md's table is stale: python -m pipeline.core.config"


def test_tta_modes_defaults_and_overrides():
    p = config.load()
    assert p.augment.tta.modes == ("shift", "masks") and p.augment.tta.n_copies == 30
    assert p.augment.tta.mask_fill == "zm"
    assert config.load(None, ["augment.tta.modes=masks"]).augment.tta.modes == ("masks",)
    assert config.load(None, ["augment.tta.modes=[masks, shift]"]).augment.tta.modes == ("masks", "shift")
    assert p.flat()["augment.tta.modes"] == "shift,masks"
    # An explicit 0 fraction is fine when that axis has no masks, and TTA off needs no modes checked.
    q = config.load(None, ["augment.specaugment.time_width_fraction=0", "augment.specaugment.n_time_masks=0"])
    assert q.augment.specaugment.time_width_fraction == 0
    config.load(None, ["augment.specaugment.enabled=false", "augment.tta.enabled=false"])
    config.load(None, ["augment.specaugment.enabled=false", "augment.tta.modes=shift"])


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["augment.specaugment.enabled=false"], ["augment.tta.modes", "masks", "augment.specaugment.enabled"]),
        (
            ["augment.specaugment.n_time_masks=0", "augment.specaugment.n_freq_masks=0"],
            ["augment.tta.modes", "masks", "n_time_masks"],
        ),
        (["augment.time_shift.std_frames=0"], ["augment.tta.modes", "shift", "std_frames"]),
    ],
)
def test_tta_modes_that_would_vary_nothing_are_refused(overrides, words):
    with pytest.raises(ConfigError) as err:
        config.load(None, overrides)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


# --------------------------------------------------------------------------- names MLflow must accept


@pytest.mark.parametrize(
    "name, words",
    [
        ("a/b", ["tracking.registered_model", "'a/b'", "'/'"]),
        ("team:model", ["tracking.registered_model", "':'"]),
        ("'   '", ["tracking.registered_model", "blank"]),
        ("..old", ["tracking.registered_model", "'..old'", "path"]),
        (".", ["tracking.registered_model", "path"]),
        ("x" * 257, ["tracking.registered_model", "256"]),
    ],
)
def test_registered_model_name_is_checked_with_the_config(name, words):
    with pytest.raises(ConfigError) as err:
        config.load(None, [f"tracking.registered_model={name}"])
    for word in words:
        assert word in str(err.value), (word, str(err.value))


@pytest.mark.parametrize(
    "override, words",
    [
        ("tracking.experiment=", ["tracking.experiment", "empty"]),
        ("tracking.experiment=" + "e" * 501, ["tracking.experiment", "500"]),
    ],
)
def test_experiment_name_is_checked_with_the_config(override, words):
    with pytest.raises(ConfigError) as err:
        config.load(None, [override])
    for word in words:
        assert word in str(err.value), (word, str(err.value))


@pytest.mark.parametrize(
    "name", ["a/b", "a:b", "  ", ".", "..", "..x", "x..", "a.b", "a b", "a-b_c.1", "é", "a%b", "a\\b", " a"]
)
def test_registered_model_rule_agrees_with_mlflows_validator(name):
    """The config's rule is a copy of ``mlflow.utils.validation._validate_model_name`` (not imported: it costs ~1 s)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
        mlflow_accepts = True
    except MlflowException:
        mlflow_accepts = False
    try:
        config.load(None, [f"tracking.registered_model='{name}'"])
        we_accept = True
    except ConfigError:
        we_accept = False
    assert we_accept == mlflow_accepts, name


def test_empty_registered_model_still_means_no_registering():
    assert config.load(None, ["tracking.registered_model="]).tracking.registered_model == ""
    assert (
        config.load(None, ["tracking.registered_model=my-models.asc_v2"]).tracking.registered_model
        == "my-models.asc_v2"
    )


def test_bad_registered_model_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    """``--set tracking.registered_model=a/b`` used to pass and fail in compress; now the CLI refuses it at once."""
    from pipeline.running import cli as run
    from pipeline.running import runner

    def never(*args, **kwargs):
        raise AssertionError("a stage ran with an invalid tracking.registered_model")

    monkeypatch.setattr(runner, "run_stages", never)
    code = run.main(["--stage", "compress", "--workdir", str(tmp_path / "w"), "--set", "tracking.registered_model=a/b"])
    assert code == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "tracking.registered_model" in err and "'a/b'" in err, err
    assert not (tmp_path / "w").exists()
