"""Activation ranges (calibrate_range, RangeStats) and the ActivationQuantizer callable."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models.quantization import (
    ActivationQuantizer,
    RangeStats,
    calibrate_range,
    dequantize,
    fake_quant,
    init_range_stats,
    int8_dense,
    quantize,
    stats_range,
    update_range_stats,
)


def batches(n=4, shape=(16, 10), shift=0.5):
    return [jax.random.normal(jax.random.key(i), shape) * (i + 1) + shift for i in range(n)]


def test_calibrate_range_minmax_over_batches():
    bs = batches()
    allx = np.concatenate([np.asarray(b) for b in bs])
    lo, hi = calibrate_range(bs, 8)
    assert lo.shape == () and hi.shape == ()
    assert float(lo) == min(allx.min(), 0.0) and float(hi) == allx.max()
    lo, hi = calibrate_range([jax.nn.relu(b) + 1.0 for b in bs], 8, include_zero=False)
    assert float(lo) == 1.0
    lo, hi = calibrate_range(bs, 8, symmetric=True)
    assert float(hi) == np.abs(allx).max() and float(lo) == -float(hi)


def test_calibrate_range_percentile_and_per_channel():
    bs = batches()
    allx = np.concatenate([np.asarray(b) for b in bs])
    lo, hi = calibrate_range(bs, 8, method="percentile")
    np.testing.assert_allclose(float(hi), np.percentile(allx, 99.99), rtol=1e-5)
    lo, hi = calibrate_range(bs, 8, axis=-1, include_zero=False)
    assert hi.shape == (1, 10)
    np.testing.assert_array_equal(np.asarray(hi)[0], allx.max(axis=0))
    lo_mse, hi_mse = calibrate_range(bs, 4, method="mse", symmetric=True)
    assert 0 < float(hi_mse) <= np.abs(allx).max()


def test_range_stats_running_minmax_matches_global():
    bs = batches()
    update = jax.jit(update_range_stats)
    stats = init_range_stats()
    for b in bs:
        stats = update(stats, b)
    assert isinstance(stats, RangeStats) and int(stats.count) == 4
    allx = np.concatenate([np.asarray(b) for b in bs])
    lo, hi = stats_range(stats, include_zero=False)
    assert float(lo) == allx.min() and float(hi) == allx.max()


def test_range_stats_percentile_mean_and_ema():
    bs = batches()
    stats = init_range_stats()
    for b in bs:
        stats = update_range_stats(stats, b, percentile=99.0)
    expected = np.mean([np.percentile(np.asarray(b), 99.0) for b in bs])
    np.testing.assert_allclose(float(stats.hi), expected, rtol=1e-5)
    ema = init_range_stats()
    for b in bs:
        ema = update_range_stats(ema, b, momentum=0.5)
    maxes = [float(np.asarray(b).max()) for b in bs]
    ref = maxes[0]
    for m in maxes[1:]:
        ref = 0.5 * ref + 0.5 * m
    np.testing.assert_allclose(float(ema.hi), ref, rtol=1e-6)


def test_range_stats_per_channel_and_errors():
    stats = update_range_stats(init_range_stats((1, 10)), batches(1)[0], axis=-1)
    assert stats.hi.shape == (1, 10)
    with pytest.raises(ValueError, match="init_range_stats"):
        update_range_stats(init_range_stats(), batches(1)[0], axis=-1)
    with pytest.raises(ValueError, match="empty"):
        stats_range(init_range_stats())
    with pytest.raises(ValueError, match="momentum"):
        update_range_stats(init_range_stats(), jnp.ones(3), momentum=1.0)
    with pytest.raises(ValueError, match="finite"):
        calibrate_range([jnp.array([1.0, jnp.nan])])
    with pytest.raises(ValueError, match="at least one"):
        calibrate_range([])


def test_activation_quantizer_is_hashable_fake_quant():
    aq = ActivationQuantizer(bits=8, clip_range=(0, 6))
    assert aq.clip_range == (0.0, 6.0)
    assert hash(aq) == hash(ActivationQuantizer(8, False, (0.0, 6.0)))
    x = jnp.array([-1.0, 0.01, 2.0, 7.0])
    np.testing.assert_array_equal(
        np.asarray(aq(x)), np.asarray(fake_quant(x, 8, symmetric=False, clip_range=(0.0, 6.0)))
    )
    g = jax.grad(lambda v: aq(v).sum())(x)
    np.testing.assert_array_equal(np.asarray(g), [0.0, 1.0, 1.0, 0.0])
    dynamic = ActivationQuantizer(bits=4, symmetric=True)
    np.testing.assert_array_equal(np.asarray(dynamic(x)), np.asarray(fake_quant(x, 4)))
    y = jax.jit(lambda v: aq(v) * 2)(x)  # closes over the quantizer inside jit
    assert y.shape == x.shape


def test_activation_quantizer_matches_integer_path():
    k = jax.random.split(jax.random.key(7), 2)
    x = jax.nn.relu(jax.random.normal(k[0], (32, 20)))
    w = jax.random.normal(k[1], (20, 5))
    lo, hi = calibrate_range([x], 8)
    aq = ActivationQuantizer(8, clip_range=(float(lo), float(hi)))
    wq = quantize(w, 8, axis=-1)
    y_fake = aq(x) @ dequantize(wq)
    y_int = int8_dense(aq.quantize(x), wq)
    np.testing.assert_allclose(np.asarray(y_int), np.asarray(y_fake), rtol=1e-5, atol=1e-5)


def test_activation_quantizer_validation():
    with pytest.raises(ValueError, match="bits"):
        ActivationQuantizer(bits=0)
    with pytest.raises(ValueError, match="lo <= hi"):
        ActivationQuantizer(clip_range=(2.0, 1.0))
    with pytest.raises(TypeError, match="clip_range"):
        ActivationQuantizer(clip_range=3.0)
    with pytest.raises(ValueError, match="calibration"):
        ActivationQuantizer(calibration="histogram")
