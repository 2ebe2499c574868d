"""binarize / ternarize against float64 NumPy references, and their QAT forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.quantization import (
    binarize,
    dequantize,
    fake_binarize,
    fake_ternarize,
    ternarize,
)


def np_ternarize(x, axis_reduce, threshold=0.7):
    a = np.abs(x)
    delta = threshold * a.mean(axis=axis_reduce, keepdims=True)
    keep = a > delta
    scale = (a * keep).sum(axis=axis_reduce, keepdims=True) / np.maximum(
        keep.sum(axis=axis_reduce, keepdims=True), 1
    )
    return np.where(keep, np.sign(x), 0), scale


@pytest.mark.parametrize("axis", [None, -1, 0])
def test_binarize_matches_reference(axis):
    x = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    q = binarize(jnp.asarray(x), axis=axis)
    red = (0, 1) if axis is None else tuple(i for i in range(2) if i != axis % 2)
    ref_scale = np.abs(x.astype(np.float64)).mean(axis=red, keepdims=True)
    assert q.bits == 1 and q.symmetric and q.values.dtype == jnp.int8
    np.testing.assert_array_equal(np.asarray(q.values), np.where(x >= 0, 1, -1))
    np.testing.assert_allclose(np.asarray(q.scale), ref_scale, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(dequantize(q)), np.where(x >= 0, 1, -1) * ref_scale, rtol=1e-6
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), factor=st.sampled_from([0.8, 0.95, 1.05, 1.25]))
def test_binarize_scale_is_l2_optimal(seed, factor):
    x = np.asarray(jax.random.normal(jax.random.key(seed), (64,)), np.float64)
    q = binarize(jnp.asarray(x, jnp.float32))
    xh = np.asarray(dequantize(q), np.float64)
    assert np.sum((xh - x) ** 2) <= np.sum((factor * xh - x) ** 2) + 1e-9


@pytest.mark.parametrize("axis", [None, -1])
def test_ternarize_matches_reference(axis):
    x = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    q = ternarize(jnp.asarray(x), axis=axis)
    red = (0, 1) if axis is None else (0,)
    t, scale = np_ternarize(x.astype(np.float64), red)
    assert q.bits == 2 and set(np.unique(np.asarray(q.values)).tolist()) <= {-1, 0, 1}
    np.testing.assert_array_equal(np.asarray(q.values), t)
    np.testing.assert_allclose(np.asarray(q.scale), scale, rtol=1e-6)
    assert 0 < np.mean(t == 0) < 0.6


def test_group_layout_and_all_zero_block():
    x = jnp.concatenate([jnp.zeros((4, 3)), jnp.ones((4, 3))], axis=0)
    q = binarize(x, axis=-1, group_size=4, group_axis=0)
    assert q.scale.shape == (2, 1, 3)
    np.testing.assert_array_equal(np.asarray(q.scale)[:, 0, 0], [1.0, 1.0])
    t = ternarize(jnp.zeros((5,)))
    np.testing.assert_array_equal(np.asarray(dequantize(t)), 0.0)


def test_fake_forms_forward_and_identity_gradient():
    x = jax.random.normal(jax.random.key(2), (10, 6)) * 3
    np.testing.assert_array_equal(
        np.asarray(fake_binarize(x, axis=-1)), np.asarray(dequantize(binarize(x, axis=-1)))
    )
    np.testing.assert_array_equal(
        np.asarray(fake_ternarize(x, axis=-1)), np.asarray(dequantize(ternarize(x, axis=-1)))
    )
    for fn in (fake_binarize, fake_ternarize):
        g = jax.jit(jax.grad(lambda v, fn=fn: (fn(v, axis=-1) * 2.0).sum()))(x)
        np.testing.assert_array_equal(np.asarray(g), 2.0)


def test_errors():
    with pytest.raises(ValueError, match="threshold"):
        ternarize(jnp.ones(3), threshold=1.0)
    with pytest.raises(ValueError, match="finite"):
        binarize(jnp.array([1.0, jnp.inf]))
    with pytest.raises(ValueError, match="out of range"):
        binarize(jnp.ones((2, 2)), axis=-3)
    with pytest.raises(TypeError, match="floating"):
        ternarize(jnp.arange(3))
