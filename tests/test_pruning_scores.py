"""Tests for jaxopt_models.pruning.scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models.pruning import (
    SCORERS,
    get_scorer,
    magnitude_scores,
    random_scores,
    saliency_scores,
)

PARAMS = {"k": jnp.array([[-2.0, 0.5], [1.0, -0.25]]), "b": jnp.array([0.0, -3.0])}


def test_magnitude_scores():
    s = magnitude_scores(PARAMS)
    np.testing.assert_array_equal(s["k"], np.abs(np.asarray(PARAMS["k"])))
    np.testing.assert_array_equal(s["b"], [0.0, 3.0])


def test_random_scores_deterministic_per_key_and_in_unit_interval():
    a = random_scores(PARAMS, jax.random.key(0))
    b = random_scores(PARAMS, jax.random.key(0))
    c = random_scores(PARAMS, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["k"], c["k"])
    assert a["k"].shape == (2, 2) and a["k"].dtype == jnp.float32
    for leaf in jax.tree.leaves(a):
        assert bool(jnp.all((leaf >= 0) & (leaf < 1)))


def test_saliency_scores_is_abs_w_times_g():
    grads = {"k": jnp.array([[1.0, -4.0], [0.0, 2.0]]), "b": jnp.array([1.0, 1.0])}
    s = saliency_scores(PARAMS, grads)
    np.testing.assert_allclose(s["k"], [[2.0, 2.0], [0.0, 0.5]])
    np.testing.assert_allclose(s["b"], [0.0, 3.0])


def test_saliency_scores_errors():
    with pytest.raises(ValueError, match="needs grads"):
        saliency_scores(PARAMS, None)
    with pytest.raises(ValueError, match="does not match params tree"):
        saliency_scores(PARAMS, {"k": PARAMS["k"]})


def test_get_scorer_names_and_callables():
    assert set(SCORERS) == {"magnitude", "random", "saliency"}
    key = jax.random.key(0)
    np.testing.assert_array_equal(get_scorer("magnitude")(PARAMS, None, key)["b"], [0.0, 3.0])
    np.testing.assert_array_equal(
        get_scorer("random")(PARAMS, None, key)["k"], random_scores(PARAMS, key)["k"]
    )
    user = lambda params, grads, key: params
    assert get_scorer(user) is user
    with pytest.raises(
        ValueError, match=r"scorer='movement' is not known; allowed values: \['magnitude'"
    ):
        get_scorer("movement")
    with pytest.raises(TypeError, match="scorer must be a name or a callable"):
        get_scorer(3)
