"""int8_dense / int8_conv: exact int32 accumulation, agreement with float64 references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models.quantization import dequantize, int8_conv, int8_dense, quantize


def np_conv_nhwc(x, w, strides, pads, dilation):
    """Direct float64 / int64 convolution, channels-last, explicit padding."""
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
    kh, kw, _, o = w.shape
    sh, sw = strides
    dh, dw = dilation
    ho = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((x.shape[0], ho, wo, o), dtype=np.result_type(x, w))
    for i, j in itertools.product(range(kh), range(kw)):
        patch = x[
            :, i * dh : i * dh + (ho - 1) * sh + 1 : sh, j * dw : j * dw + (wo - 1) * sw + 1 : sw
        ]
        out += np.einsum("bhwc,co->bhwo", patch, w[i, j])
    return out


def rand_int8(key, shape, lo=-128, hi=128):
    return jax.random.randint(key, shape, lo, hi, dtype=jnp.int32).astype(jnp.int8)


def test_dense_accumulation_is_exact_int32():
    k1, k2 = jax.random.split(jax.random.key(0))
    x = rand_int8(k1, (9, 517))
    w = rand_int8(k2, (517, 7))
    y = int8_dense(x, w, x_scale=1.0, w_scale=1.0)
    ref = np.asarray(x, np.int64) @ np.asarray(w, np.int64)  # |ref| < 2**24: exact in f32
    np.testing.assert_array_equal(np.asarray(y), ref.astype(np.float32))
    zx, zw = 3, -5
    y = int8_dense(x, w, x_scale=1.0, x_zero_point=zx, w_scale=1.0, w_zero_point=zw)
    ref = (np.asarray(x, np.int64) - zx) @ (np.asarray(w, np.int64) - zw)
    np.testing.assert_array_equal(np.asarray(y), ref.astype(np.float32))


@pytest.mark.parametrize("x_sym", [True, False])
@pytest.mark.parametrize("w_sym", [True, False])
@pytest.mark.parametrize("w_axis", [None, -1])
def test_dense_matches_dequantized_float_reference(x_sym, w_sym, w_axis):
    k = jax.random.split(jax.random.key(1), 3)
    x = jax.nn.relu(jax.random.normal(k[0], (4, 3, 40))) - 0.1
    w = jax.random.normal(k[1], (40, 12))
    b = jax.random.normal(k[2], (12,))
    xq = quantize(x, 8, symmetric=x_sym)
    wq = quantize(w, 8, symmetric=w_sym, axis=w_axis)
    y = jax.jit(int8_dense)(xq, wq, b)
    ref = np.asarray(dequantize(xq), np.float64) @ np.asarray(dequantize(wq), np.float64)
    ref += np.asarray(b, np.float64)
    assert y.shape == (4, 3, 12) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_dense_per_row_activation_scales_and_low_bits():
    k = jax.random.split(jax.random.key(2), 2)
    x = jax.random.normal(k[0], (6, 16)) * jnp.arange(1.0, 7.0)[:, None]
    w = jax.random.normal(k[1], (16, 5))
    xq = quantize(x, 8, axis=0)  # one scale per row
    wq = quantize(w, 4, axis=-1)  # 4-bit weights still run on the int8 path
    ref = np.asarray(dequantize(xq), np.float64) @ np.asarray(dequantize(wq), np.float64)
    np.testing.assert_allclose(np.asarray(int8_dense(xq, wq)), ref, rtol=1e-5, atol=1e-5)


PADDINGS = ["SAME", "VALID", ((1, 2), (0, 1))]


@pytest.mark.parametrize("method", ["block", "im2col", "conv"])
def test_conv_accumulation_is_exact_int32(method):
    k1, k2 = jax.random.split(jax.random.key(3))
    x = rand_int8(k1, (2, 7, 6, 5))
    w = rand_int8(k2, (3, 3, 5, 4))
    y = int8_conv(x, w, x_scale=1.0, x_zero_point=-7, w_scale=1.0, padding="SAME", method=method)
    # The zero point pads: padding means real zero, i.e. the integer -7.
    xr = np.asarray(x, np.int64) + 7
    ref = np_conv_nhwc(xr, np.asarray(w, np.int64), (1, 1), ((1, 1), (1, 1)), (1, 1))
    np.testing.assert_array_equal(np.asarray(y), ref.astype(np.float32))


GEOMETRIES = [
    ("SAME", (1, 1), (1, 1)),
    ("VALID", (2, 2), (1, 1)),
    (((1, 2), (0, 1)), (1, 2), (2, 1)),
]
CONV_CASES = [
    (m, *g)
    for m in ("block", "im2col", "conv")
    for g in GEOMETRIES
    if m != "block" or g == GEOMETRIES[0]
]


@pytest.mark.parametrize("x_sym", [True, False])
@pytest.mark.parametrize("method,padding,strides,dilation", CONV_CASES)
def test_conv_matches_dequantized_float_reference(method, x_sym, padding, strides, dilation):
    k = jax.random.split(jax.random.key(4), 3)
    x = jax.random.uniform(k[0], (3, 9, 8, 4)) - 0.3
    w = jax.random.normal(k[1], (3, 3, 4, 6))
    b = jax.random.normal(k[2], (6,))
    xq = quantize(x, 8, symmetric=x_sym)
    wq = quantize(w, 8, axis=-1)
    y = int8_conv(xq, wq, b, strides=strides, padding=padding, rhs_dilation=dilation, method=method)
    if isinstance(padding, str):
        dil = [(kk - 1) * d + 1 for kk, d in zip((3, 3), dilation, strict=True)]
        pads = jax.lax.padtype_to_pads((9, 8), dil, strides, padding)
    else:
        pads = padding
    ref = np_conv_nhwc(
        np.asarray(dequantize(xq), np.float64),
        np.asarray(dequantize(wq), np.float64),
        strides,
        pads,
        dilation,
    ) + np.asarray(b, np.float64)
    assert y.shape == ref.shape
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def np_max_pool(y, p):
    b, h, w, c = y.shape
    y = y[:, : h // p * p, : w // p * p]
    return y.reshape(b, h // p, p, w // p, p, c).max(axis=(2, 4))


@pytest.mark.parametrize("method", ["auto", "block", "im2col", "conv"])
@pytest.mark.parametrize("window,padding", [(2, "SAME"), (3, "VALID"), (2, ((0, 1), (2, 0)))])
def test_conv_with_fused_max_pool(method, window, padding):
    k = jax.random.split(jax.random.key(6), 3)
    x = jax.random.uniform(k[0], (2, 11, 10, 3)) - 0.4
    w = jax.random.normal(k[1], (3, 3, 3, 5))
    b = jax.random.normal(k[2], (5,))
    xq = quantize(x, 8, symmetric=False)
    wq = quantize(w, 8, axis=-1)
    y = int8_conv(xq, wq, b, padding=padding, pool_window=window, method=method)
    pads = (
        jax.lax.padtype_to_pads((11, 10), (3, 3), (1, 1), padding)
        if isinstance(padding, str)
        else padding
    )
    full = np_conv_nhwc(
        np.asarray(dequantize(xq), np.float64),
        np.asarray(dequantize(wq), np.float64),
        (1, 1),
        pads,
        (1, 1),
    ) + np.asarray(b, np.float64)
    ref = np_max_pool(full, window)
    assert y.shape == ref.shape
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nsp", [1, 3])
def test_block_method_other_ranks_matches_im2col(nsp):
    k = jax.random.split(jax.random.key(8), 2)
    size, ksize = (7, 3) if nsp == 1 else (5, 2)  # small 3-D case: compiles quickly
    xq = quantize(jax.random.normal(k[0], (2,) + (size,) * nsp + (2,)), 8, symmetric=False)
    wq = quantize(jax.random.normal(k[1], (ksize,) * nsp + (2, 4)), 8, axis=-1)
    for pool_window in (None, 2):
        a = int8_conv(xq, wq, padding="SAME", method="block", pool_window=pool_window)
        b = int8_conv(xq, wq, padding="SAME", method="im2col", pool_window=pool_window)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_conv_1d_and_jit():
    k = jax.random.split(jax.random.key(5), 2)
    x = quantize(jax.random.normal(k[0], (2, 11, 3)), 8, symmetric=False)
    w = quantize(jax.random.normal(k[1], (4, 3, 2)), 8, axis=-1)
    y = jax.jit(lambda x, w: int8_conv(x, w, padding="VALID"))(x, w)
    xf = np.asarray(dequantize(x), np.float64)[:, :, None]
    wf = np.asarray(dequantize(w), np.float64)[:, None]
    ref = np_conv_nhwc(xf, wf, (1, 1), ((0, 0), (0, 0)), (1, 1))[:, :, 0]
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_errors():
    x8 = jnp.zeros((2, 4), jnp.int8)
    w = quantize(jnp.ones((4, 3)), 8)
    with pytest.raises(ValueError, match="x_scale is required"):
        int8_dense(x8, w)
    with pytest.raises(TypeError, match="int8"):
        int8_dense(jnp.zeros((2, 4)), w, x_scale=1.0)
    with pytest.raises(ValueError, match="at most 8 bits"):
        int8_dense(x8, quantize(jnp.ones((4, 3)), 12), x_scale=1.0)
    with pytest.raises(ValueError, match="per group"):
        int8_dense(x8, quantize(jnp.ones((4, 3)), 8, axis=-1, group_size=2), x_scale=1.0)
    with pytest.raises(ValueError, match="must match"):
        int8_dense(jnp.zeros((2, 5), jnp.int8), w, x_scale=1.0)
    with pytest.raises(ValueError, match="contraction"):
        int8_dense(quantize(jnp.ones((2, 4)), 8, axis=-1), w)
    with pytest.raises(ValueError, match="own scale"):
        int8_dense(quantize(jnp.ones((2, 4)), 8), w, x_scale=2.0)
    xc = quantize(jnp.ones((1, 5, 5, 2)), 8)
    with pytest.raises(ValueError, match="symmetric weights"):
        int8_conv(xc, quantize(jnp.ones((3, 3, 2, 4)), 8, symmetric=False))
    with pytest.raises(ValueError, match="per-tensor activation"):
        int8_conv(quantize(jnp.ones((1, 5, 5, 2)), 8, axis=0), quantize(jnp.ones((3, 3, 2, 4)), 8))
    with pytest.raises(ValueError, match="channels"):
        int8_conv(xc, quantize(jnp.ones((3, 3, 3, 4)), 8))
    with pytest.raises(ValueError, match="method"):
        int8_conv(xc, quantize(jnp.ones((3, 3, 2, 4)), 8), method="winograd")
    with pytest.raises(ValueError, match="block"):
        int8_conv(xc, quantize(jnp.ones((3, 3, 2, 4)), 8), strides=(2, 2), method="block")
    with pytest.raises(ValueError, match="pool_window"):
        int8_conv(xc, quantize(jnp.ones((3, 3, 2, 4)), 8), pool_window=0)
