"""models.weight_only: int kernels dequantized on the fly equal dequantize-then-matmul
(float64 references), group-wise int4 / int3, packed storage, whole models with QTensor
kernels, and bad input."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import use_compilation_cache

from jaxopt_models import quantization as qz
from jaxopt_models.models import (
    MLP,
    QuantizedKernel,
    apply_with_qtensors,
    dequantize_kernel,
    stored_bytes,
    weight_only_dense,
)

RNG = np.random.default_rng(0)
W = RNG.standard_normal((64, 24)).astype(np.float32)
X = RNG.standard_normal((2, 3, 64)).astype(np.float32)
B = RNG.standard_normal(24).astype(np.float32)

use_compilation_cache()


def np_dense(x, kernel, bias=None):
    """float64 ``x @ dequantize(kernel) + bias``."""
    w = np.asarray(dequantize_kernel(kernel), np.float64)
    y = np.asarray(x, np.float64) @ w
    return y if bias is None else y + np.asarray(bias, np.float64)


@pytest.mark.parametrize(
    "bits, group_size, symmetric, packed",
    [
        (4, 16, False, True),  # int4 group-wise, packed two per byte
        (3, 8, False, True),  # int3 group-wise, packed in a bit stream
        (3, 32, True, False),
        (4, None, False, False),  # one grid per output column
        (8, None, True, True),
        (2, 16, True, True),  # four 2-bit planes per byte
        (4, None, True, True),
    ],
)
def test_on_the_fly_equals_dequantize_then_matmul(bits, group_size, symmetric, packed):
    grouping = {} if group_size is None else {"group_size": group_size, "group_axis": 0}
    q = qz.quantize(jnp.asarray(W), bits, symmetric=symmetric, axis=-1, **grouping)
    kernel = qz.pack(q) if packed else q
    y = jax.jit(weight_only_dense)(X, kernel, B)
    assert y.shape == (2, 3, 24) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, np_dense(X, q, B), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(weight_only_dense(X[0, 0], kernel), np_dense(X[0, 0], q), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, cols",
    [
        (dict(axis=None), 24),  # one scale per tensor
        (dict(axis=0), 24),  # one per input row
        (dict(axis=None, group_size=8, group_axis=0), 24),  # groups only
        (dict(axis=0, group_size=4, group_axis=1), 24),  # groups along the outputs: unpacked
        (dict(axis=-1, group_size=16, group_axis=0), 23),  # odd columns: unpacked
    ],
)
def test_packed_int4_layouts_read_by_planes_or_unpacked(kwargs, cols):
    q = qz.quantize(jnp.asarray(W[:, :cols]), 4, symmetric=False, **kwargs)
    dense = jax.jit(weight_only_dense)
    y = dense(X, qz.pack(q), B[:cols])
    np.testing.assert_allclose(y, np_dense(X, q, B[:cols]), rtol=1e-5, atol=1e-4)
    # the kernel the product reads is exactly the dequantized one
    np.testing.assert_array_equal(dense(jnp.eye(64), qz.pack(q)), qz.dequantize(q))


def test_packed_int4_int3_store_their_bits():
    for bits, g in ((4, 16), (3, 8)):
        q = qz.quantize(jnp.asarray(W), bits, symmetric=False, axis=-1, group_size=g, group_axis=0)
        scales = (64 // g) * 24 * (4 + 1)  # float32 scale + int8 zero point per group
        assert stored_bytes({"kernel": q}) == math.ceil(64 * 24 * bits / 8) + scales
        assert stored_bytes({"kernel": QuantizedKernel(q, None, (64, 24))}) == stored_bytes(
            {"kernel": q}
        )


def test_no_recompile_for_new_values():
    traces = []

    def fn(x, kernel, bias):
        traces.append(1)
        return weight_only_dense(x, kernel, bias)

    jitted = jax.jit(fn)
    for scale in (1.0, 2.0):
        q = qz.quantize(jnp.asarray(W * scale), 4, axis=-1, group_size=16, group_axis=0)
        jax.block_until_ready(jitted(X * scale, qz.pack(q), B))
    assert len(traces) == 1


def test_input_multiplier_and_per_token_activations():
    """AWQ's kernel (quantized ``s * w`` with the multiplier ``1 / s``) and SmoothQuant's
    W8A8 layer (also rounding every input row onto an int8 grid) against references."""
    s = np.exp(RNG.uniform(-1, 1, 64)).astype(np.float32)
    q = qz.quantize(jnp.asarray(W * s[:, None]), 4, axis=-1, group_size=16, group_axis=0)
    awq = QuantizedKernel(q, jnp.asarray(1 / s), (64, 24))
    ref = (np.asarray(X, np.float64) / s) @ np.asarray(qz.dequantize(q), np.float64) + B
    np.testing.assert_allclose(weight_only_dense(X, awq, B), ref, atol=1e-4)
    packed = QuantizedKernel(qz.pack(q), jnp.asarray(1 / s), (64, 24))
    np.testing.assert_allclose(weight_only_dense(X, packed, B), ref, atol=1e-4)
    np.testing.assert_allclose(dequantize_kernel(awq) * s[:, None], qz.dequantize(q), atol=1e-5)

    q8 = qz.quantize(jnp.asarray(W * s[:, None]), 8, symmetric=True, axis=-1)
    w8a8 = QuantizedKernel(q8, jnp.asarray(1 / s), (64, 24), act_bits=8)
    y = weight_only_dense(X, w8a8)
    ref = qz.w8a8_matmul(jnp.asarray(X), jnp.asarray(W), scales=jnp.asarray(s))
    np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-3)
    per_tensor = QuantizedKernel(q8, jnp.asarray(1 / s), (64, 24), 8, "per_tensor")
    ref = qz.w8a8_matmul(
        jnp.asarray(X), jnp.asarray(W), scales=jnp.asarray(s), activations="per_tensor"
    )
    np.testing.assert_allclose(weight_only_dense(X, per_tensor), ref, rtol=1e-3, atol=1e-3)


def _mlp_variables(model, x):
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    rng = np.random.default_rng(1)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.2, jnp.float32), shapes
    )


def test_whole_model_with_packed_group_wise_kernels():
    model = MLP(features=(32,), num_classes=8)
    x = jnp.asarray(RNG.standard_normal((5, 64)), jnp.float32)
    variables = _mlp_variables(model, x)
    params = variables["params"]
    q0 = qz.quantize(params["Dense_0"]["kernel"], 3, axis=-1, group_size=16, group_axis=0)
    q1 = qz.quantize(params["Dense_1"]["kernel"], 4, axis=-1, group_size=8, group_axis=0)
    d0, d1 = params["Dense_0"], params["Dense_1"]
    stored = {"params": {"Dense_0": {**d0, "kernel": qz.pack(q0)}, "Dense_1": {**d1, "kernel": q1}}}
    floats = {
        "params": {
            "Dense_0": {**d0, "kernel": qz.dequantize(q0)},
            "Dense_1": {**d1, "kernel": qz.dequantize(q1)},
        }
    }

    @jax.jit
    def run(stored, floats, x):
        return (
            apply_with_qtensors(model, stored, x),
            apply_with_qtensors(model, stored, x, on_the_fly=False),
            model.apply(floats, x),
        )

    on_the_fly, dequantized, ref = run(stored, floats, x)
    np.testing.assert_allclose(on_the_fly, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dequantized, ref, rtol=1e-5, atol=1e-5)
    # packed 3-bit (64, 32) and 4-bit (32, 8) values, float32 scales per group, biases
    expected = 64 * 32 * 3 // 8 + 4 * 32 * 4 + 32 * 4 + 32 * 8 * 4 // 8 + 4 * 8 * 4 + 8 * 4
    assert stored_bytes(stored["params"]) == expected


def test_convolution_kernel_through_its_matrix_view():
    conv = nn.Conv(4, (3, 3), padding="SAME")
    x = jnp.asarray(RNG.standard_normal((2, 5, 5, 2)), jnp.float32)
    variables = _mlp_variables(conv, x)
    kernel = variables["params"]["kernel"]
    q = qz.quantize(kernel.reshape(18, 4), 4, axis=-1, group_size=9, group_axis=0)
    stored = {"params": {**variables["params"], "kernel": QuantizedKernel(q, None, (3, 3, 2, 4))}}
    floats = {"params": {**variables["params"], "kernel": qz.dequantize(q).reshape(3, 3, 2, 4)}}
    run = jax.jit(lambda s, f: (apply_with_qtensors(conv, s, x), conv.apply(f, x)))
    np.testing.assert_allclose(*run(stored, floats), rtol=1e-5, atol=1e-5)
    smooth = QuantizedKernel(q, jnp.ones(18), (3, 3, 2, 4), act_bits=8)
    with pytest.raises(ValueError, match=r"layer '': activation quantization needs a Dense"):
        apply_with_qtensors(conv, {"params": {**variables["params"], "kernel": smooth}}, x)


def test_bad_input():
    q = qz.quantize(jnp.asarray(W), 4, axis=-1)
    with pytest.raises(TypeError, match="kernel must be a QTensor, PackedQTensor or"):
        weight_only_dense(X, jnp.asarray(W))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 64\) .* got \(3, 63\)"):
        weight_only_dense(X[0, :, :63], q)
    q3 = qz.quantize(jnp.ones((4, 4, 4)), 4, axis=-1)
    with pytest.raises(ValueError, match=r"needs a 2-D \(in, out\) quantized kernel"):
        weight_only_dense(X, q3)
    with pytest.raises(TypeError, match="on_the_fly must be a bool"):
        apply_with_qtensors(MLP(), {"params": {}}, X, on_the_fly="yes")
