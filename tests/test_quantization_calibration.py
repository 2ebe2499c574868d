"""Calibration methods: min-max, percentile (vs NumPy), MSE search (vs a float64 brute force)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models.quantization import (
    MSE,
    MinMax,
    Percentile,
    dequantize,
    get_calibration,
    quantize,
)


def test_minmax_keepdims():
    x = jnp.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    lo, hi = MinMax()(x, reduce_axes=(1,), bits=8, symmetric=False)
    assert lo.shape == (2, 1)
    np.testing.assert_array_equal(np.asarray(lo)[:, 0], [-2.0, -1.0])
    np.testing.assert_array_equal(np.asarray(hi)[:, 0], [1.0, 3.0])


@pytest.mark.parametrize("p", [90.0, 99.0, 100.0])
def test_percentile_matches_numpy(p):
    x = np.random.default_rng(0).standard_t(df=3, size=(4, 500)).astype(np.float32)
    lo, hi = Percentile(p)(jnp.asarray(x), reduce_axes=(1,), bits=8, symmetric=False)
    np.testing.assert_allclose(np.asarray(lo)[:, 0], np.percentile(x, 100 - p, axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(hi)[:, 0], np.percentile(x, p, axis=1), rtol=1e-5)
    lo, hi = Percentile(p)(jnp.asarray(x), reduce_axes=(0, 1), bits=8, symmetric=True)
    np.testing.assert_allclose(float(hi.squeeze()), np.percentile(np.abs(x), p), rtol=1e-5)
    assert float(lo.squeeze()) == -float(hi.squeeze())


def np_fq_error(x, r, lo, hi, bits, symmetric):
    """Float64 squared error of quantizing x with range (r*lo, r*hi)."""
    lo, hi = r * lo, r * hi
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = max(abs(lo), abs(hi)) / qmax
        xh = np.clip(np.round(x / s), -qmax, qmax) * s
    else:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        s = (hi - lo) / (2**bits - 1)
        zp = np.clip(qmin - np.round(lo / s), qmin, qmax)
        xh = (np.clip(np.round(x / s) + zp, qmin, qmax) - zp) * s
    return np.sum((xh - x) ** 2)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4])
def test_mse_picks_the_best_candidate(bits, symmetric):
    x = np.random.default_rng(bits).normal(size=2000).astype(np.float32)
    method = MSE(num_candidates=32, min_ratio=0.2)
    lo, hi = method(jnp.asarray(x), reduce_axes=(0,), bits=bits, symmetric=symmetric)
    x64 = x.astype(np.float64)
    lo0, hi0 = float(x64.min()), float(x64.max())
    ratios = np.linspace(1.0, 0.2, 32)
    errors = [np_fq_error(x64, r, lo0, hi0, bits, symmetric) for r in ratios]
    r_chosen = float(hi.squeeze()) / hi0
    chosen = np_fq_error(x64, r_chosen, lo0, hi0, bits, symmetric)
    assert chosen <= min(errors) * (1 + 1e-4)
    assert r_chosen < 1.0  # low-bit Gaussian: clipping the tails beats min-max


def test_mse_per_channel_beats_minmax():
    x = jax.random.normal(jax.random.key(0), (256, 6)) * jnp.arange(1.0, 7.0)
    err = {}
    for name in ("minmax", "mse"):
        xh = dequantize(quantize(x, 3, axis=-1, calibration=name))
        err[name] = jnp.sum((xh - x) ** 2, axis=0)
    assert bool(jnp.all(err["mse"] <= err["minmax"] * (1 + 1e-6)))
    assert float(err["mse"].sum()) < 0.9 * float(err["minmax"].sum())


def test_percentile_error_bound_inside_range():
    x = jnp.concatenate([jax.random.normal(jax.random.key(1), (999,)), jnp.array([40.0])])
    q = quantize(x, 8, symmetric=False, calibration=Percentile(99.5))
    s = float(q.scale.squeeze())
    err = np.abs(np.asarray(dequantize(q)) - np.asarray(x))
    assert err[-1] > 30  # the outlier was clipped
    assert np.all(err[:-1][np.abs(np.asarray(x[:-1])) < 2.0] <= s / 2 + 1e-6)


def test_get_calibration_and_validation():
    assert isinstance(get_calibration("minmax"), MinMax)
    assert get_calibration("percentile") == Percentile()
    method = MSE(num_candidates=8)
    assert get_calibration(method) is method
    with pytest.raises(ValueError, match="calibration must be one of"):
        get_calibration("entropy")
    with pytest.raises(TypeError, match="calibration"):
        get_calibration(3)
    with pytest.raises(ValueError, match="percentile"):
        Percentile(0.0)
    with pytest.raises(ValueError, match="num_candidates"):
        MSE(num_candidates=0)
    with pytest.raises(ValueError, match="min_ratio"):
        MSE(min_ratio=1.5)
