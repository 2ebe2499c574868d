"""Tests for jaxopt_models.compression.kmeans (1-D k-means in JAX)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

from jaxopt_models.compression.kmeans import INITS, assign, init_centroids, kmeans


def _layer(shape=(100, 60), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * np.sqrt(2 / shape[0])).astype(np.float32)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("pruned", [False, True])
def test_inertia_matches_sklearn_for_same_init(init, pruned):
    w = _layer().reshape(-1)
    mask = np.abs(w) > np.quantile(np.abs(w), 0.9) if pruned else np.ones(w.shape, bool)
    k = 16
    c0 = init_centroids(w, k, init, sample_weight=mask, key=jax.random.key(3))
    ours = kmeans(w, c0, sample_weight=mask)
    ref = KMeans(k, init=np.asarray(c0, np.float64).reshape(-1, 1), n_init=1).fit(
        w[mask].astype(np.float64).reshape(-1, 1)
    )
    assert abs(float(ours.inertia) / ref.inertia_ - 1) < 0.01
    np.testing.assert_allclose(
        np.asarray(ours.centroids), np.sort(ref.cluster_centers_.ravel()), atol=1e-4
    )


def test_labels_are_nearest_centroids_and_inertia_is_exact():
    w = _layer(seed=1).reshape(-1)  # same shapes as above: compiled functions are reused
    res = kmeans(w, init_centroids(w, 16, "density"))
    c = np.asarray(res.centroids, np.float64)
    assert np.all(np.diff(c) >= 0)
    d = (w.astype(np.float64)[:, None] - c[None, :]) ** 2
    np.testing.assert_array_equal(np.asarray(res.labels), np.argmin(d, axis=1))
    np.testing.assert_allclose(float(res.inertia), d.min(axis=1).sum(), rtol=1e-4)


def test_weighted_points_with_zero_weight_are_ignored():
    x = np.array([0.0, 0.1, 1.0, 1.1, 100.0, -100.0], np.float32)
    sw = np.array([1, 1, 1, 1, 0, 0], np.float32)
    res = kmeans(x, init_centroids(x, 2, "linear", sample_weight=sw), sample_weight=sw)
    np.testing.assert_allclose(np.asarray(res.centroids), [0.05, 1.05], atol=1e-6)


def test_empty_clusters_are_relocated_like_sklearn():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(-1, 0.1, 500), rng.normal(1, 0.1, 500)]).astype(np.float32)
    c0 = np.linspace(-1.2, 1.2, 9).astype(np.float32)  # several centroids start in the gap
    ours = kmeans(x, c0)
    ref = KMeans(9, init=c0.astype(np.float64).reshape(-1, 1), n_init=1).fit(
        x.astype(np.float64).reshape(-1, 1)
    )
    assert len(np.unique(np.asarray(ours.labels))) == 9
    assert abs(float(ours.inertia) / ref.inertia_ - 1) < 0.01


def test_inits():
    x = jnp.asarray(_layer(seed=3).reshape(-1))
    lin = init_centroids(x, 16, "linear")
    np.testing.assert_allclose(lin, np.linspace(float(x.min()), float(x.max()), 16), rtol=1e-5)
    dens = np.asarray(init_centroids(x, 16, "density"))
    levels = (np.arange(16) + 0.5) / 16
    np.testing.assert_allclose(dens, np.quantile(np.asarray(x), levels), atol=0.005)
    pp1 = init_centroids(x, 16, "kmeans++", key=jax.random.key(1))
    pp2 = init_centroids(x, 16, "kmeans++", key=jax.random.key(1))
    np.testing.assert_array_equal(pp1, pp2)
    assert set(np.asarray(pp1).tolist()) <= set(np.asarray(x).tolist())
    sw = (jnp.abs(x) > 0.2).astype(jnp.float32)
    pp = np.asarray(init_centroids(x, 16, "kmeans++", sample_weight=sw))
    assert np.all(np.abs(pp) > 0.2)  # only points with weight > 0 are picked


def test_kmeans_is_jittable_without_retracing():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(x, c0):
        return kmeans(x, c0, max_iter=50).inertia

    x = jnp.asarray(_layer((20, 10)).reshape(-1))
    for seed in range(3):
        run(x + seed, init_centroids(x + seed, 4))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(-10, 10, width=32), min_size=64, max_size=64),
    st.integers(1, 64),
    st.sampled_from(INITS),
)
def test_lloyd_never_increases_inertia(values, n_valid, init):
    # Fixed shapes (variable point counts through sample weights) keep compiles cached.
    x = np.asarray(values, np.float32)
    sw = (np.arange(64) < n_valid).astype(np.float32)
    c0 = np.asarray(init_centroids(x, 4, init, sample_weight=sw), np.float64)
    start = np.sum(sw * (x - c0[np.argmin((x[:, None] - c0[None]) ** 2, axis=1)]) ** 2)
    res = kmeans(x, c0, sample_weight=sw)
    assert float(res.inertia) <= start * (1 + 1e-5) + 1e-6
    assert res.labels.shape == x.shape and int(res.labels.max()) < 4


def test_fewer_points_than_clusters():
    res = kmeans(jnp.array([1.0, 2.0]), jnp.array([0.0, 1.0, 2.0, 3.0]))
    assert float(res.inertia) == 0.0


def test_assign_ties_go_to_lower_index():
    np.testing.assert_array_equal(
        assign(jnp.array([0.5, 0.4, 0.6]), jnp.array([0.0, 1.0])), [0, 0, 1]
    )


def test_validation_errors():
    x = jnp.ones(10)
    with pytest.raises(ValueError, match="1-D"):
        kmeans(jnp.ones((2, 3)), jnp.ones(2))
    with pytest.raises(ValueError, match="n_clusters"):
        init_centroids(x, 0)
    with pytest.raises(ValueError, match="method"):
        init_centroids(x, 2, "uniform")
    with pytest.raises(ValueError, match="sample_weight"):
        kmeans(x, jnp.ones(2), sample_weight=jnp.ones(3))
    with pytest.raises(TypeError, match="floating"):
        kmeans(jnp.arange(4), jnp.ones(2))
    with pytest.raises(ValueError, match="max_iter"):
        kmeans(x, jnp.ones(2), max_iter=-1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_points_or_centroids_raise(bad):
    x = np.linspace(-1, 1, 12).astype(np.float32)
    x[7] = bad
    with pytest.raises(ValueError, match=r"x holds 1 NaN or Inf values \(first at index \(7,\)\)"):
        kmeans(x, jnp.array([-0.5, 0.5]))
    with pytest.raises(ValueError, match="x holds 1 NaN or Inf"):
        init_centroids(x, 2)
    # A zero sample weight does not help: 0 * inf is NaN in the centroid sums.
    with pytest.raises(ValueError, match="x holds"):
        kmeans(x, jnp.array([-0.5, 0.5]), sample_weight=(np.arange(12) != 7).astype(np.float32))
    with pytest.raises(
        ValueError, match=r"init holds 1 NaN or Inf values \(first at index \(1,\)\)"
    ):
        kmeans(np.linspace(-1, 1, 12), jnp.array([-0.5, bad]))
