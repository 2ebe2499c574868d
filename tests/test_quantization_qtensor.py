"""QTensor as a pytree, and dequantize's type checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models.quantization import PackedQTensor, QTensor, dequantize, pack, quantize


def test_pytree_roundtrip_keeps_static_metadata():
    q = quantize(jnp.arange(24.0).reshape(4, 6) - 10, 4, symmetric=False, axis=0, group_size=3)
    leaves, treedef = jax.tree_util.tree_flatten(q)
    assert len(leaves) == 3  # values, scale, zero_point
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(back, QTensor)
    assert (back.bits, back.axis, back.group_size, back.group_axis) == (4, (0,), 3, 1)
    assert back.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(dequantize(back)), np.asarray(dequantize(q)))


def test_symmetric_qtensor_has_no_zero_point_leaf():
    q = quantize(jnp.ones((2, 2)), 8)
    assert q.symmetric and q.zero_point is None
    assert len(jax.tree.leaves(q)) == 2


def test_qtensor_passes_through_jit_and_tree_map():
    q = quantize(jax.random.normal(jax.random.key(0), (8, 4)), 8, axis=-1)
    out = jax.jit(dequantize)(q)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(dequantize(q)))
    doubled = jax.tree.map(lambda a: a * 2 if a.dtype == jnp.float32 else a, q)
    np.testing.assert_allclose(np.asarray(dequantize(doubled)), 2 * np.asarray(dequantize(q)))
    assert "bits=8" in repr(q)


@pytest.mark.parametrize("bad", [jnp.ones(3), np.ones(3), 1.0, None, {"values": 1}])
def test_dequantize_rejects_non_qtensor(bad):
    with pytest.raises(TypeError, match="dequantize expects a QTensor"):
        dequantize(bad)


def test_dequantize_rejects_packed_with_hint():
    p = pack(quantize(jnp.ones(8), 4))
    assert isinstance(p, PackedQTensor)
    with pytest.raises(TypeError, match="unpack"):
        dequantize(p)
