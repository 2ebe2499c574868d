"""Leaf paths, the kernel filter and per-layer rules: the one place every subpackage uses.

- Paths: a leaf's name is its "/"-joined key path, e.g. ``"Dense_0/kernel"`` or
  ``"params/block_1/attn/query/kernel"``.
- Kernels: :func:`is_kernel` is the library's single answer to "which leaves are the weight
  matrices" (pruned, quantized, shared, compressed by default): floating-point leaves with
  more than one dimension that are not embedding tables.
- Per-layer rules: a mapping ``{pattern: value}``. A pattern is one or more "/"-separated
  components that must occur as a contiguous run of the leaf's path components; a pattern
  component also matches a layer *kind*, the component with its ``_<n>`` suffix removed
  (``"Dense"`` matches ``"Dense_3"``, ``"Conv"`` matches ``"Conv_0"``). When several
  patterns match, the most specific wins: more components first, then more exact (non-kind)
  components, then the one listed first. :func:`check_rules` refuses a pattern that matches
  no leaf, naming the config field.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_models.typing import PyTree

FilterFn = Callable[[str, Any], bool]
"""``filter_fn(path, leaf) -> bool``: ``path`` is the leaf's name, e.g. ``"Dense_0/kernel"``."""


def key_name(key: Any) -> str:
    """One key-path entry as a string (dict key, attribute name or sequence index)."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return str(key.name)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_name(path: Sequence[Any]) -> str:
    """Joins a JAX key path into a "/"-separated string, e.g. ``"Dense_0/kernel"``."""
    return "/".join(key_name(k) for k in path)


def named_leaves(tree: PyTree, is_leaf=None) -> list[tuple[str, Any]]:
    """``[(name, leaf), ...]`` in flattening order.

    Example:
      >>> named_leaves({"Dense_0": {"kernel": w, "bias": b}})
      [('Dense_0/bias', b), ('Dense_0/kernel', w)]
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_name(p), leaf) for p, leaf in flat]


def flatten_with_paths(tree: PyTree) -> tuple[list[str], list[Any], Any]:
    """Flattens ``tree`` into ``(path strings, leaves, treedef)``."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [path_name(p) for p, _ in flat], [leaf for _, leaf in flat], treedef


def map_with_names(fn: Callable[[str, Any], Any], tree: PyTree, is_leaf=None) -> PyTree:
    """``jax.tree.map`` whose function also receives the leaf's name: ``fn(name, leaf)``."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: fn(path_name(p), x), tree, is_leaf=is_leaf
    )


def is_kernel(path: str, leaf: Any) -> bool:
    """The library's kernel filter: floating leaves with ndim > 1 that are not embeddings.

    Pruning, quantization, weight sharing and the compression recipes all use this as their
    default ``filter_fn``; biases, norm scales and embedding tables are left alone.

    Args:
      path: the leaf's name, e.g. ``"Dense_0/kernel"``.
      leaf: the array (or anything with ``shape`` / ``dtype``).

    Returns:
      Whether the leaf is a kernel.

    Example:
      >>> is_kernel("Dense_0/kernel", jnp.zeros((3, 4))), is_kernel("Dense_0/bias", jnp.zeros(4))
      (True, False)
    """
    if jnp.ndim(leaf) <= 1 or path.rsplit("/", 1)[-1] == "embedding":
        return False
    dtype = getattr(leaf, "dtype", None)
    return dtype is None or jnp.issubdtype(dtype, jnp.floating)


def _kind(component: str) -> str:
    head, _, tail = component.rpartition("_")
    return head if head and tail.isdigit() else component


def path_matches(pattern: str, path: str) -> bool:
    """Whether ``pattern`` matches ``path`` under the per-layer rule convention (see module).

    Example:
      >>> path_matches("Dense_0", "params/Dense_0/kernel"), path_matches("Dense", "Dense_3/kernel")
      (True, True)
      >>> path_matches("Dense_1", "Dense_10/kernel")
      False
    """
    return _match_score(pattern, path) is not None


def _match_score(pattern: str, path: str) -> tuple[int, int] | None:
    want = [p for p in str(pattern).split("/") if p]
    have = path.split("/")
    n = len(want)
    best = None
    for i in range(len(have) - n + 1):
        exact = 0
        for w, h in zip(want, have[i : i + n], strict=True):
            if w == h:
                exact += 1
            elif w != _kind(h):
                break
        else:
            score = (n, exact)
            best = score if best is None or score > best else best
    return best if n else None


def best_rule(rules: Mapping[str, Any] | None, path: str) -> str | None:
    """The most specific pattern of ``rules`` that matches ``path`` (``None``: no match).

    Example:
      >>> best_rule({"Dense": 0.9, "Dense_2": 0.5}, "Dense_2/kernel")
      'Dense_2'
    """
    best, key = None, None
    for pattern in dict(rules or {}):
        score = _match_score(pattern, path)
        if score is not None and (best is None or score > best):
            best, key = score, pattern
    return key


def rule_for(rules: Mapping[str, Any] | None, path: str, default: Any = None) -> Any:
    """The value of the most specific pattern of ``rules`` matching ``path``, else ``default``.

    Args:
      rules: ``{pattern: value}`` (``None`` or empty: no rules).
      path: the leaf's name.
      default: the value when no pattern matches.

    Returns:
      The rule's value.

    Example:
      >>> rule_for({"Dense": 0.9, "Dense_2": 0.5}, "Dense_2/kernel", 0.0)
      0.5
      >>> rule_for({"Dense": 0.9, "Dense_2": 0.5}, "Conv_0/kernel", 0.0)
      0.0
    """
    key = best_rule(rules, path)
    return default if key is None else dict(rules)[key]


def check_rules(
    rules: Mapping[str, Any] | None, tree: PyTree, field: str, filter_fn: FilterFn | None = None
) -> None:
    """Raises ``ValueError`` naming ``field`` when a pattern of ``rules`` matches no leaf.

    Args:
      rules: ``{pattern: value}``.
      tree: the params (or their shapes, e.g. from ``jax.eval_shape``).
      field: the config field the rules came from, for the message.
      filter_fn: only leaves it accepts count (default :func:`is_kernel`).

    Example:
      >>> check_rules({"Dense_9": 0.5}, params, "pruning.layers")  # raises: no such layer
    """
    filter_fn = filter_fn or is_kernel
    names = [n for n, x in named_leaves(tree) if filter_fn(n, x)]
    unknown = [p for p in dict(rules or {}) if not any(path_matches(p, n) for n in names)]
    if unknown:
        raise ValueError(
            f"{field} names {unknown}, which match no layer; the layers are {sorted(names)} "
            "(a pattern is a run of path components; a component may be a layer kind such as "
            "'Dense' or 'Conv')"
        )


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
