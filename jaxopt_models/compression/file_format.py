"""A compact binary file format for compressed params (Deep Compression style).

Layout (all integers are unsigned LEB128 varints unless noted)::

    file    = MAGIC "JXCF" | version u8 | body length | body | CRC32 of all before (4 bytes BE)
    body    = record count | record*
    record  = path | kind u8 | shape | payload
    path    = components shared with the previous path | new count | (tag u8, key)*
              tag 0: dict key (length + UTF-8), 1: list index, 2: tuple index
    shape   = ndim | dim*

``kind`` bits 0-1 select the record type, bit 2 the sparse layout, bit 3 Fortran
(column-major) element order for the sparse layout, bit 4 (quantized records only) a
per-row multiplier. Records:

- float (type 0), dense: ``numel`` float32 (little-endian).
  Sparse: entry count | gap stream | entry count float32 values.
- weight-shared (type 1): code count | codebook float32 (only the codes in use). Dense:
  code stream of all weights. Sparse: default code | entry count | gap stream | code
  stream of the entries.
- quantized (type 2): values shape | scale (shape, float32) | with bit 4: multiplier
  (shape, float32) | zero point (shape, zigzag varints) | minimum value (zigzag) | dense:
  stream of ``values - min``; sparse: entry count | gap stream | stream of the entries'
  ``values - min``; elsewhere the value is the zero point. The weight is
  ``(values - zero_point) * scale`` (float32), times ``multiplier`` with bit 4: a kernel
  stored as a quantized matrix with a per-input multiplier (AWQ), as
  ``models.QuantizedKernel`` holds it. The values shape is the quantized tensor's
  *grouped* shape (a group-wise axis split in two), so one scale / zero point per group
  costs 4 bytes / one varint; the record's own shape may differ from it (a head
  projection's ``(E, H, D)`` kernel quantized as an ``(E, H * D)`` matrix). Bit 4 came
  after version 1 was first written: files without a multiplier are unchanged, and an
  older reader refuses one with a multiplier as an unknown record kind.

Sparse layouts store only the positions that differ from a default (0.0 for floats,
the most frequent code, the zero point) as relative indices: each gap is the number of
default positions skipped. As in Deep Compression, a gap larger than the chosen maximum
``2**b - 1`` is split by filler entries holding the default value; ``b`` and the element
order are chosen per record to minimise the size. A float ``-0.0`` counts as zero and
loads as ``+0.0`` (an equal value: products and sums, hence predictions, are unchanged).

A stream holds ``n`` non-negative integers (``n`` known from the context): a mode byte,
then either ``mode = w <= 32``: ``n`` values packed in ``w`` bits, or ``mode = 128``:
a canonical Huffman code (alphabet size, 4-bit code lengths) and the coded bits. Each
stream uses whichever is smaller (Huffman only when enabled).

Files are written atomically (temporary file and ``os.replace``) and checked on load:
bad magic, unknown version, truncation, trailing bytes or a CRC mismatch raise
:class:`FormatError` (a ``ValueError``) naming the file. The CRC32 catches accidental
damage (bit flips, truncation, a partial copy); it is no protection against deliberate
edits, since anyone can recompute it. So the reader also checks that the structure adds
up, and refuses before allocating anything a file the writer cannot have produced:

- varints minimal (as written) and below ``2**64``; record count no larger than the
  body can hold; paths of at most :data:`MAX_DEPTH` components, unique, in the
  writer's sorted order, none both a leaf and a container, sequence indices contiguous;
- at most 32 dimensions per shape, at most ``max_elements`` elements in the whole file
  (a sparse or constant tensor costs a few bytes, so the file size bounds nothing);
- streams: packed width at most 32 and exactly the width of the largest value (``0``
  for an empty stream), zero padding bits; Huffman only for a non-empty stream, with a
  complete canonical code (Kraft sum exactly 1, or one symbol of length 1), a table
  ending at a coded symbol, every coded symbol present and zero padding;
- sparse layouts: entry count at most ``numel``, gaps landing strictly increasing
  positions inside the tensor;
- weight-shared: every codebook entry used (the writer drops unused ones), codes in
  range, the sparse default the most frequent code;
- quantized: values shape with the record's element count, scale / multiplier / zero
  point shapes that broadcast to it, scales and multipliers finite and ``> 0``, zero
  points and ``minimum + value`` within int64, the stored minimum equal to the smallest
  value; the multiplier bit on another record type is an unknown kind.

What no check can catch: a change that yields another valid file (different float
values, codebook entries, scales or integers of the same structure) loads as those
weights. The record does not carry the quantization bit width, so values are checked
against int64 only, not against a ``b``-bit grid.
"""

import errno
import math
import os
import stat
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models.compression import huffman as _hf
from jaxopt_models.compression._tree import aligned, named_leaves
from jaxopt_models.compression.bitpack import bit_width, pack_stream, packed_size, unpack_stream
from jaxopt_models.compression.weight_sharing import is_shared
from jaxopt_models.fileio import atomic_write_bytes
from jaxopt_models.typing import PyTree

MAGIC = b"JXCF"
VERSION = 1
MAX_ELEMENTS = 1 << 28
"""Default cap on the elements one file may describe (1 GiB of float32 when loaded)."""
MAX_DEPTH = 64
"""Longest params path (nesting depth) the format stores."""

FLOAT, SHARED, QUANTIZED = 0, 1, 2
_SPARSE = 4
_ORDER_F = 8
_MULTIPLIER = 16
_HUFFMAN = 128
_TAG_DICT, _TAG_LIST, _TAG_TUPLE = 0, 1, 2


_MIN_RECORD_BYTES = 4  # path (2 varints) + kind + ndim
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class FormatError(ValueError):
    """Bytes that are not a well-formed compressed params file; the message names the file."""


# --------------------------------------------------------------------------- bytes


class _Writer:
    def __init__(self):
        self.buf = bytearray()

    def u8(self, v: int) -> None:
        self.buf.append(v)

    def varint(self, v: int) -> None:
        v = int(v)
        if v < 0:
            raise ValueError(f"varint must be >= 0, got {v}")
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                self.buf.append(b | 0x80)
            else:
                self.buf.append(b)
                return

    def zigzag(self, v: int) -> None:
        v = int(v)
        self.varint(2 * v if v >= 0 else -2 * v - 1)

    def raw(self, b: bytes) -> None:
        self.buf += b


class _Reader:
    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None):
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise FormatError(
                f"needs {n} bytes at offset {self.pos}, only {self.end - self.pos} left"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def remaining(self) -> int:
        return self.end - self.pos

    def varint(self) -> int:
        v, shift = 0, 0
        for i in range(10):
            b = self.u8()
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                if b == 0 and i:
                    raise FormatError(f"overlong varint ending at offset {self.pos}")
                if v >> 64:
                    raise FormatError(f"varint {v} at offset {self.pos} is not below 2**64")
                return v
            shift += 7
        raise FormatError(f"varint longer than 10 bytes at offset {self.pos}")

    def zigzag(self) -> int:
        v = self.varint()
        return v >> 1 if not v & 1 else -((v + 1) >> 1)


def _varint_size(v: int) -> int:
    return max(1, (int(v).bit_length() + 6) // 7)


# --------------------------------------------------------------------------- streams


def _stream_cost(symbols: np.ndarray, huffman: bool) -> tuple[int, Any]:
    """Smallest encoded size of a stream in bytes and how to get it."""
    n = symbols.size
    if n == 0:
        return 1, ("raw", 0)
    top = int(symbols.max())
    width = bit_width(top)
    best = (1 + packed_size(n, width), ("raw", width))
    if huffman and top < 1 << 16:  # no bincount over a huge alphabet (values up to 2**32)
        counts = np.bincount(symbols)
        lengths = _hf.code_lengths(counts)
        bits = _hf.encoded_bits(counts, lengths, counts=True)
        size = 1 + _varint_size(lengths.size) + (lengths.size + 1) // 2 + (bits + 7) // 8
        if size < best[0]:
            best = (size, ("huffman", lengths))
    return best


def _write_stream(w: _Writer, symbols: np.ndarray, huffman: bool) -> None:
    symbols = np.asarray(symbols, np.int64)
    _, (mode, arg) = _stream_cost(symbols, huffman)
    if mode == "raw":
        w.u8(arg)
        w.raw(pack_stream(symbols, arg))
    else:
        w.u8(_HUFFMAN)
        w.varint(arg.size)
        w.raw(_hf.pack_lengths(arg))
        w.raw(_hf.encode_symbols(symbols, arg)[0])


def _read_stream(r: _Reader, n: int, what: str) -> np.ndarray:
    """``n`` integers of a stream, as ``int64``; refuses anything the writer cannot write."""
    mode = r.u8()
    if mode <= 32:
        if n == 0 or mode == 0:
            if mode:
                raise FormatError(f"{what}: an empty stream packed at {mode} bits (written: 0)")
            return np.zeros(n, np.int64)
        data = r.take(packed_size(n, mode))
        try:
            values = unpack_stream(data, mode, n, strict=True)
        except ValueError as e:
            raise FormatError(f"{what}: {e}") from None
        top = int(values.max())
        if bit_width(top) != mode:
            raise FormatError(
                f"{what}: packed at {mode} bits, but its largest value {top} needs "
                f"{bit_width(top)} (the writer uses the smallest width)"
            )
        return values.astype(np.int64)
    if mode != _HUFFMAN:
        raise FormatError(
            f"{what}: unknown stream mode {mode} (0..32: packed bits, {_HUFFMAN}: Huffman)"
        )
    if n == 0:
        raise FormatError(f"{what}: an empty stream cannot be Huffman-coded")
    alphabet = r.varint()
    if not 1 <= alphabet <= 1 << 16:
        raise FormatError(f"{what}: Huffman alphabet of {alphabet} symbols, allowed 1..65536")
    try:
        lengths = _hf.unpack_lengths(r.take((alphabet + 1) // 2), alphabet, canonical=True)
        view = np.frombuffer(r.buf, np.uint8, count=r.remaining(), offset=r.pos)
        symbols, n_bytes = _hf.decode_exact(view, lengths, n)
    except ValueError as e:
        raise FormatError(f"{what}: {e}") from None
    r.pos += n_bytes
    return symbols


# --------------------------------------------------------------------------- sparse layout


def _sparse_entries(explicit: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (with fillers) and gaps for the explicit positions, max gap ``2**b - 1``."""
    pos = np.flatnonzero(explicit)
    prev = np.concatenate([[-1], pos[:-1]])
    gaps = pos - prev - 1
    step = 1 << b
    fill = gaps >> b
    if not fill.any():
        return pos, gaps
    filler_pos = np.repeat(prev, fill) + step * (
        np.arange(fill.sum()) - np.repeat(np.cumsum(fill) - fill, fill) + 1
    )
    all_pos = np.sort(np.concatenate([pos, filler_pos]))
    all_gaps = np.diff(np.concatenate([[-1], all_pos])) - 1
    return all_pos, all_gaps


class _Sparse(NamedTuple):
    size: int
    order: str
    positions: np.ndarray
    gaps: np.ndarray


def _best_sparse(explicit_full: np.ndarray, entry_cost, huffman: bool) -> _Sparse | None:
    """The cheapest sparse layout over element orders and maximum gaps.

    ``entry_cost(positions_in_order_flat, order)`` gives the bytes of everything stored
    per entry (values or codes) for the given entries.
    """
    best = None
    orders = ("C", "F") if explicit_full.ndim > 1 else ("C",)
    for order in orders:
        explicit = explicit_full.ravel(order=order)
        n_explicit = int(np.count_nonzero(explicit))
        if n_explicit == 0:
            pos = np.zeros(0, np.int64)
            cand = [(pos, pos)]
        else:
            gmax = int(np.max(np.diff(np.concatenate([[-1], np.flatnonzero(explicit)])) - 1))
            cand = [_sparse_entries(explicit, b) for b in range(1, max(bit_width(gmax), 1) + 1)]
        for pos, gaps in cand:
            size = _varint_size(pos.size) + _stream_cost(gaps, huffman)[0] + entry_cost(pos, order)
            if best is None or size < best.size:
                best = _Sparse(size, order, pos, gaps)
    return best


def _flat_in(x: np.ndarray, order: str) -> np.ndarray:
    return np.asarray(x).ravel(order=order)


# --------------------------------------------------------------------------- records


def _write_shape(w: _Writer, shape) -> None:
    w.varint(len(shape))
    for d in shape:
        w.varint(d)


class _Budget:
    """Elements a file may still describe; charged before anything is allocated."""

    def __init__(self, limit: int):
        self.limit = self.left = limit

    def charge(self, shape: tuple[int, ...]) -> int:
        numel = math.prod(shape)
        if numel > self.left:
            raise FormatError(
                f"shape {shape} ({numel} elements) takes the file past max_elements="
                f"{self.limit} elements; pass a larger max_elements to load larger models"
            )
        self.left -= numel
        return numel


def _read_shape(r: _Reader, what: str = "shape") -> tuple[int, ...]:
    ndim = r.varint()
    if ndim > 32:
        raise FormatError(f"{what} has {ndim} dimensions, allowed at most 32")
    if ndim > r.remaining():
        raise FormatError(f"{what} has {ndim} dimensions, only {r.remaining()} bytes left")
    return tuple(r.varint() for _ in range(ndim))


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``np.broadcast_to(x_of_shape, target)`` works (without allocating)."""
    if len(shape) > len(target):
        return False
    return all(d in (1, t) for d, t in zip(reversed(shape), reversed(target), strict=False))


def _f32_bytes(x: np.ndarray) -> bytes:
    return np.asarray(x, "<f4").tobytes()


def _read_f32(r: _Reader, n: int) -> np.ndarray:
    return np.frombuffer(r.take(4 * n), "<f4").astype(np.float32)


def _float_record(x: np.ndarray, *, huffman: bool, sparse: bool | None = None) -> bytes:
    """Record for a float32 array: raw, or sparse (nonzero bit patterns only)."""
    x = np.asarray(x, np.float32)
    w = _Writer()
    explicit = x != 0  # zeros of either sign are the default, loaded as +0.0
    best = None
    if sparse is not False:
        best = _best_sparse(explicit, lambda pos, order: 4 * pos.size, huffman)
    if best is None or (sparse is None and best.size >= 4 * x.size):
        w.u8(FLOAT)
        _write_shape(w, x.shape)
        w.raw(_f32_bytes(x))
        return bytes(w.buf)
    w.u8(FLOAT | _SPARSE | (_ORDER_F if best.order == "F" else 0))
    _write_shape(w, x.shape)
    w.varint(best.positions.size)
    _write_stream(w, best.gaps, huffman)
    w.raw(_f32_bytes(_flat_in(x, best.order)[best.positions]))
    return bytes(w.buf)


def _shared_record(
    codebook: np.ndarray, indices: np.ndarray, *, huffman: bool, sparse: bool | None = None
) -> bytes:
    codebook = np.asarray(codebook, np.float32).reshape(-1)
    indices = np.asarray(indices).astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= codebook.size):
        raise ValueError(
            f"indices must lie in [0, {codebook.size}), got [{indices.min()}, {indices.max()}]"
        )
    # Keep only the codes in use (empty clusters cost 4 bytes each otherwise).
    used, inverse = np.unique(indices, return_inverse=True)
    codebook, indices = codebook[used], inverse.reshape(indices.shape)
    dense_cost = _stream_cost(indices.reshape(-1), huffman)[0]
    best = None
    default = 0
    if sparse is not False and indices.size:
        default = int(np.argmax(np.bincount(indices.reshape(-1), minlength=codebook.size)))
        explicit = indices != default
        best = _best_sparse(
            explicit,
            lambda pos, order: _stream_cost(_flat_in(indices, order)[pos], huffman)[0],
            huffman,
        )
    w = _Writer()
    use_sparse = best is not None and (sparse or best.size + _varint_size(default) < dense_cost)
    kind = SHARED | (_SPARSE | (_ORDER_F if best.order == "F" else 0) if use_sparse else 0)
    w.u8(kind)
    _write_shape(w, indices.shape)
    w.varint(codebook.size)
    w.raw(_f32_bytes(codebook))
    if not use_sparse:
        _write_stream(w, indices.reshape(-1), huffman)
        return bytes(w.buf)
    w.varint(default)
    w.varint(best.positions.size)
    _write_stream(w, best.gaps, huffman)
    _write_stream(w, _flat_in(indices, best.order)[best.positions], huffman)
    return bytes(w.buf)


class _Quant(NamedTuple):
    values: np.ndarray  # integers
    scale: np.ndarray  # float32, broadcastable to values
    zero_point: np.ndarray  # integers, broadcastable to values
    multiplier: np.ndarray | None = None  # float32, broadcastable to values


def _positive_finite(arr: np.ndarray, label: str, name: str) -> None:
    if arr.size and not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(
            f"{label} for {name!r} must be finite and > 0 in float32, got values in "
            f"[{arr.min()}, {arr.max()}]"
        )


def _as_kernel_quant(k: Any, name: str) -> _Quant:
    """A quantized ``(in, out)`` matrix with an optional per-input multiplier (duck-typed
    ``models.QuantizedKernel``: ``qweight`` and ``input_scale``)."""
    inner = k.qweight
    q = _as_quant(inner, name)
    multiplier = getattr(k, "input_scale", None)
    if multiplier is None:
        return q
    shape = tuple(getattr(inner, "shape", None) or np.shape(inner.values))
    if len(shape) != 2:
        raise ValueError(
            f"the quantized matrix of {name!r} must be 2-D (in, out) to carry a per-input "
            f"multiplier, got shape {shape}"
        )
    multiplier = np.asarray(multiplier, np.float32).reshape(-1)
    if multiplier.size != shape[0]:
        raise ValueError(
            f"input_scale for {name!r} has {multiplier.size} entries, its (in, out) matrix "
            f"{shape} has {shape[0]} inputs"
        )
    _positive_finite(multiplier, "input_scale", name)
    if getattr(inner, "group_size", None) and getattr(inner, "group_axis", None) == 0:
        rows = (shape[0] // inner.group_size, inner.group_size)  # inputs split into groups
    else:
        rows = (shape[0],)
    multiplier = multiplier.reshape(rows + (1,) * (q.values.ndim - len(rows)))
    return q._replace(multiplier=multiplier)


def _as_quant(q: Any, name: str) -> _Quant:
    if hasattr(q, "qweight"):  # a quantized matrix view of a kernel (models.QuantizedKernel)
        return _as_kernel_quant(q, name)
    if hasattr(q, "packed") and not hasattr(q, "values"):  # a bit-packed QTensor
        from jaxopt_models.quantization import unpack

        q = unpack(q)
    for attr in ("values", "scale", "zero_point"):
        if not hasattr(q, attr):
            raise TypeError(
                f"quantized entry for {name!r} must have 'values', 'scale' and 'zero_point' "
                f"attributes (a QTensor), got {type(q).__name__}"
            )
    values = np.asarray(q.values)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"quantized values for {name!r} must be integers, got {values.dtype}")
    grouped = getattr(q, "grouped_shape", None)  # per-group scales broadcast in this shape
    if grouped is not None:
        values = values.reshape(grouped)
    scale = np.asarray(q.scale, np.float32)
    if q.zero_point is None:  # symmetric grid
        zp = np.zeros((1,) * values.ndim, np.int64)
    else:
        zp = np.asarray(q.zero_point)
        if zp.size and not np.all(zp == np.round(zp)):
            raise ValueError(f"zero_point for {name!r} must hold integers")
        zp = zp.astype(np.int64)
    axis = getattr(q, "axis", None)
    for label, arr in (("scale", scale), ("zero_point", zp)):
        if arr.ndim == 1 and values.ndim > 1 and arr.size > 1 and isinstance(axis, int):
            shape = [1] * values.ndim
            shape[axis] = arr.size
            arr = arr.reshape(shape)
        if not _broadcasts_to(arr.shape, values.shape):
            raise ValueError(
                f"{label} of shape {arr.shape} does not broadcast to the values' shape "
                f"{values.shape} for {name!r}"
            )
        if label == "scale":
            scale = arr
        else:
            zp = arr
    _positive_finite(scale, "scale", name)
    return _Quant(values.astype(np.int64), scale, zp)


def dequantize_record(q: _Quant) -> np.ndarray:
    """``(values - zero_point) * scale`` (times the multiplier, if any) in float32: how
    quantized records are loaded."""
    w = (q.values.astype(np.float32) - q.zero_point.astype(np.float32)) * q.scale
    return w if q.multiplier is None else w * q.multiplier


def _quantized_record(q: _Quant, shape, *, huffman: bool, sparse: bool | None = None) -> bytes:
    values = q.values
    qmin = int(values.min()) if values.size else 0
    sym = values - qmin
    zp_full = np.broadcast_to(q.zero_point, values.shape)
    dense_cost = _stream_cost(sym.reshape(-1), huffman)[0]
    best = None
    if sparse is not False and values.size:
        best = _best_sparse(
            values != zp_full,
            lambda pos, order: _stream_cost(_flat_in(sym, order)[pos], huffman)[0],
            huffman,
        )
    use_sparse = best is not None and (sparse or best.size < dense_cost)
    w = _Writer()
    kind = QUANTIZED | (_SPARSE | (_ORDER_F if best.order == "F" else 0) if use_sparse else 0)
    w.u8(kind | (0 if q.multiplier is None else _MULTIPLIER))
    _write_shape(w, shape)
    _write_shape(w, values.shape)
    _write_shape(w, q.scale.shape)
    w.raw(_f32_bytes(q.scale))
    if q.multiplier is not None:
        _write_shape(w, q.multiplier.shape)
        w.raw(_f32_bytes(q.multiplier))
    _write_shape(w, q.zero_point.shape)
    for z in q.zero_point.reshape(-1):
        w.zigzag(int(z))
    w.zigzag(qmin)
    if not use_sparse:
        _write_stream(w, sym.reshape(-1), huffman)
        return bytes(w.buf)
    w.varint(best.positions.size)
    _write_stream(w, best.gaps, huffman)
    _write_stream(w, _flat_in(sym, best.order)[best.positions], huffman)
    return bytes(w.buf)


def _scatter(default_flat: np.ndarray, positions: np.ndarray, values: np.ndarray, shape, order):
    out = default_flat.copy()
    out[positions] = values
    return out.reshape(shape, order=order)


def _read_positions(r: _Reader, numel: int) -> np.ndarray:
    n = r.varint()
    if n > numel:
        raise FormatError(f"{n} sparse entries for a tensor of {numel} elements")
    gaps = _read_stream(r, n, "gap stream")
    positions = np.cumsum(gaps + 1) - 1  # gaps >= 0 and < 2**32: strictly increasing
    if n and positions[-1] >= numel:
        raise FormatError(
            f"the gaps put sparse entry {n - 1} at position {positions[-1]}, outside a "
            f"tensor of {numel} elements"
        )
    return positions


def _read_shared(r: _Reader, numel: int, sparse: bool) -> tuple[np.ndarray, np.ndarray]:
    """Codebook and flat codes of a weight-shared record."""
    n_codes = r.varint()
    if n_codes > min(numel, 1 << 16):
        raise FormatError(
            f"codebook of {n_codes} entries for {numel} weights (every entry is used; "
            "at most 65536)"
        )
    codebook = _read_f32(r, n_codes)
    if not sparse:
        indices = _read_stream(r, numel, "code stream")
    else:
        default = r.varint()
        if default >= max(n_codes, 1):
            raise FormatError(f"default code {default} out of range for {n_codes} codes")
        positions = _read_positions(r, numel)
        codes = _read_stream(r, positions.size, "code stream")
        indices = np.full(numel, default, np.int64)
        indices[positions] = codes
    if numel and int(indices.max()) >= n_codes:
        raise FormatError(f"code {int(indices.max())} out of range for {n_codes} codes")
    counts = np.bincount(indices, minlength=n_codes)
    if numel and not counts.all():
        raise FormatError(
            f"codebook entry {int(np.argmin(counts))} of {n_codes} is never used (the "
            "writer stores only the codes in use)"
        )
    if sparse and numel and int(np.argmax(counts)) != default:
        raise FormatError(
            f"sparse default code {default} is not the most frequent code "
            f"{int(np.argmax(counts))} (the writer's choice)"
        )
    return codebook, indices


def _check_int64(v: int, what: str) -> int:
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise FormatError(f"{what} {v} does not fit in int64")
    return v


def _read_positive_f32(r: _Reader, vshape: tuple[int, ...], what: str) -> np.ndarray:
    """A float32 array of a stored shape that broadcasts to ``vshape``, finite and > 0."""
    shape = _read_shape(r, f"{what} shape")
    if not _broadcasts_to(shape, vshape):
        raise FormatError(f"{what} shape {shape} does not broadcast to values shape {vshape}")
    arr = _read_f32(r, math.prod(shape)).reshape(shape)
    if arr.size and not np.all(np.isfinite(arr) & (arr > 0)):
        bad = arr[~(np.isfinite(arr) & (arr > 0))].reshape(-1)[0]
        raise FormatError(f"{what} {bad} is not finite and > 0")
    return arr


def _read_quantized(
    r: _Reader, shape, numel: int, sparse: bool, order: str, multiplied: bool
) -> np.ndarray:
    vshape = _read_shape(r, "values shape")
    if math.prod(vshape) != numel:
        raise FormatError(f"values shape {vshape} does not have the {numel} elements of {shape}")
    scale = _read_positive_f32(r, vshape, "scale")
    multiplier = _read_positive_f32(r, vshape, "multiplier") if multiplied else None
    zshape = _read_shape(r, "zero point shape")
    if not _broadcasts_to(zshape, vshape):
        raise FormatError(f"zero point shape {zshape} does not broadcast to values shape {vshape}")
    n_zp = math.prod(zshape)
    if n_zp > r.remaining():  # one byte at least per varint
        raise FormatError(f"{n_zp} zero points cannot fit in the {r.remaining()} bytes left")
    zp = [_check_int64(r.zigzag(), "zero point") for _ in range(n_zp)]
    zp = np.array(zp, np.int64).reshape(zshape)
    qmin = _check_int64(r.zigzag(), "minimum value")
    if not sparse:
        sym = _read_stream(r, numel, "value stream")
    else:
        positions = _read_positions(r, numel)
        sym = _read_stream(r, positions.size, "value stream")
    if sym.size:
        _check_int64(qmin + int(sym.max()), "value")
    if not sparse:
        values = (sym + qmin).reshape(vshape)
    else:
        zp_full = np.broadcast_to(zp, vshape)
        values = _scatter(_flat_in(zp_full, order), positions, sym + qmin, vshape, order)
    low = int(values.min()) if numel else 0
    if low != qmin:
        raise FormatError(f"stored minimum {qmin} is not the smallest value {low}")
    return dequantize_record(_Quant(values, scale, zp, multiplier)).reshape(shape)


def _read_record(r: _Reader, budget: _Budget | None = None) -> np.ndarray:
    """One record's float32 array; ``budget`` (default :data:`MAX_ELEMENTS`) is charged."""
    budget = _Budget(MAX_ELEMENTS) if budget is None else budget
    kind = r.u8()
    rtype, sparse, order = kind & 3, bool(kind & _SPARSE), "F" if kind & _ORDER_F else "C"
    if kind & ~(3 | _SPARSE | _ORDER_F | _MULTIPLIER) or rtype > QUANTIZED:
        raise FormatError(f"unknown record kind {kind}")
    if kind & _MULTIPLIER and rtype != QUANTIZED:
        raise FormatError(f"unknown record kind {kind} (only quantized records have a multiplier)")
    if kind & _ORDER_F and not sparse:
        raise FormatError(f"record kind {kind}: element order is only stored for sparse layouts")
    shape = _read_shape(r)
    numel = budget.charge(shape)
    if rtype == FLOAT:
        if not sparse:
            return _read_f32(r, numel).reshape(shape)
        positions = _read_positions(r, numel)
        values = _read_f32(r, positions.size)
        return _scatter(np.zeros(numel, np.float32), positions, values, shape, order)
    if rtype == SHARED:
        codebook, indices = _read_shared(r, numel, sparse)
        return codebook[indices].reshape(shape, order=order)
    return _read_quantized(r, shape, numel, sparse, order, bool(kind & _MULTIPLIER))


# --------------------------------------------------------------------------- tree paths


def _components(params: PyTree) -> list[tuple[tuple[tuple[int, Any], ...], Any]]:
    """``[(((tag, key), ...), leaf), ...]`` for dict / list / tuple containers."""
    out = []

    def walk(node, prefix):
        if len(prefix) > MAX_DEPTH:
            raise ValueError(
                f"params nested deeper than MAX_DEPTH={MAX_DEPTH} levels at "
                f"{'/'.join(str(k) for _, k in prefix[:8])}/..."
            )
        if isinstance(node, Mapping):
            for k in sorted(node):
                if not isinstance(k, str):
                    raise TypeError(f"dict keys must be str to be saved, got {k!r}")
                walk(node[k], prefix + ((_TAG_DICT, k),))
        elif isinstance(node, list | tuple) and not hasattr(node, "_fields"):
            tag = _TAG_LIST if isinstance(node, list) else _TAG_TUPLE
            for i, v in enumerate(node):
                walk(v, prefix + ((tag, i),))
        elif node is None:
            return
        elif hasattr(node, "shape") and hasattr(node, "dtype"):
            out.append((prefix, node))
        else:
            raise TypeError(
                f"cannot save a {type(node).__name__} at {'/'.join(str(k) for _, k in prefix)}: "
                "params must be nested dicts / lists / tuples of arrays"
            )

    walk(params, ())
    return out


def _write_path(w: _Writer, path, prev) -> None:
    common = 0
    while common < min(len(path), len(prev)) and path[common] == prev[common]:
        common += 1
    w.varint(common)
    w.varint(len(path) - common)
    for tag, key in path[common:]:
        w.u8(tag)
        if tag == _TAG_DICT:
            data = key.encode("utf-8")
            w.varint(len(data))
            w.raw(data)
        else:
            w.varint(key)


def _read_path(r: _Reader, prev) -> tuple:
    common = r.varint()
    if common > len(prev):
        raise FormatError(f"path shares {common} components with a path of {len(prev)}")
    path = list(prev[:common])
    new = r.varint()
    if common + new > MAX_DEPTH:
        raise FormatError(f"path of {common + new} components, allowed at most {MAX_DEPTH}")
    for _ in range(new):
        tag = r.u8()
        if tag == _TAG_DICT:
            try:
                path.append((tag, r.take(r.varint()).decode("utf-8")))
            except UnicodeDecodeError:
                raise FormatError("dict key is not valid UTF-8") from None
        elif tag in (_TAG_LIST, _TAG_TUPLE):
            path.append((tag, r.varint()))
        else:
            raise FormatError(f"unknown path tag {tag}")
    return tuple(path)


def _path_str(path: tuple) -> str:
    return "/".join(str(k) for _, k in path) or "<root>"


def _check_order(prev: tuple | None, path: tuple) -> None:
    """Refuses a path that does not come strictly after ``prev`` in the writer's order.

    The writer stores dict keys sorted and sequence items in index order, so consecutive
    paths first differ in a component of the same container with a larger key; equal
    paths, or one path a prefix of the next (a leaf that is also a container), are refused.
    """
    if prev is None:
        return
    i = 0
    while i < min(len(prev), len(path)) and prev[i] == path[i]:
        i += 1
    if i == len(prev) == len(path):
        raise FormatError(f"duplicate path {_path_str(path)!r}")
    if i == min(len(prev), len(path)):
        raise FormatError(
            f"paths {_path_str(prev)!r} and {_path_str(path)!r}: one leaf is inside the other"
        )
    if prev[i][0] != path[i][0]:
        raise FormatError(
            f"paths {_path_str(prev)!r} and {_path_str(path)!r} disagree on the container "
            f"type at component {i}"
        )
    if not prev[i][1] < path[i][1]:
        raise FormatError(
            f"path {_path_str(path)!r} comes after {_path_str(prev)!r}; the writer stores "
            "paths sorted"
        )


def _build_tree(items: list[tuple[tuple, Any]]) -> PyTree:
    """Nested dicts / lists / tuples from ``(path, leaf)`` items."""
    if not items:
        return {}
    if len(items) == 1 and items[0][0] == ():
        return items[0][1]
    tag = items[0][0][0][0]
    groups: dict[Any, list] = {}
    for path, leaf in items:
        if not path or path[0][0] != tag:
            raise FormatError("inconsistent container types in the record paths")
        groups.setdefault(path[0][1], []).append((path[1:], leaf))
    children = {k: _build_tree(v) for k, v in groups.items()}
    if tag == _TAG_DICT:
        return children
    if sorted(children) != list(range(len(children))):
        raise FormatError("sequence indices are not contiguous")
    seq = [children[i] for i in range(len(children))]
    return seq if tag == _TAG_LIST else tuple(seq)


# --------------------------------------------------------------------------- public API


def _is_quant(x: Any) -> bool:
    """A QTensor / PackedQTensor, or a quantized kernel view (``models.QuantizedKernel``)."""
    if hasattr(x, "qweight") and hasattr(x, "input_scale"):
        return True
    return hasattr(x, "scale") and (hasattr(x, "values") or hasattr(x, "packed"))


def _smallest(record: bytes, value: np.ndarray, huffman: bool) -> bytes:
    """``record``, or a float record of the same values when that is smaller (tiny tensors)."""
    plain = _float_record(value, huffman=huffman)
    return plain if len(plain) < len(record) else record


class _Leaf(NamedTuple):
    path: tuple
    name: str
    kind: int  # FLOAT, SHARED or QUANTIZED
    value: np.ndarray  # the float32 weights the record stores
    build: Any  # build(huffman, sparse) -> record bytes


def _leaf_records(params, masks, shared, quantized, check: bool) -> list[_Leaf]:
    """One :class:`_Leaf` per params leaf, validated against masks and records."""
    items = _components(params)
    names = [n for n, _ in named_leaves(params)]
    if len(names) != len(items):
        raise TypeError("params must be nested dicts / lists / tuples of arrays")
    mask_l = aligned(params, masks, "masks")
    shared_l = aligned(params, shared, "shared", is_leaf=is_shared)
    quant_l = aligned(params, quantized, "quantized", is_leaf=_is_quant)
    # jax flattens dicts in sorted key order, as _components does, so leaves align.
    out = []
    for (path, leaf), name, mask, s, q in zip(items, names, mask_l, shared_l, quant_l, strict=True):
        value = np.asarray(leaf)
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"params leaf {name!r} must be floating point, got {value.dtype}")
        value = value.astype(np.float32)
        if _is_quant(q) and is_shared(s):
            raise ValueError(f"{name!r} is both quantized and weight-shared; give one record")
        if _is_quant(q):
            qt = _as_quant(q, name)
            if qt.values.size != value.size:
                raise ValueError(
                    f"quantized values for {name!r} have {qt.values.size} elements, "
                    f"the params leaf has {value.size}"
                )
            stored = dequantize_record(qt).reshape(value.shape)
            build = lambda huffman, sparse, qt=qt, shape=value.shape, v=stored: _smallest(
                _quantized_record(qt, shape, huffman=huffman, sparse=sparse), v, huffman
            )
            what = "the dequantized values (values - zero_point) * scale"
            kind = QUANTIZED
        elif is_shared(s):
            codebook, indices = np.asarray(s.codebook, np.float32), np.asarray(s.indices)
            if indices.shape != value.shape:
                raise ValueError(
                    f"shared indices for {name!r} have shape {indices.shape}, "
                    f"the params leaf has {value.shape}"
                )
            stored = codebook[indices.astype(np.int64)]
            build = lambda huffman, sparse, c=codebook, i=indices, v=stored: _smallest(
                _shared_record(c, i, huffman=huffman, sparse=sparse), v, huffman
            )
            what = "shared_params(shared)"
            kind = SHARED
        else:
            stored = value
            build = lambda huffman, sparse, v=value: _float_record(
                v, huffman=huffman, sparse=sparse
            )
            what = None
            kind = FLOAT
        if check and what is not None and not np.array_equal(stored, value):
            diff = float(np.max(np.abs(stored - value)))
            raise ValueError(
                f"the record for {name!r} does not reproduce its params leaf (max abs "
                f"difference {diff:g}); pass params equal to {what}, or check=False to "
                "store the record as given"
            )
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != value.shape:
                raise ValueError(
                    f"mask for {name!r} has shape {mask.shape}, leaf has {value.shape}"
                )
            if np.any(stored[~mask.astype(bool)] != 0):
                raise ValueError(
                    f"{name!r} has nonzero weights where its mask is False; apply the masks "
                    "before saving"
                )
        out.append(_Leaf(path, name, kind, stored.astype(np.float32), build))
    return out


def encode_compressed(
    params: PyTree,
    *,
    masks: PyTree | None = None,
    shared: PyTree | None = None,
    quantized: PyTree | None = None,
    huffman: bool = True,
    check: bool = True,
) -> bytes:
    """The bytes :func:`save_compressed` writes (see there for the arguments).

    Example:
      >>> data = encode_compressed(params, shared=shared)
      >>> params2 = decode_compressed(data)
    """
    records = _leaf_records(params, masks, shared, quantized, check)
    body = _Writer()
    body.varint(len(records))
    prev: tuple = ()
    for leaf in records:
        _write_path(body, leaf.path, prev)
        body.raw(leaf.build(huffman, None))
        prev = leaf.path
    out = _Writer()
    out.raw(MAGIC)
    out.u8(VERSION)
    out.varint(len(body.buf))
    out.raw(bytes(body.buf))
    out.raw(zlib.crc32(bytes(out.buf)).to_bytes(4, "big"))
    return bytes(out.buf)


def _check_max_elements(max_elements: Any) -> int:
    if not isinstance(max_elements, int | np.integer) or isinstance(max_elements, bool):
        raise TypeError(f"max_elements must be an int, got {max_elements!r}")
    if max_elements < 0:
        raise ValueError(f"max_elements must be >= 0, got {max_elements}")
    return int(max_elements)


def decode_compressed(
    data: bytes, source: str = "<bytes>", *, max_elements: int = MAX_ELEMENTS
) -> PyTree:
    """Parses bytes from :func:`encode_compressed`; errors name ``source``.

    Everything parsed is validated (see the module docstring) before it is allocated, so
    damaged or crafted bytes raise :class:`FormatError` rather than any other exception,
    a hang or a huge allocation.

    Args:
      data: the file's bytes (``bytes``, ``bytearray`` or ``memoryview``).
      source: what to call the data in error messages, e.g. the file name.
      max_elements: most elements (weights) all records together may describe; the
        default :data:`MAX_ELEMENTS` is ``2**28`` (1 GiB of float32).

    Returns:
      The params pytree of float32 ``jax.Array`` leaves.

    Raises:
      FormatError: (a ``ValueError``) bad magic, unsupported version, truncated or
        oversized data, checksum mismatch, a malformed record or more than
        ``max_elements`` elements; the message starts with ``source``.
      TypeError: ``data`` is not bytes-like.

    Example:
      >>> params = decode_compressed(encode_compressed(params))
    """
    max_elements = _check_max_elements(max_elements)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)

    def fail(what: str) -> FormatError:
        return FormatError(f"{source}: {what}")

    if len(data) < len(MAGIC) + 1 or data[: len(MAGIC)] != MAGIC:
        raise fail("not a jaxopt_models compressed file (bad magic bytes)")
    if data[len(MAGIC)] != VERSION:
        raise fail(f"unsupported format version {data[len(MAGIC)]} (this reader knows {VERSION})")
    r = _Reader(data, len(MAGIC) + 1)
    try:
        body_len = r.varint()
    except FormatError as e:
        if r.pos < len(data):
            raise fail(f"corrupted header: {e}") from None
        raise fail(f"truncated file: {len(data)} bytes, header incomplete") from None
    expected = r.pos + body_len + 4
    if len(data) < expected:
        raise fail(
            f"truncated or corrupted file: it has {len(data)} bytes, its header says {expected}"
        )
    if len(data) > expected:
        raise fail(
            f"corrupted file: it has {len(data)} bytes, its header says {expected} "
            "(trailing data or a damaged header)"
        )
    stored = int.from_bytes(data[-4:], "big")
    computed = zlib.crc32(data[:-4])
    if stored != computed:
        raise fail(
            f"checksum mismatch (stored CRC32 {stored:08x}, computed {computed:08x}): "
            "the file is corrupted"
        )
    r = _Reader(data, r.pos, len(data) - 4)
    budget = _Budget(max_elements)
    try:
        items = _read_items(r, budget)
        tree = _build_tree(items)
    except FormatError as e:
        raise fail(f"malformed record data: {e}") from None
    except (ValueError, IndexError, OverflowError, TypeError, MemoryError) as e:
        # Not expected: every check above raises FormatError. Kept as a last line of defence.
        raise fail(f"malformed record data (unexpected {type(e).__name__}: {e})") from None
    return jax.tree.map(jnp.asarray, tree)


def _read_items(r: _Reader, budget: _Budget) -> list[tuple[tuple, np.ndarray]]:
    """``[(path, float32 array), ...]`` of every record of a body."""
    count = r.varint()
    if count > r.remaining() // _MIN_RECORD_BYTES:
        raise FormatError(
            f"{count} records cannot fit in the {r.remaining()} bytes left "
            f"(at least {_MIN_RECORD_BYTES} bytes each)"
        )
    items = []
    prev = None
    for i in range(count):
        path = _read_path(r, () if prev is None else prev)
        _check_order(prev, path)
        try:
            items.append((path, _read_record(r, budget)))
        except FormatError as e:
            raise FormatError(f"record {i} ({_path_str(path)}): {e}") from None
        prev = path
    if r.pos != r.end:
        raise FormatError(f"{r.end - r.pos} bytes left after the last record")
    return items


def save_compressed(
    path: str | os.PathLike,
    params: PyTree,
    *,
    masks: PyTree | None = None,
    shared: PyTree | None = None,
    quantized: PyTree | None = None,
    huffman: bool = True,
    check: bool = True,
) -> int:
    """Writes params to a compact, checksummed binary file, atomically.

    Every leaf becomes one record: a quantized record if ``quantized`` has a QTensor
    there, a weight-shared record if ``shared`` has a ``SharedTensor`` there, else a
    float32 record (also used for a quantized / shared leaf whenever it is smaller, e.g.
    a 10-element bias with a 256-entry codebook). Each record picks its smallest
    layout: dense, or sparse with relative indices (filler entries for long gaps, the
    element order and the maximum gap chosen to minimise the size), with every integer
    stream bit-packed at its minimal width or Huffman-coded, whichever is smaller.

    Args:
      path: destination file; written to a temporary file in the same directory and
        moved into place with ``os.replace``.
      params: params pytree of float arrays (nested dicts / lists / tuples). These are
        the weights the compressed model predicts with; loading returns them bitwise
        (as float32; ``-0.0`` loads as ``+0.0``).
      masks: optional boolean masks like ``params`` (``None`` leaves allowed); masked-out
        weights must be zero (checked).
      shared: optional tree from ``cluster_weights`` (``SharedTensor`` at shared leaves).
      quantized: optional tree like ``params`` with a ``QTensor`` or ``PackedQTensor``
        (from ``jaxopt_models.quantization``) at quantized leaves, e.g. the output of
        ``quantize_params``, or the ``report.qparams`` of ``models.compress_model``
        (GPTQ / RTN / AWQ / SparseGPT+GPTQ, per column or group-wise), whose
        ``models.QuantizedKernel`` leaves store a kernel as a quantized ``(in, out)``
        matrix with an optional per-input multiplier; other leaves are ignored. Anything
        with integer ``values``, float ``scale`` and integer ``zero_point`` (or ``None``)
        broadcastable to the values works too. Loaded as ``(values - zero_point) * scale``
        in float32, as ``quantization.dequantize`` computes it (times the multiplier, as
        ``models.dequantize_kernel`` does). The values cost their bit width (``b``-bit
        values take ``b`` bits, or fewer with Huffman coding), each group 4 bytes of scale
        and a varint zero point. A QuantizedKernel's activation quantization
        (SmoothQuant's ``act_bits``) is a run-time setting, not a weight: it is not stored.
      huffman: allow Huffman coding of the index / code / integer streams.
      check: verify that every shared / quantized record reproduces its params leaf
        bitwise, so the loaded model predicts exactly what the saved one did.

    Returns:
      The file size in bytes.

    Example:
      >>> shared = cluster_weights(params, bits=5, masks=masks)
      >>> n_bytes = save_compressed("model.jxc", shared_params(shared), shared=shared)
      >>> params = load_compressed("model.jxc")
    """
    data = encode_compressed(
        params, masks=masks, shared=shared, quantized=quantized, huffman=huffman, check=check
    )
    atomic_write_bytes(path, data)
    return len(data)


def load_compressed(path: str | os.PathLike, *, max_elements: int = MAX_ELEMENTS) -> PyTree:
    """Reads a file written by :func:`save_compressed`.

    Args:
      path: the file.
      max_elements: most elements (weights) the file may describe, checked before
        anything is allocated; default :data:`MAX_ELEMENTS` (``2**28``). A few bytes
        can describe a huge all-zero or constant tensor, so lower it for files from
        untrusted sources and raise it for models beyond 268M weights.

    Returns:
      The params pytree (nested dicts / lists / tuples as saved) of float32 arrays,
      bitwise equal to the saved params. Quantized kernels load dequantized: a model
      saved from ``compress_model``'s ``qparams`` runs with plain ``model.apply`` and
      computes what ``models.apply_with_qtensors`` computes on the ``qparams`` (up to
      float rounding: that one applies scales to partial sums).

    Raises:
      FileNotFoundError: no file at ``path``; IsADirectoryError: ``path`` is a directory
        (both OSErrors, as ``open`` raises them, with a message naming the path).
      FormatError: (a ``ValueError``) naming the file and what failed, for something
        that is not a regular file, not ours, of an unknown version, truncated, corrupted
        (CRC32 mismatch), malformed, or larger than ``max_elements``.

    Example:
      >>> params = load_compressed("model.jxc")
      >>> logits = model.apply({"params": params}, x)
    """
    max_elements = _check_max_elements(max_elements)
    path = os.fsdecode(os.fspath(path))
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, "no compressed params file (nothing exists at this path)", path
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(
            errno.EISDIR, "expected a compressed params file, got a directory", path
        )
    if not stat.S_ISREG(info.st_mode):
        raise FormatError(f"{path}: not a regular file, cannot be a compressed params file")
    with open(path, "rb") as f:
        data = f.read()
    return decode_compressed(data, source=path, max_elements=max_elements)
