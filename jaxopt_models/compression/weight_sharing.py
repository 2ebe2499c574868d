"""Weight sharing (Deep Compression, Han et al. 2016): per-layer k-means codebooks.

``cluster_weights`` replaces each selected leaf of a params pytree by a
:class:`SharedTensor` (a codebook and an integer index per weight). With pruning
masks, code 0 is reserved for pruned weights: its centroid is exactly 0.0 and frozen,
so pruned weights stay exactly zero through reconstruction and fine-tuning.

Fine-tuning the centroids: each centroid's gradient is the sum of its members'
gradients (:func:`centroid_gradients`). :func:`share_gradients` is an optax transform
that gives every weight its cluster's summed gradient; chained before any
element-wise optimizer, members of a cluster receive identical updates and stay tied,
so the dense params remain ``codebook[indices]`` and :func:`update_codebooks` reads
the fine-tuned codebooks back.

Example:
  >>> shared = cluster_weights(params, bits=5, masks=masks)
  >>> params = shared_params(shared)                      # tied, pruned weights 0.0
  >>> tx = optax.chain(share_gradients(shared), optax.sgd(1e-3))
  >>> ...                                                 # train params with tx
  >>> shared = update_codebooks(shared, params)           # fine-tuned codebooks
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_models.compression import kmeans as _km
from jaxopt_models.compression._tree import FilterFn, aligned, named_leaves
from jaxopt_models.tree import is_kernel
from jaxopt_models.typing import PyTree

MAX_BITS = 16


class SharedTensor(NamedTuple):
    """A weight-shared tensor: ``value = codebook[indices]``.

    Attributes:
      codebook: ``(n_codes,)`` float32 centroids.
      indices: integer codes with the original tensor's shape (``uint8`` when
        ``n_codes <= 256``, else ``uint16``).
      frozen: ``(n_codes,)`` bool, centroids that fine-tuning must not move; with
        pruning masks, code 0 is the frozen 0.0 of the pruned weights.
    """

    codebook: jax.Array
    indices: jax.Array
    frozen: jax.Array


class ShareGradientsState(NamedTuple):
    """State of :func:`share_gradients`: the fixed cluster assignment per leaf."""

    indices: PyTree
    frozen: PyTree


def is_shared(x: Any) -> bool:
    """Whether ``x`` is a :class:`SharedTensor` (use as ``is_leaf`` when mapping trees)."""
    return isinstance(x, SharedTensor)


def index_dtype(n_codes: int):
    """Smallest unsigned integer dtype holding codes ``0..n_codes-1``."""
    return jnp.uint8 if n_codes <= 256 else jnp.uint16


def _per_leaf(value, name: str, leaf, arg: str):
    if value is None:
        return None
    if isinstance(value, Mapping):
        if name not in value:
            raise ValueError(f"{arg} has no entry for selected leaf {name!r}; keys: {list(value)}")
        value = value[name]
    elif callable(value):
        value = value(name, leaf)
    return value


def cluster_weights(
    params: PyTree,
    *,
    bits: int | Mapping[str, int] | Callable[[str, Any], int] | None = None,
    n_clusters: int | Mapping[str, int] | Callable[[str, Any], int] | None = None,
    init: str = "linear",
    filter_fn: FilterFn | None = None,
    masks: PyTree | None = None,
    key: jax.Array | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> PyTree:
    """Clusters the weights of every selected leaf with 1-D k-means (one codebook per leaf).

    Args:
      params: params pytree.
      bits: code width; the codebook has ``2**bits`` entries (``1..16``). An int, a
        dict ``{leaf name: bits}`` or a callable ``(name, leaf) -> bits`` (e.g. 8 bits
        for conv kernels and 5 for dense ones). Give exactly one of ``bits`` and
        ``n_clusters``.
      n_clusters: codebook size (``1..65536``; ``>= 2`` with a mask), same forms.
      init: centroid initialisation, one of ``"linear"``, ``"density"``, ``"kmeans++"``.
      filter_fn: ``(name, leaf) -> bool`` choosing the leaves to cluster (default:
        ``jaxopt_models.tree.is_kernel``: float leaves with ``ndim > 1`` that are not
        embeddings); other leaves are returned unchanged.
      masks: optional pytree like ``params`` of boolean masks (``None`` leaves allowed);
        for a masked leaf, code 0 is reserved for the pruned weights (centroid 0.0,
        frozen) and the other ``n_codes - 1`` centroids are fitted to the kept weights.
      key: PRNG key for ``"kmeans++"`` (split per leaf; default ``jax.random.key(0)``).
      max_iter: Lloyd iterations at most.
      tol: k-means tolerance (relative to the variance of the weights).

    Returns:
      A pytree like ``params`` with a :class:`SharedTensor` at every clustered leaf.

    Raises:
      ValueError: bad ``bits`` / ``n_clusters`` / ``init`` / masks, or a selected leaf
        holding NaN or Inf (the message names the leaf). Under ``jit`` the values are
        unknown and cannot be checked: a NaN or Inf weight gives a NaN codebook.
      TypeError: a selected leaf that is not floating point.

    Example:
      >>> shared = cluster_weights(params, bits=5, masks=masks)
      >>> dense = shared_params(shared)
    """
    if (bits is None) == (n_clusters is None):
        raise ValueError(
            f"give exactly one of bits and n_clusters, got bits={bits!r}, n_clusters={n_clusters!r}"
        )
    if init not in _km.INITS:
        raise ValueError(f"init must be one of {_km.INITS}, got {init!r}")
    filter_fn = is_kernel if filter_fn is None else filter_fn
    mask_leaves = aligned(params, masks, "masks")
    key = jax.random.key(0) if key is None else key
    flat, treedef = jax.tree_util.tree_flatten(params)
    names = [n for n, _ in named_leaves(params)]
    out = []
    for i, (name, leaf, mask) in enumerate(zip(names, flat, mask_leaves, strict=True)):
        if not filter_fn(name, leaf):
            out.append(leaf)
            continue
        leaf = jnp.asarray(leaf)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"leaf {name!r} selected for clustering has non-float dtype {leaf.dtype}"
            )
        _km._check_finite(leaf, f"leaf {name!r} selected for clustering")
        b = _per_leaf(bits, name, leaf, "bits")
        if b is not None:
            if not isinstance(b, int | np.integer) or not 1 <= b <= MAX_BITS:
                raise ValueError(f"bits for {name!r} must be an int in 1..{MAX_BITS}, got {b!r}")
            n_codes = 1 << int(b)
        else:
            n_codes = _per_leaf(n_clusters, name, leaf, "n_clusters")
            if not isinstance(n_codes, int | np.integer) or not 1 <= n_codes <= 1 << MAX_BITS:
                raise ValueError(
                    f"n_clusters for {name!r} must be an int in 1..{1 << MAX_BITS}, got {n_codes!r}"
                )
            n_codes = int(n_codes)
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.shape != leaf.shape:
                raise ValueError(
                    f"mask for {name!r} has shape {mask.shape}, the leaf has {leaf.shape}"
                )
            if n_codes < 2:
                raise ValueError(
                    f"a masked leaf needs at least 2 codes (0 is reserved for pruned "
                    f"weights), got {n_codes} for {name!r}"
                )
        out.append(
            _cluster_leaf(
                leaf, mask, n_codes, init, jax.random.fold_in(key, i), int(max_iter), float(tol)
            )
        )
    return jax.tree_util.tree_unflatten(treedef, out)


@functools.partial(jax.jit, static_argnums=(2, 3, 5, 6))
def _cluster_leaf(leaf, mask, n_codes, init, key, max_iter, tol) -> SharedTensor:
    x = leaf.reshape(-1).astype(jnp.float32)
    if mask is None:
        w = jnp.ones_like(x)
        c0 = _km._init(x, w, key, n_codes, init)
        res = _km._kmeans(x, w, c0, max_iter, tol)
        codebook, labels = res.centroids, res.labels
        frozen = jnp.zeros((n_codes,), bool)
    else:
        m = mask.reshape(-1).astype(bool)
        w = m.astype(jnp.float32)
        c0 = _km._init(x, w, key, n_codes - 1, init)
        res = _km._kmeans(x, w, c0, max_iter, tol)
        codebook = jnp.concatenate([jnp.zeros((1,), jnp.float32), res.centroids])
        labels = jnp.where(m, res.labels + 1, 0)
        frozen = jnp.zeros((n_codes,), bool).at[0].set(True)
    indices = labels.astype(index_dtype(n_codes)).reshape(leaf.shape)
    return SharedTensor(codebook, indices, frozen)


def reconstruct(shared: SharedTensor) -> jax.Array:
    """The dense float32 tensor ``codebook[indices]`` of one :class:`SharedTensor`.

    Example:
      >>> reconstruct(SharedTensor(jnp.array([0.0, 0.5]), jnp.array([[1, 0]], jnp.uint8),
      ...                          jnp.array([True, False])))
      Array([[0.5, 0. ]], dtype=float32)
    """
    if not isinstance(shared, SharedTensor):
        raise TypeError(f"reconstruct expects a SharedTensor, got {type(shared).__name__}")
    return jnp.take(shared.codebook, shared.indices.astype(jnp.int32), axis=0)


def shared_params(shared: PyTree) -> PyTree:
    """Params pytree with every :class:`SharedTensor` replaced by its reconstruction.

    Example:
      >>> params = shared_params(cluster_weights(params, bits=4))
    """
    return jax.tree.map(lambda x: reconstruct(x) if is_shared(x) else x, shared, is_leaf=is_shared)


def centroid_gradients(grads: PyTree, shared: PyTree) -> PyTree:
    """Gradient w.r.t. each codebook: the sum of the gradients of the centroid's members.

    Frozen centroids (the reserved zero of pruned weights) get gradient 0.

    Args:
      grads: gradients w.r.t. the dense params (the tree of ``shared_params(shared)``).
      shared: the tree from :func:`cluster_weights`.

    Returns:
      A tree like ``grads`` with a ``(n_codes,)`` gradient at every shared leaf and the
      original gradient elsewhere.

    Example:
      >>> g = jax.grad(loss)(shared_params(shared))
      >>> g_codebooks = centroid_gradients(g, shared)
    """
    aligned(grads, shared, "shared", is_leaf=is_shared)  # validates the structure

    def f(g, s):
        if not is_shared(s):
            return g
        return _sum_by_code(g, s.indices, s.frozen)

    return jax.tree.map(f, grads, shared, is_leaf=is_shared)


def _sum_by_code(g, indices, frozen):
    n_codes = frozen.shape[0]
    total = jax.ops.segment_sum(
        g.reshape(-1), indices.reshape(-1).astype(jnp.int32), num_segments=n_codes
    )
    return jnp.where(frozen, jnp.zeros_like(total), total)


def share_gradients(shared: PyTree) -> optax.GradientTransformation:
    """Optax transform replacing each weight's gradient by its cluster's summed gradient.

    Chain it *before* the optimizer (``optax.chain(share_gradients(shared), opt)``):
    all members of a cluster then get the same update under any element-wise
    optimizer (sgd, momentum, adam, adamw), so params that start as
    ``shared_params(shared)`` stay tied and each centroid moves by the optimizer's
    step on the sum of its members' gradients, as in Deep Compression. Frozen
    centroids (pruned weights) get gradient 0, so pruned weights stay exactly 0.0.
    Leaves that are not shared pass through unchanged.

    Args:
      shared: the tree from :func:`cluster_weights`; its indices are kept in the state.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ShareGradientsState`.

    Example:
      >>> tx = optax.chain(share_gradients(shared), optax.adam(1e-4))
      >>> params = shared_params(shared); opt_state = tx.init(params)
    """

    def init_fn(params):
        aligned(params, shared, "shared", is_leaf=is_shared)
        pick = lambda field: jax.tree.map(
            lambda s: getattr(s, field) if is_shared(s) else None, shared, is_leaf=is_shared
        )
        return ShareGradientsState(indices=pick("indices"), frozen=pick("frozen"))

    def update_fn(updates, state, params=None):
        del params

        def f(u, idx, frozen):
            if idx is None:
                return u
            summed = _sum_by_code(u, idx, frozen)
            return jnp.take(summed, idx.astype(jnp.int32), axis=0).astype(u.dtype)

        is_none = lambda x: x is None
        new = jax.tree.map(f, updates, state.indices, state.frozen, is_leaf=is_none)
        return new, state

    return optax.GradientTransformation(init_fn, update_fn)


def update_codebooks(shared: PyTree, params: PyTree) -> PyTree:
    """Reads fine-tuned codebooks back from tied dense params.

    Each code takes the value of its members in ``params`` (they are tied after
    training with :func:`share_gradients`, so this is exact); codes without members and
    frozen codes keep their centroid.

    Args:
      shared: the tree the params were tied to.
      params: the fine-tuned dense params.

    Returns:
      ``shared`` with new codebooks; ``shared_params`` of it equals ``params`` at the
      shared leaves whenever the params are tied.

    Example:
      >>> shared = update_codebooks(shared, state.params)
    """
    aligned(params, shared, "shared", is_leaf=is_shared)

    def f(p, s):
        if not is_shared(s):
            return p
        n_codes = s.codebook.shape[0]
        idx = s.indices.reshape(-1).astype(jnp.int32)
        v = jnp.asarray(p, jnp.float32).reshape(-1)
        value = jax.ops.segment_max(v, idx, num_segments=n_codes)
        count = jax.ops.segment_sum(jnp.ones_like(v), idx, num_segments=n_codes)
        keep = s.frozen | (count == 0)
        return s._replace(codebook=jnp.where(keep, s.codebook, value))

    return jax.tree.map(f, params, shared, is_leaf=is_shared)
