"""Importance scores: one score per weight, higher = more important (kept first)."""

from __future__ import annotations

import inspect
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


_OPTIONAL_ARGS = ("grads", "key")


def _name(scorer: Callable[..., PyTree]) -> str:
    return getattr(scorer, "__name__", None) or type(scorer).__name__


def _adapt(scorer: Callable[..., PyTree]) -> Scorer:
    """Wraps a scorer of ``params`` and optionally ``grads`` / ``key`` into the 3-arg form.

    Raises:
      TypeError: the signature is not ``(params[, grads][, key])`` (``grads`` and ``key``
        by those names, in any order or keyword-only; other parameters need defaults).
    """
    try:
        sig = inspect.signature(scorer)
    except (TypeError, ValueError):  # builtins without a signature: assume the full form
        return scorer
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return scorer
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    first = positional[0] if positional else None
    rest = [p for p in params if p is not first and p.kind is not p.VAR_KEYWORD]
    names = [p.name for p in positional]
    if (
        first is not None
        and names[1:3] == list(_OPTIONAL_ARGS)
        and all(p.default is not p.empty for p in rest if p.name not in _OPTIONAL_ARGS)
    ):
        return scorer  # already (params, grads, key)
    bad = (
        first is None
        or first.name in _OPTIONAL_ARGS
        or first.kind is first.KEYWORD_ONLY
        or any(p.default is p.empty and p.name not in _OPTIONAL_ARGS for p in rest)
        or any(p.kind is p.POSITIONAL_ONLY and p.name in _OPTIONAL_ARGS for p in rest)
    )
    if bad:
        raise TypeError(
            f"scorer {_name(scorer)!r} has signature {sig}; a scorer takes the params as its "
            "first argument and optionally `grads` and/or `key` (by those names), e.g. "
            "`def my_scores(params, grads): ...`; any other parameter needs a default"
        )
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    accepted = {p.name for p in rest}
    want = [n for n in _OPTIONAL_ARGS if n in accepted or takes_kwargs]

    def adapted(params, grads, key):
        extra = {"grads": grads, "key": key}
        return scorer(params, **{n: extra[n] for n in want})

    adapted.__name__ = _name(scorer)
    return adapted


def get_scorer(scorer: str | Callable[..., PyTree]) -> Scorer:
    """Resolves a scorer name (``"magnitude"``, ``"random"``, ``"saliency"``) or a callable.

    A user scorer takes the params first and optionally ``grads`` and/or ``key`` (by those
    names): ``scorer(params)``, ``scorer(params, grads)``, ``scorer(params, key)``,
    ``scorer(params, grads, key)``. The library's own ``magnitude_scores``,
    ``saliency_scores`` and ``random_scores`` are such scorers. This is the plug-in point for
    new pruning criteria; the signature is checked here, at construction.

    Args:
      scorer: a name from :data:`SCORERS` or a callable.

    Returns:
      A callable ``(params, grads, key) -> scores``.

    Raises:
      ValueError: for an unknown name. TypeError: for anything else that is not callable or
        a callable whose signature is not one of the forms above.

    Example:
      >>> fn = get_scorer(magnitude_scores)
      >>> fn({"w": jnp.array([-2.0])}, None, None)["w"].tolist()
      [2.0]
    """
    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise ValueError(
                f"scorer={scorer!r} is not known; allowed values: {sorted(SCORERS)} or a callable"
            )
        return SCORERS[scorer]
    if not callable(scorer):
        raise TypeError(
            f"scorer must be a name or a callable (params[, grads][, key]), got {scorer!r}."
        )
    return _adapt(scorer)
