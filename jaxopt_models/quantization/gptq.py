"""GPTQ: one-shot weight quantization with second-order error compensation.

Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers". The inputs (rows of a ``(in, out)`` kernel) are quantized one at a time, in
the order of the upper Cholesky factor ``U`` of the damped inverse Hessian
``(X^T X + lambda I)^-1``; the error of each row, divided by ``U[i, i]``, is pushed onto the
rows not yet quantized along ``U[i, :]``. Rows are processed in blocks and the updates of a
whole block reach the later rows in one matmul (lazy batch updates), so the sweep is one
compiled ``fori_loop`` over blocks with a ``fori_loop`` over the rows of a block.

Scales and zero points are min-max grids of the library (``affine``), so the result is a
:class:`QTensor` that :func:`dequantize` turns back into the float kernel:

- ``group_size=None``: one grid per output column, from the whole (dead-input-cleaned) column
  before the sweep, as the reference does;
- ``group_size=g``: one grid per output column and per ``g`` consecutive inputs, computed when
  the group's first row is reached, from the group's rows with all earlier errors applied;
- ``act_order=True``: rows are visited in order of decreasing ``H[i, i]``; with groups the grids
  are "static groups" (computed from the original kernel before the sweep, per consecutive
  inputs), so the groups stay contiguous and the result stays a plain grouped ``QTensor``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxopt_models import hessian as hs
from jaxopt_models.quantization._validation import check_bool
from jaxopt_models.quantization.affine import (
    grid_to_float,
    quantize_to_grid,
    scale_and_zero_point,
    storage_dtype,
)
from jaxopt_models.quantization.qtensor import QTensor

MIN_BITS = 2
MAX_BITS = 8


def _check_gptq_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}.")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}] for gptq, got {bits}.")
    return int(bits)


def _minmax_grid(rows: jax.Array, bits: int, symmetric: bool):
    """Per-column min-max grid of ``rows`` (``(g, out)``): ``(scale, zero_point)``, ``(out,)``."""
    return scale_and_zero_point(rows.min(axis=0), rows.max(axis=0), bits, symmetric)


def _round_row(row, scale, zero_point, bits):
    q = quantize_to_grid(row, scale, zero_point, bits)
    return grid_to_float(q, scale, zero_point, row.dtype)


def _take(table, index):
    return None if table is None else lax.dynamic_index_in_dim(table, index, 0, keepdims=False)


def _put(table, value, index):
    return None if table is None else lax.dynamic_update_index_in_dim(table, value, index, 0)


def _block_size(n_in: int, block_size: int, group_size: int | None, dynamic: bool) -> int:
    """Rows per block: groups computed in the sweep must start at a block start or lie inside
    one block (so their rows are up to date when their grid is computed)."""
    if not dynamic or group_size is None:
        return min(block_size, n_in)
    if group_size % block_size == 0:
        return block_size
    return group_size * max(1, min(block_size, n_in) // group_size)


@functools.partial(
    jax.jit, static_argnames=("bits", "symmetric", "group_size", "act_order", "block_size")
)
def _gptq(w, hessian, damp, *, bits, symmetric, group_size, act_order, block_size):
    compute = jnp.result_type(w.dtype, jnp.float32)
    w, h = hs.prepare(w.astype(compute), hessian.astype(compute))
    n_in, n_out = w.shape
    g = group_size
    dynamic = g is not None and not act_order

    # Static grids (computed before the sweep): per column, or per group when act_order.
    if g is None:
        scale, zp = _minmax_grid(w, bits, symmetric)
        table = (scale[None], None if zp is None else zp[None])
    elif act_order:
        grouped = w.reshape(n_in // g, g, n_out)
        lo, hi = grouped.min(axis=1), grouped.max(axis=1)
        table = scale_and_zero_point(lo, hi, bits, symmetric)

    if act_order:
        perm = jnp.argsort(-jnp.diagonal(h), stable=True)
        w, h = w[perm], h[perm][:, perm]
    u, ok = hs.inverse_cholesky_upper(hs.damped(h, damp))

    block = _block_size(n_in, block_size, g, dynamic)
    n_pad = hs.round_up(n_in, block)
    w, u = hs.pad_rows(w, u, n_pad)

    if not dynamic:
        if g is None:
            group_of_row = jnp.zeros((n_pad,), jnp.int32)
        else:
            group_of_row = jnp.pad(perm // g, (0, n_pad - n_in)).astype(jnp.int32)

        def block_fn(i1, w1, u1, w_all, state):
            def row_fn(i, row):
                k = group_of_row[i1 + i]
                return _round_row(row, _take(table[0], k), _take(table[1], k), bits)

            z = jnp.zeros_like(w1)
            _, q1, err1 = hs.sweep_rows(w1, u1, z, z, 0, block, row_fn)
            return q1, err1, state

        q, _ = hs.obs_sweep(w, u, block, block_fn, None)
    elif g % block == 0 and g >= block:
        # Groups span whole blocks: a group's grid is computed at its first block from the
        # full kernel, whose rows >= i1 are up to date at a block start.
        def block_fn(i1, w1, u1, w_all, state):
            current, tables = state
            fresh = _minmax_grid(lax.dynamic_slice_in_dim(w_all, i1, g, 0), bits, symmetric)
            first = i1 % g == 0
            current = jax.tree.map(lambda a, b: jnp.where(first, a, b), fresh, current)
            tables = jax.tree.map(lambda t, v: _put(t, v, i1 // g), tables, current)

            def row_fn(i, row):
                return _round_row(row, current[0], current[1], bits)

            z = jnp.zeros_like(w1)
            _, q1, err1 = hs.sweep_rows(w1, u1, z, z, 0, block, row_fn)
            return q1, err1, (current, tables)

        init_grid = _minmax_grid(w[:g], bits, symmetric)
        tables = jax.tree.map(lambda v: jnp.zeros((n_pad // g,) + v.shape, v.dtype), init_grid)
        q, (_, table) = hs.obs_sweep(w, u, block, block_fn, (init_grid, tables))
    else:
        # Whole groups inside a block: the grid of each group comes from the block's rows,
        # up to date with every earlier row of the block.
        def block_fn(i1, w1, u1, w_all, state):
            def group_body(s, carry):
                w1, q1, err1, tables = carry
                grid = _minmax_grid(lax.dynamic_slice_in_dim(w1, s * g, g, 0), bits, symmetric)
                tables = jax.tree.map(lambda t, v: _put(t, v, i1 // g + s), tables, grid)
                w1, q1, err1 = hs.sweep_rows(
                    w1, u1, q1, err1, s * g, g, lambda i, row: _round_row(row, *grid, bits)
                )
                return w1, q1, err1, tables

            z = jnp.zeros_like(w1)
            _, q1, err1, state = lax.fori_loop(0, block // g, group_body, (w1, z, z, state))
            return q1, err1, state

        init_grid = _minmax_grid(w[:g], bits, symmetric)
        tables = jax.tree.map(lambda v: jnp.zeros((n_pad // g,) + v.shape, v.dtype), init_grid)
        q, table = hs.obs_sweep(w, u, block, block_fn, tables)

    q = q[:n_in]
    if act_order:
        q = jnp.zeros_like(q).at[perm].set(q)
    scale, zp = table
    if g is None:
        values = quantize_to_grid(q, scale, zp, bits)
    else:
        n_groups = n_in // g
        scale = scale[:n_groups, None, :]
        zp = None if zp is None else zp[:n_groups, None, :]
        values = quantize_to_grid(q.reshape(n_groups, g, n_out), scale, zp, bits)
    return values.reshape(n_in, n_out).astype(storage_dtype(bits)), scale, zp, ok


def gptq(
    w: jax.Array,
    hessian: jax.Array,
    *,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = False,
    act_order: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    name: str | None = None,
) -> QTensor:
    """Quantizes a Dense kernel with GPTQ, given the Hessian of its inputs.

    Minimises ``||X w - X w_hat||^2`` row by row (see the module docstring), one compiled call
    per shape and setting (``damp`` is traced: new values do not recompile).

    Args:
      w: ``(in, out)`` float kernel (``y = x @ w``).
      hessian: ``(in, in)`` Gram matrix ``X^T X`` of the layer's inputs (any positive scale;
        :func:`jaxopt_models.hessian.gram_matrix` builds it). Dead inputs (zero diagonal) get
        ``H[i, i] = 1`` and a zero row in ``w``.
      bits: bit width in [2, 8].
      group_size: None for one grid per output column, or ``g`` (dividing ``in``) for one grid
        per output column and per ``g`` consecutive inputs.
      symmetric: the library's symmetric grid (no zero point) or the asymmetric one.
      act_order: visit inputs in order of decreasing ``H[i, i]`` (with groups: static groups,
        see the module docstring). The result is always in the original input order.
      damp: relative damping, ``damp * mean(diag(H))`` is added to the diagonal.
      block_size: rows per lazy-update block (adjusted to whole groups when grouping).
      name: optional layer name for error messages.

    Returns:
      A :class:`QTensor` of shape ``(in, out)`` with ``axis=(1,)``, int8 values and, with
      groups, ``group_size=g``, ``group_axis=0`` and scales of shape ``(in // g, 1, out)``
      (``(1, out)`` without); ``dequantize`` returns the quantized kernel in ``w.dtype``.

    Raises:
      ValueError: shapes that do not match, bits outside [2, 8], a group size that does not
        divide ``in``, NaN / Inf in ``w`` or ``hessian``, negative ``damp``, or a Hessian that
        is not positive definite after damping (the message names ``damp`` and ``name``).
      TypeError: non-float arrays or ill-typed settings.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (512, 64))
      >>> w = jax.random.normal(jax.random.key(1), (64, 32))
      >>> q = gptq(w, gram_matrix(x), bits=4, group_size=16)
      >>> q.scale.shape, dequantize(q).shape
      ((4, 1, 32), (64, 32))
    """
    name = hs.check_name(name)
    w, hessian = hs.check_layer(w, hessian, name=name)
    bits = _check_gptq_bits(bits)
    symmetric = check_bool(symmetric, "symmetric")
    act_order = check_bool(act_order, "act_order")
    damp = hs.check_damp(damp)
    block_size = hs.check_positive_int(block_size, "block_size")
    n_in = w.shape[0]
    if group_size is not None:
        group_size = hs.check_positive_int(group_size, "group_size")
        if n_in % group_size:
            raise ValueError(
                f"group_size={group_size} does not divide the input axis of w (in={n_in}, "
                f"shape {w.shape}); use a divisor of {n_in}."
            )
    values, scale, zero_point, ok = _gptq(
        w,
        hessian,
        damp,
        bits=bits,
        symmetric=symmetric,
        group_size=group_size,
        act_order=act_order,
        block_size=block_size,
    )
    hs.raise_if_not_positive_definite(ok, damp, name)
    return QTensor(
        values,
        scale,
        zero_point,
        bits,
        axis=(1,),
        group_size=group_size,
        group_axis=None if group_size is None else 0,
        dtype=w.dtype,
    )
