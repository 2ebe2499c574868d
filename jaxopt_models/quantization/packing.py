"""Bit packing: ``bits``-bit integers stored in ``bits`` bits, and real storage sizes.

:func:`pack` turns a :class:`QTensor` (int8 / int16 values) into a :class:`PackedQTensor`
whose values are a flat little-endian bit stream in ``uint8``: 4-, 2- and 1-bit tensors take
4, 2 and 1 bits per value (plus at most 7 bits of padding); any width in [1, 16] packs to
``ceil(n * bits / 8)`` bytes. :func:`size_bytes` reports what a pytree really stores.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models.quantization._validation import check_bits
from jaxopt_models.quantization.affine import integer_range, storage_dtype
from jaxopt_models.quantization.qtensor import QTensor
from jaxopt_models.typing import PyTree


def packed_num_bytes(count: int, bits: int) -> int:
    """Bytes needed for ``count`` values of ``bits`` bits: ``ceil(count * bits / 8)``."""
    return math.ceil(int(count) * check_bits(bits) / 8)


def pack_bits(codes: jax.Array, bits: int) -> jax.Array:
    """Packs unsigned codes in ``[0, 2**bits)`` into a little-endian bit stream of uint8.

    Args:
      codes: integer array of any shape (flattened in C order), values in ``[0, 2**bits)``;
        higher bits are dropped.
      bits: bits per code in [1, 16].

    Returns:
      1-D uint8 array of ``ceil(codes.size * bits / 8)`` bytes; code ``i`` occupies stream
      bits ``[i * bits, (i + 1) * bits)``, least significant bit first.

    Example:
      >>> pack_bits(jnp.array([1, 2, 3, 0]), 2).tolist()  # 0b00_11_10_01
      [57]
    """
    return _pack_bits(jnp.asarray(codes), check_bits(bits))


@functools.partial(jax.jit, static_argnums=1)
def _pack_bits(codes: jax.Array, bits: int) -> jax.Array:
    flat = jnp.ravel(codes).astype(jnp.uint32)
    n = flat.size
    if bits == 8:
        return flat.astype(jnp.uint8)
    if 8 % bits == 0:  # 1, 2, 4 bits: several whole codes per byte
        per = 8 // bits
        pad = (-n) % per
        flat = jnp.pad(flat & (2**bits - 1), (0, pad)).reshape(-1, per)
        shifts = jnp.arange(per, dtype=jnp.uint32) * bits
        return jnp.sum(flat << shifts, axis=1).astype(jnp.uint8)
    stream = (flat[:, None] >> jnp.arange(bits, dtype=jnp.uint32)) & 1
    stream = stream.reshape(-1)
    stream = jnp.pad(stream, (0, (-stream.size) % 8)).reshape(-1, 8)
    return jnp.sum(stream << jnp.arange(8, dtype=jnp.uint32), axis=1).astype(jnp.uint8)


def unpack_bits(packed: jax.Array, bits: int, count: int) -> jax.Array:
    """Inverse of :func:`pack_bits`: the first ``count`` codes as a 1-D uint32 array.

    Example:
      >>> unpack_bits(jnp.array([57], jnp.uint8), 2, 4).tolist()
      [1, 2, 3, 0]
    """
    bits = check_bits(bits)
    count = int(count)
    if packed.size != packed_num_bytes(count, bits):
        raise ValueError(
            f"packed holds {packed.size} bytes but {count} codes of {bits} bits need "
            f"{packed_num_bytes(count, bits)}."
        )
    return _unpack_bits(jnp.asarray(packed), bits, count)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _unpack_bits(packed: jax.Array, bits: int, count: int) -> jax.Array:
    p = packed.astype(jnp.uint32)
    if bits == 8:
        return p[:count]
    if 8 % bits == 0:
        per = 8 // bits
        shifts = jnp.arange(per, dtype=jnp.uint32) * bits
        return ((p[:, None] >> shifts) & (2**bits - 1)).reshape(-1)[:count]
    stream = ((p[:, None] >> jnp.arange(8, dtype=jnp.uint32)) & 1).reshape(-1)
    stream = stream[: count * bits].reshape(count, bits)
    return jnp.sum(stream << jnp.arange(bits, dtype=jnp.uint32), axis=1)


@jax.tree_util.register_pytree_node_class
class PackedQTensor:
    """A :class:`QTensor` whose integer values are bit-packed (``bits`` bits per value).

    Children: ``packed`` (1-D uint8), ``scale``, ``zero_point``. Static aux: ``bits``,
    ``shape``, ``axis``, ``group_size``, ``group_axis``, ``dtype``. Use :func:`unpack` to get
    the QTensor back (e.g. before :func:`dequantize` or integer inference).
    """

    __slots__ = (
        "packed",
        "scale",
        "zero_point",
        "bits",
        "shape",
        "axis",
        "group_size",
        "group_axis",
        "dtype",
    )

    def __init__(
        self,
        packed,
        scale,
        zero_point,
        bits,
        shape,
        axis=(),
        group_size=None,
        group_axis=None,
        dtype=jnp.float32,
    ):
        self.packed = packed
        self.scale = scale
        self.zero_point = zero_point
        self.bits = int(bits)
        self.shape = tuple(shape)
        self.axis = tuple(axis)
        self.group_size = group_size
        self.group_axis = group_axis
        self.dtype = jnp.dtype(dtype)

    def tree_flatten(self):
        aux = (self.bits, self.shape, self.axis, self.group_size, self.group_axis, self.dtype.name)
        return (self.packed, self.scale, self.zero_point), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    def __repr__(self) -> str:
        return (
            f"PackedQTensor(shape={self.shape}, bits={self.bits}, symmetric={self.symmetric}, "
            f"axis={self.axis}, group_size={self.group_size}, "
            f"packed_bytes={getattr(self.packed, 'size', None)})"
        )


def _codes(q: QTensor) -> jax.Array:
    """Stored integers -> unsigned codes in [0, 2**bits)."""
    v = q.values.astype(jnp.int32)
    if q.symmetric and q.bits == 1:
        return (v > 0).astype(jnp.uint32)
    return (v - q.qmin).astype(jnp.uint32)


def pack(q: QTensor) -> PackedQTensor:
    """Bit-packs a QTensor's values so each takes ``q.bits`` bits.

    Args:
      q: a QTensor (any layout, 1..16 bits).

    Returns:
      A :class:`PackedQTensor` sharing ``q``'s scale and zero point.

    Raises:
      TypeError: ``q`` is not a QTensor.

    Example:
      >>> q = quantize(jax.random.normal(jax.random.key(0), (64, 32)), bits=4)
      >>> pack(q).packed.nbytes, q.values.nbytes
      (1024, 2048)
    """
    if not isinstance(q, QTensor):
        raise TypeError(f"pack expects a QTensor, got {type(q).__name__}.")
    packed = pack_bits(_codes(q), q.bits)
    return PackedQTensor(
        packed, q.scale, q.zero_point, q.bits, q.shape, q.axis, q.group_size, q.group_axis, q.dtype
    )


def unpack(p: PackedQTensor) -> QTensor:
    """Restores the :class:`QTensor` that :func:`pack` packed (bit-exact).

    Raises:
      TypeError: ``p`` is not a PackedQTensor.

    Example:
      >>> q = quantize(jax.random.normal(jax.random.key(0), (5, 3)), bits=3)
      >>> bool(jnp.all(unpack(pack(q)).values == q.values))
      True
    """
    if not isinstance(p, PackedQTensor):
        raise TypeError(f"unpack expects a PackedQTensor, got {type(p).__name__}.")
    count = int(np.prod(p.shape, dtype=np.int64))
    codes = unpack_bits(p.packed, p.bits, count).astype(jnp.int32)
    if p.symmetric and p.bits == 1:
        values = 2 * codes - 1
    else:
        values = codes + integer_range(p.bits, p.symmetric)[0]
    values = values.astype(storage_dtype(p.bits)).reshape(p.shape)
    return QTensor(
        values, p.scale, p.zero_point, p.bits, p.axis, p.group_size, p.group_axis, p.dtype
    )


def _is_q(x: Any) -> bool:
    return isinstance(x, (QTensor, PackedQTensor))


def pack_params(qparams: PyTree) -> PyTree:
    """Packs every QTensor leaf of a pytree (see :func:`pack`); other leaves are unchanged."""
    return jax.tree.map(lambda x: pack(x) if isinstance(x, QTensor) else x, qparams, is_leaf=_is_q)


def unpack_params(packed: PyTree) -> PyTree:
    """Unpacks every PackedQTensor leaf of a pytree (see :func:`unpack`)."""
    return jax.tree.map(
        lambda x: unpack(x) if isinstance(x, PackedQTensor) else x, packed, is_leaf=_is_q
    )


def _leaf_bytes(x: Any) -> int:
    if x is None:
        return 0
    if hasattr(x, "dtype") and hasattr(x, "size"):
        return int(x.size) * jnp.dtype(x.dtype).itemsize
    if isinstance(x, (bool, int, float, complex, np.generic)):
        return np.asarray(x).nbytes
    return 0


def size_bytes(tree: PyTree) -> int:
    """Bytes a pytree really stores: array data, with quantized leaves at their true width.

    Arrays count ``size * itemsize``; a :class:`QTensor` counts its stored integers (int8 /
    int16, so a 4-bit QTensor still takes a byte per value) plus scales and zero points; a
    :class:`PackedQTensor` counts its packed bytes plus scales and zero points. Python
    scalars count as NumPy scalars; other leaves (strings, None) count 0.

    Example:
      >>> params = {"w": jnp.zeros((256, 128)), "b": jnp.zeros(128)}
      >>> size_bytes(params), size_bytes(pack_params(quantize_params(params, bits=4)))
      (131584, 16900)
    """
    # QTensor / PackedQTensor are pytrees, so their children are simply counted as arrays.
    return sum(_leaf_bytes(leaf) for leaf in jax.tree.leaves(tree))
