"""Tests for jaxopt_models.compression.low_rank (SVD factorisation of kernels)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.compression.low_rank import (
    LowRankConv,
    LowRankDense,
    factorize,
    low_rank,
    low_rank_size,
    rank_for_energy,
    reconstruct_low_rank,
)


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (5, 5), padding="SAME", name="Conv_0")(x))
        x = nn.Conv(8, (3, 3), strides=2, padding="VALID", name="Conv_1")(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(20, name="Dense_0")(x))
        return nn.Dense(10, name="Dense_1")(x)


class _LowRankCNN(nn.Module):
    ranks: tuple

    @nn.compact
    def __call__(self, x):
        r = self.ranks
        x = nn.relu(LowRankConv(6, (5, 5), r[0], padding="SAME", name="Conv_0")(x))
        x = LowRankConv(8, (3, 3), r[1], strides=2, padding="VALID", name="Conv_1")(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(LowRankDense(20, r[2], name="Dense_0")(x))
        return LowRankDense(10, r[3], name="Dense_1")(x)


X = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))


@pytest.fixture(scope="module")
def params():
    # Random params of the right shapes without compiling the model's init (slow for convs).
    shapes = jax.eval_shape(_CNN().init, jax.random.key(1), X)["params"]
    rng = np.random.default_rng(1)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.3, jnp.float32), shapes
    )


def test_full_rank_reconstruction_is_exact(params):
    full = low_rank(params, rank=10_000)  # capped at the full rank of every layer
    assert full["Conv_0"]["kernel_a"].shape == (5, 5, 3, 6)
    assert full["Conv_0"]["kernel_b"].shape == (6, 6)
    assert full["Dense_0"]["kernel_a"].shape == (200, 20)
    back = reconstruct_low_rank(full)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-6)


def test_truncation_error_matches_eckart_young(params):
    w = np.asarray(params["Dense_0"]["kernel"], np.float64)
    s = np.linalg.svd(w, compute_uv=False)
    for r in (1, 4, 10):
        a, b = factorize(w, rank=r)
        err = np.linalg.norm(a.astype(np.float64) @ b - w)
        np.testing.assert_allclose(err, np.sqrt(np.sum(s[r:] ** 2)), rtol=1e-4)


def test_energy_picks_the_right_rank():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    v, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    s = np.array([8.0, 4.0, 2.0, 1.0, 0.5] + [0.01] * 7)
    w = (u[:, :12] * s) @ v.T
    cum = np.cumsum(s**2) / np.sum(s**2)
    for energy, expected in ((0.5, 1), (float(cum[1]) + 1e-9, 3), (0.99, 4), (1.0, 12)):
        out = low_rank({"Dense_0": {"kernel": w}}, energy=energy)
        assert out["Dense_0"]["kernel_b"].shape == (expected, 12), energy
    out = low_rank({"Dense_0": {"kernel": w}}, energy=float(cum[1]))  # exactly 2 components
    assert out["Dense_0"]["kernel_b"].shape == (2, 12)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(0.0, 100.0), min_size=1, max_size=20),
    st.floats(0.01, 1.0),
)
def test_rank_for_energy_is_smallest_sufficient_rank(values, energy):
    s = np.sort(np.asarray(values))[::-1]
    r = rank_for_energy(s, energy)
    total = np.sum(s**2)
    assert 1 <= r <= s.size
    if total > 0:
        assert np.sum(s[:r] ** 2) >= energy * total * (1 - 1e-9)
        if r > 1:
            assert np.sum(s[: r - 1] ** 2) < energy * total * (1 + 1e-9)


def test_low_rank_modules_match_reconstructed_weights(params):
    ranks = (3, 4, 5, 6)
    factored = low_rank(
        params,
        rank={"Conv_0/kernel": 3, "Conv_1/kernel": 4, "Dense_0/kernel": 5, "Dense_1/kernel": 6},
    )
    assert low_rank_size(factored) < low_rank_size(params)
    y_low = jax.jit(_LowRankCNN(ranks).apply)({"params": factored}, X)
    y_ref = jax.jit(_CNN().apply)({"params": reconstruct_low_rank(factored)}, X)
    np.testing.assert_allclose(np.asarray(y_low), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    # The low-rank model's own init has the same parameter shapes.
    init = jax.eval_shape(_LowRankCNN(ranks).init, jax.random.key(2), X)["params"]
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, factored)


def test_filter_fn_and_callable_rank(params):
    out = low_rank(
        params, rank=lambda name, w: 2, filter_fn=lambda n, w: n.startswith("Dense") and w.ndim > 1
    )
    assert "kernel" in out["Conv_0"] and "kernel_a" in out["Dense_1"]
    assert out["Dense_1"]["kernel_a"].shape == (20, 2)


def test_validation_errors(params):
    with pytest.raises(ValueError, match="exactly one of rank and energy"):
        low_rank(params)
    with pytest.raises(ValueError, match="exactly one of rank and energy"):
        low_rank(params, rank=2, energy=0.5)
    with pytest.raises(ValueError, match="energy"):
        low_rank(params, energy=1.5)
    with pytest.raises(ValueError, match="energy"):
        low_rank(params, energy=0.0)
    with pytest.raises(ValueError, match="rank for"):
        low_rank(params, rank=0)
    with pytest.raises(ValueError, match="no entry"):
        low_rank(params, rank={"Conv_0/kernel": 2})
    with pytest.raises(TypeError, match="nested dict"):
        low_rank([np.ones((3, 3))], rank=1)
    with pytest.raises(ValueError, match="kernel_size"):
        jax.eval_shape(
            LowRankConv(4, (1, 1, 1, 1), 2).init, jax.random.key(0), jnp.ones((1, 2, 2, 2, 2, 1))
        )
