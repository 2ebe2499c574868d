import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models import models


@pytest.mark.parametrize(
    "name,shape,expected_params",
    [
        ("lenet300_100", (2, 28, 28, 1), 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
        ("lenet5", (2, 28, 28, 1), 61706),
        ("lenet5_caffe", (2, 28, 28, 1), 431080),
        ("mnist1d_cnn", (2, 40, 1), None),
        ("deep_cnn", (2, 28, 28, 1), None),
        ("gru", (2, 40, 1), None),
        ("lstm", (2, 28, 28, 1), None),
    ],
)
def test_models_build_and_output_logits(name, shape, expected_params):
    model = models.get_model(name, num_classes=10)
    x = jnp.ones(shape)
    variables = model.init(jax.random.key(0), x)
    n = sum(a.size for a in jax.tree.leaves(variables["params"]))
    if expected_params is not None:
        assert n == expected_params
    mutable = [k for k in variables if k != "params"]
    out = model.apply(variables, x, train=True, mutable=mutable)
    logits = out[0] if isinstance(out, tuple) else out
    chex.assert_shape(logits, (2, 10))
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("init", ["xavier_uniform", "he_normal", "lecun_normal"])
def test_kernel_init_is_selectable(init):
    model = models.MLP(features=(256,), num_classes=10, kernel_init=init)
    params = model.init(jax.random.key(1), jnp.ones((1, 512)))["params"]
    w = np.asarray(params["Dense_0"]["kernel"])
    fan_in, fan_out = w.shape
    expected_var = {
        "xavier_uniform": 2.0 / (fan_in + fan_out),
        "he_normal": 2.0 / fan_in,
        "lecun_normal": 1.0 / fan_in,
    }[init]
    assert w.var() == pytest.approx(expected_var, rel=0.1)


def test_conv_and_rnn_read_1d_signals_and_images():
    x1 = jnp.ones((3, 40))  # (N, L) signal gets a channel axis
    m = models.mnist1d_cnn()
    v = m.init(jax.random.key(0), x1)
    chex.assert_shape(m.apply(v, x1), (3, 10))
    img = jnp.ones((3, 28, 28, 1))
    r = models.RNNClassifier(cell="gru", hidden_size=8)
    v = r.init(jax.random.key(0), img)
    chex.assert_shape(r.apply(v, img), (3, 10))
    # the GRU reads rows: its input kernel sees 28 features
    assert v["params"]["cell_0"]["ir"]["kernel"].shape == (28, 8)


def test_pool_matches_reduce_window():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    import flax.linen as nn

    np.testing.assert_allclose(models.pool(x, "max"), nn.max_pool(x, (2, 2), (2, 2)))
    np.testing.assert_allclose(models.pool(x, "avg"), nn.avg_pool(x, (2, 2), (2, 2)), rtol=1e-6)
    odd = jax.random.normal(jax.random.key(1), (2, 9, 9, 3))
    np.testing.assert_allclose(models.pool(odd, "max"), nn.max_pool(odd, (2, 2), (2, 2)))


def test_act_quant_hook_sees_every_layer_input():
    seen = []

    def hook(x):
        seen.append(x.shape)
        return x

    m = models.MLP(features=(5, 4), num_classes=3, act_quant=hook)
    m.init(jax.random.key(0), jnp.ones((2, 6)))
    assert seen == [(2, 6), (2, 5), (2, 4)]


def test_dropout_only_in_training():
    m = models.MLP(features=(32,), dropout_rate=0.5)
    x = jnp.ones((4, 10))
    v = m.init(jax.random.key(0), x)
    np.testing.assert_array_equal(m.apply(v, x), m.apply(v, x))
    a = m.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = m.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


def test_bad_names_raise_with_allowed_values():
    with pytest.raises(ValueError, match="allowed values.*mlp"):
        models.get_model("resnet9000")
    with pytest.raises(ValueError, match="kernel_init.*allowed values"):
        models.MLP(kernel_init="zeros_please").init(jax.random.key(0), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="cell.*allowed values"):
        models.RNNClassifier(cell="transformer").init(jax.random.key(0), jnp.ones((1, 4, 1)))
    with pytest.raises(ValueError, match="pool.*allowed values"):
        models.pool(jnp.ones((1, 4, 4, 1)), "median")
    with pytest.raises(TypeError, match="mlp"):
        models.get_model("mlp", no_such_field=3)
