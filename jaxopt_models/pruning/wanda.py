"""Wanda: pruning by weights and activations, without any weight update.

Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language Models". The score
of weight ``w[i, j]`` of a ``(in, out)`` kernel is ``|w[i, j]| * ||X[:, i]||_2``, and
``||X[:, i]||_2^2`` is the diagonal of the Hessian ``X^T X``. Scores are compared within each
output column (every output keeps the same number of inputs); the kept weights are unchanged.

The per-column selection uses counting passes, not a sort: XLA's CPU sort and ``lax.top_k``
take 0.1-0.2 s to drop half of each column of a 1024 x 1024 kernel, while one fused
compare-and-count pass over it takes well under a millisecond. Each column's threshold is
bracketed in an order-preserving integer view of the floats and narrowed by Illinois
(regula falsi) steps on ``count(score < c)``, all columns at once, until every column has
an end whose count is ``k - 1`` or ``k`` (11-17 passes on 1024-input transformer-like
layers; plain bisection after 12 passes bounds the worst case); one masked min/max pass then
gives the ``k``-th smallest score of each column exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxopt_models import hessian as hs
from jaxopt_models.pruning import _select
from jaxopt_models.pruning._one_shot import check_target
from jaxopt_models.pruning.masks import _n_by_m_mask
from jaxopt_models.pruning.structures import NByM

# Illinois passes before the search falls back to bisection of the key range.
_INTERPOLATION_PASSES = 12


def _count_per_column(hit: jax.Array) -> jax.Array:
    """int32 ``(out,)`` numbers of True entries per column of ``hit`` (``(in, out)``), summed
    as float32 while exact (XLA's CPU backend vectorises float sums better)."""
    dtype = jnp.float32 if hit.shape[0] < _select._FLOAT_COUNT_LIMIT else jnp.int32
    return jnp.sum(hit.astype(dtype), axis=0).astype(jnp.int32)


def _kth_smallest_per_column(score: jax.Array, k: int) -> jax.Array:
    """The ``k``-th smallest value (1-based, ``1 <= k <= in``) of each column of canonical
    scores ``(in, out)`` (see :func:`_select.canonical`), found with counting passes."""
    n_in = score.shape[0]
    fdtype = score.dtype

    lo_f, hi_f = jnp.min(score, axis=0), jnp.max(score, axis=0)
    lo = _select.to_key(lo_f)  # count(score < lo) = 0 <= k - 1
    hi = _select.to_key(hi_f) + 1  # count(score < hi) = in >= k
    clo = jnp.zeros(lo.shape, jnp.int32)
    chi = jnp.full(lo.shape, n_in, jnp.int32)
    target = jnp.float32(k - 0.5)

    def settled(lo, hi, clo, chi):
        return (clo == k - 1) | (chi == k) | (hi - lo <= 1)

    def cond(carry):
        lo, hi, clo, chi, *_ = carry
        return ~jnp.all(settled(lo, hi, clo, chi))

    def body(carry):
        lo, hi, clo, chi, wl, wh, side, it = carry
        active = ~settled(lo, hi, clo, chi)
        bisect = it >= _INTERPOLATION_PASSES
        cand = _select.illinois_candidate(lo, hi, clo, chi, wl, wh, target, fdtype, bisect)
        counts = _count_per_column(score < _select.bound_up(cand, fdtype)[None, :])
        state = _select.illinois_update(active, cand, counts, k, lo, hi, clo, chi, wl, wh, side)
        return (*state, it + 1)

    ones = jnp.ones(lo.shape, jnp.float32)
    init = (lo, hi, clo, chi, ones, ones, jnp.zeros(lo.shape, jnp.int32), jnp.int32(0))
    lo, hi, clo, chi, *_ = lax.while_loop(cond, body, init)
    # count(score < hi) == k: the k-th smallest is the largest score below hi; otherwise it is
    # the smallest score >= lo (count(score < lo) == k - 1, or hi == lo + 1).
    from_hi = chi == k
    below_hi = _select.bound_down(hi - 1, fdtype)
    at_lo = _select.bound_up(lo, fdtype)
    inf = jnp.array(jnp.inf, fdtype)
    largest_below = jnp.max(jnp.where(score <= below_hi[None, :], score, -inf), axis=0)
    smallest_above = jnp.min(jnp.where(score >= at_lo[None, :], score, inf), axis=0)
    return jnp.where(from_hi, largest_below, smallest_above)


def keep_top_per_column(score: jax.Array, num_pruned: int) -> jax.Array:
    """Keep-mask dropping exactly ``num_pruned`` lowest scores of every column (axis 0).

    Ties are broken by index: the lowest input index is dropped first; NaN counts as the
    lowest score and subnormal scores as 0 (see :func:`_select.canonical`).

    Args:
      score: ``(in, out)`` float scores.
      num_pruned: static number of entries to drop per column, in [0, in].

    Returns:
      ``(in, out)`` bool mask, True = kept.

    Example:
      >>> keep_top_per_column(jnp.array([[1.0, 3.0], [2.0, 0.0], [2.0, 5.0]]), 2).tolist()
      [[False, False], [False, False], [True, True]]
    """
    n_in = score.shape[0]
    if num_pruned == 0:
        return jnp.ones(score.shape, bool)
    if num_pruned >= n_in:
        return jnp.zeros(score.shape, bool)
    score = _select.canonical(score)
    t = _kth_smallest_per_column(score, num_pruned)[None, :]
    below = _count_per_column(score < t)
    at_most = _count_per_column(score <= t)
    need = num_pruned - below  # entries equal to t to drop (>= 1)

    def drop_all_ties(_):
        return score > t

    def drop_first_ties(_):
        tie = score == t
        rank = jnp.cumsum(tie.astype(jnp.int32), axis=0)  # 1-based rank of each tie by index
        return (score > t) | (tie & (rank > need[None, :]))

    return lax.cond(jnp.all(at_most - below == need), drop_all_ties, drop_first_ties, None)


@functools.partial(jax.jit, static_argnames=("num_pruned", "n_m"))
def _wanda(w, hessian, *, num_pruned, n_m):
    compute = jnp.result_type(w.dtype, jnp.float32)
    diag = hessian if hessian.ndim == 1 else jnp.diagonal(hessian)
    norms = jnp.sqrt(jnp.maximum(diag.astype(compute), 0))
    score = jnp.abs(w.astype(compute)) * norms[:, None]
    if n_m is None:
        keep = keep_top_per_column(score, num_pruned)
    else:
        keep = _n_by_m_mask(score, NByM(n_m[0], n_m[1], axis=0))
    return jnp.where(keep, w, jnp.zeros_like(w))


def wanda(
    w: jax.Array,
    hessian: jax.Array,
    *,
    sparsity: float | None = None,
    n_m: tuple[int, int] | None = None,
) -> jax.Array:
    """Prunes a Dense kernel with Wanda scores ``|w| * sqrt(diag(X^T X))``, per output column.

    Args:
      w: ``(in, out)`` float kernel (``y = x @ w``).
      hessian: ``(in, in)`` Gram matrix ``X^T X`` of the layer's inputs, or just its diagonal
        ``(in,)`` (the squared norms of the input features); any positive scale.
      sparsity: fraction of inputs each output column loses, in [0, 1): exactly
        ``round(sparsity * in)`` per column (ties: the lowest input index goes first).
      n_m: ``(n, m)``: keep the ``n`` best of every ``m`` consecutive inputs of each output
        column; ``m`` must divide ``in``. Exactly one of ``sparsity`` / ``n_m``.

    Returns:
      ``(in, out)`` array in ``w.dtype`` with the pruned entries exactly 0 and the others
      unchanged.

    Raises:
      ValueError: shapes that do not match, both or neither of sparsity / n_m, a sparsity
        outside [0, 1), a bad ``n_m``, NaN / Inf inputs, a negative Hessian diagonal.
      TypeError: non-float arrays or ill-typed settings.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (512, 64))
      >>> w = jax.random.normal(jax.random.key(1), (64, 32))
      >>> w_hat = wanda(w, gram_matrix(x), sparsity=0.5)
      >>> (w_hat == 0).sum(axis=0).tolist() == [32] * 32
      True
    """
    w, hessian = hs.check_layer(w, hessian, allow_diagonal=True)
    n_in = w.shape[0]
    sparsity, n_m = check_target(sparsity, n_m, n_in)
    if not isinstance(hessian, jax.core.Tracer):
        diag = hessian if hessian.ndim == 1 else jnp.diagonal(hessian)
        n_neg = int(jnp.sum(diag < 0))
        if n_neg:
            raise ValueError(
                f"hessian must have a non-negative diagonal (squared input norms), got "
                f"{n_neg} negative entries out of {n_in}."
            )
    num_pruned = 0 if sparsity is None else int(round(sparsity * n_in))
    return _wanda(w, hessian, num_pruned=num_pruned, n_m=n_m)
