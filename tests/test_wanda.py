"""wanda against a float64 NumPy implementation of the paper: masks, counts, bad inputs."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _one_shot import make_layer, output_error
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxopt_models.pruning import wanda

wanda_module = importlib.import_module("jaxopt_models.pruning.wanda")
TINY = np.finfo(np.float32).tiny


def np_wanda(w, h, sparsity=None, n_m=None):
    """Wanda in float64: score |w| * ||x_i||, each output column keeps its best inputs."""
    diag = np.diag(h) if h.ndim == 2 else h
    score = np.abs(w) * np.sqrt(diag)[:, None]
    n_in, n_out = w.shape
    keep = np.ones(w.shape, bool)
    for j in range(n_out):
        if n_m is None:
            k = round(sparsity * n_in)
            keep[np.argsort(score[:, j], kind="stable")[:k], j] = False
        else:
            n, m = n_m
            for g in range(0, n_in, m):
                order = np.argsort(score[g : g + m, j], kind="stable")
                keep[g + order[: m - n], j] = False
    return np.where(keep, w, 0.0)


@pytest.fixture(scope="module")
def layer():
    return make_layer(2, n_in=256, n_out=128, rows=512)


@pytest.mark.parametrize(
    "target",
    [
        {"sparsity": 0.5},
        {"sparsity": 0.3},
        {"sparsity": 0.9},
        {"n_m": (2, 4)},
        {"n_m": (1, 8)},
        {"n_m": (3, 4)},
    ],
)
@pytest.mark.parametrize("diagonal_only", [False, True])
def test_matches_reference_and_counts(layer, target, diagonal_only):
    x, w, h = layer
    hj = jnp.asarray(np.diag(h) if diagonal_only else h, jnp.float32)
    out = np.asarray(wanda(jnp.asarray(w, jnp.float32), hj, **target), np.float64)
    ref = np_wanda(w, h, **target)
    err, err_ref = output_error(x, w, out), output_error(x, w, ref)
    assert abs(err - err_ref) <= 0.03 * err_ref, (err, err_ref)
    assert np.mean((out == 0) == (ref == 0)) > 0.999
    np.testing.assert_array_equal(out[out != 0], w[out != 0])  # kept weights unchanged
    if "sparsity" in target:
        assert np.all((out == 0).sum(axis=0) == round(target["sparsity"] * w.shape[0]))
    else:
        n, m = target["n_m"]
        nonzeros = (out != 0).reshape(w.shape[0] // m, m, w.shape[1]).sum(axis=1)
        assert np.all(nonzeros == n)


def np_keep_top_per_column(score, num_pruned):
    """float64 reference of the per-column selection: the ``num_pruned`` lowest scores of each
    column are dropped, ties by lowest index first (NaN lowest, subnormals count as 0)."""
    s = np.asarray(score, np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    s = np.where(np.abs(s) < TINY, 0.0, s)
    keep = np.ones(s.shape, bool)
    for j in range(s.shape[1]):
        order = np.lexsort((np.arange(len(s)), s[:, j]))
        keep[order[:num_pruned], j] = False
    return keep


values = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 2.0, -1.0]),
    st.floats(width=32),  # nan, +-inf, subnormals
    st.floats(0, 10, width=32),
)


@settings(max_examples=40, deadline=None)
@given(score=hnp.arrays(np.float32, (37, 5), elements=values), frac=st.floats(0, 1))
def test_selection_matches_sorting(score, frac):
    num_pruned = round(frac * 37)
    keep = np.asarray(wanda_module.keep_top_per_column(jnp.asarray(score), num_pruned))
    np.testing.assert_array_equal(keep, np_keep_top_per_column(score, num_pruned))
    assert np.all((~keep).sum(axis=0) == num_pruned)


def test_selection_heavy_tails_atoms_and_wide_columns():
    """Columns of very different scales, a zero atom straddling the threshold, integer ties."""
    rng = np.random.default_rng(3)
    heavy = rng.lognormal(0, 4, (1024, 6)) * np.exp(8 * rng.standard_normal(6))
    atom = np.where(rng.random((1024, 6)) < 0.5, 0.0, rng.standard_normal((1024, 6)) ** 2)
    ints = rng.integers(0, 4, (1024, 6)).astype(np.float64)
    select = jax.jit(wanda_module.keep_top_per_column, static_argnums=1)
    for score in (heavy, atom, ints):
        score = score.astype(np.float32)
        for num_pruned in (1, 300, 512, 600, 1023, 1024):
            np.testing.assert_array_equal(
                np.asarray(select(jnp.asarray(score), num_pruned)),
                np_keep_top_per_column(score, num_pruned),
            )


def test_activations_matter(layer):
    """Inputs with large activations are kept even where their weights are small."""
    x, w, h = layer
    hot = np.argsort(np.diag(h))[-4:]
    out = np.asarray(wanda(jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32), sparsity=0.5))
    assert (out[hot] != 0).mean() > 0.95
    magnitude_kept = np.abs(w[hot]) >= np.median(np.abs(w), axis=0)
    assert magnitude_kept.mean() < 0.7


def test_ties_and_dead_inputs():
    w = jnp.ones((8, 3))
    h = jnp.diag(jnp.array([0.0, 1, 1, 1, 1, 1, 1, 0]))
    out = np.asarray(wanda(w, h, sparsity=0.25))
    # the two dead inputs go first; ties among them by index
    assert np.all(out[[0, 7]] == 0) and np.all(out[1:7] == 1)
    out = np.asarray(wanda(w, jnp.ones(8), sparsity=0.5))
    assert np.all(out[:4] == 0) and np.all(out[4:] == 1)  # all tied: lowest indices go first
    assert wanda(w.astype(jnp.bfloat16), jnp.ones(8), n_m=(2, 4)).dtype == jnp.bfloat16


def test_under_jit():
    w = jax.random.normal(jax.random.key(0), (16, 4))
    h = jnp.eye(16)
    traced = jax.jit(lambda w, h: wanda(w, h, n_m=(2, 4)))(w, h)
    np.testing.assert_array_equal(np.asarray(traced), np.asarray(wanda(w, h, n_m=(2, 4))))


W = jnp.ones((32, 8))
H = jnp.eye(32)


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((W, jnp.eye(8)), {"sparsity": 0.5}, ValueError, r"hessian must have shape \(32, 32\)"),
        ((W, jnp.ones(31)), {"sparsity": 0.5}, ValueError, r"hessian must have shape \(32,\)"),
        ((W, H), {}, ValueError, "exactly one of sparsity"),
        ((W, H), {"sparsity": 0.5, "n_m": (2, 4)}, ValueError, "exactly one of sparsity"),
        ((W, H), {"sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\)"),
        ((W, H), {"sparsity": "half"}, TypeError, "sparsity must be a number"),
        ((W, H), {"n_m": (2, 3)}, ValueError, "m=3 does not divide"),
        ((W, H), {"n_m": (5, 4)}, ValueError, "1 <= n < m"),
        ((W, -H), {"sparsity": 0.5}, ValueError, "non-negative diagonal"),
        ((W, H.at[1, 1].set(jnp.inf)), {"sparsity": 0.5}, ValueError, "hessian must be finite"),
        ((np.ones((32, 8), np.int8), H), {"sparsity": 0.5}, TypeError, "floating dtype"),
    ],
)
def test_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        wanda(*args, **kwargs)
