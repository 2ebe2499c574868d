"""gptq against a float64 NumPy loop implementation of the paper, RTN, and bad inputs."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _one_shot import make_layer, np_grid, np_inverse_cholesky_upper, np_prepare, output_error

from jaxopt_models.hessian import gram_matrix
from jaxopt_models.quantization import QTensor, dequantize, gptq, quantize

gptq_module = importlib.import_module("jaxopt_models.quantization.gptq")


def np_round(row, grid):
    scale, zp, qmin, qmax = grid
    q = np.clip(np.round(row / scale) + zp, qmin, qmax)
    return (q - zp) * scale


def np_gptq(w, h, bits, group_size=None, symmetric=False, act_order=False, damp=0.01):
    """GPTQ in loop form (one row at a time, every update applied at once), float64.

    Grids: per column from the whole kernel; per group from the group's up-to-date rows when
    its first row is reached; with act_order, static groups from the original kernel.
    """
    w, h = np_prepare(w, h)
    n = len(w)
    g = group_size
    if g is None:
        whole = np_grid(w, bits, symmetric)
    elif act_order:
        static = [np_grid(w[k : k + g], bits, symmetric) for k in range(0, n, g)]
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(n)
    w, h = w[perm], h[perm][:, perm]
    u = np_inverse_cholesky_upper(h, damp)
    q = np.zeros_like(w)
    for i in range(n):
        if g is None:
            grid = whole
        elif act_order:
            grid = static[perm[i] // g]
        elif i % g == 0:
            grid = np_grid(w[i : i + g], bits, symmetric)
        q[i] = np_round(w[i], grid)
        err = (w[i] - q[i]) / u[i, i]
        w[i:] -= np.outer(u[i, i:], err)
    out = np.zeros_like(q)
    out[perm] = q
    return out


def rtn(w, bits, group_size, symmetric):
    return dequantize(
        quantize(
            jnp.asarray(w, jnp.float32), bits, symmetric=symmetric, axis=-1, group_size=group_size
        )
    )


CONFIGS = [
    # bits, group_size, symmetric, act_order, block_size
    (4, None, False, False, 128),
    (3, None, True, False, 48),  # block not dividing in: padded last block
    (4, 32, False, False, 128),  # several groups per block
    (4, 64, True, False, 32),  # groups spanning two blocks
    (3, 48, False, False, 128),  # block adjusted to whole groups (96)
    (4, None, False, True, 64),
    (4, 64, False, True, 128),  # act_order with static groups
]


@pytest.fixture(scope="module")
def layer():
    return make_layer(0, n_in=192, n_out=96, rows=768)


@pytest.mark.parametrize("bits,group_size,symmetric,act_order,block_size", CONFIGS)
def test_matches_reference_and_beats_rtn(layer, bits, group_size, symmetric, act_order, block_size):
    x, w, h = layer
    q = gptq(
        jnp.asarray(w, jnp.float32),
        jnp.asarray(h, jnp.float32),
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        act_order=act_order,
        block_size=block_size,
    )
    w_hat = np.asarray(dequantize(q), np.float64)
    ref = np_gptq(w, h, bits, group_size, symmetric, act_order)
    err, err_ref = output_error(x, w, w_hat), output_error(x, w, ref)
    err_rtn = output_error(x, w, rtn(w, bits, group_size, symmetric))
    assert abs(err - err_ref) <= 0.05 * err_ref, (err, err_ref)
    assert err < err_rtn, (err, err_rtn)
    assert err_ref < 0.9 * err_rtn  # the reference itself is a real improvement
    # float32 vs float64 rounding flips only a few grid points
    assert np.mean(np.isclose(w_hat, ref, atol=1e-6, rtol=1e-4)) > 0.97


@pytest.mark.parametrize("group_size", [None, 32])
def test_layout_and_dequantize(layer, group_size):
    x, w, h = layer
    q = gptq(
        jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32), bits=4, group_size=group_size
    )
    assert isinstance(q, QTensor)
    assert q.shape == w.shape and q.values.dtype == jnp.int8 and q.axis == (1,)
    assert q.bits == 4 and not q.symmetric
    if group_size is None:
        assert q.scale.shape == (1, 96) and q.group_size is None
    else:
        assert q.scale.shape == (192 // group_size, 1, 96)
        assert (q.group_size, q.group_axis) == (group_size, 0)
    assert int(q.values.min()) >= -8 and int(q.values.max()) <= 7
    # dequantize is (values - zero_point) * scale of the stored grid
    grouped = np.asarray(q.values, np.float64).reshape(q.grouped_shape)
    manual = (grouped - np.asarray(q.zero_point)) * np.asarray(q.scale)
    np.testing.assert_allclose(np.asarray(dequantize(q)), manual.reshape(w.shape), rtol=1e-6)


@pytest.mark.parametrize("group_size,symmetric", [(None, False), (16, True)])
def test_identity_hessian_is_rtn(group_size, symmetric):
    """Uncorrelated inputs of equal energy: nothing to compensate, GPTQ equals RTN."""
    w = jax.random.normal(jax.random.key(0), (64, 24))
    q = gptq(w, 3.0 * jnp.eye(64), bits=3, group_size=group_size, symmetric=symmetric)
    ref = quantize(w, 3, symmetric=symmetric, axis=-1, group_size=group_size)
    np.testing.assert_array_equal(np.asarray(q.values), np.asarray(ref.values))
    np.testing.assert_allclose(np.asarray(q.scale), np.asarray(ref.scale), rtol=1e-6)


def test_dead_inputs_and_scale_invariance(layer):
    x, w, h = layer
    x = x.copy()
    x[:, [3, 70]] = 0.0  # two inputs never active
    h = x.T @ x
    q1 = gptq(jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32), bits=4, group_size=32)
    q2 = gptq(
        jnp.asarray(w, jnp.float32), jnp.asarray(h / len(x), jnp.float32), bits=4, group_size=32
    )
    w1 = np.asarray(dequantize(q1))
    assert np.all(w1[[3, 70]] == 0)
    # any positive scale of the Hessian: the same result up to float32 rounding
    assert np.mean(np.isclose(w1, np.asarray(dequantize(q2)), rtol=1e-4, atol=1e-6)) > 0.99
    ref = np_gptq(w, h, 4, 32)
    assert abs(output_error(x, w, w1) - output_error(x, w, ref)) <= 0.05 * output_error(x, w, ref)


def test_dtype_jit_and_single_compile():
    w = jax.random.normal(jax.random.key(1), (64, 16))
    h = gram_matrix(jax.random.normal(jax.random.key(2), (256, 64)))
    q = gptq(w.astype(jnp.bfloat16), h, bits=4, group_size=16, damp=0.01)
    assert dequantize(q).dtype == jnp.bfloat16
    compiled = gptq_module._gptq._cache_size()
    gptq(w.astype(jnp.bfloat16) * 2, h, bits=4, group_size=16, damp=0.1)
    assert gptq_module._gptq._cache_size() == compiled  # new values, new damp: no retrace
    traced = jax.jit(lambda w, h: dequantize(gptq(w, h, bits=4, group_size=16)))(w, h)
    eager = dequantize(gptq(w, h, bits=4, group_size=16))
    np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), atol=1e-6)


W = jnp.ones((32, 8))
H = jnp.eye(32)


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((W, jnp.eye(16)), {"bits": 4}, ValueError, r"hessian must have shape \(32, 32\)"),
        ((W, jnp.ones((32, 31))), {"bits": 4}, ValueError, "hessian must have shape"),
        ((W[0], H), {"bits": 4}, ValueError, "w must be 2-D"),
        ((W, H), {"bits": 1}, ValueError, r"bits must be in \[2, 8\]"),
        ((W, H), {"bits": 9}, ValueError, r"bits must be in \[2, 8\]"),
        ((W, H), {"bits": 4.0}, TypeError, "bits must be an int"),
        ((W, H), {"bits": 4, "group_size": 12}, ValueError, "group_size=12 does not divide"),
        ((W, H), {"bits": 4, "group_size": 0}, ValueError, "group_size must be a positive"),
        ((W, H.at[2, 5].set(jnp.nan)), {"bits": 4}, ValueError, "hessian must be finite.*1 NaN"),
        ((W.at[0, 0].set(jnp.inf), H), {"bits": 4}, ValueError, "w must be finite.*1 Inf"),
        ((W, H), {"bits": 4, "damp": -0.1}, ValueError, "damp must be a finite number >= 0"),
        ((W, H), {"bits": 4, "block_size": 0}, ValueError, "block_size must be a positive"),
        ((W.astype(jnp.int32), H), {"bits": 4}, TypeError, "w must have a floating dtype"),
        ((W, H), {"bits": 4, "act_order": 1}, TypeError, "act_order must be a bool"),
    ],
)
def test_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        gptq(*args, **kwargs)


@pytest.mark.parametrize("damp", [0.0, 0.01])
def test_not_positive_definite_names_damping_and_layer(damp):
    # an indefinite Hessian: eigenvalues 3 and -1, mean diagonal 1
    h = jnp.zeros((32, 32)).at[:2, :2].set(jnp.array([[1.0, 2.0], [2.0, 1.0]]))
    h = h + jnp.diag(jnp.concatenate([jnp.zeros(2), jnp.ones(30)]))
    with pytest.raises(
        ValueError,
        match=rf"blocks/0/mlp: .*not positive definite.*damp={damp}"
        r".*pass a larger damp",
    ):
        gptq(W, h, bits=4, damp=damp, name="blocks/0/mlp")
