"""Tests for jaxopt_models.compression.weight_sharing (k-means weight sharing)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.compression.weight_sharing import (
    SharedTensor,
    centroid_gradients,
    cluster_weights,
    is_shared,
    reconstruct,
    share_gradients,
    shared_params,
    update_codebooks,
)

SIZES = (40, 24, 10)


def _params(seed=0):
    rng = np.random.default_rng(seed)
    params = {}
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=False)):
        params[f"Dense_{i}"] = {
            "kernel": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(b) * 0.1, jnp.float32),
        }
    return params


def _masks(params, sparsity=0.8):
    def mask(p):
        if p.ndim < 2:
            return None
        return jnp.abs(p) > jnp.quantile(jnp.abs(p), sparsity)

    return jax.tree.map(mask, params)


def _apply(params, x):
    h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    return h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def _loss(params, x, y):
    return jnp.mean((_apply(params, x) - y) ** 2)


def _batch(seed=1):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.standard_normal((16, SIZES[0])), jnp.float32),
        jnp.asarray(rng.standard_normal((16, SIZES[-1])), jnp.float32),
    )


def test_structure_codebooks_and_indices():
    params = _params()
    shared = cluster_weights(params, bits=3)
    for name in ("Dense_0", "Dense_1"):
        st_ = shared[name]["kernel"]
        assert isinstance(st_, SharedTensor)
        assert st_.codebook.shape == (8,) and st_.codebook.dtype == jnp.float32
        assert st_.indices.shape == params[name]["kernel"].shape
        assert st_.indices.dtype == jnp.uint8
        assert not bool(st_.frozen.any())
        np.testing.assert_array_equal(shared[name]["bias"], params[name]["bias"])
        # every weight is replaced by its nearest centroid
        w = np.asarray(params[name]["kernel"])[..., None]
        nearest = np.argmin(np.abs(w - np.asarray(st_.codebook)), axis=-1)
        np.testing.assert_array_equal(np.asarray(st_.indices), nearest)
    dense = shared_params(shared)
    assert jax.tree.structure(dense) == jax.tree.structure(params)
    assert len(np.unique(np.asarray(dense["Dense_0"]["kernel"]))) <= 8


def test_masked_clustering_keeps_pruned_weights_exactly_zero():
    params = _params()
    masks = _masks(params)
    shared = cluster_weights(params, bits=3, masks=masks)
    dense = shared_params(shared)
    for name in ("Dense_0", "Dense_1"):
        s = shared[name]["kernel"]
        m = np.asarray(masks[name]["kernel"])
        idx = np.asarray(s.indices)
        assert float(s.codebook[0]) == 0.0 and bool(s.frozen[0]) and not s.frozen[1:].any()
        np.testing.assert_array_equal(idx == 0, ~m)  # code 0 exactly on the pruned weights
        w = np.asarray(dense[name]["kernel"])
        assert np.all(w[~m] == 0.0) and np.all(w[m] != 0.0)


@settings(max_examples=15, deadline=None)
@given(st.floats(0.0, 0.95), st.integers(0, 1000), st.sampled_from(["linear", "density"]))
def test_pruned_weights_stay_zero_property(sparsity, seed, init):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.standard_normal((24, 10)), jnp.float32)
    mask = jnp.asarray(rng.random((24, 10)) >= sparsity)
    shared = cluster_weights({"w": w}, bits=3, masks={"w": mask}, init=init)
    dense = np.asarray(shared_params(shared)["w"])
    assert np.all(dense[~np.asarray(mask)] == 0.0)
    assert np.all((np.asarray(shared["w"].indices) == 0) == ~np.asarray(mask))


def test_per_layer_bits_and_n_clusters():
    # (sizes chosen so most clusterings reuse compilations from the tests above)
    params = _params()
    shared = cluster_weights(params, bits={"Dense_0/kernel": 3, "Dense_1/kernel": 2})
    assert shared["Dense_0"]["kernel"].codebook.shape == (8,)
    assert shared["Dense_1"]["kernel"].codebook.shape == (4,)
    shared = cluster_weights(params, n_clusters=lambda name, w: 4 if w.shape[0] == 24 else 8)
    assert shared["Dense_0"]["kernel"].codebook.shape == (8,)
    assert shared["Dense_1"]["kernel"].codebook.shape == (4,)
    shared = cluster_weights(params, bits=3, filter_fn=lambda name, w: name.startswith("Dense_1"))
    assert is_shared(shared["Dense_1"]["bias"]) and not is_shared(shared["Dense_0"]["kernel"])


def test_cluster_weights_is_jittable():
    w = _params()["Dense_1"]["kernel"]
    params, masks = {"w": w, "b": jnp.ones(3)}, {"w": jnp.abs(w) > 0.3, "b": None}
    jitted = jax.jit(functools.partial(cluster_weights, bits=3))(params, masks=masks)
    eager = cluster_weights(params, bits=3, masks=masks)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_array_equal(a, b)


def test_kmeanspp_init_is_deterministic_per_key():
    params = {"w": _params()["Dense_1"]["kernel"]}
    a = cluster_weights(params, bits=3, init="kmeans++", key=jax.random.key(7))
    b = cluster_weights(params, bits=3, init="kmeans++", key=jax.random.key(7))
    chex_equal = jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)
    assert all(jax.tree.leaves(chex_equal))


def test_centroid_gradient_is_sum_of_member_gradients():
    params = _params()
    shared = cluster_weights(params, bits=3, masks=_masks(params))
    x, y = _batch()
    grads = jax.grad(_loss)(shared_params(shared), x, y)
    cg = centroid_gradients(grads, shared)
    for name in ("Dense_0", "Dense_1"):
        s = shared[name]["kernel"]
        g = np.asarray(grads[name]["kernel"], np.float64).ravel()
        idx = np.asarray(s.indices).ravel()
        expected = np.array([g[idx == c].sum() for c in range(8)])
        expected[0] = 0.0  # the frozen zero of the pruned weights
        np.testing.assert_allclose(np.asarray(cg[name]["kernel"]), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cg[name]["bias"], grads[name]["bias"])

    # It is also the autodiff gradient w.r.t. the codebook (for the unfrozen codes).
    def loss_codebook(codebook):
        s = shared["Dense_0"]["kernel"]._replace(codebook=codebook)
        p = dict(shared_params(shared), Dense_0={**params["Dense_0"], "kernel": reconstruct(s)})
        p["Dense_0"]["bias"] = params["Dense_0"]["bias"]
        return _loss(p, x, y)

    auto = jax.grad(loss_codebook)(shared["Dense_0"]["kernel"].codebook)
    np.testing.assert_allclose(cg["Dense_0"]["kernel"][1:], auto[1:], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "opt",
    [
        optax.sgd(0.05),
        optax.sgd(0.05, momentum=0.9),
        optax.adam(1e-2),
        optax.adamw(1e-2, weight_decay=1e-4),
    ],
    ids=["sgd", "momentum", "adam", "adamw"],
)
def test_fine_tuning_keeps_weights_tied_and_pruned_weights_zero(opt):
    params = _params()
    masks = _masks(params)
    shared = cluster_weights(params, bits=3, masks=masks)
    tx = optax.chain(share_gradients(shared), opt)
    p = shared_params(shared)
    state = tx.init(p)
    x, y = _batch()

    @jax.jit
    def step(p, state):
        loss, g = jax.value_and_grad(_loss)(p, x, y)
        u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state, loss

    losses = []
    for _ in range(30):
        p, state, loss = step(p, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    tuned = update_codebooks(shared, p)
    for name in ("Dense_0", "Dense_1"):
        w = np.asarray(p[name]["kernel"])
        assert np.all(w[~np.asarray(masks[name]["kernel"])] == 0.0)
        # tied: the dense params are exactly codebook[indices] of the new codebooks
        np.testing.assert_array_equal(np.asarray(reconstruct(tuned[name]["kernel"])), w)
        assert float(tuned[name]["kernel"].codebook[0]) == 0.0
        assert not np.array_equal(tuned[name]["kernel"].codebook, shared[name]["kernel"].codebook)


def test_sgd_step_moves_each_centroid_by_summed_gradient():
    params = _params()
    shared = cluster_weights(params, bits=3, masks=_masks(params))
    p = shared_params(shared)
    tx = optax.chain(share_gradients(shared), optax.sgd(0.1))
    x, y = _batch()
    g = jax.grad(_loss)(p, x, y)
    u, _ = tx.update(g, tx.init(p), p)
    new = update_codebooks(shared, optax.apply_updates(p, u))
    cg = centroid_gradients(g, shared)
    for name in ("Dense_0", "Dense_1"):
        old_c = shared[name]["kernel"].codebook
        np.testing.assert_allclose(
            new[name]["kernel"].codebook, old_c - 0.1 * cg[name]["kernel"], rtol=1e-5, atol=1e-7
        )


def test_validation_errors():
    params = _params()
    with pytest.raises(ValueError, match="exactly one of bits and n_clusters"):
        cluster_weights(params)
    with pytest.raises(ValueError, match="exactly one of bits and n_clusters"):
        cluster_weights(params, bits=2, n_clusters=4)
    with pytest.raises(ValueError, match="bits"):
        cluster_weights(params, bits=0)
    with pytest.raises(ValueError, match="bits"):
        cluster_weights(params, bits=17)
    with pytest.raises(ValueError, match="init"):
        cluster_weights(params, bits=2, init="random")
    with pytest.raises(ValueError, match="no entry"):
        cluster_weights(params, bits={"Dense_0/kernel": 2})
    with pytest.raises(ValueError, match="masks must have the params' tree structure"):
        cluster_weights(params, bits=2, masks={"Dense_0": None})
    masks = _masks(params)
    with pytest.raises(ValueError, match="at least 2 codes"):
        cluster_weights(params, n_clusters=1, masks=masks)
    bad = jax.tree.map(lambda m: None if m is None else m[:3], masks)
    with pytest.raises(ValueError, match="shape"):
        cluster_weights(params, bits=2, masks=bad)
    with pytest.raises(TypeError, match="SharedTensor"):
        reconstruct(jnp.ones(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("masked", [False, True])
def test_non_finite_weights_raise_naming_the_leaf(bad, masked):
    params = _params()
    kernel = np.array(params["Dense_1"]["kernel"])
    kernel[3, 4] = bad
    params["Dense_1"]["kernel"] = jnp.asarray(kernel)
    masks = _masks(params) if masked else None
    if masked:  # a NaN where the mask is False poisons the centroid sums all the same
        masks["Dense_1"]["kernel"] = masks["Dense_1"]["kernel"].at[3, 4].set(False)
    with pytest.raises(ValueError, match=r"leaf 'Dense_1/kernel' .* 1 NaN or Inf .*\(3, 4\)"):
        cluster_weights(params, bits=3, masks=masks)
    # Leaves that are not clustered are not checked.
    shared = cluster_weights(params, bits=3, filter_fn=lambda name, w: name == "Dense_0/kernel")
    assert is_shared(shared["Dense_0"]["kernel"])
    assert np.all(np.isfinite(shared["Dense_0"]["kernel"].codebook))
    np.testing.assert_array_equal(shared["Dense_1"]["kernel"], kernel)  # returned unchanged
