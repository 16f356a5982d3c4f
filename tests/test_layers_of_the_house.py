"""The house in layers: foundations below, orchestration on top, no import running up the house."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What each lower layer may import from the pipeline package.
LOWER = {
    "pipeline/core": ("pipeline.core",),
    "models": ("pipeline.core",),
    "augment": ("pipeline.core", "pipeline.inference.asc_infer"),  # the one WAV reader and resampler
    "evaluate": ("pipeline.core",),
    "pipeline/inference/asc_infer": ("pipeline.inference.asc_infer",),
    "pipeline/data/audit.py": ("pipeline.core", "pipeline.inference.asc_infer"),
    "pipeline/data/tau.py": ("pipeline.core", "pipeline.inference.asc_infer", "pipeline.data.audit"),
    "pipeline/data/inputs.py": ("pipeline.core", "pipeline.data.tau", "pipeline.inference.asc_infer"),
    "pipeline/data/synthetic": ("pipeline.core", "pipeline.data.synthetic", "pipeline.data.splits"),
    "pipeline/data/splits.py": ("pipeline.core",),  # the DCASE2024 subsets: the synthetic set writes its own
    "pipeline/data/manifests.py": ("pipeline.core",),
    "pipeline/data/download.py": ("pipeline.core", "pipeline.data.manifests"),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _sources(rel: str) -> list[Path]:
    target = ROOT / rel
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


def test_lower_layers_import_only_the_foundations():
    bad = []
    for rel, allowed in LOWER.items():
        for path in _sources(rel):
            for name in _imports(path):
                if name == "pipeline" or not name.startswith("pipeline."):
                    continue
                if not name.startswith(allowed):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


# The deployable runtime is copied out of the project: the standard library, NumPy and the
# TFLite interpreter modules (imported lazily by its __init__) only; relative imports among itself.
ASC_INFER_ALLOWED = {"numpy", "tflite_runtime", "ai_edge_litert", "tensorflow"}


def test_asc_infer_imports_only_stdlib_numpy_and_interpreters():
    bad = []
    for path in _sources("pipeline/inference/asc_infer"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ASC_INFER_ALLOWED:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_foundations_import_no_tensorflow_or_mlflow():
    for path in _sources("pipeline/core"):
        heavy = {n for n in _imports(path) if n.split(".")[0] in ("tensorflow", "tf_keras", "mlflow")}
        assert not heavy, f"{path.name} imports {heavy}"


def test_tf_use_legacy_keras_is_set_in_one_place():
    hits = [
        p.relative_to(ROOT)
        for d in ("pipeline", "models", "augment", "evaluate", "tests", "benchmarks")
        for p in (ROOT / d).rglob("*.py")
        if 'os.environ["TF_USE_LEGACY_KERAS"]' in p.read_text() and p.name != Path(__file__).name
    ]
    assert [str(h) for h in hits] == ["pipeline/core/env.py"]


def test_no_source_file_above_500_lines():
    long = [
        (str(p.relative_to(ROOT)), n)
        for d in ("pipeline", "models", "augment", "evaluate")
        for p in (ROOT / d).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    ]
    assert not long, long


# The folders are the architecture: what each group of pipeline/ may import from the project.
# A new import across groups must be added here (and to the README's layout table) on purpose.
GROUPS = {
    "pipeline.data": ("pipeline.core", "pipeline.data", "pipeline.inference.asc_infer"),
    "pipeline.running": (
        "pipeline.core",
        "pipeline.data",
        "pipeline.running",
        "pipeline.inference.asc_infer",
        "models",
        "augment",
        "evaluate",
        "pipeline.scaling.distributed",  # the worker role: the runner and task ask the cluster
        "pipeline.scaling.sweep",  # the CLI hands --sweep/--seeds over
        "pipeline.scaling.search",  # the CLI hands --search/--trials over
        "pipeline.inference.package",  # the compress stage builds the package
        "pipeline.inference.serving",
        "pipeline.inference.registry",
    ),  # tracking registers the served model
    "pipeline.scaling": ("pipeline.core", "pipeline.scaling", "pipeline.running", "evaluate"),
    "pipeline.inference": (
        "pipeline.core",
        "pipeline.inference",
        "models",
        "augment",
        "pipeline.running.preflight",
    ),  # environment checks before TensorFlow starts
}


def _imported_modules(path: Path) -> set[str]:
    """``from a.b import c`` names ``a.b.c`` when that is a module or package of the project, else ``a.b``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                where = ROOT / child.replace(".", "/")
                names.add(child if where.is_dir() or where.with_suffix(".py").is_file() else node.module)
    return names


def test_each_group_of_the_pipeline_package_imports_what_the_architecture_says():
    bad = []
    for group, allowed in GROUPS.items():
        for path in _sources(group.replace(".", "/")):
            for name in _imported_modules(path):
                top = name.split(".")[0]
                if top not in ("pipeline", "models", "augment", "evaluate") or name == "pipeline":
                    continue
                if not any(name == a or name.startswith(a + ".") for a in allowed):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_top_of_pipeline_holds_only_the_commands_and_the_groups():
    top = sorted(p.name for p in (ROOT / "pipeline").iterdir() if p.name != "__pycache__")
    assert top == [
        "__init__.py",
        "core",
        "data",
        "inference",
        "launch.py",
        "predict.py",
        "run.py",
        "running",
        "scaling",
        "submit.py",
    ]
    for command in ("run", "predict", "launch", "submit"):
        names = _imports(ROOT / "pipeline" / f"{command}.py") - {"sys"}
        assert len(names) == 2 and all(n.startswith("pipeline.") for n in names), names  # module and its main
