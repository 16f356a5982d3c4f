"""Dotted keys (``train.epochs``) in nested dicts: the one place that walks them.

Used by the configuration (``--set`` overrides), the sweeps (the keys left out of a sweep's id)
and the stage records (the settings a stage's reuse key depends on).
"""

from __future__ import annotations

from typing import Any


def get(tree: dict, key: str) -> Any:
    """The value at ``key`` (``"a.b"`` -> ``tree["a"]["b"]``).

    Args:
      tree: nested dicts.
      key: a dotted key.

    Returns:
      The value (a sub-dict for a section).

    Raises:
      KeyError: naming the missing part, when a part of ``key`` is absent.
    """
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def without(tree: dict, key: str) -> dict:
    """A copy of ``tree`` without ``key``; ``tree`` itself is not changed (only the dicts on the path are copied).

    Args:
      tree: nested dicts.
      key: a dotted key; a key that is absent (or runs into a non-dict) leaves the copy equal to ``tree``.

    Returns:
      The copy.
    """
    head, _, rest = key.partition(".")
    copy = dict(tree)
    if not rest:
        copy.pop(head, None)
    elif isinstance(copy.get(head), dict):
        copy[head] = without(copy[head], rest)
    return copy


def put(tree: dict, key: str, value: Any) -> None:
    """Set ``key`` to ``value`` in place, creating (or replacing non-dict values by) the sections on the way.

    Args:
      tree: nested dicts, changed in place.
      key: a dotted key.
      value: the new value.
    """
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
