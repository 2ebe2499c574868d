"""``QTensor``: an integer tensor with its scale and zero point, registered as a pytree."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_models.quantization.affine import grid_to_float, integer_range


@jax.tree_util.register_pytree_node_class
class QTensor:
    """A quantized tensor: ``x ~ (values - zero_point) * scale`` (per block, see below).

    Children (arrays, traced under ``jit``): ``values``, ``scale``, ``zero_point``.
    Static aux data: ``bits``, ``axis``, ``group_size``, ``group_axis``, ``dtype``.

    Attributes:
      values: integers with the original shape, in the smallest signed dtype that fits
        ``bits`` (``int8`` for 1..8 bits, ``int16`` for 9..16). Asymmetric grids are stored
        signed too, offset by ``-2**(bits-1)`` (see ``affine``).
      scale: float scales in the *grouped* shape (the original shape with the grouped axis
        split into ``(n // group_size, group_size)`` when ``group_size`` is set), with 1 on
        every axis that shares a scale; e.g. ``(1, N)`` for a per-output-channel ``(K, N)``
        kernel and ``(1, 1)`` per-tensor.
      zero_point: None for symmetric grids, else integers shaped like ``scale``.
      bits: bit width in [1, 16].
      axis: the per-channel axes (sorted, non-negative); ``()`` means per-tensor.
      group_size: block length along ``group_axis`` or None.
      group_axis: the axis split into groups or None.
      dtype: the float dtype :func:`dequantize` returns (the input's dtype).

    Example:
      >>> q = quantize(jnp.array([[0.5, -1.0], [0.25, 2.0]]), bits=8, axis=-1)
      >>> q.values.dtype, q.scale.shape, q.bits, q.axis
      (dtype('int8'), (1, 2), 8, (1,))
    """

    __slots__ = (
        "values",
        "scale",
        "zero_point",
        "bits",
        "axis",
        "group_size",
        "group_axis",
        "dtype",
    )

    def __init__(
        self,
        values: jax.Array,
        scale: jax.Array,
        zero_point: jax.Array | None,
        bits: int,
        axis: tuple[int, ...] = (),
        group_size: int | None = None,
        group_axis: int | None = None,
        dtype: Any = jnp.float32,
    ):
        self.values = values
        self.scale = scale
        self.zero_point = zero_point
        self.bits = int(bits)
        self.axis = tuple(axis)
        self.group_size = group_size
        self.group_axis = group_axis
        self.dtype = jnp.dtype(dtype)

    # -- pytree -----------------------------------------------------------------------------
    def tree_flatten(self):
        children = (self.values, self.scale, self.zero_point)
        aux = (self.bits, self.axis, self.group_size, self.group_axis, self.dtype.name)
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        values, scale, zero_point = children
        bits, axis, group_size, group_axis, dtype = aux
        return cls(values, scale, zero_point, bits, axis, group_size, group_axis, dtype)

    # -- derived properties -----------------------------------------------------------------
    @property
    def symmetric(self) -> bool:
        """True for a symmetric grid (no zero point)."""
        return self.zero_point is None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the represented tensor."""
        return tuple(self.values.shape)

    @property
    def ndim(self) -> int:
        return len(self.values.shape)

    @property
    def qmin(self) -> int:
        return integer_range(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return integer_range(self.bits, self.symmetric)[1]

    @property
    def grouped_shape(self) -> tuple[int, ...]:
        """``shape`` with ``group_axis`` split into ``(n // group_size, group_size)``."""
        shape = self.shape
        if self.group_size is None:
            return shape
        g = self.group_axis
        return shape[:g] + (shape[g] // self.group_size, self.group_size) + shape[g + 1 :]

    def __repr__(self) -> str:
        layout = (
            f"axis={self.axis}"
            if self.group_size is None
            else f"axis={self.axis}, group_size={self.group_size}, group_axis={self.group_axis}"
        )
        return (
            f"QTensor(shape={self.shape}, bits={self.bits}, symmetric={self.symmetric}, "
            f"{layout}, values_dtype={getattr(self.values, 'dtype', None)}, dtype={self.dtype})"
        )


def dequantize(q: QTensor) -> jax.Array:
    """Returns the float tensor a :class:`QTensor` represents, ``(values - zero_point) * scale``.

    Args:
      q: a QTensor (from :func:`quantize`, :func:`binarize`, :func:`ternarize`, ...).

    Returns:
      Array of ``q.shape`` in ``q.dtype`` (the dtype that was quantized).

    Raises:
      TypeError: ``q`` is not a QTensor.

    Example:
      >>> x = jnp.array([0.1, -0.7, 0.3])
      >>> jnp.abs(dequantize(quantize(x, bits=8)) - x).max() <= 0.7 / 127 / 2
      Array(True, dtype=bool)
    """
    if not isinstance(q, QTensor):
        raise TypeError(
            f"dequantize expects a QTensor, got {type(q).__name__}; quantize the array first "
            "(quantize(x, bits=...)), or unpack a PackedQTensor with unpack(...)."
        )
    return _dequantize(q.values, q.scale, q.zero_point, q.grouped_shape, q.dtype.name)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _dequantize(values, scale, zero_point, grouped_shape, dtype):
    compute = jnp.result_type(scale.dtype, jnp.float32)
    x = grid_to_float(values.reshape(grouped_shape), scale, zero_point, compute)
    return x.reshape(values.shape).astype(dtype)
