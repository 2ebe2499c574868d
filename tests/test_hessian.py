"""The shared Hessian helpers against float64 NumPy: inverse Cholesky, damping, dead inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _one_shot import make_layer, np_inverse_cholesky_upper

from jaxopt_models import hessian as hs


@pytest.mark.parametrize("n,damp", [(8, 0.0), (64, 0.01), (150, 0.1)])
def test_inverse_cholesky_upper_matches_paper_formula(n, damp):
    x, _, h = make_layer(n, n_in=n, n_out=4, rows=4 * n)
    u, ok = hs.inverse_cholesky_upper(hs.damped(jnp.asarray(h, jnp.float32), damp))
    ref = np_inverse_cholesky_upper(h, damp)
    assert bool(ok)
    assert np.allclose(np.tril(np.asarray(u), -1), 0)
    np.testing.assert_allclose(np.asarray(u), ref, atol=1e-4 * np.abs(ref).max())


def test_not_positive_definite_flag_and_message():
    h = jnp.array([[1.0, 2.0], [2.0, 1.0]])
    _, ok = hs.inverse_cholesky_upper(hs.damped(h, 0.5))
    assert not bool(ok)
    _, ok = hs.inverse_cholesky_upper(hs.damped(h, 1.5))  # +1.5 on the diagonal: PD again
    assert bool(ok)
    with pytest.raises(ValueError, match=r"fc1: .*damp=0.5.*e\.g\. damp=5"):
        hs.raise_if_not_positive_definite(jnp.array(False), 0.5, "fc1")
    hs.raise_if_not_positive_definite(jnp.array(True), 0.5, "fc1")


def test_prepare_damped_gram():
    x = np.random.default_rng(0).standard_normal((40, 5))
    x[:, 2] = 0.0
    h = hs.gram_matrix(jnp.asarray(x.reshape(4, 10, 5), jnp.float32))
    np.testing.assert_allclose(np.asarray(h), x.T @ x, rtol=1e-5, atol=1e-4)
    w, hp = hs.prepare(jnp.ones((5, 3)), h)
    assert np.all(np.asarray(w)[2] == 0) and np.all(np.asarray(w)[[0, 1, 3, 4]] == 1)
    assert float(hp[2, 2]) == 1.0
    hd = np.asarray(hs.damped(hp, 0.1))
    np.testing.assert_allclose(
        np.diag(hd) - np.diag(np.asarray(hp)), 0.1 * np.diag(hp).mean(), rtol=1e-5
    )


def test_pad_rows_and_sweep_identity():
    w = jax.random.normal(jax.random.key(0), (6, 3))
    wp, up = hs.pad_rows(w, jnp.eye(6), 8)
    assert wp.shape == (8, 3) and np.all(np.asarray(wp[6:]) == 0)
    np.testing.assert_array_equal(np.asarray(up), np.eye(8))

    def block_fn(i1, w1, u1, w_all, state):
        z = jnp.zeros_like(w1)
        _, q1, err1 = hs.sweep_rows(w1, u1, z, z, 0, 4, lambda i, row: jnp.round(row))
        return q1, err1, state + 1

    q, n_blocks = hs.obs_sweep(wp, up, 4, block_fn, 0)
    # identity Hessian: no error propagation, the sweep is plain rounding
    np.testing.assert_array_equal(np.asarray(q[:6]), np.round(np.asarray(w)))
    assert int(n_blocks) == 2


@pytest.mark.parametrize(
    "w,h,error,match",
    [
        (jnp.ones((4, 3)), jnp.eye(3), ValueError, r"hessian must have shape \(4, 4\)"),
        (jnp.ones(4), jnp.eye(4), ValueError, "w must be 2-D"),
        (jnp.ones((4, 3)), [[1.0]], TypeError, "hessian must be a floating-point array"),
        (jnp.ones((4, 3), jnp.int32), jnp.eye(4), TypeError, "w must have a floating dtype"),
        (jnp.ones((0, 3)), jnp.eye(0), ValueError, "w must not be empty"),
        (jnp.ones((4, 3)), jnp.eye(4).at[0, 0].set(jnp.nan), ValueError, "1 NaN and 0 Inf"),
    ],
)
def test_check_layer(w, h, error, match):
    with pytest.raises(error, match=match):
        hs.check_layer(w, h)


@pytest.mark.parametrize(
    "fn,value,error",
    [
        (hs.check_damp, -1.0, ValueError),
        (hs.check_damp, float("inf"), ValueError),
        (hs.check_damp, "0.1", TypeError),
        (hs.check_damp, True, TypeError),
        (lambda v: hs.check_positive_int(v, "block_size"), 0, ValueError),
        (lambda v: hs.check_positive_int(v, "block_size"), 2.0, TypeError),
        (hs.check_name, 3, TypeError),
    ],
)
def test_setting_checks(fn, value, error):
    with pytest.raises(error):
        fn(value)
