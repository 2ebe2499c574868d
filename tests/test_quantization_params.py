"""Pytree-level PTQ (quantize_params / dequantize_params) and weight QAT (fake_quant_params)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models.quantization import (
    QTensor,
    binarize,
    default_filter,
    dequantize,
    dequantize_params,
    fake_quant,
    fake_quant_params,
    fake_ternarize,
    quantize_params,
)


def make_params():
    k = jax.random.split(jax.random.key(0), 3)
    return {
        "params": {
            "Dense_0": {"kernel": jax.random.normal(k[0], (12, 8)), "bias": jnp.ones(8)},
            "Conv_0": {"kernel": jax.random.normal(k[1], (3, 3, 2, 4)), "bias": jnp.zeros(4)},
            "BatchNorm_0": {"scale": jnp.ones(4)},
            "head": [jax.random.normal(k[2], (8, 3)), jnp.zeros(3)],
        }
    }


def test_quantize_params_selects_kernels_and_roundtrips():
    params = make_params()
    q = quantize_params(params, bits=8, axis=-1)
    p = q["params"]
    assert isinstance(p["Dense_0"]["kernel"], QTensor)
    assert isinstance(p["Conv_0"]["kernel"], QTensor) and p["Conv_0"]["kernel"].scale.shape == (
        1,
        1,
        1,
        4,
    )
    assert isinstance(p["head"][0], QTensor)
    assert p["Dense_0"]["bias"] is params["params"]["Dense_0"]["bias"]
    assert p["BatchNorm_0"]["scale"] is params["params"]["BatchNorm_0"]["scale"]
    back = dequantize_params(q)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(back), strict=True
    ):
        err = np.abs(np.asarray(a) - np.asarray(b))
        if a.ndim > 1:
            bound = np.abs(np.asarray(a)).max(axis=tuple(range(a.ndim - 1))) / 127 / 2
            assert np.all(err <= bound + 1e-6), path
        else:
            assert np.all(err == 0), path


def test_filter_fn_gets_string_paths():
    seen = []

    def only_dense(path, leaf):
        seen.append(path)
        return path.endswith("Dense_0/kernel")

    q = quantize_params(make_params(), bits=4, filter_fn=only_dense)
    assert "params/Dense_0/kernel" in seen and "params/head/0" in seen
    kinds = jax.tree.map(
        lambda x: isinstance(x, QTensor), q, is_leaf=lambda x: isinstance(x, QTensor)
    )
    assert sum(jax.tree.leaves(kinds)) == 1
    assert default_filter("a/kernel", jnp.ones((2, 2))) and not default_filter("b", jnp.ones(2))
    assert not default_filter("c", jnp.ones((2, 2), jnp.int32))


def test_custom_quantizer_and_already_quantized_leaves():
    params = make_params()
    q = quantize_params(params, quantizer=functools.partial(binarize, axis=-1))
    assert q["params"]["Dense_0"]["kernel"].bits == 1
    again = quantize_params(q, bits=8)  # QTensor leaves are left alone
    assert again["params"]["Dense_0"]["kernel"].bits == 1
    np.testing.assert_array_equal(
        np.asarray(dequantize_params(again)["params"]["Conv_0"]["kernel"]),
        np.asarray(dequantize(q["params"]["Conv_0"]["kernel"])),
    )


def test_fake_quant_params_gradient_is_straight_through():
    params = make_params()["params"]["Dense_0"]
    x = jax.random.normal(jax.random.key(5), (16, 12))

    def forward(p):
        return jnp.sum(jnp.tanh(x @ p["kernel"] + p["bias"]))

    @jax.jit
    def loss(p):
        return forward(fake_quant_params(p, bits=4, axis=-1))

    g = jax.grad(loss)(params)
    qp = fake_quant_params(params, bits=4, axis=-1)
    np.testing.assert_array_equal(
        np.asarray(qp["kernel"]), np.asarray(fake_quant(params["kernel"], 4, axis=-1))
    )
    assert qp["bias"] is params["bias"]
    expected = jax.grad(forward)(qp)  # STE: the float gradient at the quantized weights
    chex_tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g["kernel"]), np.asarray(expected["kernel"]), **chex_tol)
    np.testing.assert_allclose(np.asarray(g["bias"]), np.asarray(expected["bias"]), **chex_tol)


def test_fake_quant_params_with_ternary_quantizer():
    params = make_params()
    qp = fake_quant_params(params, quantizer=functools.partial(fake_ternarize, axis=-1))
    k = np.asarray(qp["params"]["Dense_0"]["kernel"])
    for col in np.abs(k).T:  # each output channel takes values in {0, s}
        assert len(np.unique(col[col > 0])) == 1


def test_argument_errors():
    with pytest.raises(TypeError, match="either quantizer"):
        quantize_params(make_params(), quantizer=binarize, axis=-1)
    with pytest.raises(TypeError, match="either quantizer"):
        fake_quant_params(make_params(), quantizer=fake_ternarize, symmetric=False)
    with pytest.raises(TypeError, match="filter_fn"):
        quantize_params(make_params(), filter_fn="kernel")
    with pytest.raises(ValueError, match="bits"):
        quantize_params(make_params(), bits=20)
