"""Transformers in Flax linen: a GPT-style causal language model and a BERT-style encoder.

Read top to bottom: the hyperparameters (:class:`TransformerConfig`), rotary embeddings,
:class:`Attention` (with an optional fixed-size KV cache), :class:`FeedForward`,
:class:`Block`, then the two models, :class:`CausalLM` and :class:`EncoderClassifier`, and
their named presets.

Every parameter carries logical axis names (``("vocab", "embed")``,
``("embed", "heads", "head_dim")``, ``("embed", "mlp")``, ...). :data:`LOGICAL_AXIS_RULES`
maps them to the mesh axes ``data``, ``fsdp`` and ``tensor``; :func:`logical_axes` returns
the names of every parameter, so data parallel, FSDP and tensor parallel become a choice of
mesh and rules. ``model.init`` returns plain arrays, like every other model of the library
(the ``nn.Partitioned`` boxes are removed with ``flax.linen.meta.unbox``), so
``model.init(key, tokens)["params"]`` and ``model.apply({"params": params}, tokens)``
behave as they do for the MLP and CNN models.

Decoding with a KV cache: call with ``decode=True`` and a ``"cache"`` collection made by
:func:`jaxopt_models.models.generate.init_cache`; each call writes the new keys and values
at the cache position with ``lax.dynamic_update_slice`` and advances it, with fixed shapes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxopt_models.checks import check_one_of
from jaxopt_models.typing import PyTree

POSITIONS = ("rope", "learned")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POOLINGS = ("cls", "mean")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("positions", None),
    ("classes", None),
)
"""Logical axis name -> mesh axes (``data``, ``fsdp``, ``tensor``): weights are split over
``fsdp`` along the model width and over ``tensor`` along heads, MLP units and vocabulary;
batches over ``data`` and ``fsdp``. Use with ``nn.logical_to_mesh_sharding``."""


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The static hyperparameters every block reads; built by ``model.config`` with the
    defaults resolved (see :class:`CausalLM` for the meaning of each field)."""

    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    head_dim: int
    mlp_dim: int
    max_len: int
    dropout_rate: float
    positions: str
    norm: str
    mlp: str
    norm_eps: float
    rope_theta: float
    use_bias: bool
    remat: bool
    dtype: Any
    param_dtype: Any
    init_std: float


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


# ----------------------------------------------------------------------------- initialisers


def _normal(std: float, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def _zeros(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def _norm(cfg: TransformerConfig, name: str) -> nn.Module:
    """LayerNorm (two-pass variance, as PyTorch) or RMSNorm over the model width."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(
            epsilon=cfg.norm_eps,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            scale_init=_ones(("embed",)),
            name=name,
        )
    layer_norm = _CPULayerNorm if _on_cpu() else nn.LayerNorm
    return layer_norm(
        epsilon=cfg.norm_eps,
        use_bias=cfg.use_bias,
        use_fast_variance=False,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        scale_init=_ones(("embed",)),
        bias_init=_zeros(("embed",)),
        name=name,
    )


# ----------------------------------------------------------------------------- rotary


def apply_rope(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotary position embedding in the "rotate half" layout (as Llama checkpoints expect).

    Channel ``i < D/2`` is paired with channel ``i + D/2`` and the pair is rotated by the
    angle ``position * theta ** (-2 i / D)``.

    Args:
      x: ``(B, T, heads, D)`` queries or keys, ``D`` even.
      positions: ``(T,)`` integer positions; with a NumPy array (positions known when
        tracing) the cosine and sine tables are constants, computed once in float64.
      theta: the base of the rotation frequencies.

    Returns:
      ``x`` rotated, same shape and dtype (computed in float32).

    Example:
      >>> q = apply_rope(jnp.ones((1, 5, 2, 8)), jnp.arange(5))
    """
    d = x.shape[-1]
    xp, dtype = (np, np.float64) if isinstance(positions, np.ndarray) else (jnp, jnp.float32)
    inv_freq = 1.0 / (theta ** (xp.arange(0, d, 2, dtype=dtype) / d))
    angles = positions.astype(dtype)[:, None] * inv_freq[None, :]  # (T, D/2)
    angles = xp.concatenate([angles, angles], axis=-1)[None, :, None, :]  # (1, T, 1, D)
    cos, sin = xp.cos(angles).astype(np.float32), xp.sin(angles).astype(np.float32)
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : d // 2], xf[..., d // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


# ----------------------------------------------------------------------------- CPU kernels
#
# What XLA:CPU does with the plain autodiff of a transformer, and what these replace (see
# benchmarks/lm_throughput.py):
# - a weight gradient ``x.T @ dy`` contracts the row dimension of both operands; XLA:CPU
#   runs it up to 1.5x slower than the same product after an explicit transpose of ``x``,
#   and fuses whole backward chains (LayerNorm gradients) into the transposing copies it
#   inserts instead. ``_rows_matmul`` computes the transpose once, behind an
#   ``optimization_barrier``; the blocks keep their activations as 2-D (B * T, E) rows,
#   which XLA:CPU transposes much faster than 3-D ones.
# - attention by autodiff keeps several (B, H, T, S) temporaries (the softmax Jacobian, a
#   broadcast of the row sums); ``_softmax_attention`` keeps only the probabilities and uses
#   ``sum(p * dp) = sum(do * o)``, and its forward (scores, mask, softmax) is one fusion.
# - the autodiff of LayerNorm recomputes the normalisation in several backward fusions;
#   ``_layer_norm`` keeps the normalised input and the inverse deviation.
# - the autodiff of the tanh GELU keeps the tanh and several products, and XLA:CPU
#   recomputes the activation inside the transposing copies of the weight gradients;
#   ``_gelu_tanh`` keeps only its input and computes the derivative in one elementwise pass
#   (1.12x on the train step of both benchmark shapes; the same treatment of SwiGLU measured
#   within noise, 1.02-1.04x, and is not used).
# Other backends use the plain formulations.


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


@jax.custom_vjp
def _rows_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for ``x`` ``(N, K)`` and ``w`` ``(K, M)``, with a CPU-friendly gradient."""
    return jnp.matmul(x, w)


def _rows_matmul_fwd(x, w):
    return jnp.matmul(x, w), (x, w)


def _rows_matmul_bwd(res, dy):
    x, w = res
    dx = jnp.matmul(dy, w.T.astype(dy.dtype))
    dw = jnp.matmul(jax.lax.optimization_barrier(x.T).astype(dy.dtype), dy)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_rows_matmul.defvjp(_rows_matmul_fwd, _rows_matmul_bwd)


def _dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lax.dot_general`` for the linear layers (the ``dot_general`` of ``nn.Dense``).

    On the CPU backend a product that contracts the trailing axes of ``lhs`` with the
    leading axes of ``rhs`` (every Dense, head projection and output projection) runs as a
    2-D ``_rows_matmul``; anything else, or any other backend, is plain ``lax.dot_general``.
    """
    (lhs_c, rhs_c), (lhs_b, rhs_b) = dimension_numbers
    n = len(lhs_c)
    plain = (
        not _on_cpu()
        or lhs_b
        or rhs_b
        or precision is not None
        or preferred_element_type is not None
        or lhs.dtype != rhs.dtype
        or tuple(a % lhs.ndim for a in lhs_c) != tuple(range(lhs.ndim - n, lhs.ndim))
        or tuple(a % rhs.ndim for a in rhs_c) != tuple(range(n))
    )
    if plain:
        return jax.lax.dot_general(
            lhs,
            rhs,
            dimension_numbers,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    lead, out = lhs.shape[: lhs.ndim - n], rhs.shape[n:]
    k = int(np.prod(rhs.shape[:n]))
    y = _rows_matmul(lhs.reshape(-1, k), rhs.reshape(k, -1))
    return y.reshape(*lead, *out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, eps):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (float32 arrays)."""
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    centered = x - x.mean(-1, keepdims=True)
    inv = jax.lax.rsqrt((centered * centered).mean(-1, keepdims=True) + eps)
    normed = centered * inv
    return normed * scale + bias, (normed, inv, scale)


def _layer_norm_bwd(eps, res, dy):
    normed, inv, scale = res
    axes = tuple(range(dy.ndim - 1))
    dn = dy * scale
    dx = inv * (dn - dn.mean(-1, keepdims=True) - normed * (dn * normed).mean(-1, keepdims=True))
    return dx, jnp.sum(dy * normed, axis=axes), jnp.sum(dy, axis=axes)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class _CPULayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last axis (same params: ``scale``, ``bias``) computed by
    :func:`_layer_norm`; statistics in float32, output in ``dtype``."""

    epsilon: float = 1e-6
    use_bias: bool = True
    use_fast_variance: bool = False  # the two-pass variance is the only one computed
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Any = nn.initializers.ones_init()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = jnp.zeros(features, jnp.float32)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, features, self.param_dtype)
        f32 = jnp.float32
        y = _layer_norm(
            x.astype(f32), jnp.asarray(scale, f32), jnp.asarray(bias, f32), self.epsilon
        )
        return y.astype(self.dtype or x.dtype)


_GELU_C = float(np.sqrt(2.0 / np.pi))


@jax.custom_vjp
def _gelu_tanh(x: jax.Array) -> jax.Array:
    """``jax.nn.gelu(x, approximate=True)`` whose gradient keeps only ``x``."""
    return _gelu_tanh_fwd(x)[0]


def _gelu_tanh_fwd(x):
    return jax.nn.gelu(x, approximate=True), x


def _gelu_tanh_bwd(x, dy):
    xf = x.astype(jnp.float32)
    t = jnp.tanh(_GELU_C * (xf + 0.044715 * xf * xf * xf))
    d = 0.5 * (1.0 + t) + 0.5 * xf * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * xf * xf)
    return ((dy.astype(jnp.float32) * d).astype(x.dtype),)


_gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # as jax.nn.dot_product_attention


@jax.custom_vjp
def _softmax_attention(q, k, v, bias):
    """``softmax(q k^T / sqrt(D) + bias) v`` for ``(B, N, T, D)`` / ``(B, N, S, D)`` inputs.

    ``bias`` is a float32 additive mask broadcastable to ``(B, N, T, S)``, or ``None``.
    Scores and softmax in float32; returns ``(B, N, T, D)`` in ``q.dtype``.
    """
    return _softmax_attention_fwd(q, k, v, bias)[0]


def _softmax_attention_fwd(q, k, v, bias):
    scale = 1.0 / np.sqrt(q.shape[-1])
    s = jnp.einsum("bntd,bnsd->bnts", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        s = s + bias
    e = jnp.exp(s - s.max(-1, keepdims=True))
    p = e * (1.0 / e.sum(-1, keepdims=True))
    o = jnp.einsum("bnts,bnsd->bntd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    o = o.astype(q.dtype)
    return o, (q, k, v, bias, p, o)


def _softmax_attention_bwd(res, do):
    q, k, v, bias, p, o = res
    scale = 1.0 / np.sqrt(q.shape[-1])
    f32 = jnp.float32
    dv = jnp.einsum("bnts,bntd->bnsd", p.astype(do.dtype), do, preferred_element_type=f32)
    dp = jnp.einsum("bntd,bnsd->bnts", do, v.astype(do.dtype), preferred_element_type=f32)
    delta = jnp.sum(do.astype(f32) * o.astype(f32), axis=-1, keepdims=True)  # = sum(p * dp)
    ds = p * (dp - delta) * scale
    dq = jnp.einsum("bnts,bnsd->bntd", ds.astype(k.dtype), k, preferred_element_type=f32)
    dk = jnp.einsum("bnts,bntd->bnsd", ds.astype(q.dtype), q, preferred_element_type=f32)
    dbias = None
    if bias is not None:  # summed over the axes the bias was broadcast along
        lead = ds.ndim - bias.ndim
        axes = tuple(range(lead)) + tuple(
            lead + i for i, n in enumerate(bias.shape) if n == 1 and ds.shape[lead + i] != 1
        )
        dbias = jnp.sum(ds, axis=axes, keepdims=True).reshape(bias.shape).astype(bias.dtype)
    return (
        dq.astype(q.dtype),
        dk.astype(k.dtype),
        dv.astype(v.dtype),
        dbias,
    )


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def _attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, is_causal: bool
) -> jax.Array:
    """``jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)``.

    ``q`` is ``(B, T, H, D)``, ``k``/``v`` ``(B, S, KV, D)`` (``KV`` divides ``H``), ``mask``
    a bool array broadcastable to ``(B, 1, T, S)``. On the CPU backend it runs as
    :func:`_softmax_attention` on a heads-major layout, the query heads of one key/value
    head stacked along the rows.
    """
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    if not _on_cpu() or (mask is not None and (mask.ndim != 4 or mask.shape[1] != 1)):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
    g = h // kv
    allowed = np.tril(np.ones((t, s), bool))[None, None] if is_causal else None
    if mask is not None:
        allowed = mask if allowed is None else jnp.logical_and(allowed, mask)
    bias = None
    if allowed is not None:
        xp = np if isinstance(allowed, np.ndarray) else jnp  # a constant when only causal
        bias = xp.where(allowed, np.float32(0.0), np.float32(_MASK_VALUE)).astype(np.float32)
        if g > 1 and bias.shape[-2] != 1:  # rows are (group, position): repeat per group
            bias = xp.tile(bias, (1, 1, g, 1))
    qh = q.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, d)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    o = _softmax_attention(qh, kh, vh, bias)
    return o.reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


# ----------------------------------------------------------------------------- layers


class HeadProjection(nn.Module):
    """Projects ``(..., E)`` to ``(..., heads, head_dim)``.

    Params: ``kernel`` ``(E, heads, head_dim)`` and, with ``use_bias``, a flat ``bias``
    ``(heads * head_dim,)``: one dimension like every other bias, so filters that take
    arrays with more than one dimension for kernels (pruning, quantization) skip it.
    """

    heads: int
    heads_axis: str  # logical name of the heads dimension: "heads" or "kv_heads"
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        shape = (x.shape[-1], self.heads, cfg.head_dim)
        kernel_init = _normal(cfg.init_std, ("embed", self.heads_axis, "head_dim"))
        kernel = self.param("kernel", kernel_init, shape, cfg.param_dtype)
        x, kernel = x.astype(cfg.dtype), kernel.astype(cfg.dtype)
        y = _dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        if cfg.use_bias:
            bias_init = _zeros((self.heads_axis,))
            bias = self.param("bias", bias_init, (self.heads * cfg.head_dim,), cfg.param_dtype)
            y = y + bias.astype(cfg.dtype).reshape(self.heads, cfg.head_dim)
        return y


class Attention(nn.Module):
    """Multi-head (or grouped-query) self-attention (``jax.nn.dot_product_attention``
    semantics; see :func:`_attention`).

    Params: ``query`` ``(E, H, D)``, ``key``/``value`` ``(E, KV, D)``, ``out`` ``(H, D, E)``
    kernels (plus flat biases with ``use_bias``). With ``decode`` the keys and values are written
    into the ``cache`` collection (``cached_key``/``cached_value``: ``(B, S, KV, D)``) at
    ``cache_index`` and the queries attend to every cache slot up to their own position.
    """

    cfg: TransformerConfig
    causal: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        cache_index: jax.Array | None,
        decode: bool,
    ) -> jax.Array:
        cfg = self.cfg
        residual_std = cfg.init_std / np.sqrt(2 * cfg.num_layers)
        b, t = x.shape[:2]
        # Positions are made here, not passed in: outside decoding they stay NumPy values
        # (also under nn.remat), so the rotary tables are the same constants in every program.
        positions = np.arange(t)
        if decode:
            positions = jnp.asarray(positions) + cache_index
        rows = x.reshape(b * t, x.shape[-1])  # 2-D operands (see "CPU kernels")

        def proj(heads: int, heads_axis: str, name: str) -> jax.Array:
            y = HeadProjection(heads, heads_axis, cfg, name=name)(rows)
            return y.reshape(b, t, *y.shape[1:])

        q = proj(cfg.num_heads, "heads", "query")
        k = proj(cfg.num_kv_heads, "kv_heads", "key")
        v = proj(cfg.num_kv_heads, "kv_heads", "value")
        if cfg.positions == "rope":
            q = apply_rope(q, positions, cfg.rope_theta)
            k = apply_rope(k, positions, cfg.rope_theta)

        is_causal = self.causal
        if decode:
            k, v = self._update_cache(k, v, cache_index)
            # Query at position p sees the cache slots 0..p; later slots are still empty.
            mask = (jnp.arange(k.shape[1])[None, :] <= positions[:, None])[None, None]
            is_causal = False
        # K/V with fewer heads than Q is grouped-query attention: query head h reads
        # key/value head h // (num_heads // num_kv_heads).
        y = _attention(q, k, v, mask, is_causal)
        y = y.reshape(b * t, *y.shape[2:])
        y = nn.DenseGeneral(
            cfg.embed_dim,
            axis=(-2, -1),
            use_bias=cfg.use_bias,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=_normal(residual_std, ("heads", "head_dim", "embed")),
            bias_init=_zeros(("embed",)),
            dot_general=_dot_general,
            name="out",
        )(y)
        return y.reshape(b, t, -1)

    def _update_cache(
        self, k: jax.Array, v: jax.Array, index: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Writes ``k``/``v`` (``(B, T, KV, D)``) at ``index``; returns the whole cache.

        The first call (when ``init`` creates the collection) sizes the cache from the input
        length and leaves it empty.
        """
        initialized = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        if not initialized:
            return k, v
        if k.shape[1] > cached_k.value.shape[1]:
            raise ValueError(
                f"tokens has length {k.shape[1]}, more than the cache length "
                f"{cached_k.value.shape[1]}"
            )
        start = (0, index, 0, 0)
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, start)
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, start)
        return cached_k.value, cached_v.value


class FeedForward(nn.Module):
    """The position-wise MLP: ``down(gelu(up(x)))`` or SwiGLU ``down(silu(gate(x)) * up(x))``."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg

        def dense(features: int, names: tuple[str, str], std: float, name: str) -> nn.Dense:
            return nn.Dense(
                features,
                use_bias=cfg.use_bias,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                kernel_init=_normal(std, names),
                bias_init=_zeros(names[1:]),
                dot_general=_dot_general,
                name=name,
            )

        up = dense(cfg.mlp_dim, ("embed", "mlp"), cfg.init_std, "up")(x)
        if cfg.mlp == "swiglu":
            gate = dense(cfg.mlp_dim, ("embed", "mlp"), cfg.init_std, "gate")(x)
            h = nn.silu(gate) * up
        else:  # the tanh form GPT-2 uses
            h = _gelu_tanh(up) if _on_cpu() else nn.gelu(up, approximate=True)
        residual_std = cfg.init_std / np.sqrt(2 * cfg.num_layers)
        return dense(cfg.embed_dim, ("mlp", "embed"), residual_std, "down")(h)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    cfg: TransformerConfig
    causal: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        cache_index: jax.Array | None,
        train: bool,
        decode: bool,
    ) -> jax.Array:
        cfg = self.cfg
        b, t, e = x.shape
        # The norms, the MLP and the residual stream work on (B * T, E) rows: XLA:CPU fuses
        # 2-D elementwise producers into the transposes of the backward pass much better.
        x = x.reshape(b * t, e)
        h = _norm(cfg, "attn_norm")(x).reshape(b, t, e)
        h = Attention(cfg, self.causal, name="attn")(h, mask, cache_index, decode)
        x = x + nn.Dropout(cfg.dropout_rate, deterministic=not train)(h.reshape(b * t, e))
        h = FeedForward(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x))
        x = x + nn.Dropout(cfg.dropout_rate, deterministic=not train)(h)
        return x.reshape(b, t, e)


def _blocks(cfg: TransformerConfig, causal: bool) -> list[nn.Module]:
    # nn.remat counts ``self`` as argument 0: train and decode are arguments 4 and 5.
    block = nn.remat(Block, static_argnums=(4, 5)) if cfg.remat else Block
    return [block(cfg, causal, name=f"block_{i}") for i in range(cfg.num_layers)]


# ----------------------------------------------------------------------------- models


def _host_values(x: jax.Array) -> np.ndarray | None:
    """``x`` as a NumPy array, or ``None`` when it is traced (inside ``jit``)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_tokens(tokens: Any, vocab_size: int, max_len: int) -> jax.Array:
    """Validates a ``(B, T)`` integer token array; returns it as a ``jax.Array``.

    Shapes, dtype and ``T <= max_len`` are checked always; ids in ``[0, vocab_size)`` only
    when ``tokens`` holds concrete values (outside ``jit``). Under ``jit`` an id out of range
    cannot raise: its embedding lookup returns NaN, so the logits of that sequence are NaN.

    Args:
      tokens: ``(B, T)`` integer ids.
      vocab_size: number of token ids.
      max_len: longest sequence allowed.

    Returns:
      ``tokens`` as a ``jax.Array``.

    Example:
      >>> tokens = check_tokens(np.array([[1, 2, 3]]), vocab_size=10, max_len=8)
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (batch, length); got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"tokens must hold integer ids; got dtype {tokens.dtype}")
    if tokens.shape[1] > max_len:
        raise ValueError(f"tokens has length {tokens.shape[1]}, more than max_len={max_len}")
    ids = _host_values(tokens) if tokens.size else None
    if ids is not None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"tokens holds the id {bad}, outside the vocabulary [0, {vocab_size}) "
                f"(vocab_size={vocab_size})"
            )
    return tokens


class _Transformer(nn.Module):
    """The hyperparameters shared by :class:`CausalLM` and :class:`EncoderClassifier`."""

    vocab_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    embed_dim: int = 128
    head_dim: int | None = None
    mlp_dim: int | None = None
    max_len: int = 256
    dropout_rate: float = 0.0
    positions: str = "rope"
    norm: str = "layernorm"
    mlp: str = "gelu"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    use_bias: bool = True
    remat: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_layers", "num_heads", "embed_dim", "max_len"):
            _check_positive_int(name, getattr(self, name))
        for name in ("num_kv_heads", "head_dim", "mlp_dim"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if self.head_dim is None and self.embed_dim % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} does not divide embed_dim={self.embed_dim}; "
                "choose a head count that divides the width (or set head_dim)"
            )
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}"
            )
        check_one_of("positions", self.positions, POSITIONS)
        check_one_of("norm", self.norm, NORMS)
        check_one_of("mlp", self.mlp, MLPS)
        head_dim = self.head_dim or self.embed_dim // self.num_heads
        if self.positions == "rope" and head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim; got head_dim={head_dim}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate={self.dropout_rate!r} must be in [0, 1)")
        for name in ("dtype", "param_dtype"):
            if not jnp.issubdtype(jnp.dtype(getattr(self, name)), jnp.floating):
                raise TypeError(f"{name}={getattr(self, name)!r} must be a floating dtype")
        super().__post_init__()

    @property
    def config(self) -> TransformerConfig:
        """The hyperparameters with defaults resolved (kv heads, head and MLP widths)."""
        return TransformerConfig(
            vocab_size=self.vocab_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads or self.num_heads,
            embed_dim=self.embed_dim,
            head_dim=self.head_dim or self.embed_dim // self.num_heads,
            mlp_dim=self.mlp_dim or 4 * self.embed_dim,
            max_len=self.max_len,
            dropout_rate=self.dropout_rate,
            positions=self.positions,
            norm=self.norm,
            mlp=self.mlp,
            norm_eps=self.norm_eps,
            rope_theta=self.rope_theta,
            use_bias=self.use_bias,
            remat=self.remat,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            init_std=self.init_std,
        )

    @nn.nowrap
    def init(self, rngs, *args, **kwargs) -> PyTree:
        """``nn.Module.init`` returning plain arrays (the logical-axis boxes removed with
        ``flax.linen.meta.unbox``); :func:`logical_axes` gives the names."""
        return nn.meta.unbox(super().init(rngs, *args, **kwargs))

    @nn.nowrap
    def init_with_output(self, rngs, *args, **kwargs) -> tuple[Any, PyTree]:
        """``nn.Module.init_with_output`` returning plain arrays (see :meth:`init`)."""
        out, variables = super().init_with_output(rngs, *args, **kwargs)
        return out, nn.meta.unbox(variables)

    def _embed(self, cfg: TransformerConfig, tokens: jax.Array, positions, train: bool):
        """Token (plus learned position) embeddings; returns ``(x, token_embed_module)``."""
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.embed_dim,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=_normal(cfg.init_std, ("vocab", "embed")),
            name="embed",
        )
        x = embed(tokens)
        if cfg.positions == "learned":
            pos_embed = nn.Embed(
                cfg.max_len,
                cfg.embed_dim,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                embedding_init=_normal(cfg.init_std, ("positions", "embed")),
                name="pos_embed",
            )
            x = x + pos_embed(positions)[None]
        return nn.Dropout(cfg.dropout_rate, deterministic=not train)(x), embed


class CausalLM(_Transformer):
    """Decoder-only language model (GPT / Llama family): pre-norm blocks, final norm, head.

    Attributes:
      vocab_size: number of token ids.
      num_layers: number of blocks.
      num_heads: query heads.
      num_kv_heads: key/value heads (grouped-query attention); ``None`` means
        ``num_heads`` (multi-head attention). Must divide ``num_heads``.
      embed_dim: model width ``E``.
      head_dim: width of one head; ``None`` means ``embed_dim // num_heads``.
      mlp_dim: hidden units of the MLP; ``None`` means ``4 * embed_dim``.
      max_len: longest sequence (size of the learned position table).
      dropout_rate: dropout on the embeddings and on each residual branch (when ``train``).
      positions: ``"rope"`` (rotary, rotate-half layout) or ``"learned"``.
      norm: ``"layernorm"`` or ``"rmsnorm"``.
      mlp: ``"gelu"`` (tanh approximation) or ``"swiglu"``.
      norm_eps: epsilon of the norms.
      rope_theta: base of the rotary frequencies.
      use_bias: biases in the attention and MLP projections (and the LayerNorms).
      remat: recompute each block in the backward pass (``nn.remat``) to save memory.
      dtype: compute dtype, e.g. ``jnp.bfloat16``; logits are returned in float32.
      param_dtype: dtype of the parameters.
      init_std: standard deviation of the normal initialisers (residual projections use
        ``init_std / sqrt(2 * num_layers)``).
      tie_embeddings: the LM head is the transposed token embedding (no ``lm_head``).

    Params: ``embed/embedding`` ``(V, E)``, ``pos_embed/embedding`` (learned positions),
    ``block_{i}/{attn_norm, attn/{query, key, value, out}, mlp_norm, mlp/{up, gate, down}}``,
    ``final_norm`` and ``lm_head/kernel`` ``(E, V)`` when not tied.

    Calling with ``decode=True`` uses and advances the ``"cache"`` collection (apply with
    ``mutable=["cache"]``); its length is fixed when it is made, and writing past it is not
    detected under ``jit`` (the write position is clamped) — :func:`generate` sizes it.

    Example:
      >>> model = CausalLM(vocab_size=100, num_layers=2, num_heads=4, embed_dim=32)
      >>> tokens = jnp.zeros((2, 8), jnp.int32)
      >>> params = model.init(jax.random.key(0), tokens)["params"]
      >>> logits = model.apply({"params": params}, tokens)  # (2, 8, 100) float32
    """

    tie_embeddings: bool = True

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False, decode: bool = False) -> jax.Array:
        """Logits for every position.

        Args:
          tokens: ``(B, T)`` integer ids, ``T <= max_len``.
          train: enables dropout (needs a ``"dropout"`` rng when ``dropout_rate > 0``).
          decode: use the KV cache: ``tokens`` continue the cached sequence.

        Returns:
          ``(B, T, vocab_size)`` float32 logits; position ``t`` predicts token ``t + 1``.

        Raises:
          ValueError: ``tokens`` not 2-D, longer than ``max_len``, or (when its values are
            concrete, outside ``jit``) holding an id outside ``[0, vocab_size)``; under
            ``jit`` such an id makes that sequence's logits NaN instead (see
            :func:`check_tokens`).
          TypeError: ``tokens`` not integer.
        """
        cfg = self.config
        tokens = check_tokens(tokens, cfg.vocab_size, cfg.max_len)
        start = self._cache_position(tokens.shape[1]) if decode else None
        positions = jnp.arange(tokens.shape[1]) + (0 if start is None else start)
        x, embed = self._embed(cfg, tokens, positions, train)
        for block in _blocks(cfg, causal=True):
            x = block(x, None, start, train, decode)
        x = _norm(cfg, "final_norm")(x)
        if self.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = nn.Dense(
                cfg.vocab_size,
                use_bias=False,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                kernel_init=_normal(cfg.init_std, ("embed", "vocab")),
                dot_general=_dot_general,
                name="lm_head",
            )(x)
        return logits.astype(jnp.float32)

    def _cache_position(self, length: int) -> jax.Array:
        """The cache position of the first token of this call; advances it by ``length``."""
        initialized = self.has_variable("cache", "index")
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        start = index.value
        if initialized:
            index.value = start + length
        return start


class EncoderClassifier(_Transformer):
    """Bidirectional encoder (BERT family) with a classification head.

    The blocks are those of :class:`CausalLM` (pre-norm, final norm) without the causal
    mask; padding tokens are masked out as keys. The sequence is pooled from the first
    token (``"cls"``) or averaged over the non-padding tokens (``"mean"``), then a Dense
    layer ``head`` gives the class logits.

    Attributes:
      num_classes: number of output logits.
      pad_id: the padding token id masked out of attention and pooling; ``None`` masks
        nothing (unless ``attention_mask`` is passed).
      pooling: ``"cls"`` or ``"mean"``.
      (the others as in :class:`CausalLM`; positions default to ``"learned"``.)

    Example:
      >>> model = EncoderClassifier(vocab_size=100, num_heads=2, embed_dim=32, num_classes=3)
      >>> tokens = jnp.array([[5, 6, 7, 0, 0]])  # 0 is padding
      >>> params = model.init(jax.random.key(0), tokens)["params"]
      >>> logits = model.apply({"params": params}, tokens)  # (1, 3)
    """

    positions: str = "learned"
    num_classes: int = 2
    pad_id: int | None = 0
    pooling: str = "cls"

    def __post_init__(self) -> None:
        _check_positive_int("num_classes", self.num_classes)
        check_one_of("pooling", self.pooling, POOLINGS)
        if self.pad_id is not None and not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id!r} must be None or in [0, vocab_size)")
        super().__post_init__()

    @nn.compact
    def __call__(
        self, tokens: jax.Array, train: bool = False, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """Class logits of each sequence.

        Args:
          tokens: ``(B, T)`` integer ids, ``T <= max_len``.
          train: enables dropout.
          attention_mask: optional ``(B, T)`` bool, True for real tokens; default
            ``tokens != pad_id``.

        Returns:
          ``(B, num_classes)`` float32 logits.
        """
        cfg = self.config
        tokens = check_tokens(tokens, cfg.vocab_size, cfg.max_len)
        if attention_mask is None:
            if self.pad_id is None:
                attention_mask = jnp.ones(tokens.shape, bool)
            else:
                attention_mask = tokens != self.pad_id
        elif attention_mask.shape != tokens.shape:
            raise ValueError(
                f"attention_mask has shape {attention_mask.shape}; expected the shape of "
                f"tokens {tokens.shape}"
            )
        attention_mask = attention_mask.astype(bool)
        positions = jnp.arange(tokens.shape[1])
        x, _ = self._embed(cfg, tokens, positions, train)
        key_mask = attention_mask[:, None, None, :]  # (B, 1, 1, T): no query reads padding
        for block in _blocks(cfg, causal=False):
            x = block(x, key_mask, None, train, False)
        x = _norm(cfg, "final_norm")(x).astype(jnp.float32)
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            weights = attention_mask[..., None].astype(jnp.float32)
            pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        return nn.Dense(
            self.num_classes,
            dtype=jnp.float32,
            param_dtype=cfg.param_dtype,
            kernel_init=_normal(cfg.init_std, ("embed", "classes")),
            bias_init=_zeros(("classes",)),
            name="head",
        )(pooled)


def logical_axes(model: nn.Module, tokens: jax.Array) -> PyTree:
    """The logical axis names of every parameter, as ``PartitionSpec`` leaves.

    Map them to mesh shardings with
    ``nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)``. Nothing is computed:
    the model is only traced.

    Args:
      model: a :class:`CausalLM` or :class:`EncoderClassifier` (any module whose
        parameters carry ``nn.with_logical_partitioning`` names).
      tokens: a ``(B, T)`` example input (values unused).

    Returns:
      A pytree shaped like ``params`` with a ``PartitionSpec`` of logical names per leaf.

    Example:
      >>> specs = logical_axes(model, jnp.zeros((1, 8), jnp.int32))
      >>> specs["embed"]["embedding"]
      PartitionSpec('vocab', 'embed')
    """
    init = lambda: nn.Module.init_with_output(model, jax.random.key(0), tokens)[1]
    boxed = jax.eval_shape(init)  # the base method: keeps the boxes
    specs = nn.get_partition_spec(boxed)["params"]
    return jax.tree.map(
        lambda s: s if isinstance(s, PartitionSpec) else PartitionSpec(),
        specs,
        is_leaf=lambda s: isinstance(s, PartitionSpec),
    )


def mesh_specs(
    model: nn.Module,
    tokens: jax.Array,
    mesh_axes: Mapping[str, str | None] | Sequence[str],
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
) -> PyTree:
    """The mesh ``PartitionSpec`` of every parameter: logical names -> rules -> mesh axes.

    Each parameter's logical names (:func:`logical_axes`) go through ``rules`` (as
    ``nn.logical_to_mesh_axes``) to the rule axes (``data``, ``fsdp``, ``tensor``), which
    ``mesh_axes`` renames to the axes of the mesh at hand; a rule axis it does not list is
    dropped (that dimension is not split over it), and an axis a spec would name twice is
    kept once. Nothing is computed: the model is only traced.

    Args:
      model: a :class:`CausalLM` or :class:`EncoderClassifier`.
      tokens: a ``(B, T)`` example input (values unused).
      mesh_axes: ``{rule axis: mesh axis or None}``, or a sequence of rule axes kept under
        their own names. E.g. tensor parallelism on a ``("data", "tensor")`` mesh:
        ``("tensor",)``; FSDP with the ``fsdp`` rules on the ``data`` axis plus tensor
        parallelism: ``{"fsdp": "data", "tensor": "tensor"}``.
      rules: ``(logical name, rule axes)`` pairs (default :data:`LOGICAL_AXIS_RULES`).

    Returns:
      A pytree shaped like ``params`` with a ``PartitionSpec`` of mesh axes per leaf.

    Example:
      >>> specs = mesh_specs(model, jnp.zeros((1, 8), jnp.int32), ("tensor",))
      >>> specs["block_0"]["attn"]["query"]["kernel"]
      PartitionSpec(None, 'tensor')
    """
    if isinstance(mesh_axes, str) or not isinstance(mesh_axes, (Mapping, Sequence)):
        raise TypeError(
            f"mesh_axes={mesh_axes!r} must be a mapping {{rule axis: mesh axis}} or a "
            "sequence of rule axes"
        )
    rename = dict(mesh_axes) if isinstance(mesh_axes, Mapping) else {a: a for a in mesh_axes}

    def convert(spec: PartitionSpec) -> PartitionSpec:
        used: set[str] = set()
        entries = []
        for entry in nn.logical_to_mesh_axes(tuple(spec), rules):
            axes = entry if isinstance(entry, (tuple, list)) else (entry,)
            kept = []
            for axis in axes:
                mesh_axis = rename.get(axis) if axis is not None else None
                if mesh_axis is not None and mesh_axis not in used:
                    used.add(mesh_axis)
                    kept.append(mesh_axis)
            entries.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
        while entries and entries[-1] is None:
            entries.pop()
        return PartitionSpec(*entries)

    return jax.tree.map(
        convert, logical_axes(model, tokens), is_leaf=lambda s: isinstance(s, PartitionSpec)
    )


# ----------------------------------------------------------------------------- presets


def gpt_tiny(**kwargs) -> CausalLM:
    """A 2-layer, 64-wide GPT-2-style model for tests and quick runs."""
    config = dict(
        vocab_size=256,
        num_layers=2,
        num_heads=4,
        embed_dim=64,
        max_len=128,
        positions="learned",
    )
    return CausalLM(**{**config, **kwargs})


def gpt2(**kwargs) -> CausalLM:
    """GPT-2 small (124M): learned positions, LayerNorm eps 1e-5, tanh GELU, biases, tied
    head; loads the public GPT-2 weights (see ``checkpoint_import``)."""
    config = dict(
        vocab_size=50257,
        num_layers=12,
        num_heads=12,
        embed_dim=768,
        max_len=1024,
        positions="learned",
        norm="layernorm",
        mlp="gelu",
        norm_eps=1e-5,
        use_bias=True,
        tie_embeddings=True,
    )
    return CausalLM(**{**config, **kwargs})


def llama_tiny(**kwargs) -> CausalLM:
    """A 2-layer, 64-wide Llama-style model (RoPE, RMSNorm, SwiGLU, GQA, no biases)."""
    config = dict(
        vocab_size=256,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        embed_dim=64,
        mlp_dim=176,
        max_len=128,
        positions="rope",
        norm="rmsnorm",
        mlp="swiglu",
        norm_eps=1e-5,
        use_bias=False,
        tie_embeddings=False,
    )
    return CausalLM(**{**config, **kwargs})


def tinyllama_1b(**kwargs) -> CausalLM:
    """The TinyLlama 1.1B architecture (Llama 2 layout: 22 layers, width 2048, 32 query and
    4 key/value heads, RMSNorm eps 1e-5, rope theta 10000, untied head)."""
    config = dict(
        vocab_size=32000,
        num_layers=22,
        num_heads=32,
        num_kv_heads=4,
        embed_dim=2048,
        mlp_dim=5632,
        max_len=2048,
        positions="rope",
        norm="rmsnorm",
        mlp="swiglu",
        norm_eps=1e-5,
        rope_theta=10000.0,
        use_bias=False,
        tie_embeddings=False,
    )
    return CausalLM(**{**config, **kwargs})


def bert_tiny(**kwargs) -> EncoderClassifier:
    """A 2-layer, 128-wide, 2-head encoder classifier (the BERT-tiny shape)."""
    config = dict(
        vocab_size=30522, num_layers=2, num_heads=2, embed_dim=128, mlp_dim=512, max_len=512
    )
    return EncoderClassifier(**{**config, **kwargs})


def bert_base(**kwargs) -> EncoderClassifier:
    """A 12-layer, 768-wide, 12-head encoder classifier (the BERT-base shape; pre-norm, so
    BERT checkpoints do not load into it)."""
    config = dict(
        vocab_size=30522,
        num_layers=12,
        num_heads=12,
        embed_dim=768,
        mlp_dim=3072,
        max_len=512,
        norm_eps=1e-12,
    )
    return EncoderClassifier(**{**config, **kwargs})
