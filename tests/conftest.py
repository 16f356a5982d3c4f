import pytest

import pipeline.core.env  # noqa: F401  (tf_keras before TensorFlow; quiet MLflow progress bars)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic dataset in the TAU22 layout, generated once per test session.

    Tests read it through ``data.source=<path>``: the same code path as the real dataset.
    """
    from pipeline.data import synthetic

    root = tmp_path_factory.mktemp("tiny") / "tau"
    synthetic.generate(root, n_clips=60, seed=5, workers=1, progress=False)
    return root


def tiny_overrides(workdir, dataset, **extra) -> list[str]:
    """Overrides for a tiny, fast run of every stage (seconds per stage on 2 cores)."""
    base = {
        "data.source": str(dataset),
        "audio.n_mels": 32,
        "model.channels": "[8, 8, 16, 16]",
        "model.hidden_units": 16,
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.deterministic": "true",
        "evaluate.batch_size": 16,
        "augment.tta.n_copies": 3,
        "augment.tta.chunk_copies": 3,
        "compress.prune": "true",
        "compress.prune_epochs": 1,
        "compress.qat_epochs": 1,
        "compress.representative_clips": 8,
        "tracking.uri": f"sqlite:///{workdir}/mlflow.db",
        "tracking.artifact_root": f"{workdir}/mlruns",
        "tracking.experiment": "tiny",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def toy_params(tmp_path, **extra):
    """The default config with its MLflow store under ``tmp_path`` (experiment ``toy``), for the runner's toy stages."""
    from pipeline.core import config

    sets = {
        "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db",
        "tracking.artifact_root": f"{tmp_path}/mlruns",
        "tracking.experiment": "toy",
        **extra,
    }
    return config.load(None, [f"{k}={v}" for k, v in sets.items()])


# Settings where the network really learns on the synthetic set: measured held-out macro accuracy
# 0.60 / 0.62 / 0.60 over seeds 0 / 1 / 2 (chance 0.10), 81-91 % of the evaluate clips decided (top-2
# gap > 0.1), about a minute of training on 2 cores. What mattered: more data (2000 clips), no
# SpecAugment (it kept this small network from fitting even its training data), a higher learning rate,
# a wider network, device-response augmentation (the unseen devices' errors).
LEARNED = {
    "train.epochs": 10,
    "train.learning_rate": 0.01,
    "train.batch_size": 32,
    "model.channels": "[16, 32, 32, 32]",
    "model.hidden_units": 32,
    "audio.n_mels": 32,
    "augment.specaugment.enabled": "false",
    "augment.tta.modes": "[shift]",
    "augment.device_response.enabled": "true",
    "data.cache": "memory",
    "compress.prune": "false",
    # The default calibration set; with tiny_overrides' 8 clips, PTQ int8 agreed on only 78 % of confident clips.
    "compress.representative_clips": 200,
}


@pytest.fixture(scope="session")
def learned_workdir(tmp_path_factory):
    """A network that learned: prepare, train, evaluate and compress on 2000 synthetic clips (``LEARNED``).

    Returns ``(workdir, params)``; the dataset is ``params.data.source``. Shared by the test that asserts
    learning end to end, the int8-against-float comparisons and the compression tests.
    """
    from pipeline.core import config
    from pipeline.data import synthetic
    from pipeline.running import runner

    root = tmp_path_factory.mktemp("learn") / "tau"
    synthetic.generate(root, n_clips=2000, seed=5, workers=1, progress=False)
    workdir = tmp_path_factory.mktemp("learned")
    params = config.load(None, tiny_overrides(workdir, root, **LEARNED))
    runner.run_stages(params, workdir, ["prepare", "train", "evaluate", "compress"], track=False)
    return workdir, params


@pytest.fixture(scope="session")
def shipped_workdir(tmp_path_factory, tiny_dataset):
    """A workdir where prepare, train, compress and register ran once (tiny model, no pruning, 2 epochs).

    Returns ``(workdir, params)``: ``workdir/train/model.keras``, ``workdir/compress/model_int8.tflite``,
    ``frontend.tflite`` and the deployable package ``workdir/compress/package/``; MLflow records in
    ``workdir/mlflow.db``. Shared by the prediction, packaging and serving tests.
    """
    from pipeline.core import config
    from pipeline.running import runner

    workdir = tmp_path_factory.mktemp("shipped")
    params = config.load(None, tiny_overrides(workdir, tiny_dataset, **{"compress.prune": "false", "train.epochs": 2}))
    runner.run_stages(params, workdir, ["prepare", "train", "compress", "register"])
    return workdir, params


SWEEP_GRID = ["--sweep", "evaluate.batch_size=16,8", "--seeds", "0,1"]


def sweep_overrides(workdir, dataset, **extra) -> list[str]:
    """The tiny overrides of the sweeps: one epoch, no test-time augmentation."""
    return tiny_overrides(workdir, dataset, **{"train.epochs": 1, "augment.tta.enabled": "false", **extra})


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, tiny_dataset):
    """The 2 x 2 grid ``SWEEP_GRID`` run once per session, as two shards (the last writes the grid's summary).

    ``--stage evaluate`` (prepare, train, evaluate) on the tiny set, tracked in experiment ``tiny`` of
    ``workdir/mlflow.db``. Shared by the sweep tests and the browser test, which reads the same store.

    Returns:
      a dict: ``workdir``, ``base`` (the CLI arguments), ``root`` (the sweep's folder), ``plan``,
      ``codes`` (the two shards' exit codes) and ``after_first`` (the state after shard 1).
    """
    import pandas as pd

    from pipeline.running import cli as run
    from pipeline.scaling import sweep

    workdir = tmp_path_factory.mktemp("sweep")
    sets = [arg for o in sweep_overrides(workdir, tiny_dataset) for arg in ("--set", o)]
    base = ["--stage", "evaluate", "--workdir", str(workdir), *sets, *SWEEP_GRID]
    plan = sweep.plan(None, sweep_overrides(workdir, tiny_dataset), [SWEEP_GRID[1]], SWEEP_GRID[3])
    root = workdir / "sweeps" / plan.sweep_id
    first = run.main([*base, "--shard", "1/2"])
    after_first = {"grid": (root / "summary.csv").exists(), "shard": pd.read_csv(root / "shard-1-of-2" / "runs.csv")}
    second = run.main([*base, "--shard", "2/2"])
    return {
        "workdir": workdir,
        "base": base,
        "root": root,
        "plan": plan,
        "codes": (first, second),
        "after_first": after_first,
    }


# Fixtures too costly to compute twice: a test that uses one runs on the same pytest-xdist worker as every other
# test that uses it (and as the rest of its module, whose module-scoped fixtures it may share).
SHARED_FIXTURES = ("learned_workdir", "shipped_workdir", "tiny_sweep")


def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n 2`` (setup.cfg), give every test an ``xdist_group``: the tests of one module, joined
    with the other modules whose tests use the same costly session fixture (``SHARED_FIXTURES``). With
    ``--dist loadgroup`` each group runs on one worker, so no fixture is built twice; the groups still spread
    over the workers."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    for item in items:
        module = item.nodeid.split("::")[0]
        find(module)
        # a module that asks for one at run time (request.getfixturevalue) names it in SHARED_FIXTURES_USED
        used = (*getattr(item, "fixturenames", ()), *getattr(getattr(item, "module", None), "SHARED_FIXTURES_USED", ()))
        for name in SHARED_FIXTURES:
            if name in used:
                union(module, name)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(find(item.nodeid.split("::")[0])))
