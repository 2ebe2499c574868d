"""``quantize``: float tensor -> :class:`QTensor` (per-tensor, per-channel or per-group)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_models.quantization._layout import Layout, make_layout
from jaxopt_models.quantization._validation import (
    check_bits,
    check_bool,
    check_finite,
    check_float_array,
)
from jaxopt_models.quantization.affine import (
    quantize_to_grid,
    scale_and_zero_point,
    storage_dtype,
)
from jaxopt_models.quantization.calibration import get_calibration
from jaxopt_models.quantization.qtensor import QTensor

ClipRange = tuple[Any, Any]
"""``(lo, hi)``: floats or arrays broadcastable to the scale shape (see :func:`quantize`)."""


def _check_clip_range(clip_range: Any, layout: Layout, dtype) -> tuple[jax.Array, jax.Array]:
    if not isinstance(clip_range, (tuple, list)) or len(clip_range) != 2:
        raise TypeError(f"clip_range must be a (lo, hi) pair, got {clip_range!r}.")
    lo, hi = (jnp.asarray(v, dtype) for v in clip_range)
    shape = layout.scale_shape
    for name, v in (("lo", lo), ("hi", hi)):
        try:
            ok = jnp.broadcast_shapes(v.shape, shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"clip_range {name} of shape {v.shape} does not broadcast to the scale shape "
                f"{shape} of this layout (axis={layout.axis}, group_size={layout.group_size})."
            )
        check_finite(v, f"clip_range {name}")
    return jnp.broadcast_to(lo, shape), jnp.broadcast_to(hi, shape)


class Settings(NamedTuple):
    """The static (hashable) part of a quantize / fake_quant call."""

    layout: Layout
    bits: int
    symmetric: bool
    method: Any
    power_of_two: bool


def validate(
    x: Any,
    bits: Any,
    symmetric: Any,
    axis: Any,
    group_size: Any,
    group_axis: Any,
    calibration: Any,
    power_of_two: Any,
    clip_range: Any,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None, Settings]:
    """Eager checks shared by quantize / fake_quant; returns ``(x, clip, settings)``."""
    bits = check_bits(bits)
    symmetric = check_bool(symmetric, "symmetric")
    power_of_two = check_bool(power_of_two, "power_of_two")
    x = check_float_array(x, "x")
    check_finite(x, "x")
    layout = make_layout(x.shape, axis, group_size, group_axis)
    method = get_calibration(calibration) if clip_range is None else None
    compute = jnp.result_type(x.dtype, jnp.float32)
    clip = None if clip_range is None else _check_clip_range(clip_range, layout, compute)
    return x, clip, Settings(layout, bits, symmetric, method, power_of_two)


def grid_parameters(
    x: jax.Array, clip: tuple[jax.Array, jax.Array] | None, settings: Settings
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Traceable core: ``(xg, scale, zero_point)``, ``xg`` = ``x`` in the grouped shape.

    ``xg`` is in a float32-or-wider compute dtype; scale and zero point carry no gradient.
    """
    layout = settings.layout
    compute = jnp.result_type(x.dtype, jnp.float32)
    xg = x.astype(compute).reshape(layout.grouped_shape)
    if clip is None:
        lo, hi = settings.method(
            jax.lax.stop_gradient(xg),
            reduce_axes=layout.reduce_axes,
            bits=settings.bits,
            symmetric=settings.symmetric,
            power_of_two=settings.power_of_two,
        )
    else:
        lo, hi = clip
    lo, hi = jax.lax.stop_gradient(lo), jax.lax.stop_gradient(hi)
    scale, zero_point = scale_and_zero_point(
        lo, hi, settings.bits, settings.symmetric, settings.power_of_two
    )
    return xg, scale, zero_point


@functools.partial(jax.jit, static_argnums=2)
def _quantize(x, clip, settings: Settings):
    xg, scale, zero_point = grid_parameters(x, clip, settings)
    values = quantize_to_grid(xg, scale, zero_point, settings.bits)
    values = values.astype(storage_dtype(settings.bits)).reshape(settings.layout.shape)
    return values, scale, zero_point


def quantize(
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
) -> QTensor:
    """Quantizes a float array onto a ``bits``-bit integer grid.

    Symmetric: ``q = clip(round(x / s), -qmax, qmax)``, ``s = max|x| / (2**(bits-1) - 1)``
    (``bits=1``: ``q = sign(x)``, ``s = max|x|``). Asymmetric: ``s = (hi - lo) / (2**bits - 1)``
    over the range widened to contain zero, integer zero point, values stored signed (see
    ``affine``). Works under ``jit`` (all arguments but ``x`` / ``clip_range`` are static).

    Args:
      x: floating array, any shape; must be finite (checked when not traced).
      bits: bit width in [1, 16]; values are stored as int8 (<= 8 bits) or int16.
      symmetric: symmetric grid without zero point, or asymmetric with one.
      axis: None for one scale per tensor; an int or tuple of ints (negative allowed) for
        one scale per index along those axes (per-channel, e.g. ``axis=-1`` for the output
        channels of a ``(K, N)`` Dense or ``(H, W, I, O)`` Conv kernel).
      group_size: per-group quantization: blocks of ``group_size`` consecutive elements along
        ``group_axis`` get their own scale (combined with ``axis``); must divide that axis.
      group_axis: the axis split into groups; default the last axis not in ``axis`` (the
        input axis of a Dense / Conv kernel quantized with ``axis=-1``).
      calibration: how each block's range is chosen when ``clip_range`` is None:
        ``"minmax"``, ``"percentile"``, ``"mse"`` or a calibration object
        (``Percentile(99.9)``, ``MSE(...)``). Values outside the range are clipped.
      power_of_two: round scales up to powers of two (``q = round(x * 2**p)``).
      clip_range: a fixed ``(lo, hi)`` instead of calibrating (e.g. activation ranges from
        :func:`calibrate_range`); floats or arrays broadcastable to the scale shape.

    Returns:
      A :class:`QTensor` with ``|dequantize(q) - x| <= scale / 2`` inside the range.

    Raises:
      ValueError: bits outside [1, 16], axis out of range, group size not dividing the axis,
        NaN / Inf in ``x``, unknown calibration name.
      TypeError: non-float ``x`` or ill-typed arguments.

    Example:
      >>> w = jax.random.normal(jax.random.key(0), (784, 300))
      >>> q = quantize(w, bits=4, axis=-1, group_size=112)  # 7 groups per output channel
      >>> q.values.dtype, q.scale.shape
      (dtype('int8'), (7, 1, 300))
    """
    x, clip, settings = validate(
        x, bits, symmetric, axis, group_size, group_axis, calibration, power_of_two, clip_range
    )
    values, scale, zero_point = _quantize(x, clip, settings)
    layout = settings.layout
    return QTensor(
        values,
        scale,
        zero_point,
        settings.bits,
        layout.axis,
        layout.group_size,
        layout.group_axis,
        x.dtype,
    )
