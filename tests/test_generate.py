"""Tests for jaxopt_models.models.generate: KV-cache decoding, greedy and top-k sampling,
weight-only int8 / packed int4 kernels dequantized inside the decode step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models import quantization as qz
from jaxopt_models.models import compress_model, dequantize_tree, is_quantized
from jaxopt_models.models.generate import _generate, generate, init_cache, sample_logits
from jaxopt_models.models.transformer import CausalLM, EncoderClassifier

V = 61
GPT = dict(vocab_size=V, num_layers=2, num_heads=4, embed_dim=32, max_len=24, positions="learned")
LLAMA = dict(
    GPT, positions="rope", norm="rmsnorm", mlp="swiglu", num_kv_heads=2, use_bias=False,
    tie_embeddings=False, mlp_dim=48,
)  # fmt: skip
B, P, NEW = 3, 5, 10


def numpy_params(model, seed=0, std=0.3):
    """Random parameters without compiling an init; large enough that logits differ."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))

    def draw(path, s):
        base = 1.0 if "norm" in jax.tree_util.keystr(path) else 0.0
        return jnp.asarray(base + rng.normal(0.0, std, s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def prompt_of(seed=0, shape=(B, P)):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, shape), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def full_logits(model, params, tokens):
    return model.apply({"params": params}, tokens)


@pytest.mark.parametrize(
    "kwargs", [GPT, LLAMA, dict(LLAMA, remat=True)], ids=["gpt", "llama_gqa", "remat"]
)
def test_greedy_equals_full_recomputation(kwargs):
    model = CausalLM(**kwargs)
    params = numpy_params(model)
    prompt = prompt_of()
    out = generate(model, params, prompt, max_new_tokens=NEW)
    assert out.shape == (B, P + NEW) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :P], prompt)
    # Reference: greedy decoding that recomputes the full forward pass at every step. The
    # sequence is right-padded to a fixed length (the model is causal, so the padding
    # cannot change the logits at position t) to keep to one compiled forward.
    seq = np.zeros((B, P + NEW), np.int32)
    seq[:, :P] = np.asarray(prompt)
    for t in range(P, P + NEW):
        logits = np.asarray(full_logits(model, params, jnp.asarray(seq)))
        seq[:, t] = logits[:, t - 1].argmax(-1)
    np.testing.assert_array_equal(np.asarray(out), seq)
    assert len(np.unique(seq[:, P:])) > 1  # not a degenerate constant continuation


def filled_positions(cache):
    """Which cache slots hold a written value (in every block, key and value)."""
    written = [
        np.abs(np.asarray(cache[f"block_{i}"]["attn"][name])).max(axis=(0, 2, 3)) > 0
        for i in range(2)
        for name in ("cached_key", "cached_value")
    ]
    return np.logical_and.reduce(written)


def test_cached_logits_equal_full_forward_logits():
    model = CausalLM(**LLAMA)
    params = numpy_params(model, seed=1)
    tokens = prompt_of(seed=2, shape=(B, P + 4))
    ref = np.asarray(full_logits(model, params, tokens))
    cache = init_cache(model, B, P + 4)
    assert int(cache["index"]) == 0
    assert cache["block_0"]["attn"]["cached_key"].shape == (B, P + 4, 2, 8)
    step = jax.jit(
        lambda c, t: model.apply({"params": params, "cache": c}, t, decode=True, mutable=["cache"])
    )
    logits, state = step(cache, tokens[:, :P])  # prefill
    np.testing.assert_allclose(logits, ref[:, :P], rtol=1e-5, atol=1e-5)
    cache = state["cache"]
    np.testing.assert_array_equal(filled_positions(cache), np.arange(P + 4) < P)
    for t in range(P, P + 4):
        assert int(cache["index"]) == t
        logits, state = step(cache, tokens[:, t : t + 1])
        np.testing.assert_allclose(logits[:, 0], ref[:, t], rtol=1e-5, atol=1e-5)
        cache = state["cache"]
    assert filled_positions(cache).all()


def test_top_k_sampling_only_picks_among_the_top_k():
    model = CausalLM(**GPT)
    params = numpy_params(model)
    prompt = prompt_of()
    ranks = []
    outs = []
    for seed in range(4):
        out = generate(
            model, params, prompt, max_new_tokens=NEW, temperature=3.0, top_k=3,
            rng=jax.random.key(seed),
        )  # fmt: skip
        outs.append(np.asarray(out))
        logits = np.asarray(full_logits(model, params, out))[:, P - 1 : -1]
        new = np.asarray(out[:, P:])
        order = np.argsort(-logits, axis=-1)
        ranks.append(np.argmax(order == new[..., None], axis=-1))
    ranks = np.concatenate(ranks)
    assert ranks.max() <= 2  # always one of the 3 most likely tokens
    assert set(np.unique(ranks)) == {0, 1, 2}  # ...and really sampling among them
    again = generate(
        model, params, prompt, max_new_tokens=NEW, temperature=3.0, top_k=3, rng=jax.random.key(0)
    )
    np.testing.assert_array_equal(again, outs[0])  # same key, same tokens


def test_sample_logits():
    logits = jnp.array([[0.0, 5.0, 1.0, 4.0], [3.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(sample_logits(logits, None), [1, 0])
    keys = jax.random.split(jax.random.key(0), 200)
    draws = np.asarray(jax.vmap(lambda k: sample_logits(logits, k, 10.0, top_k=2))(keys))
    assert set(np.unique(draws[:, 0])) == {1, 3}  # the top 2 of row 0
    assert set(np.unique(draws[:, 1])) <= {0, 1, 2, 3} and 0 in draws[:, 1]
    top1 = jax.vmap(lambda k: sample_logits(logits, k, 1.0, top_k=1))(keys)
    assert (np.asarray(top1) == np.array([1, 0])).all()  # top_k=1 is greedy


class CountingLM(CausalLM):
    """A CausalLM that records every trace of its forward pass."""

    def __call__(self, tokens, train=False, decode=False):
        TRACES.append(tokens.shape)
        return super().__call__(tokens, train=train, decode=decode)


TRACES: list = []


def test_one_compiled_step_whatever_the_length():
    model = CountingLM(**GPT)
    params = numpy_params(model)
    prompt = prompt_of()
    for new in (4, 12):
        TRACES.clear()
        generate(model, params, prompt, max_new_tokens=new)
        # the cache shapes (eval_shape of init), the prefill, and ONE decode step
        assert TRACES == [(B, P + new), (B, P), (B, 1)]
    TRACES.clear()
    generate(model, params, prompt_of(seed=5), max_new_tokens=12)
    generate(model, params, prompt, max_new_tokens=12, temperature=0.0)
    assert TRACES == []  # same shapes: no retrace, no recompile


def test_zero_new_tokens_and_one():
    model = CausalLM(**GPT)
    params = numpy_params(model)
    prompt = prompt_of()
    np.testing.assert_array_equal(generate(model, params, prompt, max_new_tokens=0), prompt)
    one = generate(model, params, prompt, max_new_tokens=1)
    expected = np.asarray(full_logits(model, params, prompt))[:, -1].argmax(-1)
    np.testing.assert_array_equal(one[:, -1], expected)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(max_new_tokens=20), ValueError, "= 25 is more than max_len=24"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens=-1"),
        (dict(max_new_tokens=2.0), TypeError, "max_new_tokens=2.0"),
        (dict(max_new_tokens=2, temperature=1.0), ValueError, "rng is required"),
        (dict(max_new_tokens=2, temperature=-1.0), ValueError, "temperature=-1.0"),
        (dict(max_new_tokens=2, top_k=0), ValueError, "top_k=0"),
        (dict(max_new_tokens=2, top_k=V + 1), ValueError, f"top_k={V + 1}"),
    ],
)
def test_bad_arguments_raise(kwargs, err, match):
    model = CausalLM(**GPT)
    with pytest.raises(err, match=match):
        generate(model, {}, prompt_of(), **kwargs)


def test_bad_model_and_prompt_raise():
    with pytest.raises(TypeError, match="model must be a CausalLM"):
        generate(EncoderClassifier(), {}, prompt_of(), max_new_tokens=2)
    model = CausalLM(**GPT)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, {}, jnp.array([[1, V]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, {}, jnp.zeros((2, 0), jnp.int32), max_new_tokens=2)
    with pytest.raises(ValueError, match="cache_len=30 is more than max_len=24"):
        init_cache(model, 1, 30)


# ----------------------------------------------------------------------- quantized kernels


@pytest.fixture(scope="module")
def quantized_gpt():
    """The GPT test model, its params and weight-only int8 (per column) / int4 (groups of 16,
    bit-packed two per byte) kernels from ``compress_model``'s round to nearest."""
    model = CausalLM(**GPT)
    params = numpy_params(model)
    tokens = prompt_of(seed=1, shape=(4, 16))
    out = {}
    for name, settings in (
        ("int8", {"bits": 8, "symmetric": True}),
        ("int4", {"bits": 4, "group_size": 16}),
    ):
        _, report = compress_model(
            model, {"params": params}, [tokens], method="rtn", settings=settings, sequential=False
        )
        out[name] = qz.pack_params(report.qparams) if name == "int4" else report.qparams
    return model, out


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_quantized_kernels_generate_the_tokens_of_the_dequantized_float_model(quantized_gpt, bits):
    model, qparams = quantized_gpt
    q = qparams[bits]
    kinds = {type(x).__name__ for x in jax.tree.leaves(q, is_leaf=is_quantized) if is_quantized(x)}
    stored = "QTensor" if bits == "int8" else "PackedQTensor"
    assert kinds == {stored, "QuantizedKernel"}  # MLP kernels, head projections
    prompt = prompt_of()
    out = generate(model, q, prompt, max_new_tokens=NEW)
    ref = generate(model, dequantize_tree(q), prompt, max_new_tokens=NEW)
    np.testing.assert_array_equal(out, ref)
    assert len(np.unique(np.asarray(out)[:, P:])) > 1  # not one repeated token


def test_quantized_decode_loop_holds_the_integer_kernels_not_float_copies(quantized_gpt):
    """The decode loop's state (the ``while`` carry of the compiled program) holds the packed
    int4 bytes; no dequantized kernel is hoisted out of the loop."""
    model, qparams = quantized_gpt
    args = (model, qparams["int4"], prompt_of(), jnp.float32(1.0), jax.random.key(0))
    text = _generate.lower(*args, max_new_tokens=NEW, top_k=None, greedy=True).compile().as_text()
    carries = [line.split(" while(")[0] for line in text.splitlines() if " while(" in line]
    assert len(carries) == 1
    e, mlp = GPT["embed_dim"], 4 * GPT["embed_dim"]
    assert "u8[" in carries[0]
    for shape in (f"f32[{e},{e}]", f"f32[{e},{mlp}]", f"f32[{mlp},{e}]", f"f32[{e},{mlp // 2}]"):
        assert shape not in carries[0]
