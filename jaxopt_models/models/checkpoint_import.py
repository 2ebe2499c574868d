"""Load GPT-2 and Llama-style safetensors checkpoints into :class:`CausalLM` parameters.

Two public layouts are understood (tensor names as the common PyTorch exports write them):

* GPT-2: ``wte``, ``wpe``, ``h.{i}.ln_1``, ``h.{i}.attn.c_attn`` (``Conv1D``: weight
  ``(in, 3 * out)``), ``h.{i}.attn.c_proj``, ``h.{i}.ln_2``, ``h.{i}.mlp.c_fc``,
  ``h.{i}.mlp.c_proj``, ``ln_f``; tied head. An optional ``transformer.`` prefix is dropped.
* Llama: ``model.embed_tokens``, ``model.layers.{i}.input_layernorm``,
  ``self_attn.{q,k,v,o}_proj`` (``Linear``: weight ``(out, in)``),
  ``post_attention_layernorm``, ``mlp.{gate,up,down}_proj``, ``model.norm``, ``lm_head``;
  RMSNorm, rotary positions (rotate-half layout), SwiGLU, grouped-query attention.

The model configuration is inferred from the tensor shapes plus the keys of ``config.json``
that shapes cannot tell (``n_head``; ``num_attention_heads``, ``rope_theta``,
``rms_norm_eps``, ...); when both give a value they must agree. Files are read by a small
self-contained safetensors reader (8-byte little-endian header length, a JSON header, raw
little-endian data), so no extra package is needed.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models.checks import check_one_of
from jaxopt_models.models.transformer import CausalLM
from jaxopt_models.typing import PyTree

LAYOUTS = ("gpt2", "llama")

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(jnp.bfloat16),
    "F8_E4M3": np.dtype(jnp.float8_e4m3fn),
    "F8_E5M2": np.dtype(jnp.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
"""safetensors dtype tag -> little-endian NumPy dtype."""

# Buffers some exports save next to the weights; they hold no learned values.
_IGNORED = re.compile(r"(\.attn\.(masked_)?bias|rotary_emb\.inv_freq)$")


# ----------------------------------------------------------------------------- reading


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every tensor of a ``.safetensors`` file.

    Args:
      path: the file.

    Returns:
      ``{name: array}`` with the stored dtypes and shapes (``BF16`` and ``F8_*`` as the
      ``ml_dtypes`` types JAX uses), in native byte order.

    Example:
      >>> tensors = read_safetensors("model.safetensors")
      >>> tensors["wte.weight"].shape
      (50257, 768)
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path!s} is not a safetensors file: shorter than 8 bytes")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise ValueError(
                f"{path!s} is not a safetensors file: header length {header_len} is more "
                f"than the {size - 8} bytes after it"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path!s} has an unreadable safetensors header: {e}") from e
    start = 8 + header_len
    data = np.memmap(path, np.uint8, "r", offset=start) if size > start else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tag = info.get("dtype")
        if tag not in SAFETENSORS_DTYPES:
            raise ValueError(
                f"tensor {name!r} in {path!s} has dtype {tag!r}; known: {tuple(SAFETENSORS_DTYPES)}"
            )
        dtype = SAFETENSORS_DTYPES[tag]
        shape = tuple(int(n) for n in info["shape"])
        begin, end = (int(n) for n in info["data_offsets"])
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not 0 <= begin <= end <= data.size or end - begin != expected:
            raise ValueError(
                f"tensor {name!r} in {path!s} has data_offsets {[begin, end]} for shape {shape} "
                f"{tag} ({expected} bytes) in a data section of {data.size} bytes"
            )
        array = np.frombuffer(data[begin:end].tobytes(), dtype=dtype).reshape(shape)
        tensors[name] = array.astype(dtype.newbyteorder("="), copy=False)
    return tensors


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Reads ``config.json`` and the weights of a checkpoint directory (or one file).

    Args:
      path: a directory holding ``config.json`` and ``model.safetensors`` (or shards listed
        in ``model.safetensors.index.json``), or a ``.safetensors`` file (its directory's
        ``config.json`` is read when present).

    Returns:
      ``(config, tensors)``: the JSON config (``{}`` when absent) and ``{name: array}``.

    Example:
      >>> config, tensors = read_checkpoint("checkpoints/gpt2")
    """
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config_file = os.path.join(directory, "config.json")
    config = {}
    if os.path.isfile(config_file):
        with open(config_file) as f:
            config = json.load(f)
    if not os.path.isdir(path):
        return config, read_safetensors(path)
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return config, read_safetensors(single)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(os.path.join(path, shard)))
        return config, tensors
    raise FileNotFoundError(
        f"path={path!r} holds neither model.safetensors nor model.safetensors.index.json"
    )


# ----------------------------------------------------------------------------- helpers


class _Tensors:
    """The checkpoint's tensors, handed out by name; remembers which were used."""

    def __init__(self, tensors: Mapping[str, np.ndarray], prefix: str = ""):
        self._tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
        self._used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def _get(self, name: str) -> np.ndarray:
        if name not in self._tensors:
            raise KeyError(f"the checkpoint has no tensor {name!r}")
        return self._tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def __getitem__(self, name: str) -> np.ndarray:
        array = self._get(name)
        self._used.add(name)
        return np.asarray(array, np.float32)

    def count_layers(self, pattern: str) -> int:
        found = {int(m.group(1)) for k in self._tensors if (m := re.match(pattern, k))}
        if found != set(range(len(found))):
            raise ValueError(f"the checkpoint's layers are not numbered 0..n-1: {sorted(found)}")
        return len(found)

    def check_all_used(self) -> None:
        unused = sorted(k for k in self._tensors if k not in self._used and not _IGNORED.search(k))
        if unused:
            raise ValueError(f"the checkpoint has tensors this model does not use: {unused[:5]}")


def _agree(config: Mapping[str, Any], key: str, inferred: Any) -> Any:
    """``inferred`` (from the tensors), checked against ``config[key]`` when set."""
    if config.get(key) is not None and config[key] != inferred:
        raise ValueError(f"config {key}={config[key]!r} but the tensors give {inferred!r}")
    return inferred


def _required(config: Mapping[str, Any], key: str) -> Any:
    if config.get(key) is None:
        raise ValueError(f"config.json must give {key!r}: the tensor shapes cannot tell it")
    return config[key]


def detect_layout(config: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> str:
    """``"gpt2"`` or ``"llama"``, from ``config["model_type"]`` or the tensor names.

    Example:
      >>> detect_layout({}, {"wte.weight": np.zeros((10, 4))})
      'gpt2'
    """
    model_type = config.get("model_type")
    if model_type is not None:
        return check_one_of("config model_type", model_type, LAYOUTS)
    if any(k.endswith("wte.weight") for k in tensors):
        return "gpt2"
    if "model.embed_tokens.weight" in tensors:
        return "llama"
    raise ValueError("cannot tell the checkpoint layout: no wte.weight or model.embed_tokens")


# ----------------------------------------------------------------------------- GPT-2


def _gpt2(config: Mapping[str, Any], t: _Tensors) -> tuple[dict[str, Any], PyTree]:
    vocab_size, embed_dim = t.shape("wte.weight")
    num_layers = t.count_layers(r"h\.(\d+)\.")
    num_heads = _required(config, "n_head")
    if embed_dim % num_heads:
        raise ValueError(f"config n_head={num_heads} does not divide n_embd={embed_dim}")
    act = config.get("activation_function", "gelu_new")
    check_one_of("config activation_function", act, ("gelu_new", "gelu_pytorch_tanh"))
    kwargs = dict(
        vocab_size=_agree(config, "vocab_size", vocab_size),
        num_layers=_agree(config, "n_layer", num_layers),
        num_heads=num_heads,
        embed_dim=_agree(config, "n_embd", embed_dim),
        mlp_dim=_agree(config, "n_inner", t.shape("h.0.mlp.c_fc.weight")[1]),
        max_len=_agree(config, "n_positions", t.shape("wpe.weight")[0]),
        positions="learned",
        norm="layernorm",
        mlp="gelu",
        norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        use_bias=True,
        tie_embeddings=True,
    )
    e, h = embed_dim, num_heads
    d = e // h

    def norm(name: str) -> dict[str, np.ndarray]:
        return {"scale": t[f"{name}.weight"], "bias": t[f"{name}.bias"]}

    def dense(name: str) -> dict[str, np.ndarray]:  # Conv1D: already (in, out)
        return {"kernel": t[f"{name}.weight"], "bias": t[f"{name}.bias"]}

    params: dict[str, Any] = {
        "embed": {"embedding": t["wte.weight"]},
        "pos_embed": {"embedding": t["wpe.weight"]},
        "final_norm": norm("ln_f"),
    }
    for i in range(num_layers):
        p = f"h.{i}."
        wq, wk, wv = np.split(t[p + "attn.c_attn.weight"], 3, axis=1)
        bq, bk, bv = np.split(t[p + "attn.c_attn.bias"], 3)
        params[f"block_{i}"] = {
            "attn_norm": norm(p + "ln_1"),
            "attn": {
                "query": {"kernel": wq.reshape(e, h, d), "bias": bq},
                "key": {"kernel": wk.reshape(e, h, d), "bias": bk},
                "value": {"kernel": wv.reshape(e, h, d), "bias": bv},
                "out": {
                    "kernel": t[p + "attn.c_proj.weight"].reshape(h, d, e),
                    "bias": t[p + "attn.c_proj.bias"],
                },
            },
            "mlp_norm": norm(p + "ln_2"),
            "mlp": {"up": dense(p + "mlp.c_fc"), "down": dense(p + "mlp.c_proj")},
        }
    if "lm_head.weight" in t:  # some exports store the tied head again
        head = t["lm_head.weight"]
        if not np.array_equal(head, params["embed"]["embedding"]):
            kwargs["tie_embeddings"] = False
            params["lm_head"] = {"kernel": head.T}
    return kwargs, params


# ----------------------------------------------------------------------------- Llama


def _llama(config: Mapping[str, Any], t: _Tensors) -> tuple[dict[str, Any], PyTree]:
    vocab_size, embed_dim = t.shape("model.embed_tokens.weight")
    num_layers = t.count_layers(r"model\.layers\.(\d+)\.")
    num_heads = _required(config, "num_attention_heads")
    head_dim = config.get("head_dim") or embed_dim // num_heads
    if t.shape("model.layers.0.self_attn.q_proj.weight")[0] != num_heads * head_dim:
        raise ValueError(
            f"config num_attention_heads={num_heads} with head_dim={head_dim} does not match "
            f"q_proj of shape {t.shape('model.layers.0.self_attn.q_proj.weight')}"
        )
    num_kv_heads = t.shape("model.layers.0.self_attn.k_proj.weight")[0] // head_dim
    check_one_of("config hidden_act", config.get("hidden_act", "silu"), ("silu",))
    if config.get("rope_scaling") is not None:
        raise ValueError(
            f"config rope_scaling={config['rope_scaling']!r} is not supported (plain RoPE only)"
        )
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise ValueError(f"config {key}=True is not supported (no biases in this layout)")
    tied = "lm_head.weight" not in t
    kwargs = dict(
        vocab_size=_agree(config, "vocab_size", vocab_size),
        num_layers=_agree(config, "num_hidden_layers", num_layers),
        num_heads=num_heads,
        num_kv_heads=_agree(config, "num_key_value_heads", num_kv_heads),
        embed_dim=_agree(config, "hidden_size", embed_dim),
        head_dim=head_dim,
        mlp_dim=_agree(
            config, "intermediate_size", t.shape("model.layers.0.mlp.gate_proj.weight")[0]
        ),
        max_len=int(config.get("max_position_embeddings", 2048)),
        positions="rope",
        norm="rmsnorm",
        mlp="swiglu",
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        use_bias=False,
        tie_embeddings=tied,
    )
    e, h, kv, d = embed_dim, num_heads, num_kv_heads, head_dim

    def linear(name: str) -> np.ndarray:  # Linear: (out, in) -> kernel (in, out)
        return t[f"{name}.weight"].T

    params: dict[str, Any] = {
        "embed": {"embedding": t["model.embed_tokens.weight"]},
        "final_norm": {"scale": t["model.norm.weight"]},
    }
    for i in range(num_layers):
        p = f"model.layers.{i}."
        params[f"block_{i}"] = {
            "attn_norm": {"scale": t[p + "input_layernorm.weight"]},
            "attn": {
                "query": {"kernel": linear(p + "self_attn.q_proj").reshape(e, h, d)},
                "key": {"kernel": linear(p + "self_attn.k_proj").reshape(e, kv, d)},
                "value": {"kernel": linear(p + "self_attn.v_proj").reshape(e, kv, d)},
                "out": {"kernel": linear(p + "self_attn.o_proj").reshape(h, d, e)},
            },
            "mlp_norm": {"scale": t[p + "post_attention_layernorm.weight"]},
            "mlp": {
                "gate": {"kernel": linear(p + "mlp.gate_proj")},
                "up": {"kernel": linear(p + "mlp.up_proj")},
                "down": {"kernel": linear(p + "mlp.down_proj")},
            },
        }
    if not tied:
        params["lm_head"] = {"kernel": linear("lm_head")}
    return kwargs, params


_CONVERTERS: dict[str, Callable[[Mapping[str, Any], _Tensors], tuple[dict, PyTree]]] = {
    "gpt2": _gpt2,
    "llama": _llama,
}


# ----------------------------------------------------------------------------- public


def convert_checkpoint(
    config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    layout: str | None = None,
    **overrides: Any,
) -> tuple[CausalLM, PyTree]:
    """Builds a :class:`CausalLM` and its parameters from checkpoint tensors.

    Args:
      config: the checkpoint's ``config.json`` as a dict (GPT-2: ``n_head`` required;
        Llama: ``num_attention_heads`` required, ``rope_theta``, ``rms_norm_eps``,
        ``max_position_embeddings`` read when present).
      tensors: ``{name: array}`` as :func:`read_safetensors` returns.
      layout: ``"gpt2"`` or ``"llama"``; ``None`` detects it (:func:`detect_layout`).
      **overrides: further model attributes, e.g. ``dtype=jnp.bfloat16``, ``remat=True``.

    Returns:
      ``(model, params)``: the model and float32 parameters (plain ``jax.Array`` leaves)
      shaped exactly like ``model.init(...)["params"]``.

    Example:
      >>> model, params = convert_checkpoint({"n_head": 12}, read_safetensors(path))
      >>> logits = model.apply({"params": params}, tokens)
    """
    layout = detect_layout(config, tensors) if layout is None else layout
    check_one_of("layout", layout, LAYOUTS)
    prefix = "transformer." if layout == "gpt2" else ""
    t = _Tensors(tensors, prefix)
    kwargs, params = _CONVERTERS[layout](config, t)
    t.check_all_used()
    model = CausalLM(**{**kwargs, **overrides})
    params = jax.tree.map(lambda a: jnp.asarray(a, model.param_dtype), params)
    _check_shapes(model, params)
    return model, params


def load_pretrained(
    path: str | os.PathLike, layout: str | None = None, **overrides: Any
) -> tuple[CausalLM, PyTree]:
    """Reads a GPT-2 or Llama-style safetensors checkpoint into a :class:`CausalLM`.

    Args:
      path: a checkpoint directory (``config.json`` + ``model.safetensors`` or shards) or
        one ``.safetensors`` file (see :func:`read_checkpoint`).
      layout: ``"gpt2"``, ``"llama"`` or ``None`` to detect it.
      **overrides: further model attributes, e.g. ``dtype=jnp.bfloat16``.

    Returns:
      ``(model, params)`` as :func:`convert_checkpoint`.

    Example:
      >>> model, params = load_pretrained("checkpoints/gpt2")
      >>> out = generate(model, params, prompt, max_new_tokens=20)
    """
    config, tensors = read_checkpoint(path)
    return convert_checkpoint(config, tensors, layout, **overrides)


def _check_shapes(model: CausalLM, params: PyTree) -> None:
    tokens = jnp.zeros((1, 1), jnp.int32)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["params"]
    want, got = (
        {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(tree)}
        for tree in (expected, params)
    )
    if want != got:
        diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise ValueError(
            "the converted parameters do not fit the model: "
            + ", ".join(f"{k}: model {want.get(k)} vs checkpoint {got.get(k)}" for k in diff[:5])
        )
