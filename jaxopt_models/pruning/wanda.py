"""Wanda: pruning by weights and activations, without any weight update.

Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language Models". The score
of weight ``w[i, j]`` of a ``(in, out)`` kernel is ``|w[i, j]| * ||X[:, i]||_2``, and
``||X[:, i]||_2^2`` is the diagonal of the Hessian ``X^T X``. Scores are compared within each
output column (every output keeps the same number of inputs); the kept weights are unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxopt_models import hessian as hs
from jaxopt_models.pruning._one_shot import check_target, keep_top_per_column
from jaxopt_models.pruning.masks import _n_by_m_mask
from jaxopt_models.pruning.structures import NByM


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
