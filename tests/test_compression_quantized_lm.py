"""A one-shot quantized language model in the compressed file: GPTQ / RTN / AWQ /
SparseGPT+GPTQ at 4 and 3 bits, per column and group-wise (32, and 128 where the input axis
allows), head projections and AWQ's per-input multipliers included. Saved from
``compress_model``'s ``qparams``, the file loads back to exactly the dequantized weights, is
within a few bytes per tensor of the theoretical size (values at their bit width, a float32
scale and a zero point per group), and the loaded float params run the model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import use_compilation_cache

from jaxopt_models import quantization as qz
from jaxopt_models.compression import encode_compressed, load_compressed, save_compressed
from jaxopt_models.models import (
    CausalLM,
    QuantizedKernel,
    apply_with_qtensors,
    compress_model,
    dequantize_tree,
    is_quantized,
)
from jaxopt_models.tree import named_leaves

use_compilation_cache()

# One block: query / key / value (64, 4, 16) and out (4, 16, 64) head projections (64 x 64
# matrix views), up (64, 256), down (256, 64) and an untied lm_head (64, 64).
MODEL = CausalLM(
    vocab_size=64, num_layers=1, num_heads=4, embed_dim=64, max_len=16, tie_embeddings=False
)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (8, 16)), jnp.int32)
RECORD_BYTES = 48  # path, kind, shapes, minimum and stream mode of one record, at most
HEADER_BYTES = 16  # magic, version, body length, record count, CRC32


def _params(seed=1, std=0.2):
    """Random parameters drawn by NumPy (no compiled init); norms around 1."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: MODEL.init(jax.random.key(0), TOKENS[:1]))["params"]

    def draw(path, s):
        base = 1.0 if "norm" in jax.tree_util.keystr(path) else 0.0
        return jnp.asarray(base + rng.normal(0.0, std, s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


PARAMS = _params()

G128 = {"mlp/down": {"group_size": 128}}  # the MLP's down projection has 256 inputs
CASES = {
    "gptq4-g32-g128": ("gptq", {"bits": 4, "group_size": 32}, G128),
    "gptq3-per-column": ("gptq", {"bits": 3}, None),
    "rtn3-g32": ("rtn", {"bits": 3, "group_size": 32}, None),
    "rtn4-symmetric-g128": ("rtn", {"bits": 4, "symmetric": True}, G128),
    "awq4-g32": ("awq", {"bits": 4, "group_size": 32, "n_grid": 4}, None),
    "sparsegpt+gptq4-g32": ("sparsegpt+gptq", {"bits": 4, "group_size": 32, "sparsity": 0.5}, None),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(CASES))
def compressed(request):
    method, settings, layers = CASES[request.param]
    new, report = compress_model(
        MODEL,
        {"params": PARAMS},
        [TOKENS],
        method=method,
        settings=settings,
        layers=layers,
        sequential=False,
    )
    return request.param, new["params"], report.qparams


def _theoretical_bytes(qparams) -> tuple[int, int]:
    """(bytes, records): every quantized value at its bit width, float32 scales and
    multipliers, one byte per zero point (asymmetric grids), float32 for other leaves."""
    total, records = 0, 0
    for _, leaf in named_leaves(qparams, is_leaf=is_quantized):
        records += 1
        if not is_quantized(leaf):
            total += 4 * leaf.size
            continue
        multiplier = None
        if isinstance(leaf, QuantizedKernel):
            leaf, multiplier = leaf.qweight, leaf.input_scale
        total += math.ceil(leaf.values.size * leaf.bits / 8) + 4 * leaf.scale.size
        total += 0 if leaf.zero_point is None else leaf.zero_point.size
        total += 0 if multiplier is None else 4 * multiplier.size
    return total, records


def test_saved_file_loads_the_dequantized_weights_at_their_bit_width(compressed, tmp_path):
    name, params, qparams = compressed
    path = tmp_path / f"{name}.jxc"
    # check=True (the default): every record reproduces its params leaf bitwise
    n_bytes = save_compressed(path, params, quantized=qparams)
    loaded = load_compressed(path)
    expected = dequantize_tree(qparams)
    assert jax.tree.structure(loaded) == jax.tree.structure(expected)
    for got, want, kept in zip(
        jax.tree.leaves(loaded), jax.tree.leaves(expected), jax.tree.leaves(params), strict=True
    ):
        assert got.shape == want.shape and got.dtype == jnp.float32
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, kept)
    # bit-packed QTensors (also inside QuantizedKernels) are the same records
    packed = qz.pack_params(qparams)
    assert encode_compressed(params, quantized=packed) == path.read_bytes()

    theoretical, records = _theoretical_bytes(qparams)
    assert n_bytes <= theoretical + RECORD_BYTES * records + HEADER_BYTES, (n_bytes, theoretical)
    float_bytes = 4 * sum(x.size for x in jax.tree.leaves(params))
    assert n_bytes < 0.3 * float_bytes  # the kernels are most of the weights
    if name.startswith("sparsegpt"):  # pruned weights load as exact zeros
        down = loaded["block_0"]["mlp"]["down"]["kernel"]
        assert float(jnp.mean(down == 0)) >= 0.5


def test_group_128_costs_one_scale_and_zero_point_per_128_weights(tmp_path):
    """One (256, 64) kernel at 4 bits, groups of 128: 8192 bytes of values plus 128 float32
    scales and 128 zero points (6% over 4 bits per weight), and a few bytes of record."""
    w = jnp.asarray(np.random.default_rng(2).normal(size=(256, 64)), jnp.float32)
    q = qz.quantize(w, 4, symmetric=False, axis=-1, group_size=128, group_axis=0)
    n_bytes = save_compressed(
        tmp_path / "k.jxc", {"k": qz.dequantize(q)}, quantized={"k": qz.pack(q)}, huffman=False
    )
    values, groups = 256 * 64 // 2, 2 * 64 * (4 + 1)
    assert values + groups < n_bytes <= values + groups + RECORD_BYTES + HEADER_BYTES
    np.testing.assert_array_equal(load_compressed(tmp_path / "k.jxc")["k"], qz.dequantize(q))


def test_loaded_float_params_run_the_model_as_the_quantized_kernels_do(compressed, tmp_path):
    name, params, qparams = compressed
    save_compressed(tmp_path / "m.jxc", params, quantized=qparams)
    loaded = load_compressed(tmp_path / "m.jxc")

    @jax.jit
    def logits(loaded, qparams):
        return (
            MODEL.apply({"params": loaded}, TOKENS),
            apply_with_qtensors(MODEL, {"params": qparams}, TOKENS),
        )

    from_file, on_the_fly = logits(loaded, qz.pack_params(qparams))
    np.testing.assert_allclose(from_file, on_the_fly, rtol=1e-4, atol=1e-4)
