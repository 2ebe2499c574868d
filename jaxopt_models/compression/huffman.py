"""Canonical Huffman coding of integer symbol streams (pure Python / NumPy).

Codes are canonical (Deflate-style): a code is fully described by the code length of
every symbol, so a stream stores only those lengths (4 bits each) plus the bits.
Code lengths are limited to :data:`MAX_CODE_LENGTH` bits so decoding can use one
lookup table of ``2**max_length`` entries. Bits are written MSB first.

Encoding and decoding are vectorised with NumPy except for one tight Python loop over
the decoded symbols (about 0.1 s for 300k symbols).
"""

import heapq

import numpy as np

from jaxopt_models.compression.bitpack import pack_stream, unpack_stream

MAX_CODE_LENGTH = 15
"""Longest code allowed (lengths are stored in 4 bits)."""


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code length of every symbol, given how often each occurs.

    Ties are broken deterministically (by symbol), so equal counts give equal codes.
    If the optimal code is longer than ``max_length``, the counts are halved (rounding
    up, so every used symbol keeps a code) until it fits.

    Args:
      counts: 1-D array of non-negative occurrence counts, indexed by symbol.
      max_length: longest code allowed, ``1..15``.

    Returns:
      ``int64`` array with ``counts``' shape: the length in bits of each symbol's code,
      ``0`` for symbols that do not occur. A single used symbol gets length 1.

    Example:
      >>> code_lengths(np.array([5, 1, 1, 0]))
      array([1, 2, 2, 0])
    """
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError(f"counts must be 1-D, got shape {counts.shape}")
    if counts.size and counts.min() < 0:
        raise ValueError(f"counts must be >= 0, got min {counts.min()}")
    if not 1 <= max_length <= MAX_CODE_LENGTH:
        raise ValueError(f"max_length must be in 1..{MAX_CODE_LENGTH}, got {max_length}")
    used = np.flatnonzero(counts)
    if used.size > (1 << max_length):
        raise ValueError(f"{used.size} symbols cannot have codes of at most {max_length} bits")
    lengths = np.zeros(counts.shape, np.int64)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    weights = counts[used].astype(np.int64)
    while True:
        depth = _huffman_depths(weights)
        if depth.max() <= max_length:
            break
        weights = (weights + 1) // 2
    lengths[used] = depth
    return lengths


def _huffman_depths(weights: np.ndarray) -> np.ndarray:
    """Depth of every leaf in a Huffman tree over ``weights`` (all > 0, >= 2 of them)."""
    n = weights.size
    parent = np.zeros(2 * n - 1, np.int64)
    heap = [(int(w), i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    nxt = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (w1 + w2, nxt))
        nxt += 1
    root = nxt - 1
    depth = np.zeros(2 * n - 1, np.int64)
    for node in range(root - 1, -1, -1):  # parents always have larger ids
        depth[node] = depth[parent[node]] + 1
    return depth[:n]


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of every symbol from the code lengths.

    Symbols are ordered by (length, symbol); each code is the previous one plus one,
    shifted left when the length grows.

    Args:
      lengths: 1-D array of code lengths (``0`` = unused symbol).

    Returns:
      ``uint32`` array of codes (``0`` for unused symbols); symbol ``s``'s code is the
      low ``lengths[s]`` bits, MSB first.

    Example:
      >>> canonical_codes(np.array([1, 2, 2, 0]))
      array([0, 2, 3, 0], dtype=uint32)
    """
    lengths = np.asarray(lengths, np.int64)
    _check_lengths(lengths)
    codes = np.zeros(lengths.shape, np.uint32)
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    code, prev = 0, 0
    for s in order:
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def _check_lengths(lengths: np.ndarray, canonical: bool = False) -> None:
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > MAX_CODE_LENGTH):
        raise ValueError(
            f"code lengths must be in 0..{MAX_CODE_LENGTH}, got [{lengths.min()}, {lengths.max()}]"
        )
    used = lengths[lengths > 0]
    # Kraft sum in units of 2**-MAX_CODE_LENGTH: exact integer arithmetic.
    kraft = int(np.sum(np.left_shift(1, MAX_CODE_LENGTH - used))) if used.size else 0
    if kraft > 1 << MAX_CODE_LENGTH:
        raise ValueError("code lengths violate the Kraft inequality (not a prefix code)")
    if not canonical or lengths.size == 0:
        return
    if lengths[-1] == 0:
        raise ValueError(
            f"the last of {lengths.size} symbols has no code; a table ends at the largest "
            "symbol coded"
        )
    if not (kraft == 1 << MAX_CODE_LENGTH or (used.size == 1 and used[0] == 1)):
        raise ValueError(
            f"code lengths form an incomplete prefix code (Kraft sum {kraft} / "
            f"{1 << MAX_CODE_LENGTH}); Huffman codes are complete"
        )


def encoded_bits(
    symbols_or_counts: np.ndarray, lengths: np.ndarray, *, counts: bool = False
) -> int:
    """Number of bits the Huffman coding of a stream takes (without its table)."""
    lengths = np.asarray(lengths, np.int64)
    c = np.asarray(symbols_or_counts)
    if not counts:
        c = np.bincount(c.reshape(-1), minlength=lengths.size)
    return int(np.dot(c[: lengths.size].astype(np.int64), lengths))


def encode_symbols(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Huffman-codes ``symbols`` with the canonical code given by ``lengths``.

    Args:
      symbols: 1-D array of integers in ``[0, len(lengths))`` with nonzero lengths.
      lengths: code length per symbol (e.g. from :func:`code_lengths`).

    Returns:
      ``(data, n_bits)``: the bits MSB first, zero-padded to whole bytes, and their count.

    Example:
      >>> s = np.array([0, 0, 1, 2])
      >>> data, n_bits = encode_symbols(s, code_lengths(np.bincount(s)))
    """
    lengths = np.asarray(lengths, np.int64)
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.size == 0:
        return b"", 0
    if symbols.min() < 0 or symbols.max() >= lengths.size:
        raise ValueError(
            f"symbols must lie in [0, {lengths.size}), got [{symbols.min()}, {symbols.max()}]"
        )
    codes = canonical_codes(lengths)
    lens = lengths[symbols]
    if lens.min() == 0:
        bad = symbols[np.argmin(lens)]
        raise ValueError(f"symbol {bad} has no code (its length is 0)")
    vals = codes[symbols]
    ends = np.cumsum(lens)
    starts = ends - lens
    n_bits = int(ends[-1])
    bits = np.zeros(n_bits, np.uint8)
    for j in range(int(lens.max())):
        sel = lens > j
        shift = (lens[sel] - 1 - j).astype(np.uint32)
        bits[starts[sel] + j] = (vals[sel] >> shift) & 1
    return np.packbits(bits).tobytes(), n_bits


def decode_symbols(
    data: bytes | np.ndarray, lengths: np.ndarray, count: int, n_bits: int | None = None
) -> np.ndarray:
    """Decodes ``count`` symbols coded by :func:`encode_symbols` with the same ``lengths``.

    Args:
      data: the coded bytes.
      lengths: code length per symbol.
      count: number of symbols to decode.
      n_bits: number of valid bits in ``data`` (default: all of ``data``).

    Returns:
      ``int64`` array of shape ``(count,)``.

    Raises:
      ValueError: if the bits do not decode to ``count`` valid symbols.

    Example:
      >>> s = np.array([0, 0, 1, 2]); lengths = code_lengths(np.bincount(s))
      >>> data, n_bits = encode_symbols(s, lengths)
      >>> decode_symbols(data, lengths, 4, n_bits)
      array([0, 0, 1, 2])
    """
    return decode_prefix(data, lengths, count, n_bits)[0]


def decode_prefix(
    data: bytes | np.ndarray, lengths: np.ndarray, count: int, n_bits: int | None = None
) -> tuple[np.ndarray, int]:
    """Like :func:`decode_symbols`, for a stream followed by other data.

    Returns:
      ``(symbols, end)``: the decoded symbols and the number of bits they took, so the
      caller can continue reading after ``ceil(end / 8)`` bytes. Only the first
      ``count * max(lengths)`` bits of ``data`` are examined.
    """
    lengths = np.asarray(lengths, np.int64)
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return np.zeros(0, np.int64), 0
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    used = np.flatnonzero(lengths)
    if used.size == 0:
        raise ValueError("cannot decode symbols with an empty code table")
    width = int(lengths.max())
    total = buf.size * 8 if n_bits is None else int(n_bits)
    if total > buf.size * 8:
        raise ValueError(f"Huffman stream claims {total} bits but has only {buf.size * 8}")
    shortest = int(lengths[used].min())
    if count * shortest > total:  # refuse before allocating anything of size count
        raise ValueError(
            f"corrupt Huffman stream: {total} bits cannot hold {count} symbols of at least "
            f"{shortest} bits"
        )
    total = min(total, count * width)
    buf = buf[: (total + 7) // 8]
    codes = canonical_codes(lengths)
    # Lookup table indexed by the next `width` bits: symbol and its code length.
    table_sym = np.zeros(1 << width, np.int64)
    table_len = np.zeros(1 << width, np.int64)  # 0 marks bit patterns that are no code
    for s in used:
        lo = int(codes[s]) << (width - int(lengths[s]))
        hi = (int(codes[s]) + 1) << (width - int(lengths[s]))
        table_sym[lo:hi] = s
        table_len[lo:hi] = lengths[s]
    bits = np.zeros(total + width, np.uint32)
    bits[:total] = np.unpackbits(buf, count=total)
    window = np.zeros(total, np.uint32)
    for j in range(width):
        window = (window << 1) | bits[j : j + total]
    step = table_len[window].tolist()
    positions = [0] * count
    p = 0
    try:
        for i in range(count):
            positions[i] = p
            p += step[p] or total + 1  # an invalid pattern jumps past the end
    except IndexError:
        p = total + 1
    if p > total:
        raise ValueError(f"corrupt Huffman stream: {total} bits do not hold {count} valid symbols")
    return table_sym[window[np.asarray(positions)]], p


def decode_exact(
    data: bytes | np.ndarray, lengths: np.ndarray, count: int
) -> tuple[np.ndarray, int]:
    """Decodes a stream as :func:`encode_symbols` writes it, refusing anything else.

    Beyond :func:`decode_prefix`, checks that the padding bits up to the next byte are
    zero and that every symbol with a code occurs (a Huffman code built from the stream's
    counts gives codes only to symbols that occur). Pair it with lengths read by
    ``unpack_lengths(..., canonical=True)``.

    Args:
      data: the coded bytes, possibly followed by other data.
      lengths: code length per symbol.
      count: number of symbols to decode, ``>= 0``.

    Returns:
      ``(symbols, n_bytes)``: ``(count,)`` ``int64`` symbols and the whole bytes they take.

    Raises:
      ValueError: the bits do not decode to ``count`` symbols, nonzero padding, or a
        symbol with a code that does not occur.

    Example:
      >>> s = np.array([0, 0, 1, 2]); lengths = code_lengths(np.bincount(s))
      >>> data, _ = encode_symbols(s, lengths)
      >>> decode_exact(data + b"rest", lengths, 4)
      (array([0, 0, 1, 2]), 1)
    """
    lengths = np.asarray(lengths, np.int64)
    symbols, end = decode_prefix(data, lengths, count)
    n_bytes = (end + 7) // 8
    if end % 8:
        buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
        pad = 8 - end % 8
        if int(buf[n_bytes - 1]) & ((1 << pad) - 1):
            raise ValueError(f"the {pad} padding bits after the Huffman stream are not zero")
    if count:
        occurs = np.bincount(symbols, minlength=lengths.size) > 0
        unused = np.flatnonzero((lengths > 0) & ~occurs)
        if unused.size:
            raise ValueError(
                f"symbol {int(unused[0])} has a code but does not occur in the stream "
                f"({unused.size} such symbols)"
            )
    return symbols, n_bytes


def pack_lengths(lengths: np.ndarray) -> bytes:
    """Stores code lengths as 4-bit nibbles (the table of a canonical code)."""
    lengths = np.asarray(lengths, np.int64)
    _check_lengths(lengths)
    return pack_stream(lengths, 4)


def unpack_lengths(
    data: bytes | np.ndarray, alphabet_size: int, *, canonical: bool = False
) -> np.ndarray:
    """Inverse of :func:`pack_lengths`; validates the Kraft inequality.

    Args:
      data: the packed nibbles.
      alphabet_size: number of code lengths to read.
      canonical: also require what :func:`code_lengths` produces and :func:`pack_lengths`
        writes: a complete prefix code (Kraft sum exactly 1, or one symbol of length 1),
        a last symbol that has a code, and a zero padding nibble.

    Returns:
      ``int64`` array of ``alphabet_size`` code lengths.

    Raises:
      ValueError: too few bytes, lengths that are no prefix code, or (``canonical``) a
        table :func:`code_lengths` cannot have produced.

    Example:
      >>> unpack_lengths(pack_lengths(np.array([1, 2, 2])), 3, canonical=True)
      array([1, 2, 2])
    """
    lengths = unpack_stream(data, 4, alphabet_size, strict=canonical).astype(np.int64)
    _check_lengths(lengths, canonical)
    return lengths


def huffman_encode(symbols: np.ndarray) -> bytes:
    """Self-contained canonical Huffman coding of a stream of non-negative integers.

    The output holds the symbol count, the alphabet size, the code lengths (4 bits per
    symbol of the alphabet) and the coded bits, so :func:`huffman_decode` needs nothing
    else.

    Args:
      symbols: 1-D array of integers in ``[0, 2**16)``.

    Returns:
      The encoded bytes.

    Example:
      >>> data = huffman_encode(np.array([3, 3, 3, 1, 0]))
      >>> huffman_decode(data)
      array([3, 3, 3, 1, 0])
    """
    symbols = np.asarray(symbols)
    if symbols.ndim != 1:
        raise ValueError(f"symbols must be 1-D, got shape {symbols.shape}")
    if symbols.size and not np.issubdtype(symbols.dtype, np.integer):
        raise TypeError(f"symbols must be integers, got dtype {symbols.dtype}")
    if symbols.size and (symbols.min() < 0 or symbols.max() >= 1 << 16):
        raise ValueError(f"symbols must lie in [0, 65536), got [{symbols.min()}, {symbols.max()}]")
    counts = np.bincount(symbols.astype(np.int64)) if symbols.size else np.zeros(0, np.int64)
    lengths = code_lengths(counts)
    body, _ = encode_symbols(symbols, lengths)
    header = np.array([symbols.size, lengths.size], ">u4").tobytes()
    return header + pack_lengths(lengths) + body


def huffman_decode(data: bytes) -> np.ndarray:
    """Inverse of :func:`huffman_encode`.

    Args:
      data: bytes produced by :func:`huffman_encode`.

    Returns:
      The ``int64`` symbol array.

    Raises:
      ValueError: if ``data`` is truncated, has trailing bytes, or is not exactly what
        :func:`huffman_encode` writes (incomplete code, nonzero padding, coded symbols
        that never occur).

    Example:
      >>> huffman_decode(huffman_encode(np.arange(5)))
      array([0, 1, 2, 3, 4])
    """
    if len(data) < 8:
        raise ValueError(f"Huffman data too short: {len(data)} bytes, need at least 8")
    count, alphabet = (int(v) for v in np.frombuffer(data[:8], ">u4"))
    if alphabet > 1 << 16:
        raise ValueError(f"Huffman alphabet of {alphabet} symbols is larger than 65536")
    if count == 0 and alphabet:
        raise ValueError(f"an empty stream has no code table, got {alphabet} code lengths")
    table_bytes = (alphabet * 4 + 7) // 8
    if len(data) < 8 + table_bytes:
        raise ValueError(f"Huffman data truncated: table needs {table_bytes} bytes")
    lengths = unpack_lengths(data[8 : 8 + table_bytes], alphabet, canonical=True)
    body = data[8 + table_bytes :]
    symbols, n_bytes = decode_exact(body, lengths, count)
    if n_bytes != len(body):
        raise ValueError(f"{len(body) - n_bytes} bytes of trailing data after the coded symbols")
    return symbols
