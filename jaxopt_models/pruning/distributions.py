"""Sparsity distributions: how one overall sparsity is spread over the prunable layers.

Each function returns a pytree shaped like ``params`` with one sparsity per leaf (0.0 for
leaves that ``filter_fn`` leaves dense). Python floats in give Python floats out; a traced
``sparsity`` (inside ``jit``, e.g. from a schedule) gives ``jnp`` scalars, so the same
functions serve :func:`compute_masks` and the :func:`prune` transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models.pruning._paths import best_rule, flatten_with_paths, path_matches
from jaxopt_models.tree import is_kernel
from jaxopt_models.typing import PyTree

FilterFn = Callable[[str, Any], bool]
"""``filter_fn(path, leaf) -> bool``: True for leaves that may be pruned."""


def default_filter(path: str, leaf: Any) -> bool:
    """Prunes kernels (ndim > 1) and leaves biases, norm scales and embeddings dense.

    Args:
      path: the leaf's "/"-joined key path, e.g. ``"params/Dense_0/kernel"``.
      leaf: the array.

    Returns:
      True when the leaf has more than one dimension and is not named ``embedding``.

    Example:
      >>> default_filter("Dense_0/kernel", jnp.zeros((3, 4)))
      True
      >>> default_filter("Dense_0/bias", jnp.zeros(4))
      False
    """
    return is_kernel(path, leaf)


def is_concrete(x: Any) -> bool:
    """True when ``x`` is a Python / NumPy number or a non-traced array."""
    if isinstance(x, (int, float, np.number, np.ndarray)):
        return True
    try:
        np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return False
    return True


def check_sparsity(sparsity: Any, name: str = "sparsity") -> Any:
    """Validates a concrete sparsity in [0, 1) and returns it as a float; tracers pass through."""
    if not is_concrete(sparsity):
        return sparsity
    if isinstance(sparsity, bool):
        raise TypeError(f"{name} must be a number in [0, 1), got {sparsity!r}.")
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1), got {sparsity!r}.") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
    return value


def _prunable(params: PyTree, filter_fn: FilterFn | None):
    filter_fn = default_filter if filter_fn is None else filter_fn
    paths, leaves, treedef = flatten_with_paths(params)
    flags = [
        bool(filter_fn(p, leaf)) and int(np.prod(jnp.shape(leaf))) > 0
        for p, leaf in zip(paths, leaves, strict=True)
    ]
    return paths, leaves, treedef, flags


def uniform_sparsity(params: PyTree, sparsity: Any, filter_fn: FilterFn | None = None) -> PyTree:
    """The same sparsity for every prunable leaf.

    Args:
      params: parameter pytree (only paths and shapes are used).
      sparsity: a number in [0, 1) or a traced scalar.
      filter_fn: ``(path, leaf) -> bool``; default :func:`default_filter`.

    Returns:
      A pytree like ``params``: ``sparsity`` on prunable leaves, 0.0 elsewhere.

    Raises:
      ValueError: if a concrete ``sparsity`` is outside [0, 1).

    Example:
      >>> uniform_sparsity({"k": jnp.zeros((2, 2)), "b": jnp.zeros(2)}, 0.5)
      {'b': 0.0, 'k': 0.5}
    """
    sparsity = check_sparsity(sparsity)
    _, _, treedef, flags = _prunable(params, filter_fn)
    return jax.tree.unflatten(treedef, [sparsity if f else 0.0 for f in flags])


def erk_sparsity(
    params: PyTree,
    sparsity: Any,
    filter_fn: FilterFn | None = None,
    power_scale: float = 1.0,
) -> PyTree:
    """Erdős–Rényi-kernel (ERK) sparsity: denser small layers, sparser big ones.

    Layer density is ``eps * (sum(shape) / prod(shape)) ** power_scale``, capped at 1, with
    ``eps`` chosen so the prunable weights as a whole reach ``sparsity`` (Evci et al., 2020).
    Layers that would exceed density 1 are kept dense and ``eps`` is solved again for the
    rest. Works with a traced ``sparsity``.

    Args:
      params: parameter pytree (only paths and shapes are used).
      sparsity: overall sparsity of the prunable leaves, in [0, 1), or a traced scalar.
      filter_fn: ``(path, leaf) -> bool``; default :func:`default_filter`.
      power_scale: exponent on the ERK ratio; 0.0 gives the uniform distribution.

    Returns:
      A pytree like ``params`` with per-leaf sparsities (0.0 on non-prunable leaves).

    Raises:
      ValueError: if a concrete ``sparsity`` is outside [0, 1).

    Example:
      >>> s = erk_sparsity({"a": jnp.zeros((784, 300)), "b": jnp.zeros((100, 10))}, 0.9)
      >>> s["a"] > 0.9 > s["b"]
      True
    """
    sparsity = check_sparsity(sparsity)
    _, leaves, treedef, flags = _prunable(params, filter_fn)
    idx = [i for i, f in enumerate(flags) if f]
    out: list[Any] = [0.0] * len(leaves)
    if not idx:
        return jax.tree.unflatten(treedef, out)
    sizes = np.array([math.prod(jnp.shape(leaves[i])) for i in idx], np.float64)
    raw = np.array(
        [(sum(jnp.shape(leaves[i])) / math.prod(jnp.shape(leaves[i]))) ** power_scale for i in idx],
        np.float64,
    )
    order = np.argsort(-raw, kind="stable")  # densest (largest ratio) first
    raw_o, sizes_o = raw[order], sizes[order]
    count = len(idx)
    # For j = 0..count: the first j layers (in `order`) are dense; eps for the remaining ones.
    dense_sizes = np.concatenate([[0.0], np.cumsum(sizes_o)])  # (count+1,)
    rest = np.concatenate([np.cumsum((raw_o * sizes_o)[::-1])[::-1], [0.0]])  # (count+1,)
    static = is_concrete(sparsity)
    xp = np if static else jnp
    budget = (1.0 - sparsity) * sizes.sum()
    eps = xp.where(rest > 0, (budget - dense_sizes) / xp.where(rest > 0, rest, 1.0), xp.inf)
    next_ratio = np.concatenate([raw_o, [0.0]])
    # With j layers dense, eps is valid when the densest remaining layer stays <= 1.
    valid = xp.where(rest > 0, xp.where(rest > 0, eps, 0.0) * next_ratio <= 1.0, True)
    j = xp.argmax(valid)  # first valid number of dense layers
    eps_j = eps[j]
    pos = np.empty(count, np.int64)
    pos[order] = np.arange(count)
    density = xp.where(pos < j, 1.0, xp.minimum(1.0, eps_j * raw))
    layer_sparsity = xp.clip(1.0 - density, 0.0, 1.0)
    for n, i in enumerate(idx):
        value = layer_sparsity[n]
        out[i] = float(value) if static else value.astype(jnp.float32)
    return jax.tree.unflatten(treedef, out)


def per_layer_sparsity(
    params: PyTree,
    mapping: Mapping[str, Any],
    sparsity: Any = None,
    filter_fn: FilterFn | None = None,
) -> PyTree:
    """Per-layer sparsities from a dict of path patterns.

    A key matches a leaf when its "/"-separated components occur as a contiguous run in the
    leaf's path (``"Dense_0"`` matches ``"params/Dense_0/kernel"``); the longest matching key
    wins. A value is a number in [0, 1), ``None`` (keep dense), or a callable
    ``overall_sparsity -> layer_sparsity`` (so a layer can follow a gradual schedule, e.g.
    ``lambda s: 0.5 * s``). Prunable leaves that no key matches get ``sparsity`` (dense when
    it is None).

    Args:
      params: parameter pytree (only paths and shapes are used).
      mapping: ``{path pattern: sparsity | None | callable}``.
      sparsity: the overall sparsity (default for unmatched leaves, argument of callables).
      filter_fn: ``(path, leaf) -> bool``; default :func:`default_filter`. Keys only apply to
        leaves it accepts.

    Returns:
      A pytree like ``params`` with per-leaf sparsities (0.0 on dense leaves).

    Raises:
      ValueError: a value outside [0, 1), or a key that matches no prunable leaf.
      TypeError: a non-string key.

    Example:
      >>> p = {"Dense_0": {"kernel": jnp.zeros((4, 4))}, "Dense_1": {"kernel": jnp.zeros((4, 2))}}
      >>> per_layer_sparsity(p, {"Dense_0": 0.5}, 0.8)
      {'Dense_0': {'kernel': 0.5}, 'Dense_1': {'kernel': 0.8}}
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a dict of path pattern -> sparsity, got {mapping!r}.")
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"mapping keys must be path strings, got {key!r}.")
        if value is not None and not callable(value):
            check_sparsity(value, f"mapping[{key!r}]")
    default = None if sparsity is None else check_sparsity(sparsity)
    paths, _, treedef, flags = _prunable(params, filter_fn)
    used: set[str] = set()
    out: list[Any] = []
    for path, flag in zip(paths, flags, strict=True):
        if not flag:
            out.append(0.0)
            continue
        matches = [k for k in mapping if path_matches(k, path)]
        if not matches:
            out.append(0.0 if default is None else default)
            continue
        key = best_rule(mapping, path)
        used.update(matches)
        value = mapping[key]
        if value is None:
            out.append(0.0)
        elif callable(value):
            if default is None:
                raise ValueError(
                    f"mapping[{key!r}] is a callable of the overall sparsity, but sparsity is None."
                )
            out.append(check_sparsity(value(default), f"mapping[{key!r}](sparsity)"))
        else:
            out.append(check_sparsity(value, f"mapping[{key!r}]"))
    unused = sorted(set(mapping) - used)
    if unused:
        prunable = [p for p, f in zip(paths, flags, strict=True) if f]
        raise ValueError(
            f"mapping keys {unused} match no prunable leaf; prunable leaves: {prunable}."
        )
    return jax.tree.unflatten(treedef, out)


DISTRIBUTIONS = ("uniform", "erk")


def distribute(
    params: PyTree,
    sparsity: Any,
    distribution: str | Mapping[str, Any] | Callable[..., PyTree],
    filter_fn: FilterFn | None = None,
) -> PyTree:
    """Dispatches ``"uniform"``, ``"erk"``, a per-layer dict or a callable distribution.

    Args:
      params: parameter pytree.
      sparsity: overall sparsity (number or traced scalar; may be None for a dict).
      distribution: ``"uniform"``, ``"erk"``, a dict for :func:`per_layer_sparsity`, or a
        callable ``(params, sparsity, filter_fn) -> per-leaf sparsity pytree``.
      filter_fn: ``(path, leaf) -> bool``; default :func:`default_filter`.

    Returns:
      A per-leaf sparsity pytree shaped like ``params``.

    Raises:
      ValueError: for an unknown distribution name or a missing sparsity.

    Example:
      >>> distribute({"k": jnp.zeros((2, 2))}, 0.5, "uniform")
      {'k': 0.5}
    """
    if isinstance(distribution, Mapping):
        return per_layer_sparsity(params, distribution, sparsity, filter_fn)
    if sparsity is None:
        raise ValueError(f"sparsity is required with distribution={distribution!r}.")
    if isinstance(distribution, str):
        if distribution == "uniform":
            return uniform_sparsity(params, sparsity, filter_fn)
        if distribution == "erk":
            return erk_sparsity(params, sparsity, filter_fn)
        raise ValueError(
            f"distribution must be one of {DISTRIBUTIONS}, a dict or a callable, "
            f"got {distribution!r}."
        )
    if callable(distribution):
        return distribution(params, sparsity, filter_fn)
    raise TypeError(f"distribution must be a name, a dict or a callable, got {distribution!r}.")
