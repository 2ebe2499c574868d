"""Importance scores: one score per weight, higher = more important (kept first)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_models.typing import PyTree

Scorer = Callable[[PyTree, Any, Any], PyTree]
"""A scorer ``scorer(params, grads, key) -> scores`` with ``scores`` shaped like ``params``.

``grads`` may be ``None`` (scorers that need it should raise a clear error then) and ``key``
is a ``jax.random`` key (scorers that are deterministic ignore it).
"""


def magnitude_scores(params: PyTree) -> PyTree:
    """Magnitude scores ``|w|`` (magnitude pruning).

    Args:
      params: pytree of float arrays.

    Returns:
      A pytree like ``params`` holding ``|w|`` in the params' dtypes.

    Example:
      >>> scores = magnitude_scores({"w": jnp.array([-3.0, 1.0])})
      >>> scores["w"].tolist()
      [3.0, 1.0]
    """
    return jax.tree.map(jnp.abs, params)


def random_scores(params: PyTree, key: jax.Array) -> PyTree:
    """Uniform random scores in [0, 1) (random pruning, the usual baseline).

    Each leaf draws from its own ``fold_in(key, leaf_index)`` stream, so equal keys give
    equal scores.

    Args:
      params: pytree of arrays; only the shapes are used.
      key: a ``jax.random`` key.

    Returns:
      A float32 pytree shaped like ``params``.

    Example:
      >>> scores = random_scores({"w": jnp.zeros((2, 3))}, jax.random.key(0))
      >>> scores["w"].shape
      (2, 3)
    """
    leaves, treedef = jax.tree.flatten(params)
    out = [
        jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(leaf), jnp.float32)
        for i, leaf in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def saliency_scores(params: PyTree, grads: PyTree) -> PyTree:
    """First-order Taylor importance ``|w * g|`` (SNIP-style saliency).

    Args:
      params: pytree of float arrays.
      grads: gradients of the loss with respect to ``params`` (same structure and shapes).

    Returns:
      A pytree like ``params`` holding ``|w * g|``.

    Raises:
      ValueError: if ``grads`` is ``None`` or its structure differs from ``params``.

    Example:
      >>> s = saliency_scores({"w": jnp.array([2.0, -1.0])}, {"w": jnp.array([0.5, 3.0])})
      >>> s["w"].tolist()
      [1.0, 3.0]
    """
    if grads is None:
        raise ValueError("saliency_scores needs grads (the loss gradients), got None.")
    p_def = jax.tree.structure(params)
    g_def = jax.tree.structure(grads)
    if p_def != g_def:
        raise ValueError(f"grads tree {g_def} does not match params tree {p_def}.")
    return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)


SCORERS: dict[str, Scorer] = {
    "magnitude": lambda params, grads, key: magnitude_scores(params),
    "random": lambda params, grads, key: random_scores(params, key),
    "saliency": lambda params, grads, key: saliency_scores(params, grads),
}
"""Built-in scorers by name, in the ``scorer(params, grads, key)`` form."""


def get_scorer(scorer: str | Scorer) -> Scorer:
    """Resolves a scorer name (``"magnitude"``, ``"random"``, ``"saliency"``) or passes a callable.

    A user scorer is any callable ``scorer(params, grads, key) -> scores``; it is returned
    unchanged. This is the plug-in point for new pruning criteria.

    Args:
      scorer: a name from :data:`SCORERS` or a callable.

    Returns:
      A callable ``(params, grads, key) -> scores``.

    Raises:
      ValueError: for an unknown name. TypeError: for anything else that is not callable.

    Example:
      >>> fn = get_scorer("magnitude")
      >>> fn({"w": jnp.array([-2.0])}, None, None)["w"].tolist()
      [2.0]
    """
    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise ValueError(
                f"scorer must be one of {sorted(SCORERS)} or a callable, got {scorer!r}."
            )
        return SCORERS[scorer]
    if not callable(scorer):
        raise TypeError(
            f"scorer must be a name or a callable (params, grads, key), got {scorer!r}."
        )
    return scorer
