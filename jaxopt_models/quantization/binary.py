"""Binary and ternary weights: ``binarize`` (sign x mean|w|) and ``ternarize`` (TWN).

Both return a :class:`QTensor` on a symmetric grid: 1-bit values ``{-1, +1}`` or 2-bit values
``{-1, 0, +1}``, with a float scale per block (per-tensor, per-channel ``axis`` or
per-group, as in :func:`quantize`). ``fake_binarize`` / ``fake_ternarize`` are the QAT forms
with an identity straight-through gradient.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_models.quantization._layout import Layout, make_layout
from jaxopt_models.quantization._validation import check_finite, check_float_array
from jaxopt_models.quantization.fake_quant import straight_through
from jaxopt_models.quantization.qtensor import QTensor


def _prepare(x: Any, axis: Any, group_size: Any, group_axis: Any) -> tuple[jax.Array, Layout]:
    x = check_float_array(x, "x")
    check_finite(x, "x")
    return x, make_layout(x.shape, axis, group_size, group_axis)


def _grouped(x: jax.Array, layout: Layout) -> jax.Array:
    compute = jnp.result_type(x.dtype, jnp.float32)
    return x.astype(compute).reshape(layout.grouped_shape)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _compute(x: jax.Array, layout: Layout, kind: str, threshold: float):
    """(values in the storage shape, scale) for kind 'binary' / 'ternary'."""
    xg = _grouped(x, layout)
    if kind == "binary":
        v, scale = _binary_parts(xg, layout)
    else:
        v, scale = _ternary_parts(xg, layout, threshold)
    return v.astype(jnp.int8).reshape(layout.shape), scale


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _fake(x: jax.Array, layout: Layout, kind: str, threshold: float) -> jax.Array:
    xg = _grouped(x, layout)
    if kind == "binary":
        v, scale = _binary_parts(jax.lax.stop_gradient(xg), layout)
    else:
        v, scale = _ternary_parts(jax.lax.stop_gradient(xg), layout, threshold)
    out = _identity_ste(xg, v * scale)
    return out.reshape(layout.shape).astype(x.dtype)


def _binary_parts(xg: jax.Array, layout: Layout) -> tuple[jax.Array, jax.Array]:
    axes = layout.reduce_axes
    scale = jnp.mean(jnp.abs(xg), axis=axes, keepdims=True)
    scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    return jnp.where(xg >= 0, 1.0, -1.0).astype(xg.dtype), jax.lax.stop_gradient(scale)


def _ternary_parts(xg: jax.Array, layout: Layout, threshold: float) -> tuple[jax.Array, jax.Array]:
    axes = layout.reduce_axes
    a = jnp.abs(xg)
    delta = threshold * jnp.mean(a, axis=axes, keepdims=True)
    keep = a > delta
    count = jnp.sum(keep, axis=axes, keepdims=True)
    scale = jnp.sum(jnp.where(keep, a, 0.0), axis=axes, keepdims=True) / jnp.maximum(count, 1)
    scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    t = jnp.where(keep, jnp.sign(xg), 0.0).astype(xg.dtype)
    return t, jax.lax.stop_gradient(scale)


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float in [0, 1), got {threshold!r}.")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}.")
    return float(threshold)


def binarize(
    x: jax.Array,
    *,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | None = None,
) -> QTensor:
    """Binarizes ``x`` to ``sign(x) * mean|x|`` per block (XNOR-Net / BWN weights).

    ``mean|x|`` is the scale minimising ``||x - s * sign(x)||^2``. ``sign(0) = +1``.

    Args:
      x: floating array (finite).
      axis, group_size, group_axis: block layout as in :func:`quantize` (``axis=-1`` gives
        one scale per output channel of a Dense or HWIO Conv kernel).

    Returns:
      A 1-bit symmetric :class:`QTensor`: ``values`` in ``{-1, +1}`` (int8), ``scale`` the
      block's mean absolute value.

    Example:
      >>> q = binarize(jnp.array([[0.5, -1.0], [-1.5, 2.0]]), axis=-1)
      >>> q.values.tolist(), q.scale.tolist()
      ([[1, -1], [-1, 1]], [[1.0, 1.5]])
    """
    x, layout = _prepare(x, axis, group_size, group_axis)
    values, scale = _compute(x, layout, "binary", 0.0)
    return QTensor(
        values, scale, None, 1, layout.axis, layout.group_size, layout.group_axis, x.dtype
    )


def ternarize(
    x: jax.Array,
    *,
    threshold: float = 0.7,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | None = None,
) -> QTensor:
    """Ternarizes ``x`` to ``{-s, 0, +s}`` per block (Ternary Weight Networks, Li et al. 2016).

    Elements with ``|x| <= threshold * mean|x|`` become 0; the rest keep their sign, and the
    scale is the mean ``|x|`` of the kept elements.

    Args:
      x: floating array (finite).
      threshold: fraction of ``mean|x|`` below which elements are zeroed, in [0, 1)
        (0.7 is TWN's approximation of the optimum for Gaussian weights).
      axis, group_size, group_axis: block layout as in :func:`quantize`.

    Returns:
      A 2-bit symmetric :class:`QTensor` with ``values`` in ``{-1, 0, +1}`` (int8).

    Example:
      >>> q = ternarize(jnp.array([0.05, -1.0, 1.2, 0.9]))
      >>> q.values.tolist(), round(float(q.scale.squeeze()), 4)
      ([0, -1, 1, 1], 1.0333)
    """
    threshold = _check_threshold(threshold)
    x, layout = _prepare(x, axis, group_size, group_axis)
    values, scale = _compute(x, layout, "ternary", threshold)
    return QTensor(
        values, scale, None, 2, layout.axis, layout.group_size, layout.group_axis, x.dtype
    )


def _identity_ste(xg: jax.Array, x_hat: jax.Array) -> jax.Array:
    inf = jnp.asarray(jnp.inf, xg.dtype)
    return straight_through(xg, x_hat, -inf, inf)


def fake_binarize(
    x: jax.Array,
    *,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | None = None,
) -> jax.Array:
    """``dequantize(binarize(x, ...))`` with an identity straight-through gradient (QAT).

    The float latent weights receive the gradient unchanged (BinaryConnect); the scale gets
    none. Usable inside ``jit``.

    Example:
      >>> x = jnp.array([0.5, -1.5])
      >>> fake_binarize(x).tolist(), jax.grad(lambda x: fake_binarize(x).sum())(x).tolist()
      ([1.0, -1.0], [1.0, 1.0])
    """
    x, layout = _prepare(x, axis, group_size, group_axis)
    return _fake(x, layout, "binary", 0.0)


def fake_ternarize(
    x: jax.Array,
    *,
    threshold: float = 0.7,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | None = None,
) -> jax.Array:
    """``dequantize(ternarize(x, ...))`` with an identity straight-through gradient (QAT).

    Example:
      >>> [round(v, 4) for v in fake_ternarize(jnp.array([0.05, -1.0, 1.2, 0.9])).tolist()]
      [0.0, -1.0333, 1.0333, 1.0333]
    """
    threshold = _check_threshold(threshold)
    x, layout = _prepare(x, axis, group_size, group_axis)
    return _fake(x, layout, "ternary", threshold)
