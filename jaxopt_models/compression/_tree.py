"""Private pytree helpers: leaf names and alignment of side trees with params."""

from collections.abc import Callable
from typing import Any

import jax

from jaxopt_models.typing import PyTree

FilterFn = Callable[[str, Any], bool]
"""``filter_fn(path, leaf) -> bool``: ``path`` is the leaf's name, e.g. ``"Dense_0/kernel"``."""


def key_name(key) -> str:
    """One path component as a string (dict key, sequence index or attribute)."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_name(path) -> str:
    """``"Dense_0/kernel"`` for a key path, as used by ``filter_fn`` and reports."""
    return "/".join(key_name(k) for k in path)


def named_leaves(tree: PyTree, is_leaf=None) -> list[tuple[str, Any]]:
    """``[(name, leaf), ...]`` in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_name(p), leaf) for p, leaf in flat]


def aligned(params: PyTree, other: PyTree | None, arg: str, is_leaf=None) -> list[Any]:
    """Leaves of ``other`` aligned with the leaves of ``params`` (``None`` where absent).

    ``other`` must have the params' structure, where a leaf may be ``None`` or a node
    accepted by ``is_leaf`` (e.g. a ``SharedTensor``). Raises ``ValueError`` naming
    ``arg`` and the mismatching leaf names otherwise.
    """
    names = [n for n, _ in named_leaves(params)]
    if other is None:
        return [None] * len(names)

    def stop(x):
        return x is None or (is_leaf is not None and is_leaf(x))

    got = named_leaves(other, is_leaf=stop)
    got_names = [n for n, _ in got]
    if got_names != names:
        missing = sorted(set(names) - set(got_names))
        extra = sorted(set(got_names) - set(names))
        raise ValueError(
            f"{arg} must have the params' tree structure; missing leaves {missing[:5]}, "
            f"unexpected leaves {extra[:5]}"
            + ("" if missing or extra else " (same leaves in a different order)")
        )
    return [leaf for _, leaf in got]


def default_filter(path: str, leaf) -> bool:
    """Kernels only: leaves with more than one dimension (not biases or norm scales)."""
    del path
    return getattr(leaf, "ndim", 0) > 1
