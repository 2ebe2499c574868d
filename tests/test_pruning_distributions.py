"""Tests for jaxopt_models.pruning.distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.pruning import (
    default_filter,
    erk_sparsity,
    per_layer_sparsity,
    uniform_sparsity,
)

PARAMS = {
    "Conv_0": {"kernel": jnp.zeros((3, 3, 1, 8)), "bias": jnp.zeros(8)},
    "Dense_0": {"kernel": jnp.zeros((784, 300)), "bias": jnp.zeros(300)},
    "Dense_1": {"kernel": jnp.zeros((300, 100)), "bias": jnp.zeros(100)},
    "Dense_2": {"kernel": jnp.zeros((100, 10)), "bias": jnp.zeros(10)},
}
KERNELS = ["Conv_0", "Dense_0", "Dense_1", "Dense_2"]


def sizes():
    return np.array([PARAMS[n]["kernel"].size for n in KERNELS], np.float64)


def test_uniform_sparsity():
    s = uniform_sparsity(PARAMS, 0.7)
    assert [s[n]["kernel"] for n in KERNELS] == [0.7] * 4
    assert [s[n]["bias"] for n in KERNELS] == [0.0] * 4


def erk_reference(sparsity):
    """float64 reference of the ERK allocation (iterative capping, as in RigL)."""
    shapes = [PARAMS[n]["kernel"].shape for n in KERNELS]
    raw = np.array([sum(s) / np.prod(s) for s in shapes])
    n = sizes()
    dense = np.zeros(len(n), bool)
    while True:
        budget = (1 - sparsity) * n.sum() - n[dense].sum()
        eps = budget / (raw[~dense] * n[~dense]).sum()
        density = np.where(dense, 1.0, eps * raw)
        if (density <= 1 + 1e-12).all():
            return 1 - density
        dense |= density > 1


@settings(max_examples=25, deadline=None)
@given(sparsity=st.floats(0.0, 0.99))
def test_erk_matches_reference_and_total(sparsity):
    s = erk_sparsity(PARAMS, sparsity)
    got = np.array([s[n]["kernel"] for n in KERNELS])
    np.testing.assert_allclose(got, erk_reference(sparsity), atol=1e-9)
    assert (got >= 0).all() and (got < 1).all()
    np.testing.assert_allclose(
        (got * sizes()).sum(), sparsity * sizes().sum(), rtol=1e-9, atol=1e-6
    )


def test_erk_traced_equals_static_and_smaller_layers_are_denser():
    static = erk_sparsity(PARAMS, 0.9)
    traced = jax.jit(lambda s: erk_sparsity(PARAMS, s))(jnp.float32(0.9))
    for n in KERNELS:
        assert float(traced[n]["kernel"]) == pytest.approx(static[n]["kernel"], abs=1e-5)
    assert static["Dense_0"]["kernel"] > static["Dense_1"]["kernel"] > static["Dense_2"]["kernel"]
    assert static["Dense_0"]["bias"] == 0.0


def test_erk_power_scale_zero_is_uniform():
    s = erk_sparsity(PARAMS, 0.6, power_scale=0.0)
    np.testing.assert_allclose([s[n]["kernel"] for n in KERNELS], 0.6)


def test_per_layer_sparsity_matching_and_defaults():
    s = per_layer_sparsity(
        PARAMS,
        {"Dense_0": 0.95, "Dense_0/kernel": 0.9, "Conv_0": None, "Dense_2": lambda g: g / 2},
        0.8,
    )
    assert s["Dense_0"]["kernel"] == 0.9  # the longest matching key wins
    assert s["Conv_0"]["kernel"] == 0.0
    assert s["Dense_1"]["kernel"] == 0.8
    assert s["Dense_2"]["kernel"] == pytest.approx(0.4)
    assert s["Dense_1"]["bias"] == 0.0
    # Dense_1 does not match Dense_10-like names; unmatched leaves stay dense without a default.
    assert per_layer_sparsity(PARAMS, {"Dense_1": 0.5})["Dense_2"]["kernel"] == 0.0


def test_per_layer_sparsity_errors():
    with pytest.raises(ValueError, match="match no prunable leaf"):
        per_layer_sparsity(PARAMS, {"Dense_9": 0.5})
    with pytest.raises(ValueError, match=r"mapping\['Dense_0'\] must be in \[0, 1\)"):
        per_layer_sparsity(PARAMS, {"Dense_0": 1.0})
    with pytest.raises(TypeError, match="keys must be path strings"):
        per_layer_sparsity(PARAMS, {0: 0.5})
    with pytest.raises(ValueError, match="sparsity must be in"):
        uniform_sparsity(PARAMS, 1.2)


def test_default_filter():
    assert default_filter("Dense_0/kernel", jnp.zeros((2, 3)))
    assert not default_filter("Dense_0/bias", jnp.zeros(3))
    assert not default_filter("Embed_0/embedding", jnp.zeros((10, 4)))
