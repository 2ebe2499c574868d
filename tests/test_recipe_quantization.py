"""Quantization-aware training through a config: the ``quantization`` section
(recipes/config.py), its builders in recipes/build.py and the train recipe that honours it."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from _helpers import use_compilation_cache

from jaxopt_models import quantization as qz
from jaxopt_models.recipes import build, train
from jaxopt_models.recipes.config import quantization_section

use_compilation_cache()

KERNEL = jax.random.normal(jax.random.key(0), (16, 6))
PARAMS = {"Dense_0": {"kernel": KERNEL, "bias": jnp.linspace(-1.0, 1.0, 6)}}


def test_the_defaults_and_a_missing_section_are_float():
    section = train.default_config().quantization
    assert build.qat_params_fn(section) is None and build.qat_model_kwargs(section) == {}
    assert not build.quantization_enabled(section)
    assert build.qat_params_fn(None) is None and build.qat_model_kwargs(None) == {}
    assert not build.quantization_enabled(None)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_uniform_weights_are_fake_quantized_and_biases_stay_float(bits, per_channel):
    fn = build.qat_params_fn(quantization_section(weight_bits=bits, per_channel=per_channel))
    out = fn(PARAMS)
    axis = -1 if per_channel else None
    expected = qz.dequantize(qz.quantize(KERNEL, bits, axis=axis))
    np.testing.assert_allclose(out["Dense_0"]["kernel"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out["Dense_0"]["bias"], PARAMS["Dense_0"]["bias"])
    columns = np.asarray(out["Dense_0"]["kernel"]).T if per_channel else [out["Dense_0"]["kernel"]]
    for col in columns:
        assert len(np.unique(col)) <= 2**bits - 1


def test_weight_gradient_is_straight_through():
    fn = build.qat_params_fn(quantization_section(weight_bits=4))
    grads = jax.grad(lambda p: jnp.sum(fn(p)["Dense_0"]["kernel"] * 3.0))(PARAMS)
    np.testing.assert_allclose(grads["Dense_0"]["kernel"], 3.0)  # inside the min-max range


def test_binary_weights_take_two_values_per_channel():
    fn = build.qat_params_fn(quantization_section(weight_mode="binary"))
    out = fn(PARAMS)["Dense_0"]["kernel"]
    k = np.asarray(KERNEL)
    for j in range(k.shape[1]):
        scale = np.abs(k[:, j]).mean()
        np.testing.assert_allclose(out[:, j], np.where(k[:, j] >= 0, scale, -scale), rtol=1e-6)


def test_ternary_weights_take_three_values_per_channel():
    out = build.qat_params_fn(quantization_section(weight_mode="ternary"))(PARAMS)
    for col in np.asarray(out["Dense_0"]["kernel"]).T:
        assert len(np.unique(col)) <= 3
        assert 0.0 in col


def test_the_activation_quantizer_from_the_section():
    section = quantization_section(act_bits=6, act_symmetric=True, act_calibration="percentile")
    kwargs = build.qat_model_kwargs(section)
    assert kwargs == {
        "act_quant": qz.ActivationQuantizer(bits=6, symmetric=True, calibration="percentile")
    }
    assert build.quantization_enabled(section)
    assert (
        build.build_model(train.default_config().model, 10, section).act_quant
        == (kwargs["act_quant"])
    )


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("weight_bits", 17, ValueError, r"weight_bits=17 must be an int in 0..16"),
        ("weight_bits", -1, ValueError, r"weight_bits=-1"),
        ("weight_bits", True, ValueError, r"weight_bits=True"),
        ("act_bits", 2.5, ValueError, r"act_bits=2.5"),
        ("weight_mode", "octal", ValueError, r"weight_mode='octal' is not known"),
        ("act_calibration", "histogram", ValueError, r"act_calibration='histogram' is not"),
        ("per_channel", "yes", TypeError, r"per_channel='yes' must be a bool"),
        ("act_symmetric", 1, TypeError, r"act_symmetric=1 must be a bool"),
        ("ternary_threshold", 3.0, ValueError, r"ternary_threshold=3.0 must be a number"),
    ],
)
def test_bad_fields_name_the_field(field, value, error, match):
    fields = {**quantization_section().to_dict(), "weight_mode": "ternary", field: value}
    section = ml_collections.ConfigDict(fields)  # (a typed field would refuse some values)
    with pytest.raises(error, match=f"config.quantization.{match}"):
        build.quantization_enabled(section)  # reads every field
    config = tiny_config()
    config.quantization = section
    with pytest.raises(build.ConfigError, match=f"config.quantization.{match}"):
        train.run(config, None)  # refused before anything trains


def tiny_config(num_epochs=1):
    c = train.default_config()
    c.dataset.num_train = 256
    c.dataset.num_test = 128
    c.model.features = (32,)
    c.num_epochs = num_epochs
    c.batch_size = 32
    c.eval_batch_size = 128
    c.optimizer.learning_rate = 1e-2
    c.plots = False
    return c


def test_a_qat_config_trains_with_its_params_fn_and_act_quant(monkeypatch):
    seen = {"params_fn_calls": 0, "models": []}
    real_params_fn, real_get_model = build.qat_params_fn, build.get_model

    def spy_params_fn(section):
        fn = real_params_fn(section)

        def counted(params):
            seen["params_fn_calls"] += 1  # runs at trace time of the train and eval steps
            return fn(params)

        return counted

    def spy_get_model(name, **kwargs):
        model = real_get_model(name, **kwargs)
        seen["models"].append(model)
        return model

    monkeypatch.setattr(build, "qat_params_fn", spy_params_fn)
    monkeypatch.setattr(build, "get_model", spy_get_model)
    c = tiny_config()
    c.quantization.weight_bits = 4
    c.quantization.act_bits = 8
    state, results = train.run(c, None)
    assert seen["params_fn_calls"] >= 2  # traced in the train step and in the eval step
    assert seen["models"][0].act_quant == qz.ActivationQuantizer(bits=8)
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert results["config"]["quantization"]["weight_bits"] == 4
    # The latent params stay float: QAT only quantizes inside the loss.
    kernel = np.asarray(state.params["Dense_0"]["kernel"])
    assert len(np.unique(kernel[:, 0])) > 2**4


def test_qat_changes_the_run_and_its_evaluation_uses_the_quantized_weights():
    c = tiny_config(num_epochs=3)
    c.quantization.weight_mode = "binary"
    state, results = train.run(c, None)
    _, float_results = train.run(tiny_config(num_epochs=3), None)
    assert results["test_loss"] != float_results["test_loss"]
    fn = build.qat_params_fn(c.quantization)
    data = build.load_data(c)
    q_logits = np.asarray(state.apply_fn({"params": fn(state.params)}, data.x_test))
    f_logits = np.asarray(state.apply_fn(state.variables, data.x_test))
    q_loss = float(optax.softmax_cross_entropy_with_integer_labels(q_logits, data.y_test).mean())
    f_loss = float(optax.softmax_cross_entropy_with_integer_labels(f_logits, data.y_test).mean())
    assert results["test_accuracy"] == float((q_logits.argmax(-1) == data.y_test).mean())
    assert results["test_loss"] == pytest.approx(q_loss, rel=1e-5)
    assert abs(q_loss - f_loss) > 1e-3  # the evaluation really used the quantized weights
    assert results["test_accuracy"] > 0.3  # a binarized digits MLP still learns (10 classes)
