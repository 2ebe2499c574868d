"""Autoregressive generation from a :class:`CausalLM` with a fixed-size KV cache.

The prompt is run once (prefill) into a cache sized ``prompt length + max_new_tokens``;
then one compiled decode step per new token (a ``lax.scan``) feeds the last token, writes
its keys and values into the cache and samples the next one. Shapes never change, so
nothing recompiles as the sequence grows.

The parameters may hold quantized kernels (QTensor, bit-packed PackedQTensor or
``QuantizedKernel`` leaves, e.g. ``compress_model``'s ``report.qparams``): every step then
runs through ``apply_with_qtensors``, so the integer kernels are what the compiled program
holds and each step dequantizes them on the fly (weight-only int8 / int4 decoding).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxopt_models.models.transformer import CausalLM, check_tokens
from jaxopt_models.models.weight_only import apply_with_qtensors, is_quantized
from jaxopt_models.typing import PyTree


def init_cache(model: CausalLM, batch_size: int, cache_len: int) -> PyTree:
    """An empty KV cache (the ``"cache"`` collection) for ``cache_len`` positions.

    Args:
      model: the language model.
      batch_size: number of sequences ``B``.
      cache_len: positions the cache holds (``<= model.max_len``).

    Returns:
      A pytree of zeros: per block ``attn/cached_key`` and ``attn/cached_value`` of shape
      ``(B, cache_len, num_kv_heads, head_dim)`` in the compute dtype, and ``index``
      (int32 scalar, the next position to write).

    Example:
      >>> cache = init_cache(model, batch_size=2, cache_len=32)
      >>> logits, state = model.apply({"params": params, "cache": cache}, prompt,
      ...                             decode=True, mutable=["cache"])
    """
    for name, value in (("batch_size", batch_size), ("cache_len", cache_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if cache_len > model.max_len:
        raise ValueError(f"cache_len={cache_len} is more than max_len={model.max_len}")
    tokens = jnp.zeros((batch_size, cache_len), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, decode=True))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def sample_logits(
    logits: jax.Array,
    rng: jax.Array | None,
    temperature: float | jax.Array = 0.0,
    top_k: int | None = None,
) -> jax.Array:
    """Picks one token per row: argmax when ``temperature == 0``, else a sample from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits.

    Args:
      logits: ``(B, V)`` float logits.
      rng: PRNG key (unused when greedy).
      temperature: 0 for greedy; > 0 to sample (a Python float decides greedy vs sample).
      top_k: keep only the ``top_k`` most likely tokens; ``None`` keeps all.

    Returns:
      ``(B,)`` int32 token ids.

    Example:
      >>> tokens = sample_logits(logits, jax.random.key(0), temperature=0.8, top_k=40)
    """
    if isinstance(temperature, (int, float)) and temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate(
    model: CausalLM,
    params: PyTree,
    prompt: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Continues each prompt by ``max_new_tokens`` tokens, greedily or by sampling.

    All prompts of the batch have the same length (no ragged prompts). Repeated calls with
    the same model, shapes, ``max_new_tokens``, ``top_k`` and greedy-vs-sampling reuse one
    compiled program; the temperature is a traced value.

    Args:
      model: a :class:`CausalLM`.
      params: its parameters; kernels may be quantized (QTensor, PackedQTensor or
        ``QuantizedKernel`` leaves), then dequantized on the fly inside every step.
      prompt: ``(B, P)`` integer token ids, ``P >= 1``.
      max_new_tokens: tokens to add; ``P + max_new_tokens <= model.max_len``.
      temperature: 0 (default) picks the most likely token; > 0 samples.
      top_k: when sampling, only the ``top_k`` most likely tokens may be picked.
      rng: PRNG key, required when ``temperature > 0``.

    Returns:
      ``(B, P + max_new_tokens)`` int32: the prompt followed by the new tokens.

    Example:
      >>> model = gpt_tiny()
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
      >>> out = generate(model, params, jnp.array([[1, 2, 3]]), max_new_tokens=5)
      >>> qparams = quantization.pack_params(report.qparams)  # e.g. int4 GPTQ, packed
      >>> out = generate(model, qparams, jnp.array([[1, 2, 3]]), max_new_tokens=5)
    """
    if not isinstance(model, CausalLM):
        raise TypeError(f"model must be a CausalLM; got {type(model).__name__}")
    prompt = check_tokens(prompt, model.vocab_size, model.max_len).astype(jnp.int32)
    if prompt.shape[1] < 1:
        raise ValueError(f"prompt must hold at least one token; got shape {prompt.shape}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens={max_new_tokens!r} must be an int")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    total = prompt.shape[1] + max_new_tokens
    if total > model.max_len:
        raise ValueError(
            f"prompt length {prompt.shape[1]} + max_new_tokens={max_new_tokens} = {total} "
            f"is more than max_len={model.max_len}"
        )
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature={temperature!r} must be a float >= 0")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= model.vocab_size
    ):
        raise ValueError(f"top_k={top_k!r} must be None or an int in [1, {model.vocab_size}]")
    greedy = temperature == 0
    if not greedy and rng is None:
        raise ValueError(f"rng is required when sampling (temperature={temperature})")
    if max_new_tokens == 0:
        return prompt
    rng = jax.random.key(0) if rng is None else rng
    return _generate(
        model,
        params,
        prompt,
        jnp.float32(temperature if not greedy else 1.0),
        rng,
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        greedy=greedy,
    )


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k", "greedy"))
def _generate(model, params, prompt, temperature, rng, *, max_new_tokens, top_k, greedy):
    batch, prompt_len = prompt.shape

    def pick(logits: jax.Array, key: jax.Array) -> jax.Array:
        return sample_logits(logits, key, 0.0 if greedy else temperature, top_k)

    quantized = any(is_quantized(x) for x in jax.tree.leaves(params, is_leaf=is_quantized))
    apply = functools.partial(apply_with_qtensors, model) if quantized else model.apply

    def forward(cache: PyTree, tokens: jax.Array) -> tuple[jax.Array, PyTree]:
        step_params = params
        if quantized:
            # Tie the kernels to the step's cache: XLA would otherwise hoist their
            # dequantization out of the decode loop and keep float copies through it.
            step_params, cache = jax.lax.optimization_barrier((params, cache))
        logits, state = apply(
            {"params": step_params, "cache": cache}, tokens, decode=True, mutable=["cache"]
        )
        return logits[:, -1], state["cache"]

    cache = init_cache(model, batch, prompt_len + max_new_tokens)
    logits, cache = forward(cache, prompt)  # prefill
    rng, key = jax.random.split(rng)
    first = pick(logits, key)

    def step(carry, _):
        cache, token, rng = carry
        logits, cache = forward(cache, token[:, None])
        rng, key = jax.random.split(rng)
        return (cache, pick(logits, key), rng), token

    (_, last, _), fed = jax.lax.scan(step, (cache, first, rng), None, length=max_new_tokens - 1)
    new_tokens = jnp.concatenate([fed.T, last[:, None]], axis=1)  # (B, max_new_tokens)
    return jnp.concatenate([prompt, new_tokens], axis=1)
