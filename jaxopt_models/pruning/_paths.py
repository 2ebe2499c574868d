"""Leaf paths as strings ("Dense_0/kernel"), shared by masks, distributions and summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax


def key_to_str(key: Any) -> str:
    """Returns the name of one key-path entry (dict key, attribute name or sequence index)."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return str(key.name)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_to_str(path: Sequence[Any]) -> str:
    """Joins a JAX key path into a "/"-separated string, e.g. ``"params/Dense_0/kernel"``."""
    return "/".join(key_to_str(k) for k in path)


def flatten_with_paths(tree: Any) -> tuple[list[str], list[Any], Any]:
    """Flattens ``tree`` into (path strings, leaves, treedef)."""
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [path_to_str(p) for p, _ in path_leaves]
    leaves = [leaf for _, leaf in path_leaves]
    return paths, leaves, treedef


def path_matches(pattern: str, path: str) -> bool:
    """Whether ``pattern``'s components occur as a contiguous run of ``path``'s components.

    ``"Dense_0"`` matches ``"params/Dense_0/kernel"``; ``"Dense_0/kernel"`` matches it too;
    ``"Dense_1"`` does not match ``"params/Dense_10/kernel"``.
    """
    want = [p for p in pattern.split("/") if p]
    have = path.split("/")
    if not want:
        return False
    n = len(want)
    return any(have[i : i + n] == want for i in range(len(have) - n + 1))
