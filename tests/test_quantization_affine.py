"""The affine grid: integer ranges, storage dtypes, scales / zero points, rounding."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.quantization import (
    grid_to_float,
    integer_range,
    quantize_to_grid,
    representable_range,
    scale_and_zero_point,
    storage_dtype,
)


@pytest.mark.parametrize(
    "bits,symmetric,expected",
    [
        (1, True, (-1, 1)),
        (1, False, (-1, 0)),
        (2, True, (-1, 1)),
        (2, False, (-2, 1)),
        (4, True, (-7, 7)),
        (8, True, (-127, 127)),
        (8, False, (-128, 127)),
        (16, True, (-32767, 32767)),
        (16, False, (-32768, 32767)),
    ],
)
def test_integer_range(bits, symmetric, expected):
    assert integer_range(bits, symmetric) == expected


def test_storage_dtype_is_smallest_signed():
    assert all(storage_dtype(b) == jnp.int8 for b in range(1, 9))
    assert all(storage_dtype(b) == jnp.int16 for b in range(9, 17))
    with pytest.raises(ValueError, match="bits"):
        storage_dtype(17)


@settings(max_examples=25, deadline=None)
@given(
    lo=st.floats(-100, 100),
    width=st.floats(1e-3, 100),
    bits=st.integers(2, 16),
)
def test_scale_and_zero_point_formulas(lo, width, bits):
    hi = lo + width
    s, zp = scale_and_zero_point(jnp.float32(lo), jnp.float32(hi), bits, symmetric=True)
    assert zp is None
    amax = max(abs(np.float32(lo)), abs(np.float32(hi)))
    np.testing.assert_allclose(float(s), amax / (2 ** (bits - 1) - 1), rtol=1e-6)
    s, zp = scale_and_zero_point(jnp.float32(lo), jnp.float32(hi), bits, symmetric=False)
    lo0, hi0 = min(np.float32(lo), 0.0), max(np.float32(hi), 0.0)
    ref_s = (np.float64(hi0) - lo0) / (2**bits - 1)
    np.testing.assert_allclose(float(s), ref_s, rtol=1e-5)
    qmin, qmax = integer_range(bits, False)
    assert zp.dtype == storage_dtype(bits)
    assert qmin <= int(zp) <= qmax
    # Zero is on the grid and the nudged range covers [lo0, hi0] up to half a step.
    rlo, rhi = representable_range(s, zp, bits)
    assert float(rlo) <= lo0 + float(s) / 2 + 1e-6 * abs(lo0)
    assert float(rhi) >= hi0 - float(s) / 2 - 1e-6 * abs(hi0)


def test_degenerate_range_gets_unit_scale():
    s, zp = scale_and_zero_point(jnp.zeros(3), jnp.zeros(3), 8, symmetric=False)
    np.testing.assert_array_equal(np.asarray(s), 1.0)
    np.testing.assert_array_equal(np.asarray(zp), -128)
    s, _ = scale_and_zero_point(jnp.float32(0), jnp.float32(0), 4, symmetric=True)
    assert float(s) == 1.0


def test_power_of_two_rounds_up():
    s, _ = scale_and_zero_point(jnp.float32(-1), jnp.float32(1), 8, True, power_of_two=True)
    assert float(s) == 2.0**-6  # 1/127 rounds up to 1/64
    s, _ = scale_and_zero_point(jnp.float32(0), jnp.float32(3), 2, False, power_of_two=True)
    assert float(s) == 1.0


def test_quantize_to_grid_rounds_half_to_even_and_clips():
    x = jnp.array([0.5, 1.5, 2.5, -0.5, 100.0, -100.0])
    q = quantize_to_grid(x, jnp.float32(1.0), None, 4)
    np.testing.assert_array_equal(np.asarray(q), [0, 2, 2, -0, 7, -7])
    q = quantize_to_grid(x, jnp.float32(1.0), jnp.int8(-8), 4)
    np.testing.assert_array_equal(np.asarray(q), [-8, -6, -6, -8, 7, -8])
    np.testing.assert_array_equal(
        np.asarray(grid_to_float(q.astype(jnp.int8), jnp.float32(1.0), jnp.int8(-8))),
        [0, 2, 2, 0, 15, 0],
    )


def test_one_bit_symmetric_grid_is_sign():
    q = quantize_to_grid(jnp.array([-2.0, -0.0, 0.0, 3.0]), jnp.float32(5.0), None, 1)
    np.testing.assert_array_equal(np.asarray(q), [-1, 1, 1, 1])
    lo, hi = representable_range(jnp.float32(5.0), None, 1)
    assert (float(lo), float(hi)) == (-5.0, 5.0)
