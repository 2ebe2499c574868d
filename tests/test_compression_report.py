"""Tests for jaxopt_models.compression.report (size_report)."""

import jax.numpy as jnp
import numpy as np

from jaxopt_models.compression.file_format import encode_compressed
from jaxopt_models.compression.report import format_size_report, size_report
from jaxopt_models.compression.weight_sharing import cluster_weights, shared_params
from jaxopt_models.quantization import dequantize_params, quantize_params


def _pruned(seed=0):
    rng = np.random.default_rng(seed)
    params, masks = {}, {}
    for i, (a, b) in enumerate(((64, 32), (32, 10))):
        k = rng.standard_normal((a, b)).astype(np.float32)
        m = np.abs(k) > np.quantile(np.abs(k), 0.9)
        params[f"Dense_{i}"] = {"kernel": jnp.asarray(np.where(m, k, 0.0)), "bias": jnp.ones(b)}
        masks[f"Dense_{i}"] = {"kernel": jnp.asarray(m), "bias": None}
    return params, masks


def test_stages_totals_and_file_size():
    params, masks = _pruned()
    shared = cluster_weights(params, bits=3, masks=masks)
    dense = shared_params(shared)
    report = size_report(dense, masks=masks, shared=shared)
    assert report["stages"] == ["float32", "pruned", "shared", "huffman"]
    layers = report["layers"]
    assert set(layers) == {"Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel"}
    k0 = layers["Dense_0/kernel"]
    assert k0["params"] == 64 * 32 and k0["nonzeros"] == int(np.sum(masks["Dense_0"]["kernel"]))
    assert k0["float32"] == 4 * 64 * 32
    assert k0["float32"] > k0["pruned"] > k0["shared"] >= k0["huffman"]
    assert layers["Dense_0/bias"]["shared"] == layers["Dense_0/bias"]["pruned"]  # not shared
    total = report["total"]
    for key in ("params", "float32", "pruned", "shared", "huffman"):
        assert total[key] == sum(row[key] for row in layers.values())
    data = encode_compressed(dense, masks=masks, shared=shared)
    assert total["file"] == len(data)
    assert total["huffman"] < total["file"] < total["huffman"] + 100  # names, header, CRC
    assert report["ratio"]["file"] == total["float32"] / len(data)
    table = format_size_report(report)
    print("\n" + table)
    assert "Dense_0/kernel" in table and f"{len(data):,}" in table and "x smaller" in table


def test_quantized_stage_and_no_huffman():
    params = _pruned()[0]
    q = quantize_params(params, bits=4)
    report = size_report(dequantize_params(q), quantized=q, huffman=False)
    assert report["stages"] == ["float32", "quantized"]
    row = report["layers"]["Dense_1/kernel"]
    assert row["quantized"] < row["float32"] / 6  # 4-bit values, sparse
    assert report["total"]["file"] == len(
        encode_compressed(dequantize_params(q), quantized=q, huffman=False)
    )
