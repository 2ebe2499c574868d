"""Tests of the ``quantization`` config section and its wiring into ``train_and_evaluate``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models import quantization as qz
from jaxopt_models.training import default_config, loop, train_and_evaluate
from jaxopt_models.training import quant_config as qc

KERNEL = jax.random.normal(jax.random.key(0), (16, 6))
PARAMS = {"Dense_0": {"kernel": KERNEL, "bias": jnp.linspace(-1.0, 1.0, 6)}}


def config(**fields):
    c = default_config()
    for k, v in fields.items():
        c.quantization[k] = v
    return c


def test_defaults_are_float():
    c = default_config()
    assert qc.quant_params_fn(c) is None
    assert qc.quant_model_kwargs(c) == {}
    assert not qc.quantization_enabled(c)


def test_missing_section_is_float():
    c = default_config()
    del c["quantization"]
    assert qc.quant_params_fn(c) is None and qc.activation_quantizer(c) is None


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_uniform_weights_are_fake_quantized(bits, per_channel):
    fn = qc.quant_params_fn(config(weight_bits=bits, per_channel=per_channel))
    out = fn(PARAMS)
    axis = -1 if per_channel else None
    expected = qz.dequantize(qz.quantize(KERNEL, bits, axis=axis))
    np.testing.assert_allclose(out["Dense_0"]["kernel"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out["Dense_0"]["bias"], PARAMS["Dense_0"]["bias"])
    for col in np.asarray(out["Dense_0"]["kernel"]).T:
        assert len(np.unique(col)) <= 2**bits - 1


def test_weight_gradient_is_straight_through():
    fn = qc.quant_params_fn(config(weight_bits=4))
    grads = jax.grad(lambda p: jnp.sum(fn(p)["Dense_0"]["kernel"] * 3.0))(PARAMS)
    np.testing.assert_allclose(grads["Dense_0"]["kernel"], 3.0)  # inside the min-max range


def test_binary_weights_take_two_values_per_channel():
    out = qc.quant_params_fn(config(weight_mode="binary"))(PARAMS)["Dense_0"]["kernel"]
    k = np.asarray(KERNEL)
    for j in range(k.shape[1]):
        scale = np.abs(k[:, j]).mean()
        np.testing.assert_allclose(out[:, j], np.where(k[:, j] >= 0, scale, -scale), rtol=1e-6)


def test_ternary_weights_take_three_values_per_channel():
    out = qc.quant_params_fn(config(weight_mode="ternary"))(PARAMS)["Dense_0"]["kernel"]
    for col in np.asarray(out).T:
        assert len(np.unique(col)) <= 3
        assert 0.0 in col


def test_activation_quantizer_from_config():
    c = config(act_bits=6, act_symmetric=True, act_calibration="percentile")
    aq = qc.activation_quantizer(c)
    assert aq == qz.ActivationQuantizer(bits=6, symmetric=True, calibration="percentile")
    assert qc.quant_model_kwargs(c) == {"act_quant": aq}
    assert qc.quantization_enabled(c)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("weight_bits", 17, ValueError),
        ("weight_bits", -1, ValueError),
        ("weight_bits", True, ValueError),
        ("act_bits", 2.5, ValueError),
        ("weight_mode", "octal", ValueError),
        ("act_calibration", "histogram", ValueError),
        ("per_channel", "yes", TypeError),
        ("act_symmetric", 1, TypeError),
    ],
)
def test_bad_fields_name_the_field(field, value, error):
    c = default_config()
    c.quantization = dict(c.quantization.to_dict(), **{field: value})  # any type
    with pytest.raises(error, match=f"config.quantization.{field}"):
        qc.quant_params_fn(c)
        qc.activation_quantizer(c)


def test_bad_ternary_threshold_names_the_field():
    with pytest.raises(ValueError, match="config.quantization.ternary_threshold"):
        qc.quant_params_fn(config(weight_mode="ternary", ternary_threshold=3.0))


def tiny_config():
    c = default_config()
    c.dataset.name = "digits"
    c.dataset.num_train = 256
    c.dataset.num_test = 128
    c.model.features = (32,)
    c.num_epochs = 1
    c.batch_size = 64
    c.eval_batch_size = 128
    c.progress = False
    return c


def test_qat_config_trains_with_params_fn_and_act_quant(monkeypatch):
    seen = {"params_fn_calls": 0, "models": []}
    real_params_fn, real_get_model = loop.quant_params_fn, loop.get_model

    def spy_params_fn(config):
        fn = real_params_fn(config)

        def counted(params):
            seen["params_fn_calls"] += 1  # runs at trace time of the train and eval steps
            return fn(params)

        return counted

    def spy_get_model(name, **kwargs):
        model = real_get_model(name, **kwargs)
        seen["models"].append(model)
        return model

    monkeypatch.setattr(loop, "quant_params_fn", spy_params_fn)
    monkeypatch.setattr(loop, "get_model", spy_get_model)
    c = tiny_config()
    c.quantization.weight_bits = 4
    c.quantization.act_bits = 8
    state, results = train_and_evaluate(c, None)
    assert seen["params_fn_calls"] >= 2  # traced in the train step and in the eval step
    assert seen["models"][0].act_quant == qz.ActivationQuantizer(bits=8)
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert results["config"]["quantization"]["weight_bits"] == 4
    # The latent params stay float: QAT only quantizes inside the loss.
    kernel = np.asarray(state.params["Dense_0"]["kernel"])
    assert len(np.unique(kernel[:, 0])) > 2**4


def test_qat_eval_uses_quantized_weights():
    c = tiny_config()
    c.quantization.weight_mode = "binary"
    c.num_epochs = 4
    c.batch_size = 32
    c.optimizer.learning_rate = 1e-2
    state, results = train_and_evaluate(c, None)
    fn = qc.quant_params_fn(c)
    ds = loop.load_dataset(c)
    logits = state.apply_fn({"params": fn(state.params)}, ds.x_test)
    accuracy = float((np.asarray(logits).argmax(-1) == ds.y_test).mean())
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert results["test_accuracy"] > 0.3  # binarized digits MLP still learns (10 classes)
