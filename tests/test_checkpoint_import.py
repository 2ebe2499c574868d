"""Tests for jaxopt_models.models.checkpoint_import: the safetensors reader and the GPT-2 and
Llama layouts, checked against independent float64 NumPy forward passes."""

import functools
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models.models.checkpoint_import import (
    convert_checkpoint,
    detect_layout,
    load_pretrained,
    read_checkpoint,
    read_safetensors,
)
from jaxopt_models.models.generate import generate

TAGS = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype(jnp.bfloat16): "BF16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}


def write_safetensors(path, tensors, metadata=None):
    """A minimal writer following the format: u64 header size, JSON header, raw bytes."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes(order="C")
        header[name] = {
            "dtype": TAGS[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


def write_checkpoint(directory, config, tensors):
    write_safetensors(directory / "model.safetensors", tensors)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@functools.partial(jax.jit, static_argnums=0)
def logits_of(model, params, tokens):
    return model.apply({"params": params}, tokens)


# ----------------------------------------------------------------------------- GPT-2

GPT2_CONFIG = dict(
    model_type="gpt2", vocab_size=100, n_positions=32, n_embd=48, n_layer=2, n_head=4,
    layer_norm_epsilon=1e-5, activation_function="gelu_new", n_inner=None,
)  # fmt: skip


def gpt2_tensors(seed=0, std=0.2):
    rng = np.random.default_rng(seed)
    e, v, n = GPT2_CONFIG["n_embd"], GPT2_CONFIG["vocab_size"], GPT2_CONFIG["n_positions"]

    def w(*shape, base=0.0):
        return (base + rng.normal(0, std, shape)).astype(np.float32)

    t = {"wte.weight": w(v, e), "wpe.weight": w(n, e)}
    t |= {"ln_f.weight": w(e, base=1), "ln_f.bias": w(e)}
    for i in range(GPT2_CONFIG["n_layer"]):
        p = f"h.{i}."
        t |= {
            p + "ln_1.weight": w(e, base=1), p + "ln_1.bias": w(e),
            p + "attn.c_attn.weight": w(e, 3 * e), p + "attn.c_attn.bias": w(3 * e),
            p + "attn.c_proj.weight": w(e, e), p + "attn.c_proj.bias": w(e),
            p + "ln_2.weight": w(e, base=1), p + "ln_2.bias": w(e),
            p + "mlp.c_fc.weight": w(e, 4 * e), p + "mlp.c_fc.bias": w(4 * e),
            p + "mlp.c_proj.weight": w(4 * e, e), p + "mlp.c_proj.bias": w(e),
        }  # fmt: skip
    return t


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def causal_attention(q, k, v):
    """q: (H, T, D), k/v: (H, T, D) float64 -> (H, T, D)."""
    t = q.shape[1]
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
    return softmax(scores) @ v


def gpt2_reference(t, tokens, cfg=GPT2_CONFIG):
    """GPT-2 forward pass in float64, written from the public description."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    h, eps = cfg["n_head"], cfg["layer_norm_epsilon"]
    out = []
    for seq in np.asarray(tokens):
        x = t["wte.weight"][seq] + t["wpe.weight"][: len(seq)]
        e = x.shape[-1]
        for i in range(cfg["n_layer"]):
            p = f"h.{i}."
            a = layer_norm(x, t[p + "ln_1.weight"], t[p + "ln_1.bias"], eps)
            qkv = a @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"]
            q, k, v = (
                m.reshape(len(seq), h, e // h).transpose(1, 0, 2) for m in np.split(qkv, 3, -1)
            )
            y = causal_attention(q, k, v).transpose(1, 0, 2).reshape(len(seq), e)
            x = x + y @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
            a = layer_norm(x, t[p + "ln_2.weight"], t[p + "ln_2.bias"], eps)
            a = a @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"]
            a = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a**3)))
            x = x + a @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
        x = layer_norm(x, t["ln_f.weight"], t["ln_f.bias"], eps)
        out.append(x @ t["wte.weight"].T)
    return np.stack(out)


def assert_logits_close(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref)
    assert np.abs(ref).max() > 1.0  # weights large enough for a meaningful comparison
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def tokens_of(shape=(2, 12), vocab=100, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


@pytest.mark.parametrize("export", ["plain", "prefixed"])
def test_gpt2_logits_match_numpy_reference(tmp_path, export):
    tensors = gpt2_tensors()
    stored = dict(tensors)
    if export == "prefixed":  # the LM-head export: prefix, causal-mask buffers, tied head copy
        stored = {"transformer." + k: v for k, v in tensors.items()}
        stored["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
        stored["lm_head.weight"] = tensors["wte.weight"]
    model, params = load_pretrained(write_checkpoint(tmp_path, GPT2_CONFIG, stored))
    assert (model.num_layers, model.num_heads, model.embed_dim, model.max_len) == (2, 4, 48, 32)
    assert model.tie_embeddings and model.positions == "learned" and model.norm_eps == 1e-5
    tokens = tokens_of()
    assert_logits_close(logits_of(model, params, tokens), gpt2_reference(tensors, tokens))


def test_gpt2_untied_head_is_kept(tmp_path):
    tensors = gpt2_tensors()
    head = np.random.default_rng(5).normal(0, 0.2, tensors["wte.weight"].shape)
    model, params = convert_checkpoint(GPT2_CONFIG, {**tensors, "lm_head.weight": head})
    assert not model.tie_embeddings
    np.testing.assert_array_equal(params["lm_head"]["kernel"], head.T.astype(np.float32))


# ----------------------------------------------------------------------------- Llama

LLAMA_CONFIG = dict(
    model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=96,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-6, hidden_act="silu",
    tie_word_embeddings=False, rope_scaling=None,
)  # fmt: skip


def llama_tensors(tied=False, seed=0, std=0.2):
    rng = np.random.default_rng(seed)
    c = LLAMA_CONFIG
    e, v, m = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    d = e // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * d

    def w(*shape, base=0.0):
        return (base + rng.normal(0, std, shape)).astype(np.float32)

    t = {"model.embed_tokens.weight": w(v, e), "model.norm.weight": w(e, base=1)}
    if not tied:
        t["lm_head.weight"] = w(v, e)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t |= {
            p + "input_layernorm.weight": w(e, base=1),
            p + "self_attn.q_proj.weight": w(e, e), p + "self_attn.k_proj.weight": w(kv, e),
            p + "self_attn.v_proj.weight": w(kv, e), p + "self_attn.o_proj.weight": w(e, e),
            p + "post_attention_layernorm.weight": w(e, base=1),
            p + "mlp.gate_proj.weight": w(m, e), p + "mlp.up_proj.weight": w(m, e),
            p + "mlp.down_proj.weight": w(e, m),
        }  # fmt: skip
    return t


def rms_norm(x, g, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * g


def rotate_half_rope(x, theta):
    """x: (H, T, D) float64; the rotate-half convention of the public Llama code."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
    freqs = np.outer(np.arange(x.shape[1]), inv_freq)
    emb = np.concatenate([freqs, freqs], -1)
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * np.cos(emb) + rotated * np.sin(emb)


def llama_reference(t, tokens, cfg=LLAMA_CONFIG):
    """Llama forward pass in float64 (RMSNorm, RoPE, GQA by repeating kv heads, SwiGLU)."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    h, kvh, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    out = []
    for seq in np.asarray(tokens):
        n = len(seq)
        x = t["model.embed_tokens.weight"][seq]
        d = x.shape[-1] // h
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            a = rms_norm(x, t[p + "input_layernorm.weight"], eps)
            q = (a @ t[p + "self_attn.q_proj.weight"].T).reshape(n, h, d).transpose(1, 0, 2)
            k = (a @ t[p + "self_attn.k_proj.weight"].T).reshape(n, kvh, d).transpose(1, 0, 2)
            v = (a @ t[p + "self_attn.v_proj.weight"].T).reshape(n, kvh, d).transpose(1, 0, 2)
            q, k = rotate_half_rope(q, cfg["rope_theta"]), rotate_half_rope(k, cfg["rope_theta"])
            k, v = np.repeat(k, h // kvh, axis=0), np.repeat(v, h // kvh, axis=0)
            y = causal_attention(q, k, v).transpose(1, 0, 2).reshape(n, h * d)
            x = x + y @ t[p + "self_attn.o_proj.weight"].T
            a = rms_norm(x, t[p + "post_attention_layernorm.weight"], eps)
            gate = a @ t[p + "mlp.gate_proj.weight"].T
            a = (gate / (1 + np.exp(-gate))) * (a @ t[p + "mlp.up_proj.weight"].T)
            x = x + a @ t[p + "mlp.down_proj.weight"].T
        x = rms_norm(x, t["model.norm.weight"], eps)
        out.append(x @ head.T)
    return np.stack(out)


@pytest.mark.parametrize("tied", [False, True])
def test_llama_logits_match_numpy_reference(tmp_path, tied):
    tensors = llama_tensors(tied)
    config = dict(LLAMA_CONFIG, tie_word_embeddings=tied)
    model, params = load_pretrained(write_checkpoint(tmp_path, config, tensors))
    assert (model.num_heads, model.num_kv_heads, model.mlp_dim) == (4, 2, 96)
    assert (model.rope_theta, model.norm_eps, model.tie_embeddings) == (500.0, 1e-6, tied)
    tokens = tokens_of()
    assert_logits_close(logits_of(model, params, tokens), llama_reference(tensors, tokens))


def test_llama_greedy_generation_matches_numpy_reference(tmp_path):
    tensors = llama_tensors()
    model, params = load_pretrained(write_checkpoint(tmp_path, LLAMA_CONFIG, tensors))
    prompt = tokens_of((2, 6))
    out = np.asarray(generate(model, params, prompt, max_new_tokens=4))
    for t in range(6, 10):  # every new token is the reference argmax given what precedes it
        ref = llama_reference(tensors, out[:, :t])[:, -1]
        np.testing.assert_array_equal(out[:, t], ref.argmax(-1))


def test_bfloat16_override_and_file_path(tmp_path):
    write_checkpoint(tmp_path, LLAMA_CONFIG, llama_tensors())
    model, params = load_pretrained(tmp_path / "model.safetensors", dtype=jnp.bfloat16)
    assert model.dtype == jnp.bfloat16
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- reader


def reader_cases():
    rng = np.random.default_rng(0)
    return {
        "f32": rng.normal(size=(3, 4)).astype(np.float32),
        "f64": rng.normal(size=(2,)),
        "f16": rng.normal(size=(5, 1, 2)).astype(np.float16),
        "bf16": rng.normal(size=(4, 3)).astype(jnp.bfloat16),
        "i64": rng.integers(-(2**40), 2**40, size=(6,)),
        "i8": rng.integers(-128, 127, size=(2, 2)).astype(np.int8),
        "u8": rng.integers(0, 255, size=(7,)).astype(np.uint8),
        "mask": rng.random((3, 3)) > 0.5,
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }


def test_reader_roundtrips_every_dtype(tmp_path):
    tensors = reader_cases()
    write_safetensors(tmp_path / "x.safetensors", tensors, metadata={"format": "np"})
    back = read_safetensors(tmp_path / "x.safetensors")
    assert sorted(back) == sorted(tensors)
    for name, a in tensors.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape, name
        np.testing.assert_array_equal(back[name], a)


def test_reader_agrees_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {k: v for k, v in reader_cases().items() if k != "bf16"}
    st.save_file(tensors, str(tmp_path / "a.safetensors"))
    back = read_safetensors(tmp_path / "a.safetensors")
    for name, a in tensors.items():
        np.testing.assert_array_equal(back[name], a)
    write_safetensors(tmp_path / "b.safetensors", tensors)
    theirs = st.load_file(str(tmp_path / "b.safetensors"))
    for name, a in tensors.items():
        np.testing.assert_array_equal(theirs[name], a)


def test_sharded_checkpoint(tmp_path):
    tensors = gpt2_tensors()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for file, keys in shards.items():
        write_safetensors(tmp_path / file, {k: tensors[k] for k in keys})
        weight_map |= {k: file for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(GPT2_CONFIG))
    config, back = read_checkpoint(tmp_path)
    assert config == GPT2_CONFIG and sorted(back) == names
    assert detect_layout({}, back) == "gpt2"


# ----------------------------------------------------------------------------- errors


def test_reader_rejects_broken_files(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="shorter than 8 bytes"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match="header length 1000"):
        read_safetensors(path)
    write_safetensors(path, {"w": np.ones((4, 4), np.float32)})
    path.write_bytes(path.read_bytes()[:-8])  # truncated data
    with pytest.raises(ValueError, match="tensor 'w'.*data_offsets"):
        read_safetensors(path)
    header = json.dumps({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(ValueError, match="dtype 'C64'"):
        read_safetensors(path)
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "layout,change,match",
    [
        ("gpt2", dict(n_head=None), "must give 'n_head'"),
        ("gpt2", dict(n_head=5), "n_head=5 does not divide n_embd=48"),
        ("gpt2", dict(n_layer=3), "n_layer=3 but the tensors give 2"),
        ("gpt2", dict(activation_function="relu"), "activation_function='relu'"),
        ("llama", dict(num_key_value_heads=4), "num_key_value_heads=4 but the tensors give 2"),
        ("llama", dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
        ("llama", dict(attention_bias=True), "attention_bias=True"),
        ("llama", dict(model_type="bert"), "model_type='bert'"),
    ],
)
def test_inconsistent_configs_raise(layout, change, match):
    config = dict(GPT2_CONFIG if layout == "gpt2" else LLAMA_CONFIG, **change)
    tensors = gpt2_tensors() if layout == "gpt2" else llama_tensors()
    with pytest.raises(ValueError, match=match):
        convert_checkpoint(config, tensors)


def test_missing_and_unexpected_tensors_raise():
    tensors = llama_tensors()
    with pytest.raises(ValueError, match="does not use.*model.layers.0.self_attn.q_proj.bias"):
        convert_checkpoint(
            LLAMA_CONFIG, {**tensors, "model.layers.0.self_attn.q_proj.bias": np.zeros(64)}
        )
    del tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        convert_checkpoint(LLAMA_CONFIG, tensors)
    with pytest.raises(ValueError, match="cannot tell the checkpoint layout"):
        convert_checkpoint({}, {"encoder.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="layout='t5'"):
        convert_checkpoint(LLAMA_CONFIG, llama_tensors(), layout="t5")
