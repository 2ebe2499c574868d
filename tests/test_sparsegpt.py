"""sparsegpt against a float64 NumPy loop implementation of the paper, Wanda, magnitude."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _one_shot import make_layer, np_inverse_cholesky_upper, np_prepare, output_error

from jaxopt_models.hessian import gram_matrix
from jaxopt_models.pruning import sparsegpt, wanda

sparsegpt_module = importlib.import_module("jaxopt_models.pruning.sparsegpt")


def np_sparsegpt(w, h, sparsity=None, n_m=None, block_size=128, damp=0.01):
    """SparseGPT in loop form, float64: masks chosen per block (unstructured) or per m-group
    of rows (n:m) from the up-to-date weights by w^2 / U[i, i]^2; errors applied row by row."""
    w, h = np_prepare(w, h)
    n_in, n_out = w.shape
    u = np_inverse_cholesky_upper(h, damp)
    d = np.diag(u)
    if n_m is not None:
        m = n_m[1]
        block_size = m * max(1, min(block_size, n_in) // m)
    block_size = min(block_size, n_in)
    q = np.zeros_like(w)
    pruned = np.zeros(w.shape, bool)
    for i in range(n_in):
        if n_m is None and i % block_size == 0:
            end = min(i + block_size, n_in)
            sal = (w[i:end] / d[i:end, None]) ** 2
            k = round(sparsity * n_out * end) - round(sparsity * n_out * i)
            order = np.argsort(sal.ravel(), kind="stable")[:k]
            block = np.zeros(sal.size, bool)
            block[order] = True
            pruned[i:end] = block.reshape(end - i, n_out)
        if n_m is not None and i % n_m[1] == 0:
            n, m = n_m
            sal = (w[i : i + m] / d[i : i + m, None]) ** 2
            rank = np.argsort(np.argsort(sal, axis=0, kind="stable"), axis=0, kind="stable")
            pruned[i : i + m] = rank < m - n
        q[i] = np.where(pruned[i], 0.0, w[i])
        err = (w[i] - q[i]) / u[i, i]
        w[i:] -= np.outer(u[i, i:], err)
    return q


def magnitude(w, sparsity=None, n_m=None):
    """Per-output-column magnitude pruning (same comparison groups as Wanda)."""
    return np.asarray(
        wanda(jnp.asarray(w, jnp.float32), jnp.ones(w.shape[0]), sparsity=sparsity, n_m=n_m)
    )


@pytest.fixture(scope="module")
def layer():
    return make_layer(1, n_in=192, n_out=96, rows=768)


def _run(layer, **kwargs):
    x, w, h = layer
    return np.asarray(
        sparsegpt(jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32), **kwargs), np.float64
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity": 0.5},
        {"sparsity": 0.7, "block_size": 80},  # padded last block
        {"n_m": (2, 4)},
        {"n_m": (1, 4), "block_size": 30},  # block rounded down to 28
        {"n_m": (4, 8), "block_size": 64},
    ],
)
def test_matches_reference_exact_counts(layer, kwargs):
    x, w, h = layer
    out = _run(layer, **kwargs)
    ref = np_sparsegpt(w, h, **kwargs)
    err, err_ref = output_error(x, w, out), output_error(x, w, ref)
    assert abs(err - err_ref) <= 0.03 * err_ref, (err, err_ref)
    assert np.mean((out == 0) == (ref == 0)) > 0.99  # the same masks up to float32 ties
    if "sparsity" in kwargs:
        assert int((out == 0).sum()) == round(kwargs["sparsity"] * w.size)
    else:
        n, m = kwargs["n_m"]
        nonzeros = (out != 0).reshape(w.shape[0] // m, m, w.shape[1]).sum(axis=1)
        assert np.all(nonzeros == n)


@pytest.mark.parametrize("target", [{"sparsity": 0.5}, {"n_m": (2, 4)}])
def test_error_order_sparsegpt_wanda_magnitude(layer, target):
    x, w, h = layer
    e_sgpt = output_error(x, w, _run(layer, **target))
    e_wanda = output_error(
        x, w, wanda(jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32), **target)
    )
    e_mag = output_error(x, w, magnitude(w, **target))
    assert e_sgpt < e_wanda < e_mag, (e_sgpt, e_wanda, e_mag)


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.9])
def test_exact_sparsity_many_levels(sparsity):
    w = jax.random.normal(jax.random.key(0), (100, 30))
    h = gram_matrix(jax.random.normal(jax.random.key(1), (400, 100)))
    out = np.asarray(sparsegpt(w, h, sparsity=sparsity, block_size=32))
    assert int((out == 0).sum()) == round(sparsity * w.size)
    if sparsity == 0.0:
        np.testing.assert_allclose(out, np.asarray(w), atol=1e-6)


def test_dead_inputs_zero_and_one_compile(layer):
    x, w, h = layer
    x = x.copy()
    x[:, [5, 6]] = 0.0
    h = x.T @ x
    wj, hj = jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32)
    a = np.asarray(sparsegpt(wj, hj, sparsity=0.5, damp=0.01))
    compiled = sparsegpt_module._sparsegpt._cache_size()
    sparsegpt(wj * 2, hj, sparsity=0.6, damp=0.05)  # new values, sparsity, damp: no retrace
    assert sparsegpt_module._sparsegpt._cache_size() == compiled
    assert np.all(a[[5, 6]] == 0)
    ref = np_sparsegpt(w, h, sparsity=0.5)
    assert abs(output_error(x, w, a) - output_error(x, w, ref)) <= 0.03 * output_error(x, w, ref)


def test_dtype_preserved():
    w = jax.random.normal(jax.random.key(0), (64, 8)).astype(jnp.bfloat16)
    out = sparsegpt(w, jnp.eye(64), n_m=(2, 4))
    assert out.dtype == jnp.bfloat16 and int((out == 0).sum()) == 256


W = jnp.ones((32, 8))
H = jnp.eye(32)


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((W, jnp.eye(8)), {"sparsity": 0.5}, ValueError, r"hessian must have shape \(32, 32\)"),
        ((W, H), {}, ValueError, "exactly one of sparsity"),
        ((W, H), {"sparsity": 0.5, "n_m": (2, 4)}, ValueError, "exactly one of sparsity"),
        ((W, H), {"sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\)"),
        ((W, H), {"sparsity": -0.1}, ValueError, r"sparsity must be in \[0, 1\)"),
        ((W, H), {"n_m": (2, 5)}, ValueError, "m=5 does not divide the input axis"),
        ((W, H), {"n_m": (4, 4)}, ValueError, "1 <= n < m"),
        ((W, H), {"n_m": (0, 4)}, ValueError, "1 <= n < m"),
        ((W, H), {"n_m": (2,)}, TypeError, r"n_m must be an \(n, m\) pair"),
        ((W, H), {"n_m": (2.0, 4)}, TypeError, "n_m must hold ints"),
        ((W, H.at[0, 1].set(jnp.nan)), {"sparsity": 0.5}, ValueError, "hessian must be finite"),
        ((W, H), {"sparsity": 0.5, "damp": float("nan")}, ValueError, "damp must be a finite"),
    ],
)
def test_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        sparsegpt(*args, **kwargs)


def test_not_positive_definite():
    w = jnp.ones((64, 8), jnp.bfloat16)  # the compiled shape of test_dtype_preserved
    with pytest.raises(ValueError, match=r"attn/q: .*not positive definite.*damp=0.01"):
        sparsegpt(w, -jnp.eye(64), n_m=(2, 4), name="attn/q")
