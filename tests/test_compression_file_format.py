"""Tests for jaxopt_models.compression.file_format (save_compressed / load_compressed)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.compression import file_format as ff
from jaxopt_models.compression.file_format import (
    decode_compressed,
    encode_compressed,
    load_compressed,
    save_compressed,
)
from jaxopt_models.compression.weight_sharing import cluster_weights, shared_params
from jaxopt_models.quantization import dequantize_params, pack, quantize_params

SIZES = (64, 32, 10)


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(SIZES[1], name="Dense_0")(x))
        return nn.Dense(SIZES[2], name="Dense_1")(x)


def _params(seed=0):
    shapes = jax.eval_shape(_MLP().init, jax.random.key(seed), jnp.zeros((1, SIZES[0])))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.2, jnp.float32), shapes["params"]
    )


def _masks(params, sparsity=0.9):
    def mask(p):
        return jnp.abs(p) > jnp.quantile(jnp.abs(p), sparsity) if p.ndim > 1 else None

    return jax.tree.map(mask, params)


def _apply_masks(params, masks):
    return jax.tree.map(
        lambda p, m: p if m is None else jnp.where(m, p, 0.0),
        params,
        masks,
        is_leaf=lambda x: x is None,
    )


def _bitwise_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y, np.float32)
        assert x.dtype == np.float32 and x.shape == y.shape
        np.testing.assert_array_equal(x.view(np.uint32), y.view(np.uint32))


@pytest.fixture(scope="module")
def pruned():
    params = _params()
    masks = _masks(params)
    return _apply_masks(params, masks), masks


@pytest.fixture(scope="module")
def shared(pruned):
    params, masks = pruned
    return cluster_weights(params, bits=5, masks=masks)


@pytest.mark.parametrize("huffman", [True, False])
def test_round_trip_float_dense(tmp_path, huffman):
    params = _params()
    path = tmp_path / "dense.jxc"
    n = save_compressed(path, params, huffman=huffman)
    assert n == os.path.getsize(path)
    _bitwise_equal(load_compressed(path), params)


@pytest.mark.parametrize("huffman", [True, False])
def test_round_trip_sparse_float(tmp_path, pruned, huffman):
    params, masks = pruned
    path = tmp_path / "sparse.jxc"
    n = save_compressed(path, params, masks=masks, huffman=huffman)
    _bitwise_equal(load_compressed(path), params)
    assert n < 0.25 * sum(x.size * 4 for x in jax.tree.leaves(params))


@pytest.mark.parametrize("huffman", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_round_trip_shared(tmp_path, pruned, shared, huffman, masked):
    params, masks = pruned
    if not masked:
        shared, masks = cluster_weights(_params(), bits=3), None
    dense = shared_params(shared)
    path = tmp_path / "shared.jxc"
    save_compressed(path, dense, shared=shared, masks=masks, huffman=huffman)
    _bitwise_equal(load_compressed(path), dense)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(bits=8),
        dict(bits=4, symmetric=False, axis=-1),
        dict(bits=3, group_size=8, axis=-1),
        dict(bits=2, symmetric=False),
    ],
    ids=["int8", "int4-asym-channel", "int3-group", "int2-asym"],
)
@pytest.mark.parametrize("prune", [False, True])
def test_round_trip_quantized(tmp_path, pruned, kwargs, prune):
    params = pruned[0] if prune else _params()
    q = quantize_params(params, **kwargs)
    dq = dequantize_params(q)
    path = tmp_path / "quantized.jxc"
    save_compressed(path, dq, quantized=q)
    _bitwise_equal(load_compressed(path), dq)


def test_round_trip_packed_qtensor(pruned):
    q = quantize_params(pruned[0], bits=4)
    packed = jax.tree.map(
        lambda x: pack(x) if hasattr(x, "bits") else x, q, is_leaf=lambda x: hasattr(x, "bits")
    )
    dq = dequantize_params(q)
    _bitwise_equal(decode_compressed(encode_compressed(dq, quantized=packed)), dq)


def _roundtrip_record(record: bytes):
    r = ff._Reader(record)
    out = ff._read_record(r)
    assert r.pos == len(record)
    return out


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([(7,), (13, 5), (4, 3, 6), (3, 3, 2, 4)]),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31),
    st.sampled_from([True, False, None]),
    st.booleans(),
)
def test_every_layout_round_trips(shape, density, seed, sparse, huffman):
    rng = np.random.default_rng(seed)
    keep = rng.random(shape) < density
    x = np.where(keep, rng.standard_normal(shape), 0.0).astype(np.float32)
    out = _roundtrip_record(ff._float_record(x, huffman=huffman, sparse=sparse))
    np.testing.assert_array_equal(out.view(np.uint32), x.view(np.uint32))
    codebook = rng.standard_normal(12).astype(np.float32)
    idx = np.where(keep, rng.integers(0, 12, shape), 3)
    out = _roundtrip_record(ff._shared_record(codebook, idx, huffman=huffman, sparse=sparse))
    np.testing.assert_array_equal(out, codebook[idx])
    q = ff._Quant(
        np.where(keep, rng.integers(-8, 8, shape), 2).astype(np.int64),
        np.full((1,) * len(shape), 0.25, np.float32),
        np.full((1,) * len(shape), 2, np.int64),
    )
    out = _roundtrip_record(ff._quantized_record(q, shape, huffman=huffman, sparse=sparse))
    np.testing.assert_array_equal(out, ff.dequantize_record(q))


def test_nested_structure_and_edge_shapes():
    tree = {
        "b": [np.float32(1.5) * np.ones((), np.float32), (np.zeros((0, 3), np.float32),)],
        "a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "c": np.zeros((5, 4), np.float32),
    }
    back = decode_compressed(encode_compressed(tree))
    assert isinstance(back["b"], list) and isinstance(back["b"][1], tuple)
    _bitwise_equal(back, tree)


def test_negative_zero_loads_as_zero():
    x = {"w": np.array([[-0.0, 1.0], [0.0, -2.0]], np.float32)}
    back = np.asarray(decode_compressed(encode_compressed(x))["w"])
    np.testing.assert_array_equal(back, x["w"])  # equal values; -0.0 comes back as +0.0


def test_loaded_model_predicts_exactly_the_same(tmp_path, pruned, shared):
    dense = shared_params(shared)
    path = tmp_path / "model.jxc"
    save_compressed(path, dense, shared=shared, masks=pruned[1])
    x = jax.random.normal(jax.random.key(5), (256, SIZES[0]))
    before = _MLP().apply({"params": dense}, x)
    after = _MLP().apply({"params": load_compressed(path)}, x)
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))


def test_every_corrupted_byte_raises_clear_error(tmp_path, pruned, shared):
    data = encode_compressed(shared_params(shared), shared=shared, masks=pruned[1])
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(ValueError, match="model.jxc: "):
            decode_compressed(bytes(bad), source="model.jxc")
    path = tmp_path / "corrupt.jxc"
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=f"{path}.*checksum mismatch.*corrupted"):
        load_compressed(path)


def test_every_truncation_raises_clear_error(tmp_path, pruned):
    data = encode_compressed(pruned[0], masks=pruned[1])
    for n in range(len(data)):
        with pytest.raises(ValueError, match="short.jxc: "):
            decode_compressed(data[:n], source="short.jxc")
    path = tmp_path / "truncated.jxc"
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=f"{path}.*truncated"):
        load_compressed(path)


def test_header_errors(tmp_path):
    data = encode_compressed({"w": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="bad magic"):
        decode_compressed(b"PK\x03\x04" + data[4:])
    with pytest.raises(ValueError, match="unsupported format version 9"):
        decode_compressed(data[:4] + bytes([9]) + data[5:])
    with pytest.raises(ValueError, match="trailing data"):
        decode_compressed(data + b"\x00")
    path = tmp_path / "empty.jxc"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.jxc"):
        load_compressed(path)


def test_atomic_write(tmp_path, pruned, shared):
    path = tmp_path / "model.jxc"
    save_compressed(path, _params())
    first = path.read_bytes()
    # A failing save (the records do not reproduce the params) leaves the old file.
    with pytest.raises(ValueError, match="does not reproduce"):
        save_compressed(path, pruned[0], shared=shared)
    assert path.read_bytes() == first
    save_compressed(path, pruned[0], masks=pruned[1])
    assert path.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["model.jxc"]  # no temporary files left


def test_validation_errors(pruned, shared):
    params, masks = pruned
    with pytest.raises(ValueError, match="mask is False"):
        encode_compressed(_params(), masks=masks)
    with pytest.raises(ValueError, match="masks must have the params' tree structure"):
        encode_compressed(params, masks={"Dense_0": None})
    q = quantize_params(params, bits=4)
    with pytest.raises(ValueError, match="does not reproduce"):
        encode_compressed(params, quantized=q)
    encode_compressed(params, quantized=q, check=False)  # stores the records as given
    with pytest.raises(ValueError, match="both quantized and weight-shared"):
        encode_compressed(shared_params(shared), shared=shared, quantized=q)
    with pytest.raises(TypeError, match="floating point"):
        encode_compressed({"step": np.arange(3)})
    with pytest.raises(TypeError, match="cannot save"):
        encode_compressed({"w": "not an array"})


def test_lenet300_100_size_far_below_float32():
    """90%-pruned, 5-bit shared 784-300-100-10 MLP (random i.i.d. masks)."""
    rng = np.random.default_rng(0)
    sizes = (784, 300, 100, 10)
    params, masks = {}, {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        k = (rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32)
        m = np.abs(k) > np.quantile(np.abs(k), 0.9)
        params[f"Dense_{i}"] = {"kernel": np.where(m, k, 0.0), "bias": rng.normal(0, 0.01, b)}
        masks[f"Dense_{i}"] = {"kernel": m, "bias": None}
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    shared = cluster_weights(params, bits=5, masks=masks)
    dense = shared_params(shared)
    float_bytes = 4 * sum(x.size for x in jax.tree.leaves(params))
    plain = len(encode_compressed(dense, shared=shared, masks=masks, huffman=False))
    data = encode_compressed(dense, shared=shared, masks=masks)
    print(
        f"\nLeNet-300-100, 90% pruned, 5-bit shared: float32 {float_bytes} B, packed "
        f"{plain} B ({float_bytes / plain:.1f}x), Huffman {len(data)} B "
        f"({float_bytes / len(data):.1f}x)"
    )
    # Random masks and Gaussian weights sit at the entropy bound of about 33x
    # (4.7 bits per relative index, 4.2 bits per code, float32 biases).
    assert float_bytes / len(data) > 32
    assert len(data) < 0.9 * plain
    _bitwise_equal(decode_compressed(data), dense)


def test_unused_codes_and_tiny_shared_tensors_cost_no_extra_bytes():
    rng = np.random.default_rng(3)
    codebook = rng.standard_normal(256).astype(np.float32)
    idx = rng.choice([3, 77, 200], size=(20, 30))
    record = ff._shared_record(codebook, idx, huffman=True)
    assert len(record) < 40 + 600 * 2 // 8  # 3 codebook entries, ~1.6 bits per code
    np.testing.assert_array_equal(_roundtrip_record(record), codebook[idx])
    # An 8-bit codebook for a 10-element bias: stored as plain float32, still bitwise.
    params = {"b": rng.standard_normal(10).astype(np.float32)}
    shared = cluster_weights(params, bits=8, filter_fn=lambda name, w: True)
    dense = shared_params(shared)
    data = encode_compressed(dense, shared=shared)
    assert len(data) == len(encode_compressed(dense))
    _bitwise_equal(decode_compressed(data), dense)


def test_format_error_is_a_value_error_exported_by_the_package(tmp_path):
    from jaxopt_models import compression

    assert compression.FormatError is ff.FormatError and issubclass(ff.FormatError, ValueError)
    path = tmp_path / "bad.jxc"
    path.write_bytes(b"JXCF\x01")
    with pytest.raises(compression.FormatError, match=f"^{path}: truncated file"):
        load_compressed(path)


def test_quantized_values_spanning_32_bits_round_trip_without_a_huge_histogram():
    # The writer used to bincount every stream: 2**32 counters (32 GiB) for these values.
    values = np.array([[-(2**31), 2**31 - 1, 0, 5]], np.int64)
    q = ff._Quant(values, np.full((1, 1), 2.0**-20, np.float32), np.zeros((1, 1), np.int64))
    record = ff._quantized_record(q, (1, 4), huffman=True)
    np.testing.assert_array_equal(_roundtrip_record(record), ff.dequantize_record(q))


@pytest.mark.parametrize("huffman", [True, False])
def test_every_saved_layout_passes_the_strict_reader(tmp_path, pruned, shared, huffman):
    params, masks = pruned
    q = quantize_params(params, bits=4, symmetric=False, axis=-1)
    trees = [
        (params, dict(masks=masks)),
        (shared_params(shared), dict(shared=shared, masks=masks)),
        (dequantize_params(q), dict(quantized=q)),
    ]
    for tree, kwargs in trees:
        data = encode_compressed(tree, huffman=huffman, **kwargs)
        _bitwise_equal(decode_compressed(data), tree)
        # The exact size, and no fewer: the reader charges every element to max_elements.
        n = sum(np.size(x) for x in jax.tree.leaves(tree))
        decode_compressed(data, max_elements=n)
        with pytest.raises(ff.FormatError, match=f"max_elements={n - 1}"):
            decode_compressed(data, max_elements=n - 1)
