"""The README and docs/ name only what exists: `python -m` commands, file paths, config keys and links.

A renamed module, a moved file or a removed key makes the text wrong without failing anything
else; these tests read README.md and every docs/*.md and check each name against the tree and
against the configuration's keys.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from pipeline.core.config import Params

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("pipeline", "models", "augment", "evaluate", "tests", "benchmarks", "configs", "docs", ".ci", "mlruns")
CHECKED_SUFFIXES = (".py", ".yaml", ".md", ".cfg", ".toml")
SECTIONS = tuple(key for key, value in Params().to_dict().items() if isinstance(value, dict))
MAX_README_LINES = 300
EXAMPLE_PATHS = {"pipeline/running/stages/my_stage.py"}  # the file a reader would create in "Adding a stage"
GENERATED_PATHS = {"tests/artifacts/"}  # written by the browser test (git-ignored)
PYTHON_NAMES = {
    "model.labels",
    "model.metrics",
    "model.runtime",  # attributes of a loaded asc_infer.Model
    "model.fit",
}  # a Keras model's method, in prose about training


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _code_spans(text: str) -> list[str]:
    """Inline code spans and the lines of fenced code blocks."""
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        spans.extend(block.splitlines())
    return spans


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def _is_python_name(dotted: str) -> bool:
    """True when ``dotted`` is a project module or an attribute of one (``evaluate.compress.TFLiteClassifier``)."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 1, -1):
        try:
            if importlib.util.find_spec(".".join(parts[:i])) is None:
                continue
        except (ImportError, AttributeError, ValueError):  # a parent that is a module, or no such package
            continue
        obj = importlib.import_module(".".join(parts[:i]))
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.fixture(scope="module")
def keys() -> set[str]:
    flat = set(Params().flat())
    prefixes = {".".join(k.split(".")[:i]) for k in flat for i in range(1, k.count(".") + 1)}
    return flat | prefixes


def test_the_readme_is_short_and_links_every_doc():
    readme = _text(ROOT / "README.md")
    assert len(readme.splitlines()) <= MAX_README_LINES
    for doc in DOCS[1:]:
        assert f"(docs/{doc.name})" in readme, f"README does not link docs/{doc.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_m_commands_exist(doc):
    modules = set(re.findall(r"python3? -m ([A-Za-z_][\w.]*)", _text(doc)))
    assert modules or doc.name not in ("README.md",), "the README names its commands"
    for name in modules:
        if name.split(".")[0] in ("pip", "pytest", "venv", "mlflow"):
            continue
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"{doc.name}: python -m {name}: no such module"
        if spec.submodule_search_locations is not None:  # a package runs its __main__
            assert importlib.util.find_spec(f"{name}.__main__") is not None, f"{doc.name}: {name} has no __main__"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_file_paths_exist(doc):
    missing = []
    for span in _code_spans(_text(doc)):
        for token in re.findall(r"[\w./-]+", span):
            token = token.rstrip(".,:;")
            first = token.split("/")[0]
            if first not in TOP or "/" not in token or "*" in token:
                continue
            if token in EXAMPLE_PATHS | GENERATED_PATHS:
                continue
            if token.endswith(CHECKED_SUFFIXES) or token.endswith("/"):
                if not (ROOT / token).exists():
                    missing.append(token)
    assert not missing, f"{doc.name} names paths that do not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_config_keys_exist(doc, keys):
    unknown = []
    pattern = re.compile(rf"(?<![\w./-])((?:{'|'.join(SECTIONS)})\.[a-z_][\w.]*[a-z_0-9])(?![\w/(])")
    for span in _code_spans(_text(doc)):
        for key in pattern.findall(span):
            if key.endswith((".py", ".yaml", ".json", ".csv", ".keras", ".tflite", ".md")) or key in PYTHON_NAMES:
                continue
            if key not in keys and _is_python_name(key):  # evaluate.compress.TFLiteClassifier: Python, not a setting
                continue
            if key not in keys:
                unknown.append(key)
    assert not unknown, f"{doc.name} names configuration keys that do not exist: {sorted(set(unknown))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve(doc):
    broken = []
    text = _text(doc)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = doc if not path else (doc.parent / path).resolve()
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(_text(file)):
            broken.append(target)
    assert not broken, f"{doc.name} has broken links: {broken}"
