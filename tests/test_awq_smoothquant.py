"""awq and SmoothQuant against float64 NumPy implementations of the papers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _one_shot import make_layer, output_error

from jaxopt_models.quantization import (
    AWQResult,
    awq,
    awq_scales,
    dequantize,
    quantize,
    smooth_scales,
    w8a8_matmul,
)


def np_rtn(w, bits, group_size, symmetric):
    """Min-max round-to-nearest per output column and per group of inputs, float64."""
    n_in, n_out = w.shape
    g = n_in if group_size is None else group_size
    wg = w.reshape(n_in // g, g, n_out)
    lo = np.minimum(wg.min(axis=1, keepdims=True), 0)
    hi = np.maximum(wg.max(axis=1, keepdims=True), 0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = np.maximum(-lo, hi) / qmax
        scale = np.where(scale > 0, scale, 1.0)
        q = np.clip(np.round(wg / scale), -qmax, qmax)
        return (q * scale).reshape(w.shape)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = (hi - lo) / (qmax - qmin)
    scale = np.where(scale > 0, scale, 1.0)
    zp = np.clip(qmin - np.round(lo / scale), qmin, qmax)
    q = np.clip(np.round(wg / scale) + zp, qmin, qmax)
    return ((q - zp) * scale).reshape(w.shape)


def np_awq(w, act_mag, x, bits, group_size, symmetric, n_grid):
    """AWQ's grid search in float64: s = act_mag^alpha normalised, RTN of s w, divided by s."""
    losses = []
    for k in range(n_grid + 1):
        s = np.maximum(act_mag ** (k / n_grid), 1e-4)
        s = s / np.sqrt(s.max() * s.min())
        w_hat = np_rtn(s[:, None] * w, bits, group_size, symmetric) / s[:, None]
        losses.append(output_error(x, w, w_hat))
    return np.array(losses)


def np_fake_quant_int8(t, axis):
    """Symmetric int8 fake quant with one scale per index of ``axis`` (None: per tensor)."""
    if axis is None:
        amax = np.abs(t).max()
    else:
        reduce = tuple(i for i in range(t.ndim) if i != axis % t.ndim)
        amax = np.abs(t).max(axis=reduce, keepdims=True)
    scale = np.where(amax > 0, amax / 127, 1.0)
    return np.clip(np.round(t / scale), -127, 127) * scale


@pytest.fixture(scope="module")
def layer():
    return make_layer(3, n_in=128, n_out=64, rows=512)


@pytest.mark.parametrize(
    "bits,group_size,symmetric", [(4, 32, False), (3, None, True), (4, 64, True)]
)
def test_awq_matches_reference_and_beats_rtn(layer, bits, group_size, symmetric):
    x, w, h = layer
    act_mag = np.abs(x).mean(axis=0)
    res = awq(
        jnp.asarray(w, jnp.float32),
        jnp.asarray(act_mag, jnp.float32),
        x=jnp.asarray(x, jnp.float32),
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        n_grid=10,
    )
    assert isinstance(res, AWQResult)
    ref = np_awq(w, act_mag, x, bits, group_size, symmetric, 10)
    np.testing.assert_allclose(np.asarray(res.losses), ref, rtol=0.03)
    assert abs(ref[int(round(float(res.alpha) * 10))] - ref.min()) <= 0.03 * ref.min()
    # the effective kernel seen by unscaled inputs
    scales = np.asarray(res.scales, np.float64)
    w_hat = np.asarray(dequantize(res.qweight), np.float64) / scales[:, None]
    err = output_error(x, w, w_hat)
    err_rtn = output_error(x, w, np_rtn(w, bits, group_size, symmetric))
    assert abs(err - float(res.losses.min())) <= 1e-3 * err
    assert err < 0.9 * err_rtn, (err, err_rtn)  # outlier channels: AWQ really helps
    np.testing.assert_allclose(float(res.losses[0]), err_rtn, rtol=0.01)  # alpha = 0 is RTN
    np.testing.assert_allclose(scales, np.asarray(awq_scales(act_mag, res.alpha)), rtol=1e-5)


def test_awq_objectives(layer):
    x, w, h = layer
    act_mag = jnp.asarray(np.abs(x).mean(axis=0), jnp.float32)
    wj = jnp.asarray(w, jnp.float32)
    by_x = awq(wj, act_mag, x=jnp.asarray(x, jnp.float32), n_grid=10, group_size=32)
    by_h = awq(wj, act_mag, hessian=jnp.asarray(h, jnp.float32), n_grid=10, group_size=32)
    np.testing.assert_allclose(np.asarray(by_h.losses), np.asarray(by_x.losses), rtol=1e-3)
    assert float(by_h.alpha) == float(by_x.alpha)
    proxy = awq(wj, act_mag, n_grid=10, group_size=32)
    assert proxy.losses.shape == (11,) and 0.0 <= float(proxy.alpha) <= 1.0
    assert proxy.qweight.dtype == jnp.float32 and proxy.qweight.scale.shape == (4, 1, 64)
    expected = quantize(proxy.scales[:, None] * wj, 4, symmetric=False, axis=-1, group_size=32)
    np.testing.assert_array_equal(np.asarray(proxy.qweight.values), np.asarray(expected.values))


def test_awq_scales_normalised():
    s = np.asarray(awq_scales(jnp.array([0.0, 0.5, 8.0]), 0.5))
    np.testing.assert_allclose(s.max() * s.min(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(s[2] / s[1], 4.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(awq_scales(jnp.ones(3) * 7, 0.0)), 1.0)


W = jnp.ones((32, 8))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"act_mag": jnp.ones(31)}, ValueError, r"act_mag must have shape \(32,\)"),
        ({"act_mag": -jnp.ones(32)}, ValueError, "act_mag must be >= 0"),
        ({"x": jnp.ones((4, 31))}, ValueError, r"x must have shape \(\.\.\., 32\)"),
        ({"x": jnp.ones((4, 32)), "hessian": jnp.eye(32)}, ValueError, "at most one of x"),
        ({"hessian": jnp.eye(31)}, ValueError, "hessian must have shape"),
        ({"bits": 1}, ValueError, r"bits must be in \[2, 8\]"),
        ({"bits": 9}, ValueError, r"bits must be in \[2, 8\]"),
        ({"group_size": 12}, ValueError, "group_size=12 does not divide"),
        ({"n_grid": 0}, ValueError, "n_grid must be a positive int"),
        ({"x": jnp.full((4, 32), jnp.nan)}, ValueError, "x must be finite"),
    ],
)
def test_awq_bad_inputs(kwargs, error, match):
    kwargs = {"act_mag": jnp.ones(32), "group_size": 8, **kwargs}
    with pytest.raises(error, match=match):
        awq(W, **kwargs)


# -- SmoothQuant ----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_smooth_scales_formula(layer, alpha):
    x, w, h = layer
    amax = np.abs(x).max(axis=0)
    s = np.asarray(
        smooth_scales(jnp.asarray(amax, jnp.float32), jnp.asarray(w, jnp.float32), alpha),
        np.float64,
    )
    ref = np.maximum(amax, 1e-5) ** alpha / np.maximum(np.abs(w).max(axis=1), 1e-5) ** (1 - alpha)
    np.testing.assert_allclose(s, np.maximum(ref, 1e-5), rtol=1e-5)
    # smoothing does not change the float layer
    y = (x / s) @ (s[:, None] * w)
    np.testing.assert_allclose(y, x @ w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("activations", ["per_token", "per_tensor"])
@pytest.mark.parametrize("smoothed", [False, True])
def test_w8a8_matches_reference(layer, activations, smoothed):
    x, w, h = layer
    s = smooth_scales(jnp.asarray(np.abs(x).max(0), jnp.float32), jnp.asarray(w, jnp.float32))
    s64 = np.asarray(s, np.float64) if smoothed else np.ones(w.shape[0])
    y = w8a8_matmul(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(w, jnp.float32),
        scales=s if smoothed else None,
        activations=activations,
    )
    xs, ws = x / s64, w * s64[:, None]
    ref = np_fake_quant_int8(xs, 0 if activations == "per_token" else None) @ np_fake_quant_int8(
        ws, -1
    )
    np.testing.assert_allclose(np.asarray(y), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_smoothing_reduces_w8a8_error(layer):
    x, w, h = layer
    xj, wj = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
    s = smooth_scales(jnp.abs(xj).max(axis=0), wj, alpha=0.5)
    exact = x @ w
    for activations in ("per_tensor", "per_token"):
        plain = np.sum((np.asarray(w8a8_matmul(xj, wj, activations=activations)) - exact) ** 2)
        smooth = np.sum(
            (np.asarray(w8a8_matmul(xj, wj, scales=s, activations=activations)) - exact) ** 2
        )
        assert smooth < 0.5 * plain, (activations, smooth, plain)


def test_w8a8_batched_tokens_and_grad():
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    w = jax.random.normal(jax.random.key(1), (16, 4))
    y = w8a8_matmul(x, w)
    np.testing.assert_allclose(np.asarray(y[1]), np.asarray(w8a8_matmul(x[1], w)), rtol=1e-6)
    g = jax.grad(lambda w: w8a8_matmul(x, w).sum())(w)
    assert g.shape == w.shape and bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize(
    "fn,args,kwargs,error,match",
    [
        (smooth_scales, (jnp.ones(31), W), {}, ValueError, r"act_absmax must have shape \(32,\)"),
        (smooth_scales, (jnp.ones(32), W), {"alpha": 1.5}, ValueError, r"alpha must be in"),
        (smooth_scales, (-jnp.ones(32), W), {}, ValueError, "act_absmax must be >= 0"),
        (smooth_scales, (jnp.ones(32), W.at[0, 0].set(jnp.nan)), {}, ValueError, "w must be fin"),
        (w8a8_matmul, (jnp.ones((3, 31)), W), {}, ValueError, r"x must have shape \(\.\.\., 32\)"),
        (
            w8a8_matmul,
            (jnp.ones((3, 32)), W),
            {"activations": "per_row"},
            ValueError,
            "activations='per_row' is not known",
        ),
        (
            w8a8_matmul,
            (jnp.ones((3, 32)), W),
            {"scales": jnp.zeros(32)},
            ValueError,
            "scales must be > 0",
        ),
        (w8a8_matmul, (jnp.ones((3, 32)), W), {"bits": 1}, ValueError, r"bits must be an int"),
    ],
)
def test_smoothquant_bad_inputs(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)
