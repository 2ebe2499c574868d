"""Masks from scores: exact top-k per layer or globally, N:M, channels, thresholds."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models.pruning import _select
from jaxopt_models.pruning._paths import flatten_with_paths
from jaxopt_models.pruning.distributions import (
    FilterFn,
    check_sparsity,
    default_filter,
    distribute,
    is_concrete,
)
from jaxopt_models.pruning.structures import (
    Channels,
    NByM,
    Structure,
    Unstructured,
    as_structure,
)
from jaxopt_models.typing import PyTree

SCOPES = ("layer", "global")


def _num_units(leaf: Any, structure: Structure) -> int:
    if isinstance(structure, Channels):
        return int(jnp.shape(leaf)[structure.axis])
    return int(np.prod(jnp.shape(leaf)))


def _check_leaf(path: str, leaf: Any, structure: Structure) -> None:
    shape = jnp.shape(leaf)
    ndim = len(shape)
    if isinstance(structure, NByM):
        if not -ndim <= structure.axis < ndim:
            raise ValueError(
                f"structure {structure} cannot apply to leaf {path!r} with shape {shape}: "
                f"axis {structure.axis} is out of range for {ndim} dimensions."
            )
        size = shape[structure.axis]
        if size % structure.m:
            raise ValueError(
                f"structure {structure} cannot apply to leaf {path!r} with shape {shape}: "
                f"its size {size} along axis {structure.axis} is not a multiple of m={structure.m}."
            )
    elif isinstance(structure, Channels):
        if ndim < 2:
            raise ValueError(
                f"structure {structure} cannot apply to leaf {path!r} with shape {shape}: channel "
                "pruning needs a kernel with at least 2 dimensions (exclude it with filter_fn)."
            )
        if not -ndim <= structure.axis < ndim:
            raise ValueError(
                f"structure {structure} cannot apply to leaf {path!r} with shape {shape}: "
                f"axis {structure.axis} is out of range for {ndim} dimensions."
            )


def _channel_scores(score: jax.Array, structure: Channels) -> jax.Array:
    moved = jnp.moveaxis(jnp.asarray(score, jnp.float32), structure.axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    if structure.norm == "l1":
        return jnp.sum(jnp.abs(flat), axis=0)
    return jnp.sqrt(jnp.sum(jnp.square(flat), axis=0))


def _expand_channels(keep: jax.Array, shape: tuple[int, ...], axis: int) -> jax.Array:
    axis = axis % len(shape)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return jnp.broadcast_to(keep.reshape(view), shape)


def _n_by_m_mask(score: jax.Array, structure: NByM) -> jax.Array:
    """Keeps the ``n`` highest scores of every ``m``-group; ties: the lowest index is pruned."""
    n, m = structure.n, structure.m
    moved = jnp.moveaxis(_select.canonical(score), structure.axis, -1)
    groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
    s_i = groups[..., :, None]
    s_j = groups[..., None, :]
    idx = jnp.arange(m)
    earlier = idx[None, :] < idx[:, None]  # [i, j]: j < i
    # Rank of entry i in ascending (score, index) order = number of entries before it.
    before = (s_j < s_i) | ((s_j == s_i) & earlier)
    rank = jnp.sum(before, axis=-1)
    keep = rank >= m - n
    return jnp.moveaxis(keep.reshape(moved.shape), -1, structure.axis)


def _canonical_group(arrays: list[Any]) -> list[jax.Array]:
    """Scores as one float dtype (float64 if any is float64), NaN -> -inf, -0 -> +0."""
    wide = any(jnp.asarray(a).dtype == jnp.float64 for a in arrays)
    dtype = jnp.float64 if wide else jnp.float32
    return [_select.canonical(jnp.asarray(a).astype(dtype)) for a in arrays]


@functools.partial(jax.jit, static_argnames=("structure", "global_scope"))
def _select_keep(
    leaves: tuple[jax.Array, ...], ks: jax.Array, structure: Structure, global_scope: bool
) -> tuple[jax.Array, ...]:
    """Compiled core: keep-masks for ``leaves`` given how many units each (or all) loses.

    Compiled once per set of shapes; ``ks`` is an array so new sparsities do not recompile.
    """
    if isinstance(structure, Channels):
        scores = [_channel_scores(leaf, structure) for leaf in leaves]
    else:
        scores = list(leaves)
    values = _canonical_group(scores)
    if global_scope:
        (keep,) = _select.drop_bottom_k([values], ks)
    else:
        keep = [m for (m,) in _select.drop_bottom_k([[v] for v in values], ks)]
    if isinstance(structure, Channels):
        return tuple(
            _expand_channels(m, jnp.shape(leaf), structure.axis)
            for m, leaf in zip(keep, leaves, strict=True)
        )
    return tuple(keep)


_n_by_m_keep = jax.jit(_n_by_m_mask, static_argnames="structure")


def _num_pruned(sparsity: Any, n: int) -> Any:
    """round(sparsity * n): Python int for concrete sparsities, int32 scalar when traced."""
    if is_concrete(sparsity):
        return int(round(float(sparsity) * n))
    k = jnp.round(jnp.asarray(sparsity, jnp.float32) * n)
    return jnp.clip(k, 0, n).astype(jnp.int32)


def _is_tree(x: Any) -> bool:
    return x is not None and not jax.tree_util.treedef_is_leaf(jax.tree.structure(x))


def _as_per_leaf(sparsity: Any, scores: PyTree, treedef: Any) -> list[Any]:
    if _is_tree(sparsity):
        s_def = jax.tree.structure(sparsity)
        if s_def != treedef:
            raise ValueError(
                "sparsity must be a number or a pytree with the scores' structure "
                f"({treedef}), got structure {s_def}; pass a per-layer dict as distribution=."
            )
        return [check_sparsity(s) for s in jax.tree.leaves(sparsity)]
    return [check_sparsity(sparsity)] * treedef.num_leaves


def compute_masks(
    scores: PyTree,
    sparsity: Any = None,
    *,
    scope: str = "layer",
    structure: Structure | str | None = None,
    filter_fn: FilterFn | None = None,
    distribution: str | Mapping[str, Any] | Callable[..., PyTree] = "uniform",
    threshold: Any = None,
) -> PyTree:
    """Boolean keep-masks (True = kept) from scores, with exact sparsity.

    With ``scope="layer"`` every prunable leaf loses exactly ``round(s * n)`` of its ``n``
    units (weights, or channels for :class:`Channels`), ``s`` being its share of
    ``sparsity`` under ``distribution``; with ``scope="global"`` the prunable leaves together
    lose ``round(sparsity * N)`` weights. Lowest scores go first; ties are broken by flat
    index (lowest index pruned first; leaves in tree order for global scope), so equal inputs
    give equal masks. Selection is sort-free (a bitwise search for the k-th score), so it is
    cheap enough to run inside a training step.

    Args:
      scores: pytree of score arrays shaped like the params (see ``magnitude_scores`` etc.).
      sparsity: a number in [0, 1), a traced scalar (e.g. a schedule's value inside ``jit``),
        or a per-leaf pytree with ``scores``' structure. Unused with ``threshold``.
      scope: ``"layer"`` or ``"global"`` (global needs unstructured sparsity and the uniform
        distribution).
      structure: :func:`unstructured` (default), :func:`n_by_m` (N:M; every layer whose
        target sparsity is above 0 gets exactly N kept per group) or :func:`channels`; the
        strings ``"unstructured"``, ``"channels"`` and ``"n:m"`` (e.g. ``"2:4"``) also work.
      filter_fn: ``(path, leaf) -> bool`` choosing prunable leaves; default
        :func:`default_filter` (kernels with ndim > 1, no biases/norms/embeddings).
      distribution: ``"uniform"``, ``"erk"``, a per-layer dict (see
        :func:`per_layer_sparsity`) or a callable ``(params, sparsity, filter_fn)``.
      threshold: instead of a sparsity, prune every weight (or channel norm) whose score is
        below this number (or per-leaf pytree of numbers), the classic ``|w| < t`` recipe.

    Returns:
      A pytree of boolean arrays with ``scores``' structure and shapes; leaves that are not
      prunable are all True.

    Raises:
      ValueError: a sparsity outside [0, 1), a structure a leaf cannot take, an unknown
        scope, or both/neither of ``sparsity`` and ``threshold``.

    Example:
      >>> params = {"w": jnp.array([[0.1, -2.0], [0.5, 3.0]]), "b": jnp.zeros(2)}
      >>> masks = compute_masks(magnitude_scores(params), 0.5)
      >>> masks["w"].tolist(), masks["b"].tolist()
      ([[False, True], [False, True]], [True, True])
    """
    structure = as_structure(structure)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    if threshold is not None and sparsity is not None:
        raise ValueError(
            "pass one of sparsity and threshold, not both; got "
            f"sparsity={sparsity!r}, threshold={threshold!r}."
        )
    if threshold is None and sparsity is None and not isinstance(distribution, Mapping):
        raise ValueError("pass a sparsity in [0, 1) or a threshold; got neither.")
    filter_fn = default_filter if filter_fn is None else filter_fn
    paths, leaves, treedef = flatten_with_paths(scores)
    flags = [
        bool(filter_fn(p, leaf)) and int(np.prod(jnp.shape(leaf))) > 0
        for p, leaf in zip(paths, leaves, strict=True)
    ]
    for path, leaf, flag in zip(paths, leaves, flags, strict=True):
        if flag:
            _check_leaf(path, leaf, structure)
    out = [jnp.ones(jnp.shape(leaf), bool) for leaf in leaves]

    if threshold is not None:
        if isinstance(structure, NByM):
            raise ValueError(f"threshold cannot be combined with structure {structure}.")
        if _is_tree(threshold):
            if jax.tree.structure(threshold) != treedef:
                raise ValueError(
                    "threshold must be a number or a pytree with the scores' structure "
                    f"({treedef})."
                )
            thresholds = jax.tree.leaves(threshold)
        else:
            thresholds = [threshold] * len(leaves)
        for i, (leaf, flag) in enumerate(zip(leaves, flags, strict=True)):
            if not flag:
                continue
            if isinstance(structure, Channels):
                keep = _channel_scores(leaf, structure) >= thresholds[i]
                out[i] = _expand_channels(keep, jnp.shape(leaf), structure.axis)
            else:
                out[i] = jnp.asarray(leaf) >= thresholds[i]
        return jax.tree.unflatten(treedef, out)

    if scope == "global":
        if not isinstance(structure, Unstructured):
            raise ValueError(
                f"scope='global' supports unstructured sparsity only, got {structure}."
            )
        if not (isinstance(distribution, str) and distribution == "uniform"):
            raise ValueError(
                f"scope='global' uses one threshold for all layers; distribution must be "
                f"'uniform', got {distribution!r}."
            )
        sparsity = check_sparsity(sparsity)
        chosen = [i for i, f in enumerate(flags) if f]
        if not chosen:
            return jax.tree.unflatten(treedef, out)
        total = sum(int(np.prod(jnp.shape(leaves[i]))) for i in chosen)
        k = _num_pruned(sparsity, total)
        if is_concrete(k) and k == 0:
            return jax.tree.unflatten(treedef, out)
        keep = _select_keep(
            tuple(leaves[i] for i in chosen), jnp.asarray([k], jnp.int32), structure, True
        )
        for i, m in zip(chosen, keep, strict=True):
            out[i] = m
        return jax.tree.unflatten(treedef, out)

    if isinstance(distribution, str) and distribution == "uniform":
        per_leaf = _as_per_leaf(sparsity, scores, treedef)
    else:
        if _is_tree(sparsity):
            raise ValueError("a per-leaf sparsity pytree cannot be combined with a distribution.")
        per_leaf = jax.tree.leaves(distribute(scores, sparsity, distribution, filter_fn))
        per_leaf = [check_sparsity(s) for s in per_leaf]

    if isinstance(structure, NByM):
        for i, (leaf, flag) in enumerate(zip(leaves, flags, strict=True)):
            if not flag:
                continue
            s = per_leaf[i]
            if is_concrete(s):
                if s > 0:
                    out[i] = _n_by_m_keep(leaf, structure)
            else:
                out[i] = _n_by_m_keep(leaf, structure) | (s <= 0)
        return jax.tree.unflatten(treedef, out)

    chosen, ks = [], []
    for i, (leaf, flag) in enumerate(zip(leaves, flags, strict=True)):
        if not flag:
            continue
        n = _num_units(leaf, structure)
        k = _num_pruned(per_leaf[i], n)
        if is_concrete(k) and k == 0:
            continue
        chosen.append(i)
        ks.append(k)
    if not chosen:
        return jax.tree.unflatten(treedef, out)
    ks_array = jnp.stack([jnp.asarray(k, jnp.int32) for k in ks])
    keep = _select_keep(tuple(leaves[i] for i in chosen), ks_array, structure, False)
    for i, m in zip(chosen, keep, strict=True):
        out[i] = m
    return jax.tree.unflatten(treedef, out)


def check_masks(params: PyTree, masks: PyTree) -> None:
    """Raises ValueError unless ``masks`` has ``params``' structure and shapes (None = dense).

    Args:
      params: parameter pytree.
      masks: boolean mask pytree; a ``None`` in place of a leaf means "keep all".

    Raises:
      ValueError: naming the first mismatching path.

    Example:
      >>> check_masks({"w": jnp.zeros(2)}, {"w": jnp.ones(2, bool)})
    """
    p_paths, p_leaves, p_def = flatten_with_paths(params)
    m_def = jax.tree.structure(masks, is_leaf=lambda x: x is None)
    if m_def != p_def:
        raise ValueError(f"masks tree {m_def} does not match params tree {p_def}.")
    m_leaves = jax.tree.leaves(masks, is_leaf=lambda x: x is None)
    for path, p, m in zip(p_paths, p_leaves, m_leaves, strict=True):
        if m is not None and jnp.shape(m) != jnp.shape(p):
            raise ValueError(
                f"mask for {path!r} has shape {jnp.shape(m)}, "
                f"but the param has shape {jnp.shape(p)}."
            )


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zeroes the pruned weights: ``where(mask, w, 0)`` leaf by leaf (exact +0.0, same dtype).

    Args:
      params: parameter pytree.
      masks: boolean pytree with ``params``' structure and shapes (True = keep); a ``None``
        leaf keeps that param as is.

    Returns:
      The masked params.

    Raises:
      ValueError: if ``masks`` does not match ``params``.

    Example:
      >>> apply_masks({"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([True, False])})["w"].tolist()
      [1.0, 0.0]
    """
    check_masks(params, masks)
    p_leaves, p_def = jax.tree.flatten(params)
    m_leaves = jax.tree.leaves(masks, is_leaf=lambda x: x is None)
    out = [
        p if m is None else jnp.where(m, p, jnp.zeros((), jnp.asarray(p).dtype))
        for p, m in zip(p_leaves, m_leaves, strict=True)
    ]
    return jax.tree.unflatten(p_def, out)
