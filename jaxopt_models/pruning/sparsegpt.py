"""SparseGPT: one-shot pruning with optimal-brain-surgeon error compensation.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot". Inputs (rows of a ``(in, out)`` kernel) are visited in order; with ``U`` the upper
Cholesky factor of the damped inverse Hessian, a pruned weight's error divided by ``U[i, i]``
is pushed onto the rows not yet visited along ``U[i, :]``, so the kept weights absorb it.

The mask is chosen adaptively, block by block, from the weights *with* all earlier errors
applied, by the OBS saliency ``w^2 / U[i, i]^2``:

- ``sparsity=s``: at each block's start, the lowest-saliency entries of the whole block
  (all its rows and output columns together) are pruned. Block counts are chosen so the
  layer loses exactly ``round(s * in * out)`` weights (block ``b`` loses
  ``round(s * out * end_b) - round(s * out * start_b)``).
- ``n_m=(n, m)``: when a group of ``m`` consecutive rows is reached, each output column keeps
  its ``n`` highest-saliency inputs of the group (exactly ``n`` nonzeros per group).

Errors reach later blocks through one matmul per block (lazy batch updates); the sweep is a
compiled ``fori_loop`` over blocks with a ``fori_loop`` over rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxopt_models import hessian as hs
from jaxopt_models.pruning import _select
from jaxopt_models.pruning._one_shot import check_target
from jaxopt_models.pruning.masks import _n_by_m_mask
from jaxopt_models.pruning.structures import NByM


def _blocks_pruned(sparsity: float, n_in: int, n_out: int, block: int, n_pad: int) -> np.ndarray:
    """Entries pruned per block: differences of ``round(s * out * rows so far)``."""
    ends = np.minimum(np.arange(0, n_pad + 1, block), n_in)
    cumulative = np.array([round(sparsity * n_out * int(e)) for e in ends], np.int64)
    return np.diff(cumulative).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("n_m", "block_size"))
def _sparsegpt(w, hessian, damp, ks, *, n_m, block_size):
    dtype = w.dtype
    compute = jnp.result_type(dtype, jnp.float32)
    w, h = hs.prepare(w.astype(compute), hessian.astype(compute))
    n_in, n_out = w.shape
    u, ok = hs.inverse_cholesky_upper(hs.damped(h, damp))
    block = block_size
    n_pad = hs.round_up(n_in, block)
    w, u = hs.pad_rows(w, u, n_pad)

    if n_m is None:

        def block_fn(i1, w1, u1, w_all, state):
            saliency = (w1 / jnp.diagonal(u1)[:, None]) ** 2
            real = (i1 + jnp.arange(block) < n_in)[:, None]
            saliency = jnp.where(real, saliency, jnp.inf)
            k = lax.dynamic_index_in_dim(ks, i1 // block, 0, keepdims=True)
            ((keep,),) = _select.drop_bottom_k([[_select.canonical(saliency)]], k)

            def row_fn(i, row):
                kept = lax.dynamic_index_in_dim(keep, i, 0, keepdims=False)
                return jnp.where(kept, row, jnp.zeros_like(row))

            z = jnp.zeros_like(w1)
            _, q1, err1 = hs.sweep_rows(w1, u1, z, z, 0, block, row_fn)
            return q1, err1, state

    else:
        n, m = n_m
        structure = NByM(n, m, axis=0)

        def block_fn(i1, w1, u1, w_all, state):
            diag = jnp.diagonal(u1)

            def group_body(s, carry):
                w1, q1, err1 = carry
                rows = lax.dynamic_slice_in_dim(w1, s * m, m, 0)
                d = lax.dynamic_slice_in_dim(diag, s * m, m, 0)
                keep = _n_by_m_mask((rows / d[:, None]) ** 2, structure)

                def row_fn(i, row):
                    kept = lax.dynamic_index_in_dim(keep, i - s * m, 0, keepdims=False)
                    return jnp.where(kept, row, jnp.zeros_like(row))

                return hs.sweep_rows(w1, u1, q1, err1, s * m, m, row_fn)

            z = jnp.zeros_like(w1)
            _, q1, err1 = lax.fori_loop(0, block // m, group_body, (w1, z, z))
            return q1, err1, state

    q, _ = hs.obs_sweep(w, u, block, block_fn, None)
    return q[:n_in].astype(dtype), ok


def sparsegpt(
    w: jax.Array,
    hessian: jax.Array,
    *,
    sparsity: float | None = None,
    n_m: tuple[int, int] | None = None,
    damp: float = 0.01,
    block_size: int = 128,
    name: str | None = None,
) -> jax.Array:
    """Prunes a Dense kernel with SparseGPT, given the Hessian of its inputs.

    One compiled call per shape and setting; ``damp`` and ``sparsity`` are traced (new values
    do not recompile).

    Args:
      w: ``(in, out)`` float kernel (``y = x @ w``).
      hessian: ``(in, in)`` Gram matrix ``X^T X`` of the layer's inputs (any positive scale).
        Dead inputs (zero diagonal) get ``H[i, i] = 1`` and a zero row in ``w``.
      sparsity: fraction of weights to prune, in [0, 1): exactly ``round(sparsity * in *
        out)`` entries become 0 (see the module docstring for how blocks share them).
      n_m: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs of each output column
        (``(2, 4)`` for 2:4); ``m`` must divide ``in``. Exactly one of ``sparsity`` / ``n_m``.
      damp: relative damping, ``damp * mean(diag(H))`` is added to the diagonal.
      block_size: rows per mask-selection and lazy-update block (with ``n_m``, rounded down
        to a multiple of ``m``, at least ``m``).
      name: optional layer name for error messages.

    Returns:
      ``(in, out)`` array in ``w.dtype``: pruned entries exactly 0, kept ones updated to
      compensate for the pruned ones.

    Raises:
      ValueError: shapes that do not match, both or neither of sparsity / n_m, a sparsity
        outside [0, 1), an ``n_m`` with ``n >= m`` or ``n < 1`` or ``m`` not dividing ``in``,
        NaN / Inf inputs, or a Hessian not positive definite after damping.
      TypeError: non-float arrays or ill-typed settings.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (512, 64))
      >>> w = jax.random.normal(jax.random.key(1), (64, 32))
      >>> w_hat = sparsegpt(w, gram_matrix(x), n_m=(2, 4))
      >>> int((w_hat == 0).sum())
      1024
    """
    name = hs.check_name(name)
    w, hessian = hs.check_layer(w, hessian, name=name)
    n_in, n_out = w.shape
    sparsity, n_m = check_target(sparsity, n_m, n_in, name)
    damp = hs.check_damp(damp)
    block_size = hs.check_positive_int(block_size, "block_size")
    if n_m is None:
        block = min(block_size, n_in)
    else:
        m = n_m[1]
        block = m * max(1, min(block_size, n_in) // m)
    n_pad = hs.round_up(n_in, block)
    if n_m is None:
        ks = jnp.asarray(_blocks_pruned(sparsity, n_in, n_out, block, n_pad))
    else:
        ks = jnp.zeros((n_pad // block,), jnp.int32)
    out, ok = _sparsegpt(w, hessian, damp, ks, n_m=n_m, block_size=block)
    hs.raise_if_not_positive_definite(ok, damp, name)
    return out
