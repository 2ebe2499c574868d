"""Bit packing round trips, packed sizes and size_bytes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.quantization import (
    PackedQTensor,
    binarize,
    dequantize,
    pack,
    pack_bits,
    pack_params,
    packed_num_bytes,
    quantize,
    quantize_params,
    size_bytes,
    ternarize,
    unpack,
    unpack_bits,
    unpack_params,
)


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(1, 16), n=st.sampled_from([1, 7, 8, 33, 100]), seed=st.integers(0, 99))
def test_pack_bits_roundtrip_and_size(bits, n, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, size=n)
    packed = pack_bits(jnp.asarray(codes), bits)
    assert packed.dtype == jnp.uint8
    assert packed.size == -(-n * bits // 8) == packed_num_bytes(n, bits)
    np.testing.assert_array_equal(np.asarray(unpack_bits(packed, bits, n)), codes)


def test_bit_order_is_little_endian():
    assert pack_bits(jnp.array([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    assert pack_bits(jnp.array([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b1101, 1]
    assert pack_bits(jnp.array([0xA, 0x5]), 4).tolist() == [0x5A]
    assert pack_bits(jnp.array([5, 3]), 3).tolist() == [0b011101]
    # Packing agrees with NumPy's little-endian bit packing of the bit stream.
    codes = np.random.default_rng(0).integers(0, 8, size=21)
    stream = ((codes[:, None] >> np.arange(3)) & 1).reshape(-1).astype(np.uint8)
    np.testing.assert_array_equal(
        np.asarray(pack_bits(jnp.asarray(codes), 3)), np.packbits(stream, bitorder="little")
    )


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 12, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_qtensor_pack_unpack_is_bit_exact(bits, symmetric):
    x = jax.random.normal(jax.random.key(bits), (13, 6))
    q = quantize(x, bits, symmetric=symmetric, axis=-1)
    p = pack(q)
    assert isinstance(p, PackedQTensor) and p.packed.size == packed_num_bytes(78, bits)
    u = unpack(p)
    assert u.values.dtype == q.values.dtype
    np.testing.assert_array_equal(np.asarray(u.values), np.asarray(q.values))
    np.testing.assert_array_equal(np.asarray(dequantize(u)), np.asarray(dequantize(q)))


def test_binary_and_ternary_pack_to_one_and_two_bits():
    w = jax.random.normal(jax.random.key(0), (64, 32))
    for fn, bits in ((binarize, 1), (ternarize, 2)):
        q = fn(w, axis=-1)
        p = pack(q)
        assert p.packed.nbytes == 64 * 32 * bits // 8
        np.testing.assert_array_equal(np.asarray(unpack(p).values), np.asarray(q.values))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_packed_sizes_take_bits_per_value(bits):
    n_in, n_out = 256, 64
    params = {"kernel": jnp.ones((n_in, n_out)), "bias": jnp.ones(n_out)}
    q = quantize_params(params, bits=bits, axis=-1)
    packed = pack_params(q)
    overhead = n_out * 4  # per-channel float32 scales, no zero points (symmetric)
    bias = n_out * 4
    assert size_bytes(params) == (n_in * n_out + n_out) * 4
    assert size_bytes(q) == n_in * n_out * 1 + overhead + bias  # int8 storage
    assert size_bytes(packed) == n_in * n_out * bits // 8 + overhead + bias
    back = unpack_params(packed)
    np.testing.assert_array_equal(np.asarray(back["kernel"].values), np.asarray(q["kernel"].values))


def test_size_bytes_counts_zero_points_and_other_leaves():
    q = quantize(jnp.ones((10, 4)), 4, symmetric=False, axis=-1)
    assert size_bytes(q) == 40 + 4 * 4 + 4 * 1  # int8 values, f32 scales, int8 zero points
    assert size_bytes(pack(q)) == 20 + 16 + 4
    assert size_bytes({"a": 1.0, "b": "name", "c": None, "d": np.zeros(3, np.float16)}) == 8 + 6
    assert size_bytes({"w": jnp.ones((4, 4), jnp.int16)}) == 32


def test_int8_weights_are_four_times_smaller():
    params = {"w": jax.random.normal(jax.random.key(1), (784, 300))}
    ratio = size_bytes(params) / size_bytes(quantize_params(params, bits=8, axis=-1))
    assert 3.9 < ratio <= 4.0


def test_errors():
    with pytest.raises(TypeError, match="pack expects a QTensor"):
        pack(jnp.ones(3))
    with pytest.raises(TypeError, match="unpack expects a PackedQTensor"):
        unpack(quantize(jnp.ones(3), 8))
    with pytest.raises(ValueError, match="need"):
        unpack_bits(jnp.zeros(3, jnp.uint8), 4, 10)
    with pytest.raises(ValueError, match="bits"):
        pack_bits(jnp.zeros(3), 0)
