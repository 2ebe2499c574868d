"""Tests for jaxopt_models.compression.bitpack (fixed-width bit packing)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.compression.bitpack import bit_width, pack_stream, packed_size, unpack_stream


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 32), st.integers(0, 300), st.integers(0, 2**31))
def test_round_trip_and_size(width, n, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**width, n, dtype=np.uint64)
    data = pack_stream(values, width)
    assert len(data) == packed_size(n, width) == (n * width + 7) // 8
    np.testing.assert_array_equal(unpack_stream(data, width, n), values)


def test_msb_first_layout():
    assert pack_stream(np.array([1, 0, 1, 1]), 1) == bytes([0b1011_0000])
    assert pack_stream(np.array([5, 3]), 4) == bytes([0x53])
    assert bit_width(0) == 0 and bit_width(1) == 1 and bit_width(31) == 5 and bit_width(32) == 6


def test_errors():
    with pytest.raises(ValueError, match="values must lie"):
        pack_stream(np.array([4]), 2)
    with pytest.raises(ValueError, match="width"):
        pack_stream(np.array([1]), 33)
    with pytest.raises(ValueError, match="need 2 bytes"):
        unpack_stream(b"\x00", 4, 3)
    with pytest.raises(ValueError, match="max_value"):
        bit_width(-1)


@pytest.mark.parametrize("width,count,pad", [(3, 3, 7), (5, 1, 3), (1, 7, 1), (4, 1, 4)])
def test_strict_unpack_refuses_nonzero_padding(width, count, pad):
    values = np.arange(count) % (1 << width)
    data = pack_stream(values, width)
    assert 8 * len(data) - count * width == pad
    np.testing.assert_array_equal(unpack_stream(data, width, count, strict=True), values)
    spoiled = data[:-1] + bytes([data[-1] | 1])
    np.testing.assert_array_equal(unpack_stream(spoiled, width, count), values)  # lenient
    with pytest.raises(ValueError, match=f"the {pad} padding bits after {count} values"):
        unpack_stream(spoiled, width, count, strict=True)
    exact = pack_stream(np.ones(8, np.int64), 1)  # no padding: nothing to check
    np.testing.assert_array_equal(unpack_stream(exact, 1, 8, strict=True), np.ones(8))
