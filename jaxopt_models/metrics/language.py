"""Language-model metrics: token cross-entropy, perplexity, bits per token and per byte.

Sum the cross-entropy in nats over every scored token (``lm_loss(...).total_nats``, masked
padding excluded), count the tokens, then:

* ``perplexity = exp(total_nats / num_tokens)``;
* ``bits_per_token = total_nats / (ln 2 * num_tokens)``;
* ``bits_per_byte = total_nats / (ln 2 * num_bytes)``, with ``num_bytes`` the UTF-8 bytes of the
  scored text; unlike the other two it does not depend on the tokenizer, so models with
  different vocabularies compare on it.

The summary functions take Python numbers (giving a Python ``float``), NumPy values, or jax
arrays (giving a jax array, also under ``jit``).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LN2 = math.log(2.0)


class LMLoss(NamedTuple):
    """Token-level cross-entropy of a batch (a pytree, so it passes through ``jit``).

    Attributes:
      per_token: ``float32`` nats per position, shape ``targets.shape``; 0 where masked out.
      total_nats: scalar ``float32`` sum of ``per_token``.
      num_tokens: scalar ``float32`` count of scored positions.
    """

    per_token: jax.Array
    total_nats: jax.Array
    num_tokens: jax.Array

    @property
    def mean(self) -> jax.Array:
        """Mean nats per scored token (0 when none is scored)."""
        return self.total_nats / jnp.maximum(self.num_tokens, 1.0)


def lm_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> LMLoss:
    """Cross-entropy of next-token predictions, per token and summed (pure ``jnp``, jit-able).

    Args:
      logits: ``(..., V)`` unnormalised scores, any float dtype (computed in float32 or wider).
      targets: ``(...)`` integer ids in ``[0, V)``, the shape of ``logits`` without ``V``.
      mask: optional ``(...)`` boolean or 0/1 weights; positions with 0 are not scored.

    Returns:
      An ``LMLoss(per_token, total_nats, num_tokens)``.

    Raises:
      ValueError: the shapes do not match.

    Example:
      >>> out = lm_loss(model.apply(params, batch["tokens"]), batch["targets"], batch["mask"])
      >>> out.mean  # nats per token
    """
    if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits shape {logits.shape} must be targets shape {targets.shape} + (vocab,)"
        )
    if mask is not None and mask.shape != targets.shape:
        raise ValueError(f"mask shape {mask.shape} must equal targets shape {targets.shape}")
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if mask is None:
        weights = jnp.ones(targets.shape, dtype)
    else:
        weights = mask.astype(dtype)
    per_token = jnp.where(weights > 0, nll * weights, 0.0)
    return LMLoss(per_token, per_token.sum(), weights.sum())


def _is_jax(*values) -> bool:
    return any(isinstance(v, jax.Array) for v in values)


def _check_count(arg: str, value) -> None:
    """Rejects a non-positive count when it is a concrete (non-traced) number."""
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        value = np.asarray(value)
    if isinstance(value, (int, float, np.number, np.ndarray)) and not isinstance(value, bool):
        if np.ndim(value) == 0 and not float(value) > 0:
            raise ValueError(f"{arg}={value!r} must be > 0")


def perplexity(total_nats, num_tokens):
    """Perplexity ``exp(total_nats / num_tokens)``.

    Args:
      total_nats: summed cross-entropy in nats.
      num_tokens: number of scored tokens, > 0.

    Returns:
      A Python ``float`` for Python/NumPy inputs, a jax scalar for jax inputs.

    Example:
      >>> perplexity(2 * math.log(4.0), 2)
      4.0
    """
    _check_count("num_tokens", num_tokens)
    if _is_jax(total_nats, num_tokens):
        return jnp.exp(total_nats / num_tokens)
    return float(math.exp(float(total_nats) / float(num_tokens)))


def bits_per_token(total_nats, num_tokens):
    """Bits per token ``total_nats / (ln 2 * num_tokens)``.

    Args:
      total_nats: summed cross-entropy in nats.
      num_tokens: number of scored tokens, > 0.

    Returns:
      A Python ``float`` for Python/NumPy inputs, a jax scalar for jax inputs.

    Example:
      >>> bits_per_token(4 * math.log(2.0), 2)
      2.0
    """
    _check_count("num_tokens", num_tokens)
    if _is_jax(total_nats, num_tokens):
        return total_nats / (LN2 * num_tokens)
    return float(total_nats) / (LN2 * float(num_tokens))


def bits_per_byte(total_nats, num_bytes):
    """Bits per UTF-8 byte ``total_nats / (ln 2 * num_bytes)``, comparable across tokenizers.

    Args:
      total_nats: summed cross-entropy in nats over the scored tokens.
      num_bytes: UTF-8 bytes of the text those tokens stand for, > 0 (e.g.
        ``TextDataset.num_bytes["val"]`` or ``tokenizer.num_bytes(targets[mask])``).

    Returns:
      A Python ``float`` for Python/NumPy inputs, a jax scalar for jax inputs.

    Example:
      >>> bits_per_byte(8 * math.log(2.0), 4)
      2.0
    """
    _check_count("num_bytes", num_bytes)
    if _is_jax(total_nats, num_bytes):
        return total_nats / (LN2 * num_bytes)
    return float(total_nats) / (LN2 * float(num_bytes))


def tokens_per_second(num_tokens, seconds: float) -> float:
    """Throughput ``num_tokens / seconds``.

    Args:
      num_tokens: tokens processed (e.g. ``steps * batch_size * context``).
      seconds: wall-clock time, > 0.

    Returns:
      A Python ``float``.

    Example:
      >>> tokens_per_second(8 * 128 * 100, 2.0)
      51200.0
    """
    _check_count("seconds", seconds)
    if isinstance(num_tokens, bool) or not float(num_tokens) >= 0:
        raise ValueError(f"num_tokens={num_tokens!r} must be >= 0")
    return float(num_tokens) / float(seconds)
