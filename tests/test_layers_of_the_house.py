"""The house in layers: foundations below, orchestration on top, no import running up the house."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("pipeline.stages", "pipeline.runner", "pipeline.tracking", "pipeline.training", "pipeline.task",
                 "pipeline.run")
# What each lower layer may import from the pipeline package.
LOWER = {
    "pipeline/core": ("pipeline.core",),
    "models": ("pipeline.core",),
    "augment": ("pipeline.core", "pipeline.asc_infer"),  # the one WAV reader and resampler
    "evaluate": ("pipeline.core",),
    "pipeline/asc_infer": ("pipeline.asc_infer",),
    "pipeline/audit.py": ("pipeline.core", "pipeline.asc_infer"),
    "pipeline/data.py": ("pipeline.core", "pipeline.asc_infer", "pipeline.audit"),
    "pipeline/inputs.py": ("pipeline.core", "pipeline.data", "pipeline.asc_infer"),
    "pipeline/synthetic": ("pipeline.core", "pipeline.synthetic"),
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
    for path in _sources("pipeline/asc_infer"):
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
    hits = [p.relative_to(ROOT) for d in ("pipeline", "models", "augment", "evaluate", "tests", "benchmarks")
            for p in (ROOT / d).rglob("*.py") if 'os.environ["TF_USE_LEGACY_KERAS"]' in p.read_text()
            and p.name != Path(__file__).name]
    assert [str(h) for h in hits] == ["pipeline/core/env.py"]


def test_no_source_file_above_500_lines():
    long = [(str(p.relative_to(ROOT)), n) for d in ("pipeline", "models", "augment", "evaluate")
            for p in (ROOT / d).rglob("*.py") if (n := len(p.read_text().splitlines())) > 500]
    assert not long, long
