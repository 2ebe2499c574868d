"""Tests of the integer inference path of the models (``models/int8.py``)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import use_compilation_cache

from jaxopt_models import quantization as qz
from jaxopt_models.models import (
    MLP,
    ConvNet,
    DeepCNN,
    build_int8_model,
    calibrate_activation_ranges,
    capture_layer_inputs,
    fake_quant_apply,
    get_model,
    int8_apply,
)

use_compilation_cache()

IMAGES = jax.random.uniform(jax.random.key(1), (128, 28, 28, 1))


@functools.cache
def setup(name: str):
    model = get_model(name)
    variables = model.init(jax.random.key(0), IMAGES[:1])
    ranges = calibrate_activation_ranges(model, variables, [IMAGES[:64], IMAGES[64:]])
    net = build_int8_model(model, variables["params"], ranges)
    return model, variables, ranges, net


def test_capture_layer_inputs_of_lenet5():
    model, variables, _, _ = setup("lenet5")
    inputs = capture_layer_inputs(model, variables, IMAGES[:4])
    assert sorted(inputs) == ["Conv_0", "Conv_1", "Dense_0", "Dense_1", "Dense_2"]
    assert inputs["Conv_0"].shape == (4, 28, 28, 1)
    assert inputs["Conv_1"].shape == (4, 14, 14, 6)
    assert inputs["Dense_0"].shape == (4, 400)
    np.testing.assert_array_equal(inputs["Conv_0"], IMAGES[:4])


def test_ranges_are_min_max_of_the_calibration_inputs():
    model, variables, ranges, _ = setup("mlp")
    x = IMAGES[:128]
    inputs = capture_layer_inputs(model, variables, x)
    for name, value in inputs.items():
        lo, hi = ranges[name]
        assert lo == pytest.approx(min(0.0, float(value.min())), abs=1e-6)
        assert hi == pytest.approx(float(value.max()), rel=1e-6)
    assert ranges["Dense_0"][0] == 0.0  # images and ReLU outputs are >= 0


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
def test_int8_path_agrees_with_the_fake_quant_model(name):
    model, variables, ranges, net = setup(name)
    int8 = jax.jit(int8_apply)(net, IMAGES)
    fake = jax.jit(lambda p, x: fake_quant_apply(model, p, x, ranges))(variables["params"], IMAGES)
    flt = model.apply(variables, IMAGES)
    agree = float((int8.argmax(-1) == fake.argmax(-1)).mean())
    assert agree >= 0.98
    # Same function up to float rounding (and rare one-step rounding flips of an activation).
    assert float(jnp.median(jnp.abs(int8 - fake))) < 1e-4
    # Quantization does change the logits (the comparison above is not vacuous).
    assert float(jnp.abs(fake - flt).max()) > 1e-3


def test_int8_dense_layer_accumulates_exactly():
    # One Dense layer (784 -> 10): logits = (sum (xq - zx) * wq) * sx * sw + b, computed as
    # (sum xq * wq) * sx * sw + folded bias.
    model = MLP(features=(), num_classes=10)
    x = IMAGES[:16]
    variables = model.init(jax.random.key(3), x)
    ranges = calibrate_activation_ranges(model, variables, [x])
    net = build_int8_model(model, variables["params"], ranges)
    out = np.asarray(jax.jit(int8_apply)(net, x), np.float64)
    layer = net.dense[0]
    codes = qz.quantize_to_grid(x.reshape(16, -1), layer.x_scale, layer.x_zero_point, 8)
    xq = np.asarray(codes, np.int64)
    assert xq.min() >= -128 and xq.max() <= 127
    wq = np.asarray(layer.kernel.values, np.int64)
    acc = xq @ wq  # exact integer reference of the int32 sum
    assert np.abs(acc).max() > 2**16  # sums a float16 accumulator could not hold
    scale = float(layer.x_scale) * np.asarray(layer.kernel.scale, np.float64).reshape(-1)
    np.testing.assert_allclose(out, acc * scale + np.asarray(layer.bias), rtol=1e-5, atol=1e-5)
    # The folded bias makes it the affine layer on the dequantized input.
    bias = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)
    ref = (xq - int(layer.x_zero_point)) @ wq * scale + bias
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_int8_conv_without_fused_pooling():
    # avg pooling is not fused: the conv runs unpooled, then the float pool.
    model = ConvNet(features=(4,), padding="SAME", hidden=(), pool="avg", num_classes=3)
    x = IMAGES[:8, :12, :12]
    variables = model.init(jax.random.key(0), x)
    ranges = calibrate_activation_ranges(model, variables, [x])
    net = build_int8_model(model, variables["params"], ranges)
    fake = fake_quant_apply(model, variables["params"], x, ranges)
    np.testing.assert_allclose(jax.jit(int8_apply)(net, x), fake, rtol=1e-4, atol=1e-4)


def test_int8_model_is_four_times_smaller():
    _, variables, _, net = setup("mlp")
    assert qz.size_bytes(variables["params"]) / qz.size_bytes(net) > 3.9


def test_errors():
    model, variables, ranges, _ = setup("mlp")
    with pytest.raises(TypeError, match="MLP or a ConvNet"):
        build_int8_model(DeepCNN(), variables["params"], ranges)
    with pytest.raises(ValueError, match="act_quant=None"):
        build_int8_model(MLP(act_quant=qz.ActivationQuantizer()), variables["params"], ranges)
    missing = {k: v for k, v in ranges.items() if k != "Dense_1"}
    with pytest.raises(ValueError, match=r"Dense_1"):
        build_int8_model(model, variables["params"], missing)
    with pytest.raises(ValueError, match="act_bits"):
        build_int8_model(model, variables["params"], ranges, act_bits=12)
    with pytest.raises(ValueError, match="batches is empty"):
        calibrate_activation_ranges(model, variables, [])
