"""The code a stage runs: a digest of the project's source files its function depends on.

DVC keys a stage on its code dependencies (``deps``) listed by hand; here they are computed.
:func:`code_digest` starts from the module that defines a stage's function, follows its imports
transitively and digests every source file of the project it reaches:

- every ``import``/``from ... import`` statement counts, wherever it is (module level, inside a
  function, under ``if TYPE_CHECKING``); ``from pkg import name`` also takes ``pkg.name`` when
  that is a submodule; relative imports are resolved; importing ``a.b.c`` takes the
  ``__init__.py`` of ``a`` and ``a.b`` (they run on import too), but follows their own imports only
  when the package itself is imported (``import a.b``, ``from a import b``): a stage module inside
  ``pipeline.running.stages`` does not depend on its sibling stages because the registry's ``__init__.py``
  imports them all;
- ``importlib.import_module("a.b")`` with a literal name takes ``a.b``; with an f-string such as
  ``f"a.b.{name}"`` it takes every module of the package ``a.b`` (the one the name is formed in);
- only the project's own modules are followed: those of the packages :data:`PROJECT_PACKAGES`
  and of the top-level package (or module) that defines the stage function; the standard
  library and installed packages are left out (their versions are MLflow tags already);
- the files are found without importing anything, and each is digested by its bytes under its
  path relative to the folder holding its top-level package (``models/asc.py``), sorted.

The digest is cached per process: the code a process runs is the code it imported.
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import importlib.util
import logging
import sys
from pathlib import Path
from typing import NamedTuple

from pipeline.core.hashing import digest, file_digest

logger = logging.getLogger(__name__)

PROJECT_PACKAGES = ("pipeline", "models", "augment", "evaluate")  # setup.cfg's packages


class CodeDigest(NamedTuple):
    """The code of a stage: ``digest`` (16 hex) over ``files`` (``{path relative to its root: 16-hex digest}``)."""

    digest: str
    files: dict[str, str]


@functools.cache
def code_digest(module_name: str) -> CodeDigest:
    """The digest of the project source files ``module_name`` depends on (see the module docstring).

    Args:
      module_name: the dotted name of the module defining a stage's function
        (``stage.function.__module__``).

    Returns:
      A :class:`CodeDigest`; cached per process (``code_digest.cache_clear()`` forgets it).

    Raises:
      ValueError: ``module_name`` is empty or no source file of it can be found (the message names it).
    """
    if not isinstance(module_name, str) or not module_name.strip(". "):
        raise ValueError(f"code_digest: expected a module name, got {module_name!r}")
    resolver = _Resolver()
    start = resolver.file(module_name)
    if start is None:
        raise ValueError(f"code_digest: no Python source file found for module {module_name!r}")
    project = {*PROJECT_PACKAGES, module_name.split(".")[0]}
    found: dict[str, Path] = {}
    followed: set[str] = set()
    shallow: set[str] = set()
    todo = [(module_name, True)]
    while todo:
        name, follow = todo.pop()
        if name.split(".")[0] not in project or name in followed or (not follow and name in shallow):
            continue
        path = resolver.file(name)
        if path is None:
            continue  # not a module: a name imported from a package, or a module without a source file
        found[name] = path
        todo.extend((parent, False) for parent in _parents(name))
        if follow:
            followed.add(name)
            todo.extend((imported, True) for imported in _imports(name, path, resolver))
        else:
            shallow.add(name)
    sources = {_relative(name, path): file_digest(path) for name, path in found.items()}
    sources = dict(sorted(sources.items()))
    logger.debug("code of %s: %d source files, digest %s", module_name, len(sources), digest(sources))
    return CodeDigest(digest(sources), sources)


def function_module(function) -> str | None:
    """The name of the module defining ``function`` (through ``functools.partial``), else None."""
    while isinstance(function, functools.partial):
        function = function.func
    name = getattr(function, "__module__", None)
    return name if isinstance(name, str) and name else None


def changed_files(old: dict | None, new: dict) -> list[str]:
    """The paths added, removed or changed between two ``CodeDigest.files`` maps, sorted."""
    old = old if isinstance(old, dict) else {}
    return sorted(path for path in {*old, *new} if old.get(path) != new.get(path))


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _relative(name: str, path: Path) -> str:
    """``path`` relative to the folder holding the top-level package of ``name``, POSIX style.

    A module whose file does not sit at its dotted name's place (loaded from a file under another
    name) keeps its absolute path.
    """
    parts = name.split(".")
    depth = len(parts) - (0 if path.name == "__init__.py" else 1)
    expected = parts if path.name == "__init__.py" else parts[:-1]
    if depth >= len(path.parents) or list(path.parent.parts[len(path.parent.parts) - len(expected) :]) != expected:
        return path.resolve().as_posix()
    return path.relative_to(path.parents[depth]).as_posix()


class _Resolver:
    """Finds modules' source files without importing them (memoised for one :func:`code_digest`)."""

    def __init__(self):
        self._specs: dict[str, object] = {}

    def _spec(self, name: str):
        if name not in self._specs:
            head = name.rpartition(".")[0]
            try:
                if not head:
                    spec = importlib.util.find_spec(name)  # a top-level name: found, not imported
                else:
                    locations = self.locations(head)
                    spec = importlib.machinery.PathFinder.find_spec(name, locations) if locations else None
            except (ImportError, ValueError):
                spec = None
            self._specs[name] = spec
        return self._specs[name]

    def file(self, name: str) -> Path | None:
        """The source file of module ``name`` (None: none, or not a module)."""
        loaded = sys.modules.get(name)
        origin = getattr(loaded, "__file__", None) if loaded is not None else getattr(self._spec(name), "origin", None)
        if not origin or not origin.endswith(".py") or not Path(origin).is_file():
            return None
        return Path(origin)

    def locations(self, package: str) -> list[str]:
        """The folders of package ``package`` (empty: not a package)."""
        loaded = sys.modules.get(package)
        if loaded is not None:
            return list(getattr(loaded, "__path__", ()) or ())
        spec = self._spec(package)
        return list(getattr(spec, "submodule_search_locations", None) or ())


def _imports(name: str, path: Path, resolver: _Resolver) -> list[str]:
    """Every module name ``path`` (the file of module ``name``) may import."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        logger.warning("code digest: cannot parse %s (%s); its imports are not followed", path, exc)
        return []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base:
                names.append(base)
                names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and _is_import_call(node.func) and node.args:
            names.extend(_dynamic(node.args[0], resolver))
    return names


def _absolute(module: str | None, level: int, package: str) -> str | None:
    """The absolute name of ``from <level dots><module> import ...`` in ``package`` (None: above the top)."""
    if not level:
        return module
    parts = package.split(".") if package else []
    if level - 1 > len(parts) or (level - 1 == len(parts) and not module):
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base) or None


def _is_import_call(func: ast.expr) -> bool:
    """``import_module(...)``, ``importlib.import_module(...)`` or ``__import__(...)``."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def _dynamic(arg: ast.expr, resolver: _Resolver) -> list[str]:
    """The modules a dynamic import of ``arg`` may load: a literal name, or every module of an f-string's package."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = str(arg.values[0].value)
        if "." in prefix:
            package = prefix.rpartition(".")[0]
            return [package, *_all_modules(package, resolver)]
    return []


def _all_modules(package: str, resolver: _Resolver) -> list[str]:
    """Every module (recursively) in the folders of ``package``."""
    names = []
    for location in resolver.locations(package):
        root = Path(location)
        for file in sorted(root.rglob("*.py")):
            parts = file.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if all(part.isidentifier() for part in parts):
                names.append(".".join([package, *parts]))
    return names
