"""Tests for jaxopt_models.compression.huffman (canonical Huffman coding)."""

import heapq
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.compression.huffman import (
    MAX_CODE_LENGTH,
    canonical_codes,
    code_lengths,
    decode_exact,
    decode_prefix,
    decode_symbols,
    encode_symbols,
    huffman_decode,
    huffman_encode,
    pack_lengths,
    unpack_lengths,
)


def _optimal_cost(counts):
    """Total bits of an optimal prefix code: the sum of all Huffman merge weights."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 299), max_size=2000))
def test_round_trip(symbols):
    s = np.asarray(symbols, np.int64)
    np.testing.assert_array_equal(huffman_decode(huffman_encode(s)), s)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=2, max_size=40))
def test_code_is_optimal_prefix_free_and_complete(counts):
    counts = np.asarray(counts)
    lengths = code_lengths(counts)
    assert np.all(lengths >= 1) and lengths.max() <= MAX_CODE_LENGTH
    # Complete prefix code: Kraft sum is exactly 1.
    assert np.sum(2.0 ** -lengths.astype(float)) == pytest.approx(1.0)
    if lengths.max() < MAX_CODE_LENGTH:  # no length limiting happened: optimal
        assert int(np.dot(counts, lengths)) == _optimal_cost(counts)
    codes = canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True)]
    for a, b in itertools.permutations(words, 2):
        assert not b.startswith(a)


def test_length_limit_on_fibonacci_counts():
    # Fibonacci counts make the optimal code as deep as the alphabet is large.
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    counts = np.asarray(fib)
    lengths = code_lengths(counts)
    assert lengths.max() == MAX_CODE_LENGTH
    assert np.sum(2.0 ** -lengths.astype(float)) <= 1.0
    s = np.repeat(np.arange(30), np.minimum(counts, 50))
    np.testing.assert_array_equal(huffman_decode(huffman_encode(s)), s)


def test_large_geometric_stream_is_near_entropy():
    rng = np.random.default_rng(0)
    s = np.minimum(rng.geometric(0.1, 300_000) - 1, 63)
    data = huffman_encode(s)
    p = np.bincount(s) / s.size
    entropy_bytes = -(p[p > 0] * np.log2(p[p > 0])).sum() * s.size / 8
    assert len(data) < 1.01 * entropy_bytes + 64
    np.testing.assert_array_equal(huffman_decode(data), s)


def test_single_symbol_and_empty_streams():
    for s in (np.array([7, 7, 7]), np.array([0]), np.zeros(0, np.int64)):
        np.testing.assert_array_equal(huffman_decode(huffman_encode(s)), s)
    assert code_lengths(np.array([0, 5, 0])).tolist() == [0, 1, 0]


def test_decode_prefix_reports_consumed_bits():
    s = np.array([0, 1, 1, 2, 0, 0, 3])
    lengths = code_lengths(np.bincount(s))
    data, n_bits = encode_symbols(s, lengths)
    out, end = decode_prefix(data + b"\xff\x00\xff", lengths, s.size)
    np.testing.assert_array_equal(out, s)
    assert end == n_bits


def test_corrupt_or_short_streams_raise():
    s = np.arange(50) % 7
    lengths = code_lengths(np.bincount(s))
    data, n_bits = encode_symbols(s, lengths)
    with pytest.raises(ValueError, match="corrupt Huffman stream"):
        decode_symbols(data[: len(data) // 2], lengths, s.size)
    # An incomplete code (one symbol, code "0") cannot decode a 1 bit.
    with pytest.raises(ValueError, match="corrupt Huffman stream"):
        decode_symbols(b"\xff", np.array([1]), 3)
    with pytest.raises(ValueError, match="truncated"):
        huffman_decode(huffman_encode(s)[:9])


def test_validation_errors():
    with pytest.raises(ValueError, match="symbols must lie"):
        huffman_encode(np.array([-1, 2]))
    with pytest.raises(TypeError, match="integers"):
        huffman_encode(np.array([0.5]))
    with pytest.raises(ValueError, match="no code"):
        encode_symbols(np.array([0, 1]), np.array([1, 0]))
    with pytest.raises(ValueError, match="Kraft"):
        canonical_codes(np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="counts must be >= 0"):
        code_lengths(np.array([1, -1]))


def test_decode_exact_returns_whole_bytes_and_refuses_what_the_encoder_never_writes():
    s = np.array([0, 1, 1, 2, 0, 0, 3])
    lengths = code_lengths(np.bincount(s))
    data, n_bits = encode_symbols(s, lengths)
    assert n_bits % 8  # padding bits to spoil below
    out, n_bytes = decode_exact(data + b"\xff", lengths, s.size)
    np.testing.assert_array_equal(out, s)
    assert n_bytes == len(data) == (n_bits + 7) // 8
    spoiled = data[:-1] + bytes([data[-1] | 1])
    with pytest.raises(ValueError, match="padding bits after the Huffman stream are not zero"):
        decode_exact(spoiled, lengths, s.size)
    with pytest.raises(ValueError, match="symbol 3 has a code but does not occur"):
        decode_exact(data, lengths, 4)  # the first 4 symbols hold no 3


def test_canonical_tables_are_complete_end_at_a_used_symbol_and_pad_with_zero():
    complete = np.array([1, 2, 2])
    np.testing.assert_array_equal(
        unpack_lengths(pack_lengths(complete), 3, canonical=True), complete
    )
    np.testing.assert_array_equal(unpack_lengths(pack_lengths([0, 1]), 2, canonical=True), [0, 1])
    with pytest.raises(ValueError, match=r"incomplete prefix code \(Kraft sum 28672 / 32768\)"):
        unpack_lengths(pack_lengths([1, 2, 3]), 3, canonical=True)
    unpack_lengths(pack_lengths([1, 2, 3]), 3)  # a prefix code all the same
    with pytest.raises(ValueError, match="the last of 4 symbols has no code"):
        unpack_lengths(pack_lengths([1, 2, 2, 0]), 4, canonical=True)
    with pytest.raises(ValueError, match="4 padding bits"):
        unpack_lengths(bytes([0x12, 0x21]), 3, canonical=True)
    with pytest.raises(ValueError, match="Kraft"):
        unpack_lengths(bytes([0x11, 0x10]), 3)


def test_counts_beyond_the_available_bits_raise_before_allocating():
    lengths = np.array([1, 1])
    for count in (17, 10**12):  # 2 bytes hold at most 16 one-bit symbols
        with pytest.raises(ValueError, match=f"16 bits cannot hold {count} symbols"):
            decode_prefix(b"\x00\x00", lengths, count)
    with pytest.raises(ValueError, match="count must be >= 0"):
        decode_prefix(b"\x00", lengths, -1)
    # A self-contained stream claiming 2**32 - 1 symbols in 1 byte.
    data = bytearray(huffman_encode(np.array([0, 1, 1])))
    data[:4] = (2**32 - 1).to_bytes(4, "big")
    with pytest.raises(ValueError, match="cannot hold 4294967295 symbols"):
        huffman_decode(bytes(data))


def test_huffman_decode_refuses_trailing_bytes_and_tables_of_empty_streams():
    data = huffman_encode(np.array([3, 3, 1, 0]))
    with pytest.raises(ValueError, match="1 bytes of trailing data"):
        huffman_decode(data + b"\x00")
    empty = huffman_encode(np.zeros(0, np.int64))
    assert huffman_decode(empty).size == 0
    with pytest.raises(ValueError, match="empty stream has no code table"):
        huffman_decode(empty[:4] + (2).to_bytes(4, "big") + b"\x11")
