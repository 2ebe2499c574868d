"""Fixed-width bit packing of unsigned integer streams into bytes (MSB first).

The on-disk packer of the compressed file format (NumPy in, ``bytes`` out, widths 0..32,
most significant bit first). Not to be confused with ``quantization.pack_bits``, which packs
a JAX array of 1..16-bit codes into a ``uint8`` array, least significant bit first, for
in-memory ``PackedQTensor`` storage; the two bit orders are part of their formats.
"""

import numpy as np

MAX_WIDTH = 32


def bit_width(max_value: int) -> int:
    """Number of bits needed to store every integer in ``[0, max_value]``.

    Args:
      max_value: largest value to represent, ``>= 0``.

    Returns:
      The width in bits (``0`` when ``max_value == 0``).

    Example:
      >>> bit_width(31)
      5
    """
    max_value = int(max_value)
    if max_value < 0:
        raise ValueError(f"max_value must be >= 0, got {max_value}")
    return max_value.bit_length()


def pack_stream(values: np.ndarray, width: int) -> bytes:
    """Packs unsigned integers into ``ceil(len(values) * width / 8)`` bytes, MSB first.

    Args:
      values: 1-D array of non-negative integers, each ``< 2**width``.
      width: bits per value, ``0..32`` (``0`` stores nothing: every value must be 0).

    Returns:
      The packed bytes, the last byte zero-padded.

    Example:
      >>> pack_stream(np.array([1, 2, 3]), 2)
      b'l'
    """
    if not isinstance(width, int | np.integer) or not 0 <= width <= MAX_WIDTH:
        raise ValueError(f"width must be an int in 0..{MAX_WIDTH}, got {width!r}")
    values = np.asarray(values).reshape(-1)
    if values.size and (values.min() < 0 or int(values.max()) >= (1 << width)):
        raise ValueError(
            f"values must lie in [0, 2**width) = [0, {1 << width}) for width={width}, "
            f"got range [{values.min()}, {values.max()}]"
        )
    if width == 0 or values.size == 0:
        return b""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bits = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
    return np.packbits(bits.astype(np.uint8).reshape(-1)).tobytes()


def unpack_stream(
    data: bytes | np.ndarray, width: int, count: int, *, strict: bool = False
) -> np.ndarray:
    """Inverse of :func:`pack_stream`.

    Args:
      data: packed bytes, at least ``ceil(count * width / 8)`` of them.
      width: bits per value, ``0..32``.
      count: number of values to read.
      strict: also require what :func:`pack_stream` guarantees: the padding bits after
        the last value (the low bits of the last byte) are zero.

    Returns:
      ``uint32`` array of shape ``(count,)``.

    Raises:
      ValueError: a bad ``width`` / ``count``, too few bytes, or (``strict``) nonzero
        padding bits.

    Example:
      >>> unpack_stream(b'l', 2, 3)
      array([1, 2, 3], dtype=uint32)
    """
    if not isinstance(width, int | np.integer) or not 0 <= width <= MAX_WIDTH:
        raise ValueError(f"width must be an int in 0..{MAX_WIDTH}, got {width!r}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if width == 0 or count == 0:
        return np.zeros(count, np.uint32)
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    need = packed_size(count, width)
    if buf.size < need:
        raise ValueError(
            f"need {need} bytes to unpack {count} values of {width} bits, got {buf.size}"
        )
    pad = 8 * need - count * width
    if strict and pad and int(buf[need - 1]) & ((1 << pad) - 1):
        raise ValueError(
            f"the {pad} padding bits after {count} values of {width} bits are not zero"
        )
    bits = np.unpackbits(buf[:need], count=count * width).reshape(count, width)
    weights = np.left_shift(np.uint64(1), np.arange(width - 1, -1, -1, dtype=np.uint64))
    return (bits.astype(np.uint64) @ weights).astype(np.uint32)


def packed_size(count: int, width: int) -> int:
    """Bytes taken by ``count`` values of ``width`` bits: ``ceil(count * width / 8)``."""
    return (count * width + 7) // 8
