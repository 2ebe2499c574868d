"""Tests for jaxopt_models.models.transformer: shapes, masks, GQA, params, dtypes, errors.

Parameters come from NumPy (shapes from ``jax.eval_shape``) and every forward pass goes
through one jitted function keyed on the (hashable) module, so the file compiles little.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from jaxopt_models import models, pruning, quantization
from jaxopt_models.models.transformer import (
    LOGICAL_AXIS_RULES,
    CausalLM,
    EncoderClassifier,
    apply_rope,
    logical_axes,
)

V = 61  # a vocabulary size that matches no other width
SMALL = dict(vocab_size=V, num_layers=2, num_heads=4, embed_dim=32, max_len=16)
GPT = dict(SMALL, positions="learned")
LLAMA = dict(
    SMALL, num_kv_heads=2, positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False,
    tie_embeddings=False, mlp_dim=48,
)  # fmt: skip
SHAPE = (2, 8)


def tokens_of(shape=SHAPE, seed=0, vocab=V):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def param_shapes(model, x=None):
    x = tokens_of() if x is None else x
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]


def numpy_params(model, seed=0, std=0.2):
    """Random N(0, std) parameters (norm scales around 1) without compiling an init."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        base = 1.0 if "norm" in name and "scale" in name else 0.0
        return jnp.asarray(base + rng.normal(0.0, std, s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(model))


@functools.partial(jax.jit, static_argnums=0, static_argnames="train")
def forward(model, params, x, rng=None, train=False, **kwargs):
    rngs = {} if rng is None else {"dropout": rng}
    return model.apply({"params": params}, x, train=train, rngs=rngs, **kwargs)


def test_init_returns_plain_arrays_and_runs():
    model = CausalLM(**dict(GPT, num_layers=1))
    x = tokens_of()
    # as the training code calls it; an "rbg" key compiles about 3x faster than threefry on CPU
    key = jax.random.key(0, impl="rbg")
    variables = jax.jit(lambda r, x: model.init(r, x, train=False))(key, x)
    assert list(variables) == ["params"]
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda a: isinstance(a, nn.Partitioned))
    assert leaves and all(isinstance(a, jax.Array) for a in leaves)  # no logical-axis boxes
    std = float(np.std(np.asarray(variables["params"]["embed"]["embedding"])))
    assert 0.015 < std < 0.025  # init_std=0.02
    logits = forward(model, variables["params"], x)
    assert logits.shape == (*SHAPE, V) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    _, shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
    assert all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(shapes))


@pytest.mark.parametrize(
    "name,kwargs,out_shape",
    [
        ("gpt", dict(vocab_size=V), (*SHAPE, V)),
        ("gpt_tiny", dict(vocab_size=V), (*SHAPE, V)),
        ("llama_tiny", dict(vocab_size=V), (*SHAPE, V)),
        ("bert", dict(vocab_size=V, num_classes=3), (SHAPE[0], 3)),
        ("bert_tiny", dict(vocab_size=V, num_classes=4), (SHAPE[0], 4)),
    ],
)
def test_registry_builds_transformers(name, kwargs, out_shape):
    model = models.get_model(name, **kwargs)
    x = tokens_of()
    params = param_shapes(model, x)
    out = jax.eval_shape(lambda p: model.apply({"params": p}, x, train=False), params)
    assert out.shape == out_shape and out.dtype == jnp.float32


def test_presets_match_public_configurations():
    g = models.get_model("gpt2")
    assert (g.vocab_size, g.num_layers, g.num_heads, g.embed_dim, g.max_len) == (
        50257, 12, 12, 768, 1024,
    )  # fmt: skip
    assert (g.positions, g.norm, g.mlp, g.norm_eps, g.use_bias, g.tie_embeddings) == (
        "learned", "layernorm", "gelu", 1e-5, True, True,
    )  # fmt: skip
    n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(param_shapes(g, tokens_of((1, 4)))))
    assert n == 124_439_808  # GPT-2 small
    t = models.get_model("tinyllama_1b")
    assert t.config.num_kv_heads == 4 and t.config.head_dim == 64 and t.config.mlp_dim == 5632
    assert (t.norm, t.mlp, t.positions, t.tie_embeddings) == ("rmsnorm", "swiglu", "rope", False)


def gpt_param_count(v, e, m, layers, max_len):
    attn = 4 * (e * e + e)
    mlp = e * m + m + m * e + e
    norms = 2 * 2 * e
    return v * e + max_len * e + layers * (attn + mlp + norms) + 2 * e


@pytest.mark.parametrize("tie", [True, False])
def test_param_count_tied_and_untied(tie):
    params = param_shapes(CausalLM(**GPT, tie_embeddings=tie))
    n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(params))
    assert n == gpt_param_count(V, 32, 128, 2, 16) + (0 if tie else 32 * V)
    assert ("lm_head" in params) is (not tie)
    if not tie:
        assert params["lm_head"]["kernel"].shape == (32, V)


@pytest.mark.parametrize("kwargs", [GPT, LLAMA], ids=["gpt", "llama"])
def test_changing_a_future_token_leaves_past_logits(kwargs):
    model = CausalLM(**kwargs)
    params = numpy_params(model)
    x = tokens_of()
    t = 5
    y = x.at[:, t].set((x[:, t] + 1) % V)
    a, b = forward(model, params, x), forward(model, params, y)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.abs(np.asarray(a[:, t:] - b[:, t:])).min(axis=-1).max() > 0  # the future changes
    assert np.abs(np.asarray(a[:, t:] - b[:, t:])).max() > 1e-2


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa, mha = CausalLM(**LLAMA), CausalLM(**dict(LLAMA, num_kv_heads=4))
    p = numpy_params(gqa)
    q = jax.tree.map(lambda a: a, p)
    for i in range(2):
        for name in ("key", "value"):
            # query head h reads kv head h // 2: repeat each kv head twice, in place
            kernel = p[f"block_{i}"]["attn"][name]["kernel"]
            q[f"block_{i}"]["attn"][name] = {"kernel": jnp.repeat(kernel, 2, axis=1)}
    assert jax.tree.map(jnp.shape, q) == jax.tree.map(lambda s: s.shape, param_shapes(mha))
    x = tokens_of()
    a, b = forward(gqa, p, x), forward(mha, q, x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # ...and the tiling order matters: another arrangement gives other logits
    for i in range(2):
        for name in ("key", "value"):
            kernel = p[f"block_{i}"]["attn"][name]["kernel"]
            q[f"block_{i}"]["attn"][name] = {"kernel": jnp.tile(kernel, (1, 2, 1))}
    assert np.abs(np.asarray(forward(mha, q, x) - a)).max() > 1e-3


def test_bfloat16_compute_gives_close_float32_logits():
    f32, bf16 = CausalLM(**LLAMA), CausalLM(**LLAMA, dtype=jnp.bfloat16)
    params = numpy_params(f32)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    x = tokens_of()
    a = np.asarray(forward(f32, params, x))
    b = forward(bf16, params, x)
    assert b.dtype == jnp.float32
    b = np.asarray(b)
    scale = np.abs(a).max()
    assert scale > 0.5
    assert np.abs(a - b).max() < 0.05 * scale
    assert np.abs(a - b).max() > 0  # the bfloat16 path really ran in lower precision


def lm_loss(model, params, x):
    logits = model.apply({"params": params}, x)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(logp, x[:, 1:, None], -1).mean()


def test_remat_gives_the_same_loss_and_grads():
    one_block = dict(LLAMA, num_layers=1)  # remat wraps each block; one keeps compiles short
    plain, remat = CausalLM(**one_block), CausalLM(**one_block, remat=True)
    params = numpy_params(plain)
    assert jax.tree.structure(param_shapes(remat)) == jax.tree.structure(params)
    x = tokens_of()
    la, ga = jax.jit(jax.value_and_grad(lambda p: lm_loss(plain, p, x)))(params)
    lb, gb = jax.jit(jax.value_and_grad(lambda p: lm_loss(remat, p, x)))(params)
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), ga, gb)
    assert float(jnp.abs(ga["block_0"]["attn"]["query"]["kernel"]).max()) > 0


def test_dropout_only_in_training():
    model, dropped = CausalLM(**GPT), CausalLM(**GPT, dropout_rate=0.3)
    params = numpy_params(model)
    x = tokens_of()
    e1 = forward(model, params, x)
    np.testing.assert_array_equal(e1, forward(dropped, params, x))  # eval: no dropout
    t1 = forward(dropped, params, x, jax.random.key(1), train=True)
    t2 = forward(dropped, params, x, jax.random.key(2), train=True)
    assert np.abs(np.asarray(t1 - t2)).max() > 0
    assert np.abs(np.asarray(t1 - e1)).max() > 0


def rope_reference(x, positions, theta):
    """float64 rotate-half RoPE: channel i pairs with i + D/2."""
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = np.asarray(positions, np.float64)[:, None] * inv[None]
    cos = np.cos(np.concatenate([ang, ang], -1))[None, :, None]
    sin = np.sin(np.concatenate([ang, ang], -1))[None, :, None]
    rot = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def test_rope_matches_reference_and_depends_on_relative_position():
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.normal(size=(1, 6, 2, 8)), jnp.float32) for _ in range(2))
    pos = jnp.arange(6)
    np.testing.assert_allclose(apply_rope(q, pos, 100.0), rope_reference(q, pos, 100.0), atol=1e-5)
    s0 = jnp.einsum("bthd,bshd->bhts", apply_rope(q, pos), apply_rope(k, pos))
    s7 = jnp.einsum("bthd,bshd->bhts", apply_rope(q, pos + 7), apply_rope(k, pos + 7))
    np.testing.assert_allclose(s0, s7, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_encoder_ignores_padding(pooling):
    model = EncoderClassifier(**SMALL, num_classes=3, pooling=pooling, pad_id=0)
    params = numpy_params(model)
    x = jnp.array([[5, 9, 12, 7, 0, 0, 0, 0], [3, 4, 0, 0, 0, 0, 0, 0]], jnp.int32)
    full = forward(model, params, x)
    assert full.shape == (2, 3)
    short = forward(model, params, x[:, :4])  # less padding, same real tokens
    np.testing.assert_allclose(full, short, rtol=1e-5, atol=1e-6)
    # an explicit mask: whatever sits under False is ignored
    mask = x != 0
    noisy = jnp.where(mask, x, 17)
    np.testing.assert_allclose(
        full, forward(model, params, noisy, attention_mask=mask), rtol=1e-5, atol=1e-6
    )
    # a real token does change the output
    other = forward(model, params, x.at[0, 2].set(40))
    assert np.abs(np.asarray(other[0] - full[0])).max() > 1e-4


def test_encoder_is_bidirectional():
    model = EncoderClassifier(**SMALL, pooling="cls", pad_id=None)
    params = numpy_params(model)
    x = tokens_of(seed=3)
    a = forward(model, params, x)
    b = forward(model, params, x.at[:, -1].set((x[:, -1] + 1) % V))
    assert np.abs(np.asarray(a - b)).min(axis=-1).max() > 1e-4  # the first token sees the last


def test_every_param_has_logical_axes_and_shards_on_a_mesh():
    model = CausalLM(**LLAMA)
    x = tokens_of()
    params = numpy_params(model)
    specs = logical_axes(model, x)
    known = {name for name, _ in LOGICAL_AXIS_RULES}
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    flat_s = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, PartitionSpec))
    assert len(flat_p) == len(flat_s)
    for (path, leaf), spec in zip(flat_p, flat_s, strict=True):
        assert len(spec) == leaf.ndim, jax.tree_util.keystr(path)
        assert set(spec) <= known, (jax.tree_util.keystr(path), spec)
    assert specs["embed"]["embedding"] == PartitionSpec("vocab", "embed")
    query = specs["block_0"]["attn"]["query"]["kernel"]
    assert query == PartitionSpec("embed", "heads", "head_dim")
    assert specs["block_0"]["mlp"]["down"]["kernel"] == PartitionSpec("mlp", "embed")
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    shardings = nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)
    assert shardings["embed"]["embedding"].spec == PartitionSpec("tensor", "fsdp")
    sharded = jax.device_put(params, shardings)
    np.testing.assert_allclose(forward(model, sharded, x), forward(model, params, x), atol=1e-6)


def slash_path(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def test_pruning_and_quantization_filters_select_the_kernels():
    model = CausalLM(**GPT)
    params = numpy_params(model)
    flat = {slash_path(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    prunable = sorted(p for p, a in flat.items() if pruning.default_filter(p, a))
    assert len(prunable) == 2 * 6  # query, key, value, out, up, down per block
    assert all(p.endswith("kernel") for p in prunable)
    assert "embed/embedding" not in prunable and "pos_embed/embedding" not in prunable
    quantized = {p for p, a in flat.items() if quantization.default_filter(p, a)}
    assert set(prunable) <= quantized

    # magnitude-prune half of every kernel: the model still runs, and the logits move
    def keep_largest_half(path, a):
        if not pruning.default_filter(slash_path(path), a):
            return jnp.ones(a.shape, bool)
        return jnp.abs(a) >= jnp.median(jnp.abs(a))

    masks = jax.tree_util.tree_map_with_path(keep_largest_half, params)
    pruned = pruning.apply_masks(params, masks)
    assert float(jnp.mean(pruned["block_0"]["attn"]["query"]["kernel"] == 0)) == 0.5
    x = tokens_of()
    a, b = forward(model, params, x), forward(model, pruned, x)
    assert np.isfinite(np.asarray(b)).all() and np.abs(np.asarray(a - b)).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_heads=5, embed_dim=32), "num_heads=5 does not divide embed_dim=32"),
        (dict(num_heads=4, num_kv_heads=3), "num_kv_heads=3 does not divide num_heads=4"),
        (dict(positions="alibi"), "positions='alibi'"),
        (dict(norm="batchnorm"), "norm='batchnorm'"),
        (dict(mlp="relu"), "mlp='relu'"),
        (dict(num_layers=0), "num_layers=0"),
        (dict(vocab_size=2.5), "vocab_size=2.5"),
        (dict(dropout_rate=1.0), "dropout_rate=1.0"),
        (dict(num_heads=4, embed_dim=12), "even head_dim"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.get_model("gpt", **kwargs)


def test_bad_encoder_arguments_raise():
    with pytest.raises(ValueError, match="pooling='max'"):
        EncoderClassifier(pooling="max")
    with pytest.raises(ValueError, match="pad_id=300"):
        EncoderClassifier(vocab_size=256, pad_id=300)
    with pytest.raises(TypeError, match="dtype=.*floating"):
        CausalLM(dtype=jnp.int32)
    with pytest.raises(TypeError, match="bad arguments for model 'gpt'"):
        models.get_model("gpt", num_classes=3)
    model = EncoderClassifier(**SMALL)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.apply({"params": {}}, tokens_of(), attention_mask=jnp.ones((2, 3), bool))


@pytest.mark.parametrize(
    "x,err,match",
    [
        (np.zeros((1, 17), np.int32), ValueError, "length 17, more than max_len=16"),
        (np.array([[1, 2, V]]), ValueError, f"id {V}, outside the vocabulary"),
        (np.array([[1, -1, 2]]), ValueError, "id -1, outside the vocabulary"),
        (np.zeros((1, 4), np.float32), TypeError, "integer ids"),
        (np.zeros((4,), np.int32), ValueError, r"shape \(batch, length\)"),
    ],
)
@pytest.mark.parametrize("cls", [CausalLM, EncoderClassifier])
def test_bad_tokens_raise(cls, x, err, match):
    model = cls(**SMALL)
    with pytest.raises(err, match=match):  # checked before any parameter is read
        model.apply({"params": {}}, x)
    if x.ndim == 2 and x.shape[1] > 16:  # a static shape: caught under jit as well
        with pytest.raises(err, match=match):
            jax.eval_shape(lambda t: model.init(jax.random.key(0), t), x)


def test_out_of_range_token_under_jit_gives_nan():
    model = CausalLM(**GPT)
    x = tokens_of().at[0, 2].set(V + 3)
    logits = np.asarray(forward(model, numpy_params(model), x))
    assert np.isnan(logits[0]).all()  # the whole sequence: attention mixes values
    assert np.isfinite(logits[1]).all()  # other sequences are untouched
