"""``fake_quant``: quantize -> dequantize in float with a straight-through gradient (QAT)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_models.quantization.affine import (
    grid_to_float,
    quantize_to_grid,
    representable_range,
)
from jaxopt_models.quantization.quantize import ClipRange, Settings, grid_parameters, validate


@jax.custom_jvp
def straight_through(x: jax.Array, x_hat: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Returns ``x_hat``; its derivative w.r.t. ``x`` is 1 where ``lo <= x <= hi``, else 0.

    ``x_hat``, ``lo`` and ``hi`` get no gradient. A ``custom_jvp`` (not the
    ``x + stop_gradient(x_hat - x)`` trick) so the forward value is exactly ``x_hat`` and both
    forward- and reverse-mode differentiation work.

    Example:
      >>> jax.grad(lambda x: straight_through(x, jnp.round(x), -1.0, 1.0))(0.3)
      Array(1., dtype=float32, weak_type=True)
    """
    del x, lo, hi
    return x_hat


@straight_through.defjvp
def _straight_through_jvp(primals, tangents):
    x, x_hat, lo, hi = primals
    tx = tangents[0]
    inside = (x >= lo) & (x <= hi)
    out = straight_through(x, x_hat, lo, hi)
    return out, jnp.where(inside, tx, jnp.zeros_like(tx))


def fake_quant(
    x: jax.Array,
    bits: int = 8,
    *,
    symmetric: bool = True,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | None = None,
    calibration: Any = "minmax",
    power_of_two: bool = False,
    clip_range: ClipRange | None = None,
) -> jax.Array:
    """Rounds ``x`` to the values ``dequantize(quantize(x, ...))`` gives, differentiably.

    The forward value equals ``dequantize(quantize(x, bits, ...))`` (same arguments, see
    :func:`quantize`); the gradient is the straight-through estimator: 1 for elements inside
    the grid's representable range, 0 for clipped ones. The range (from ``calibration`` or
    ``clip_range``) gets no gradient. Use it inside a jitted loss for quantization-aware
    training.

    Args:
      x: floating array.
      bits, symmetric, axis, group_size, group_axis, calibration, power_of_two, clip_range:
        as in :func:`quantize`.

    Returns:
      Array of ``x``'s shape and dtype.

    Example:
      >>> x = jnp.array([-2.0, 0.3, 0.5])
      >>> g = jax.grad(lambda x: fake_quant(x, 8, clip_range=(-1.0, 1.0)).sum())(x)
      >>> g.tolist()  # -2.0 is clipped
      [0.0, 1.0, 1.0]
    """
    x, clip, settings = validate(
        x, bits, symmetric, axis, group_size, group_axis, calibration, power_of_two, clip_range
    )
    return _fake_quant(x, clip, settings)


@functools.partial(jax.jit, static_argnums=2)
def _fake_quant(x: jax.Array, clip: Any, settings: Settings) -> jax.Array:
    xg, scale, zero_point = grid_parameters(x, clip, settings)
    q = quantize_to_grid(jax.lax.stop_gradient(xg), scale, zero_point, settings.bits)
    x_hat = grid_to_float(q, scale, zero_point, xg.dtype)
    lo, hi = representable_range(scale, zero_point, settings.bits)
    out = straight_through(xg, x_hat, lo.astype(xg.dtype), hi.astype(xg.dtype))
    return out.reshape(settings.layout.shape).astype(x.dtype)
