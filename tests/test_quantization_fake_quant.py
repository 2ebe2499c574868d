"""fake_quant: forward equals dequantize(quantize(x)); straight-through gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.quantization import (
    Percentile,
    dequantize,
    fake_quant,
    quantize,
    representable_range,
    straight_through,
)

CASES = [
    dict(bits=8),
    dict(bits=4, symmetric=False, axis=-1),
    dict(bits=3, axis=0, group_size=4),
    dict(bits=2, symmetric=False, calibration="mse"),
    dict(bits=5, calibration=Percentile(90.0)),
    dict(bits=1),
    dict(bits=8, power_of_two=True, axis=-1),
]


@pytest.mark.parametrize("kwargs", CASES, ids=str)
def test_forward_equals_dequantize_quantize(kwargs):
    x = jax.random.normal(jax.random.key(0), (8, 12)) * 2
    np.testing.assert_array_equal(
        np.asarray(fake_quant(x, **kwargs)), np.asarray(dequantize(quantize(x, **kwargs)))
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    clip=st.floats(0.1, 3.0),
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
)
def test_gradient_is_one_inside_zero_outside(seed, clip, bits, symmetric):
    x = jax.random.normal(jax.random.key(seed), (64,)) * 2
    clip_range = (-clip, clip / 2)
    g = jax.grad(lambda x: fake_quant(x, bits, symmetric=symmetric, clip_range=clip_range).sum())(x)
    q = quantize(x, bits, symmetric=symmetric, clip_range=clip_range)
    lo, hi = (float(v.squeeze()) for v in representable_range(q.scale, q.zero_point, bits))
    xn = np.asarray(x, np.float64)
    inside = (xn >= lo) & (xn <= hi)
    far = np.minimum(np.abs(xn - lo), np.abs(xn - hi)) > 1e-5  # skip float ties at the edges
    np.testing.assert_array_equal(np.asarray(g)[far], inside[far].astype(np.float32))
    assert set(np.unique(np.asarray(g)).tolist()) <= {0.0, 1.0}


def test_minmax_range_passes_every_gradient():
    x = jax.random.normal(jax.random.key(1), (16, 4))
    g = jax.grad(lambda x: (fake_quant(x, 4, axis=-1) * 3.0).sum())(x)
    np.testing.assert_array_equal(np.asarray(g), 3.0)


def test_percentile_clips_outliers_and_blocks_their_gradient():
    x = jnp.concatenate([jnp.linspace(-1, 1, 199), jnp.array([50.0])])
    g = jax.grad(lambda x: fake_quant(x, 8, calibration=Percentile(99.0)).sum())(x)
    assert float(g[-1]) == 0.0 and float(g[:-1].min()) == 1.0
    assert float(fake_quant(x, 8, calibration=Percentile(99.0))[-1]) < 1.1


def test_inside_jitted_loss_and_forward_mode():
    w = jax.random.normal(jax.random.key(2), (5, 3))
    xb = jax.random.normal(jax.random.key(3), (7, 5))

    @jax.jit
    def loss(w):
        return jnp.sum((xb @ fake_quant(w, 4, axis=-1)) ** 2)

    g = jax.grad(loss)(w)
    wq = fake_quant(w, 4, axis=-1)
    expected = jax.grad(lambda v: jnp.sum((xb @ v) ** 2))(wq)  # STE: gradient at w_hat
    np.testing.assert_allclose(np.asarray(g), np.asarray(expected), rtol=1e-5, atol=1e-5)
    _, tangent = jax.jvp(
        lambda v: fake_quant(v, 8, clip_range=(-0.5, 0.5)), (w,), (jnp.ones_like(w),)
    )
    np.testing.assert_array_equal(
        np.asarray(tangent), (np.abs(np.asarray(w)) <= 0.5).astype(np.float32)
    )


def test_keeps_dtype_and_straight_through_helper():
    x = jax.random.normal(jax.random.key(4), (6, 6)).astype(jnp.bfloat16)
    assert fake_quant(x, 8).dtype == jnp.bfloat16
    g = jax.grad(lambda v: straight_through(v, jnp.round(v), -1.0, 1.0).sum())(
        jnp.array([-2.0, 0.4, 1.0])
    )
    np.testing.assert_array_equal(np.asarray(g), [0.0, 1.0, 1.0])


def test_errors_match_quantize():
    with pytest.raises(ValueError, match="bits"):
        fake_quant(jnp.ones(3), 0)
    with pytest.raises(ValueError, match="finite"):
        fake_quant(jnp.array([1.0, jnp.nan]), 8)
    with pytest.raises(ValueError, match="out of range"):
        fake_quant(jnp.ones((2, 2)), 8, axis=3)
    with pytest.raises(ValueError, match="does not divide"):
        fake_quant(jnp.ones((2, 5)), 8, group_size=2)
