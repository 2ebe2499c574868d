"""SmoothQuant: move activation outliers into the weights, then quantize both to 8 bits.

Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models". A few input features of a transformer layer carry activations 10-100x
larger than the rest, which ruins per-tensor / per-token int8 activations. With per-input
scales ``s = max|X_i|^alpha / max|W_i|^(1 - alpha)`` the layer computes the same function as
``y = (x / s) @ (s[:, None] * w)``, and both factors quantize well. ``1 / s`` is folded into
the op that produces ``x`` (a LayerNorm's scale and bias, or a Dense kernel's output columns
and bias), ``s`` into the kernel.

:func:`w8a8_matmul` simulates the int8 layer: symmetric int8 activations (one scale per token
or per tensor) times symmetric int8 weights (one scale per output channel).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_models import hessian as hs
from jaxopt_models.checks import check_one_of
from jaxopt_models.quantization.fake_quant import fake_quant

ACTIVATION_GRANULARITIES = ("per_token", "per_tensor")
_MIN_SCALE = 1e-5


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
    return float(alpha)


def _check_scales(scales: Any, n_in: int, arg: str) -> jax.Array:
    scales = hs.check_float_array(scales, arg, (1,))
    if scales.shape != (n_in,):
        raise ValueError(f"{arg} must have shape ({n_in},), got {scales.shape}.")
    hs.check_finite(scales, arg)
    if not isinstance(scales, jax.core.Tracer) and bool(jnp.any(scales <= 0)):
        raise ValueError(f"{arg} must be > 0.")
    return scales


@jax.jit
def _smooth_scales(act_absmax, w, alpha):
    compute = jnp.result_type(act_absmax.dtype, w.dtype, jnp.float32)
    a = jnp.maximum(act_absmax.astype(compute), _MIN_SCALE)
    wmax = jnp.maximum(jnp.max(jnp.abs(w.astype(compute)), axis=1), _MIN_SCALE)
    return jnp.maximum(a**alpha / wmax ** (1 - alpha), _MIN_SCALE)


def smooth_scales(act_absmax: jax.Array, w: jax.Array, alpha: float = 0.5) -> jax.Array:
    """SmoothQuant's per-input scales ``s = max|X_i|^alpha / max_j |w[i, j]|^(1 - alpha)``.

    Both maxima are clipped below at 1e-5, as is ``s``.

    Args:
      act_absmax: ``(in,)`` max ``|x|`` of each input feature over the calibration data.
      w: ``(in, out)`` float kernel (``y = x @ w``).
      alpha: migration strength in [0, 1]; 0.5 balances the two ranges, larger values move
        more of the range into the weights.

    Returns:
      ``(in,)`` float32 (or wider) scales; use ``x / s`` and ``s[:, None] * w``.

    Raises:
      ValueError: shapes that do not match, alpha outside [0, 1], NaN / Inf, negative maxima.
      TypeError: non-float arrays or a non-numeric alpha.

    Example:
      >>> s = smooth_scales(jnp.array([100.0, 1.0]), jnp.array([[1.0], [1.0]]))
      >>> s.tolist()
      [10.0, 1.0]
    """
    w = hs.check_float_array(w, "w", (2,))
    hs.check_finite(w, "w")
    act_absmax = hs.check_float_array(act_absmax, "act_absmax", (1,))
    if act_absmax.shape != (w.shape[0],):
        raise ValueError(
            f"act_absmax must have shape ({w.shape[0]},) for a kernel w of shape {w.shape}, "
            f"got {act_absmax.shape}."
        )
    hs.check_finite(act_absmax, "act_absmax")
    if not isinstance(act_absmax, jax.core.Tracer) and bool(jnp.any(act_absmax < 0)):
        raise ValueError("act_absmax must be >= 0 (max absolute activations).")
    return _smooth_scales(act_absmax, w, _check_alpha(alpha))


@functools.partial(jax.jit, static_argnames=("activations", "bits"))
def _w8a8(x, w, scales, *, activations, bits):
    compute = jnp.result_type(x.dtype, w.dtype, jnp.float32)
    x = x.astype(compute)
    w = w.astype(compute)
    if scales is not None:
        x = x / scales.astype(compute)
        w = w * scales.astype(compute)[:, None]
    act_axis = tuple(range(x.ndim - 1)) if activations == "per_token" else None
    xq = fake_quant(x, bits, symmetric=True, axis=act_axis)
    wq = fake_quant(w, bits, symmetric=True, axis=-1)
    return jnp.matmul(xq, wq, precision=hs.HIGHEST)


def w8a8_matmul(
    x: jax.Array,
    w: jax.Array,
    *,
    scales: jax.Array | None = None,
    activations: str = "per_token",
    bits: int = 8,
) -> jax.Array:
    """Simulated int8 Dense layer: ``Q(x / s) @ Q(s[:, None] * w)`` in float (fake quant).

    Activations get a symmetric grid with one scale per token (row) or per tensor; weights
    a symmetric grid with one scale per output channel. Differentiable (straight-through).

    Args:
      x: ``(..., in)`` float inputs; every leading index is a token.
      w: ``(in, out)`` float kernel.
      scales: optional ``(in,)`` smoothing scales (:func:`smooth_scales`); None = no
        smoothing.
      activations: ``"per_token"`` or ``"per_tensor"``.
      bits: bit width of both grids, in [2, 16] (8 for W8A8).

    Returns:
      ``(..., out)`` float32 (or wider) outputs.

    Raises:
      ValueError: shapes that do not match, an unknown ``activations``, bad ``bits``,
        non-positive scales.
      TypeError: non-float arrays.

    Example:
      >>> x = jnp.array([[1.0, 50.0], [0.5, -40.0]])
      >>> w = jnp.array([[0.3], [0.01]])
      >>> y = w8a8_matmul(x, w, scales=smooth_scales(jnp.abs(x).max(0), w))
      >>> bool(jnp.allclose(y, x @ w, rtol=1e-2))
      True
    """
    w = hs.check_float_array(w, "w", (2,))
    x = hs.check_float_array(x, "x", tuple(range(1, 8)))
    if x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"x must have shape (..., {w.shape[0]}) for a kernel w of shape {w.shape}, "
            f"got {x.shape}."
        )
    hs.check_finite(x, "x")
    hs.check_finite(w, "w")
    activations = check_one_of("activations", activations, ACTIVATION_GRANULARITIES)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in [2, 16], got {bits!r}.")
    if scales is not None:
        scales = _check_scales(scales, w.shape[0], "scales")
    return _w8a8(x, w, scales, activations=activations, bits=bits)
