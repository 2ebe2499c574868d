"""The layer-input Hessian of one-shot compression (GPTQ, SparseGPT, Wanda), in one place.

A Dense layer ``y = x @ w`` with kernel ``w`` of shape ``(in, out)`` has the reconstruction
error ``||X w - X w_hat||^2 = tr((w - w_hat)^T H (w - w_hat))`` with ``H = X^T X`` (``in``,
``in``), the Gram matrix of the calibration inputs. Any positive multiple of ``H`` gives the
same result everywhere in this library (damping is relative to its mean diagonal).

This module holds what the pruning and quantization algorithms share: argument checks
(eager ``ValueError`` / ``TypeError``), dead-input handling and damping, the upper Cholesky
factor of the inverse Hessian and the blocked error-propagation sweep of the optimal brain
surgeon update (Frantar et al. 2023, Frantar & Alistarh 2023). It knows no model, dataset or
training loop. All traceable functions are pure ``jnp``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HIGHEST = lax.Precision.HIGHEST

RowFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``row_fn(i, row) -> replacement``: the compressed value of row ``i`` of a block."""

BlockFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, Any], tuple]
"""``block_fn(i1, w1, u1, w, state) -> (q1, err1, state)``, see :func:`obs_sweep`."""


# -- eager argument checks ------------------------------------------------------------------


def _where(name: str | None) -> str:
    return f"{name}: " if name else ""


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_name(name: Any) -> str | None:
    """Returns ``name`` after checking it is None or a string (a layer name for messages)."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be None or a string, got {name!r}.")
    return name


def check_float_array(
    x: Any, arg: str, ndims: tuple[int, ...] = (2,), name: str | None = None
) -> jax.Array:
    """Returns ``x`` as a jax array after checking it is a non-empty float array of a rank in
    ``ndims`` (``arg`` names it in messages, ``name`` is an optional layer name).

    Example:
      >>> check_float_array(jnp.ones(3), "act_mag", (1,)).shape
      (3,)
    """
    where = _where(name)
    if isinstance(x, bool) or not isinstance(x, (jax.Array, np.ndarray)):
        raise TypeError(f"{where}{arg} must be a floating-point array, got {type(x).__name__}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{where}{arg} must have a floating dtype, got {x.dtype}.")
    if x.ndim not in ndims:
        allowed = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{where}{arg} must be {allowed}, got shape {x.shape}.")
    if x.size == 0:
        raise ValueError(f"{where}{arg} must not be empty, got shape {x.shape}.")
    return x


def check_finite(x: jax.Array, arg: str, name: str | None = None) -> None:
    """Raises ValueError when a concrete ``x`` holds NaN or Inf (one scalar leaves the device).

    Traced values are not checked.

    Example:
      >>> check_finite(jnp.array([1.0, jnp.nan]), "hessian")
      Traceback (most recent call last):
      ...
      ValueError: hessian must be finite, got 1 NaN and 0 Inf values out of 2.
    """
    if _is_traced(x):
        return
    n_bad = int(jnp.sum(~jnp.isfinite(x)))
    if n_bad:
        n_nan = int(jnp.sum(jnp.isnan(x)))
        raise ValueError(
            f"{_where(name)}{arg} must be finite, got {n_nan} NaN and {n_bad - n_nan} Inf "
            f"values out of {x.size}."
        )


def check_layer(
    w: Any,
    hessian: Any,
    *,
    name: str | None = None,
    allow_diagonal: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Checks a kernel and its input Hessian: float, 2-D, matching shapes, finite.

    Args:
      w: kernel of shape ``(in, out)`` (``y = x @ w``), floating.
      hessian: ``(in, in)`` Gram matrix ``X^T X`` of the layer inputs (any positive scale);
        with ``allow_diagonal`` also its diagonal ``(in,)``.
      name: optional layer name, put in front of every message.
      allow_diagonal: accept a 1-D ``hessian`` (the squared input norms).

    Returns:
      ``(w, hessian)`` as jax arrays.

    Raises:
      TypeError: non-array or non-float inputs.
      ValueError: wrong ranks, shapes that do not match, empty arrays, NaN / Inf values.

    Example:
      >>> w, h = check_layer(jnp.ones((4, 3)), jnp.eye(4))
      >>> check_layer(jnp.ones((4, 3)), jnp.eye(3))
      Traceback (most recent call last):
      ...
      ValueError: hessian must have shape (4, 4) for a kernel w of shape (4, 3) (in=4), got (3, 3).
    """
    name = check_name(name)
    where = _where(name)
    w = check_float_array(w, "w", (2,), name)
    hessian = check_float_array(hessian, "hessian", (1, 2) if allow_diagonal else (2,), name)
    n_in = w.shape[0]
    want = (n_in,) if hessian.ndim == 1 else (n_in, n_in)
    if hessian.shape != want:
        raise ValueError(
            f"{where}hessian must have shape {want} for a kernel w of shape {w.shape} "
            f"(in={n_in}), got {hessian.shape}."
        )
    check_finite(w, "w", name)
    check_finite(hessian, "hessian", name)
    return w, hessian


def check_positive_int(value: Any, arg: str) -> int:
    """Returns ``value`` as an int after checking it is a positive integer.

    Example:
      >>> check_positive_int(128, "block_size")
      128
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg} must be a positive int, got {value!r}.")
    if value < 1:
        raise ValueError(f"{arg} must be a positive int, got {value}.")
    return int(value)


def check_damp(damp: Any) -> float:
    """Returns the relative damping as a float after checking it is finite and >= 0.

    Example:
      >>> check_damp(0.01)
      0.01
    """
    if isinstance(damp, bool) or not isinstance(damp, (int, float, np.integer, np.floating)):
        raise TypeError(f"damp must be a number >= 0, got {damp!r}.")
    damp = float(damp)
    if not (math.isfinite(damp) and damp >= 0):
        raise ValueError(f"damp must be a finite number >= 0, got {damp!r}.")
    return damp


def raise_if_not_positive_definite(ok: Any, damp: float, name: str | None = None) -> None:
    """Raises ValueError when ``ok`` (from :func:`inverse_cholesky_upper`) is a concrete False.

    The message names the damping and suggests a larger one. Traced flags are not checked.

    Example:
      >>> raise_if_not_positive_definite(jnp.array(False), 0.01, name="mlp/fc1")
      Traceback (most recent call last):
      ...
      ValueError: mlp/fc1: the hessian is not positive definite after damping with damp=0.01 ...
    """
    if _is_traced(ok) or bool(ok):
        return
    larger = max(10 * damp, 0.01)
    raise ValueError(
        f"{_where(name)}the hessian is not positive definite after damping with damp={damp} "
        f"(damp * mean(diag(hessian)) added to the diagonal); pass a larger damp, e.g. "
        f"damp={larger:g}, or collect more calibration rows than the layer has inputs."
    )


# -- traceable helpers ----------------------------------------------------------------------


def gram_matrix(x: jax.Array) -> jax.Array:
    """The Hessian ``X^T X`` of a layer's inputs ``x`` (all leading axes are rows).

    Args:
      x: ``(..., in)`` calibration inputs of the layer.

    Returns:
      ``(in, in)`` float32 (float64 for float64 ``x``) matrix, computed at full precision.

    Example:
      >>> gram_matrix(jnp.ones((5, 2, 3))).tolist()[0]
      [10.0, 10.0, 10.0]
    """
    x = jnp.asarray(x)
    x = x.reshape(-1, x.shape[-1]).astype(jnp.result_type(x.dtype, jnp.float32))
    return jnp.matmul(x.T, x, precision=HIGHEST)


def prepare(w: jax.Array, hessian: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetrises ``hessian`` and handles dead inputs (zero diagonal) as the papers' code does.

    A dead input ``i`` (``H[i, i] == 0``: never active in the calibration data) gets
    ``H[i, i] = 1`` and ``w[i, :] = 0``.

    Args:
      w: ``(in, out)`` kernel.
      hessian: ``(in, in)`` Gram matrix.

    Returns:
      ``(w, hessian)`` in the same dtypes.

    Example:
      >>> w, h = prepare(jnp.ones((2, 3)), jnp.diag(jnp.array([2.0, 0.0])))
      >>> w.tolist(), jnp.diag(h).tolist()
      ([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [2.0, 1.0])
    """
    h = 0.5 * (hessian + hessian.T)
    diag = jnp.diagonal(h)
    dead = diag == 0
    n = h.shape[0]
    h = h.at[jnp.arange(n), jnp.arange(n)].set(jnp.where(dead, jnp.ones_like(diag), diag))
    w = jnp.where(dead[:, None], jnp.zeros_like(w), w)
    return w, h


def damped(hessian: jax.Array, damp: Any) -> jax.Array:
    """Adds ``damp * mean(diag(hessian))`` to the diagonal (relative damping).

    Example:
      >>> jnp.diag(damped(jnp.diag(jnp.array([1.0, 3.0])), 0.5)).tolist()
      [2.0, 4.0]
    """
    n = hessian.shape[0]
    delta = jnp.asarray(damp, hessian.dtype) * jnp.mean(jnp.diagonal(hessian))
    return hessian + delta * jnp.eye(n, dtype=hessian.dtype)


def inverse_cholesky_upper(hessian: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``) and a success flag.

    With ``J`` the order-reversing permutation, ``J H J = M M^T`` (lower ``M``) gives
    ``U = J M^-1 J``: one Cholesky and one triangular solve, no explicit inverse.

    Args:
      hessian: ``(n, n)`` symmetric matrix (damped).

    Returns:
      ``(u, ok)``: ``(n, n)`` upper-triangular ``u`` and a bool scalar, False when
      ``hessian`` is not (numerically) positive definite (``u`` then holds NaN).

    Example:
      >>> h = jnp.array([[4.0, 2.0], [2.0, 3.0]])
      >>> u, ok = inverse_cholesky_upper(h)
      >>> bool(ok), bool(jnp.allclose(u.T @ u, jnp.linalg.inv(h), atol=1e-6))
      (True, True)
    """
    flipped = hessian[::-1, ::-1]
    m = jnp.linalg.cholesky(flipped)
    eye = jnp.eye(hessian.shape[0], dtype=hessian.dtype)
    m_inv = jax.scipy.linalg.solve_triangular(m, eye, lower=True)
    u = m_inv[::-1, ::-1]
    ok = jnp.all(jnp.isfinite(u)) & jnp.all(jnp.diagonal(m) > 0)
    return u, ok


def pad_rows(w: jax.Array, u: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Pads ``w`` with zero rows and ``u`` with an identity block up to ``n`` inputs.

    Padded inputs are independent of the real ones (block-diagonal ``U``) and zero, so any
    compression leaves them zero and propagates no error.

    Example:
      >>> w, u = pad_rows(jnp.ones((2, 3)), jnp.eye(2), 4)
      >>> w.shape, u.shape, float(u[3, 3])
      ((4, 3), (4, 4), 1.0)
    """
    extra = n - w.shape[0]
    if extra == 0:
        return w, u
    w = jnp.pad(w, ((0, extra), (0, 0)))
    u = jnp.pad(u, ((0, extra), (0, extra)))
    idx = jnp.arange(w.shape[0] - extra, n)
    return w, u.at[idx, idx].set(1)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``n``.

    Example:
      >>> round_up(130, 128)
      256
    """
    return -(-n // multiple) * multiple


def sweep_rows(
    w1: jax.Array,
    u1: jax.Array,
    q1: jax.Array,
    err1: jax.Array,
    start: Any,
    num_rows: int,
    row_fn: RowFn,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Compresses rows ``start .. start + num_rows`` of a block one at a time (OBS update).

    For each row ``i``: ``q = row_fn(i, w1[i])``, ``err = (w1[i] - q) / u1[i, i]`` and
    ``w1 -= outer(u1[i], err)`` (``u1`` is upper triangular, so only later rows change).

    Args:
      w1: ``(B, out)`` block of the kernel, updated for all earlier rows.
      u1: ``(B, B)`` diagonal block of the upper Cholesky factor of ``H^-1``.
      q1: ``(B, out)`` buffer of compressed rows.
      err1: ``(B, out)`` buffer of scaled errors.
      start: first row (int or int32 scalar).
      num_rows: static number of rows.
      row_fn: ``row_fn(i, row) -> compressed row``.

    Returns:
      ``(w1, q1, err1)`` after the rows.

    Example:
      >>> w1, u1 = jnp.ones((2, 3)), jnp.eye(2)
      >>> _, q1, _ = sweep_rows(w1, u1, w1 * 0, w1 * 0, 0, 2, lambda i, r: jnp.round(r / 2))
      >>> q1.tolist()
      [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """

    def body(j, carry):
        w1, q1, err1 = carry
        i = start + j
        row = lax.dynamic_index_in_dim(w1, i, 0, keepdims=False)
        urow = lax.dynamic_index_in_dim(u1, i, 0, keepdims=False)
        q = row_fn(i, row)
        err = (row - q) / urow[i]
        w1 = w1 - urow[:, None] * err[None, :]
        q1 = lax.dynamic_update_index_in_dim(q1, q, i, 0)
        err1 = lax.dynamic_update_index_in_dim(err1, err, i, 0)
        return w1, q1, err1

    return lax.fori_loop(0, num_rows, body, (w1, q1, err1))


def obs_sweep(
    w: jax.Array, u: jax.Array, block_size: int, block_fn: BlockFn, state: Any
) -> tuple[jax.Array, Any]:
    """The blocked sweep with lazy batch updates: compress blocks of rows, then push the
    block's errors to all later rows with one matmul.

    Args:
      w: ``(n, out)`` kernel, ``n`` a multiple of ``block_size`` (see :func:`pad_rows`).
      u: ``(n, n)`` upper Cholesky factor of the (damped) inverse Hessian.
      block_size: static rows per block.
      block_fn: ``block_fn(i1, w1, u1, w, state) -> (q1, err1, state)`` compresses the block
        starting at row ``i1``: ``w1`` (``(B, out)``) is up to date with every earlier block,
        ``u1`` is ``u[i1:i1+B, i1:i1+B]`` and ``w`` the whole kernel (rows ``>= i1`` up to
        date); ``q1`` holds the compressed rows, ``err1`` the scaled errors
        (``(w - q) / u[i, i]``, as from :func:`sweep_rows`).
      state: any pytree carried from block to block.

    Returns:
      ``(q, state)``: the ``(n, out)`` compressed kernel and the final state.

    Example:
      >>> def block_fn(i1, w1, u1, w, state):
      ...     z = jnp.zeros_like(w1)
      ...     return sweep_rows(w1, u1, z, z, 0, w1.shape[0], lambda i, r: jnp.round(r))[1:] + (
      ...         state,)
      >>> q, _ = obs_sweep(jnp.full((4, 2), 0.4), jnp.eye(4), 2, block_fn, None)
      >>> q.tolist()
      [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    """
    n = w.shape[0]
    if n % block_size:
        raise ValueError(f"w has {n} rows, not a multiple of block_size={block_size}.")

    def body(b, carry):
        w, q, state = carry
        i1 = b * block_size
        w1 = lax.dynamic_slice_in_dim(w, i1, block_size, 0)
        u1 = lax.dynamic_slice(u, (i1, i1), (block_size, block_size))
        q1, err1, state = block_fn(i1, w1, u1, w, state)
        q = lax.dynamic_update_slice_in_dim(q, q1, i1, 0)
        # Lazy batch update of every later row. Rows before i1 see zeros (u is upper
        # triangular) and the block's own rows are done, so no mask is needed.
        u_rows = lax.dynamic_slice_in_dim(u, i1, block_size, 0)
        w = w - jnp.einsum("bn,bo->no", u_rows, err1, precision=HIGHEST)
        return w, q, state

    _, q, state = lax.fori_loop(0, n // block_size, body, (w, jnp.zeros_like(w), state))
    return q, state
