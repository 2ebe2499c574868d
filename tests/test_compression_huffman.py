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
    decode_prefix,
    decode_symbols,
    encode_symbols,
    huffman_decode,
    huffman_encode,
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
