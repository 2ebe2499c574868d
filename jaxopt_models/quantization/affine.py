"""The affine integer grid: integer ranges, storage dtypes, scales and zero points.

A ``bits``-bit grid maps a float ``x`` to an integer ``q`` and back as
``x ~ (q - zero_point) * scale``:

- symmetric (``zero_point`` is None): ``q = clip(round(x / scale), -qmax, qmax)`` with
  ``qmax = 2**(bits - 1) - 1`` and ``scale = max|x| / qmax`` (a "restricted" range, so the grid
  is symmetric around zero). ``bits=1`` is the sign grid ``q in {-1, +1}``, ``x ~ q * scale``.
- asymmetric: ``q = clip(round(x / scale) + zero_point, -2**(bits-1), 2**(bits-1) - 1)`` with
  ``scale = (hi - lo) / (2**bits - 1)``. The range is first widened to contain zero
  (``lo <= 0 <= hi``), as TFLite and PyTorch do, so zero (padding, ReLU outputs, pruned
  weights) is represented exactly and the integer zero point fits the storage dtype. Values
  are stored *signed* (``q`` offset by ``-2**(bits-1)``), which keeps 8-bit tensors ``int8``:
  XLA's fast integer matmul wants int8 x int8 operands.

All functions here are pure ``jnp`` and work under ``jit``; ``bits`` / ``symmetric`` are
static Python values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models.quantization._validation import check_bits


def integer_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The smallest and largest stored integer of a ``bits``-bit grid.

    Args:
      bits: bit width in [1, 16].
      symmetric: symmetric (restricted, zero-centred) or asymmetric grid.

    Returns:
      ``(qmin, qmax)``: ``(-(2**(b-1) - 1), 2**(b-1) - 1)`` when symmetric (``(-1, 1)`` for
      ``b = 1``, where only -1 and +1 occur), ``(-2**(b-1), 2**(b-1) - 1)`` otherwise.

    Example:
      >>> integer_range(8, True), integer_range(8, False), integer_range(4, True)
      ((-127, 127), (-128, 127), (-7, 7))
    """
    bits = check_bits(bits)
    if symmetric:
        qmax = max(2 ** (bits - 1) - 1, 1)
        return -qmax, qmax
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def storage_dtype(bits: int) -> jnp.dtype:
    """The smallest signed integer dtype that holds a ``bits``-bit grid: int8 or int16.

    Example:
      >>> storage_dtype(4), storage_dtype(12)
      (dtype('int8'), dtype('int16'))
    """
    bits = check_bits(bits)
    return jnp.dtype(jnp.int8) if bits <= 8 else jnp.dtype(jnp.int16)


def scale_and_zero_point(
    lo: jax.Array,
    hi: jax.Array,
    bits: int,
    symmetric: bool,
    power_of_two: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """Computes the scale (and zero point) of the grid that covers ``[lo, hi]``.

    Args:
      lo: range minimum, any shape (e.g. one per channel), floating.
      hi: range maximum, same shape as ``lo``.
      bits: bit width in [1, 16].
      symmetric: symmetric grid (``scale = max(|lo|, |hi|) / qmax``, no zero point) or
        asymmetric grid over ``[min(lo, 0), max(hi, 0)]``.
      power_of_two: round the scale *up* to a power of two, ``scale = 2**-p``, giving the
        fixed-point form ``q = round(x * 2**p)`` (the covered range only grows).

    Returns:
      ``(scale, zero_point)``: ``scale`` is float with the shape of ``lo`` (1 where the range
      is all zero); ``zero_point`` is None when symmetric, else an integer array in the
      storage dtype of ``bits`` with the shape of ``lo``.

    Example:
      >>> s, zp = scale_and_zero_point(jnp.array(-1.0), jnp.array(3.0), 8, symmetric=False)
      >>> float(s), int(zp)  # 4 / 255 and -128 + round(1 / s) = -64
      (0.01568627543747425, -64)
    """
    bits = check_bits(bits)
    qmin, qmax = integer_range(bits, symmetric)
    lo = jnp.asarray(lo)
    hi = jnp.asarray(hi)
    dtype = jnp.result_type(lo.dtype, hi.dtype, jnp.float32)
    lo = lo.astype(dtype)
    hi = hi.astype(dtype)
    if symmetric:
        amax = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
        scale = amax if bits == 1 else amax / qmax
    else:
        lo = jnp.minimum(lo, 0)
        hi = jnp.maximum(hi, 0)
        scale = (hi - lo) / (qmax - qmin)
    valid = scale > 0
    scale = jnp.where(valid, scale, jnp.ones_like(scale))
    if power_of_two:
        scale = jnp.exp2(jnp.ceil(jnp.log2(scale)))
    if symmetric:
        return scale, None
    if power_of_two:
        lo_steps = lo / scale
    else:
        # lo / scale without the scale's own rounding: lo * (qmax - qmin) / (hi - lo). Dividing
        # by the rounded float32 scale can move an exact tie (e.g. -7.5 -> -7.4999995) and
        # shift the zero point by one step.
        span = jnp.where(valid, hi - lo, jnp.ones_like(hi))
        lo_steps = jnp.where(valid, lo * (qmax - qmin) / span, lo)
    zero_point = jnp.clip(qmin - jnp.round(lo_steps), qmin, qmax)
    return scale, zero_point.astype(storage_dtype(bits))


def quantize_to_grid(
    x: jax.Array,
    scale: jax.Array,
    zero_point: jax.Array | None,
    bits: int,
) -> jax.Array:
    """Rounds ``x`` onto the grid and clips to the integer range; returns floats holding ints.

    Args:
      x: floating array.
      scale: broadcastable to ``x``.
      zero_point: None (symmetric grid) or integer array broadcastable to ``x``.
      bits: bit width in [1, 16].

    Returns:
      Array of ``x``'s shape and float dtype whose values are integers in
      :func:`integer_range` (round half to even). Cast with ``astype(storage_dtype(bits))``.

    Example:
      >>> quantize_to_grid(jnp.array([0.26, -3.0]), jnp.array(0.5), None, 3)
      Array([ 1., -3.], dtype=float32)
    """
    symmetric = zero_point is None
    qmin, qmax = integer_range(bits, symmetric)
    if symmetric and bits == 1:
        return jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)
    q = jnp.round(x / scale.astype(x.dtype))
    if not symmetric:
        q = q + zero_point.astype(x.dtype)
    return jnp.clip(q, qmin, qmax)


def grid_to_float(
    q: jax.Array,
    scale: jax.Array,
    zero_point: jax.Array | None,
    dtype: jnp.dtype | None = None,
) -> jax.Array:
    """Maps integers back to floats: ``(q - zero_point) * scale``.

    Example:
      >>> grid_to_float(jnp.array([1, -3], jnp.int8), jnp.array(0.5), None)
      Array([ 0.5, -1.5], dtype=float32)
    """
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(scale.dtype, jnp.float32)
    qf = q.astype(dtype)
    if zero_point is not None:
        qf = qf - zero_point.astype(dtype)
    return qf * scale.astype(dtype)


def representable_range(
    scale: jax.Array, zero_point: jax.Array | None, bits: int
) -> tuple[jax.Array, jax.Array]:
    """The float interval ``[lo, hi]`` the grid covers (values outside are clipped).

    Example:
      >>> [float(v) for v in representable_range(jnp.array(0.5), None, 3)]
      [-1.5, 1.5]
    """
    symmetric = zero_point is None
    qmin, qmax = integer_range(bits, symmetric)
    if symmetric:
        return qmin * scale, qmax * scale
    zp = zero_point.astype(scale.dtype)
    return (qmin - zp) * scale, (qmax - zp) * scale


def levels(bits: int, symmetric: bool) -> np.ndarray:
    """All integers a grid can store (``{-1, +1}`` for the 1-bit symmetric grid)."""
    qmin, qmax = integer_range(bits, symmetric)
    if symmetric and bits == 1:
        return np.array([-1, 1])
    return np.arange(qmin, qmax + 1)
