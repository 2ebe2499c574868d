"""One-dimensional k-means (Lloyd's algorithm) in JAX, for weight sharing.

Weights are scalars, so clustering is 1-D: with the centroids sorted, the nearest
centroid of every point is found by ``searchsorted`` on the midpoints between
neighbouring centroids (O(n log k) time, O(n) memory, so layers with millions of
weights and 2**16 clusters fit). Everything is jit-able with static ``n_clusters``.
Points can carry weights (``sample_weight``); a weight of 0 removes a point (a pruned
weight), which keeps shapes static under ``jit``.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

INITS = ("linear", "density", "kmeans++")
"""Centroid initialisations (Han et al., Deep Compression, section 3.2, plus k-means++)."""


class KMeansResult(NamedTuple):
    """Result of :func:`kmeans`.

    Attributes:
      centroids: ``(k,)`` float32, sorted ascending.
      labels: ``(n,)`` int32, index of each point's nearest centroid.
      inertia: scalar float32, sum of ``sample_weight * (x - centroids[labels])**2``.
      n_iter: scalar int32, number of Lloyd iterations run.
    """

    centroids: jax.Array
    labels: jax.Array
    inertia: jax.Array
    n_iter: jax.Array


def _check_finite(x: jax.Array, name: str) -> None:
    """Raises ValueError if concrete ``x`` holds NaN or Inf (tracers under ``jit`` pass).

    One NaN or Inf makes every centroid mean NaN (even with a sample weight of 0, as
    ``0 * inf`` is NaN), so k-means would silently return a NaN codebook.

    Args:
      x: array of any shape.
      name: what to call ``x`` in the message, e.g. a leaf path.

    Raises:
      ValueError: naming ``name``, the count of non-finite values and the first position.

    Example:
      >>> _check_finite(jnp.array([0.5, 1.0]), "x")
    """
    if isinstance(x, jax.core.Tracer):
        return  # values unknown while tracing; the caller documents this
    finite = np.isfinite(np.asarray(x))
    if not finite.all():
        first = np.unravel_index(int(np.argmin(finite)), finite.shape)
        raise ValueError(
            f"{name} holds {int(finite.size - finite.sum())} NaN or Inf values (first at "
            f"index {tuple(int(i) for i in first)}); k-means needs finite values"
        )


def _prepare(x, sample_weight):
    x = jnp.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D (scalar weights to cluster), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating point, got dtype {x.dtype}")
    _check_finite(x, "x")
    x = x.astype(jnp.float32)
    if sample_weight is None:
        w = jnp.ones_like(x)
    else:
        w = jnp.asarray(sample_weight)
        if w.shape != x.shape:
            raise ValueError(f"sample_weight must have x's shape {x.shape}, got {w.shape}")
        w = w.astype(jnp.float32)
    return x, w


def _check_k(n_clusters):
    if not isinstance(n_clusters, int) or isinstance(n_clusters, bool) or n_clusters < 1:
        raise ValueError(f"n_clusters must be an int >= 1, got {n_clusters!r}")


def init_centroids(
    x: jax.Array,
    n_clusters: int,
    method: str = "linear",
    *,
    sample_weight: jax.Array | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """Initial centroids for :func:`kmeans`.

    Args:
      x: ``(n,)`` finite points (NaN / Inf raise ValueError when ``x`` is concrete; under
        ``jit`` they cannot be checked and give NaN centroids).
      n_clusters: number of centroids ``k``.
      method: ``"linear"`` (evenly spaced between the min and max point),
        ``"density"`` (quantiles of the weighted points at levels ``(i + 0.5) / k``,
        dense where the points are dense) or ``"kmeans++"`` (D² sampling).
      sample_weight: optional ``(n,)`` non-negative weights; points with weight 0 are
        ignored (all-zero weights give all-zero centroids).
      key: PRNG key for ``"kmeans++"`` (default ``jax.random.key(0)``).

    Returns:
      ``(k,)`` float32 centroids, sorted ascending.

    Example:
      >>> init_centroids(jnp.array([0.0, 1.0, 2.0, 4.0]), 3)
      Array([0., 2., 4.], dtype=float32)
    """
    _check_k(n_clusters)
    if method not in INITS:
        raise ValueError(f"method must be one of {INITS}, got {method!r}")
    x, w = _prepare(x, sample_weight)
    if key is None:
        key = jax.random.key(0)
    return _init(x, w, key, n_clusters, method)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _init(x, w, key, k, method):
    valid = w > 0
    any_valid = jnp.any(valid)
    if method == "linear":
        lo = jnp.min(jnp.where(valid, x, jnp.inf))
        hi = jnp.max(jnp.where(valid, x, -jnp.inf))
        c = lo + (hi - lo) * jnp.linspace(0.0, 1.0, k, dtype=jnp.float32)
        if k == 1:
            c = jnp.reshape((lo + hi) / 2, (1,))
    elif method == "density":
        order = jnp.argsort(x)
        xs, ws = x[order], w[order]
        cdf = jnp.cumsum(ws)
        levels = (jnp.arange(k, dtype=jnp.float32) + 0.5) / k * cdf[-1]
        idx = jnp.searchsorted(cdf, levels, side="left", method="scan_unrolled")
        idx = jnp.clip(idx, 0, x.size - 1)
        c = xs[idx]
    else:  # kmeans++
        keys = jax.random.split(key, k)
        total = jnp.sum(w)

        def pick(key_i, d2):
            p = jnp.where(jnp.sum(d2) > 0, d2, w)
            return x[jax.random.categorical(key_i, jnp.log(p))]

        c0 = pick(keys[0], w)
        d2 = w * (x - c0) ** 2

        def body(i, carry):
            cs, d2 = carry
            ci = pick(keys[i], d2)
            return cs.at[i].set(ci), jnp.minimum(d2, w * (x - ci) ** 2)

        c, _ = jax.lax.fori_loop(1, k, body, (jnp.full((k,), c0), d2))
        c = jnp.where(total > 0, c, 0.0)
    return jnp.sort(jnp.where(any_valid, c, 0.0))


def assign(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid of every point (ties go to the lower index).

    Args:
      x: ``(n,)`` points.
      centroids: ``(k,)`` centroids sorted ascending.

    Returns:
      ``(n,)`` int32 labels.

    Example:
      >>> assign(jnp.array([0.1, 0.9, 2.0]), jnp.array([0.0, 1.0]))
      Array([0, 1, 1], dtype=int32)
    """
    mid = (centroids[:-1] + centroids[1:]) / 2
    if mid.shape[0] <= 64:  # counting midpoints below x: fast to compile and to run
        return jnp.sum(mid[None, :] < x[:, None], axis=1, dtype=jnp.int32)
    return jnp.searchsorted(mid, x, side="left", method="scan_unrolled").astype(jnp.int32)


def kmeans(
    x: jax.Array,
    init: jax.Array,
    *,
    sample_weight: jax.Array | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> KMeansResult:
    """Lloyd's k-means on scalars, starting from the given centroids.

    Iterates assignment and mean updates until the squared centroid shift is at most
    ``tol * var(x)`` (scikit-learn's criterion) or ``max_iter`` iterations. Empty
    clusters are moved to the points farthest from their centroids, as in
    scikit-learn (a cluster that has no point left to take keeps its centroid). Means
    are accumulated relative to the previous centroid, which keeps float32 sums
    accurate for large layers.

    Args:
      x: ``(n,)`` finite points (NaN / Inf raise ValueError when ``x`` is concrete; under
        ``jit`` they cannot be checked and give NaN centroids).
      init: ``(k,)`` finite initial centroids (any order; they are sorted), e.g. from
        :func:`init_centroids`.
      sample_weight: optional ``(n,)`` non-negative point weights (0 = ignore point).
      max_iter: maximum number of iterations, ``>= 0``.
      tol: relative tolerance on the centroid shift, ``>= 0``.

    Returns:
      A :class:`KMeansResult` with sorted centroids.

    Example:
      >>> x = jnp.array([0.0, 0.1, 0.9, 1.0])
      >>> kmeans(x, init_centroids(x, 2)).centroids
      Array([0.05, 0.95], dtype=float32)
    """
    x, w = _prepare(x, sample_weight)
    init = jnp.asarray(init, jnp.float32)
    if init.ndim != 1 or init.size < 1:
        raise ValueError(f"init must be a non-empty 1-D array of centroids, got shape {init.shape}")
    _check_finite(init, "init")
    if not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    return _kmeans(x, w, init, max_iter, float(tol))


@functools.partial(jax.jit, static_argnums=(3,))
def _kmeans(x, w, init, max_iter, tol):
    k = init.shape[0]
    total = jnp.sum(w)
    mean = jnp.sum(w * x) / jnp.maximum(total, 1e-30)
    var = jnp.sum(w * (x - mean) ** 2) / jnp.maximum(total, 1e-30)
    tol_abs = tol * var

    valid = w > 0

    def step(c):
        labels = assign(x, c)
        resid = x - c[labels]
        delta = jax.ops.segment_sum(w * resid, labels, num_segments=k)
        count = jax.ops.segment_sum(w, labels, num_segments=k)
        # Relocate empty clusters to the points farthest from their centroids, as
        # scikit-learn does: the r-th empty cluster takes the r-th farthest point.
        empty = count <= 0
        rank = jnp.cumsum(empty) - 1
        n_far = min(k, x.shape[0])
        dist, far = jax.lax.top_k(jnp.where(valid, resid**2, -1.0), n_far)
        r = jnp.clip(rank, 0, n_far - 1)
        take = empty & (rank < n_far) & (dist[r] >= 0)
        p = far[r]
        src = jnp.where(take, labels[p], k)  # k = out of range, dropped by segment_sum
        delta = delta - jax.ops.segment_sum(jnp.where(take, w[p] * resid[p], 0.0), src, k)
        count = count - jax.ops.segment_sum(jnp.where(take, w[p], 0.0), src, k)
        new = jnp.where(count > 0, c + delta / jnp.where(count > 0, count, 1.0), c)
        return jnp.sort(jnp.where(take, x[p], new))

    def cond(state):
        _, it, shift = state
        return (it < max_iter) & (shift > tol_abs)

    def body(state):
        c, it, _ = state
        new = step(c)
        return new, it + 1, jnp.sum((new - c) ** 2)

    c0 = jnp.sort(init)
    c, n_iter, _ = jax.lax.while_loop(cond, body, (c0, jnp.int32(0), jnp.float32(jnp.inf)))
    labels = assign(x, c)
    inertia = jnp.sum(w * (x - c[labels]) ** 2)
    return KMeansResult(c, labels, inertia, n_iter)
