"""``prune``: an optax transform that turns any optimizer into a pruning optimizer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxopt_models.pruning._paths import flatten_with_paths
from jaxopt_models.pruning.distributions import FilterFn, default_filter
from jaxopt_models.pruning.masks import check_masks, compute_masks
from jaxopt_models.pruning.schedules import Schedule, constant
from jaxopt_models.pruning.scores import Scorer, get_scorer
from jaxopt_models.pruning.structures import Structure, as_structure
from jaxopt_models.typing import PyTree


class PruneState(NamedTuple):
    """State of :func:`prune`.

    Attributes:
      count: int32 number of updates done so far (the schedule's step).
      sparsity: float32 schedule value the current masks were computed for.
      masks: boolean pytree with the params' structure (True = kept).
    """

    count: jax.Array
    sparsity: jax.Array
    masks: PyTree


class KeepMasksState(NamedTuple):
    """State of :func:`keep_masks`: the fixed boolean masks."""

    masks: PyTree


def _prunable_flags(params: PyTree, filter_fn: FilterFn) -> list[bool]:
    paths, leaves, _ = flatten_with_paths(params)
    return [
        bool(filter_fn(p, x)) and int(np.prod(jnp.shape(x))) > 0
        for p, x in zip(paths, leaves, strict=True)
    ]


def _masked_updates(updates: PyTree, params: PyTree, masks: PyTree, flags: list[bool]) -> PyTree:
    """``where(mask, u, -w)``: after ``apply_updates`` a pruned weight is ``w + (-w) == 0.0``."""
    u_leaves, u_def = jax.tree.flatten(updates)
    p_leaves = jax.tree.leaves(params)
    m_leaves = jax.tree.leaves(masks)
    out = []
    for u, p, m, flag in zip(u_leaves, p_leaves, m_leaves, flags, strict=True):
        if flag:
            u = jnp.where(m, u, -jnp.asarray(p).astype(jnp.asarray(u).dtype))
        out.append(u)
    return jax.tree.unflatten(u_def, out)


def prune(
    scorer: str | Scorer = "magnitude",
    schedule: Schedule | float = 0.9,
    *,
    scope: str = "layer",
    structure: Structure | str | None = None,
    distribution: str | Mapping[str, Any] | Callable[..., PyTree] = "uniform",
    filter_fn: FilterFn | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Pruning as the last link of an optax chain: pruned weights end every step at exactly 0.0.

    The state holds the masks and the step count. Whenever ``schedule(step)`` differs from
    the sparsity the masks were made for, the masks are recomputed from
    ``scorer(params, grads, key)`` inside the compiled step (``lax.cond``; the sort-free
    selection of :func:`compute_masks`). The emitted updates are ``where(mask, u, -w)``, so
    after ``optax.apply_updates`` every pruned weight is ``w + (-w) == 0.0`` exactly: no
    extra call, and momentum, Adam moments or weight decay accumulated upstream can never
    revive a pruned weight. Chain it *after* the optimizer (nothing may rescale its output).
    With a schedule that never changes (a number, :func:`constant`, :func:`one_shot` at
    step 0) and the ``"magnitude"`` or ``"random"`` scorer, ``init`` computes the masks
    from the params it is given and the update is just the masking (no branch in the step).

    Args:
      scorer: ``"magnitude"``, ``"random"``, ``"saliency"`` or a callable
        ``(params, grads, key) -> scores``. ``grads`` is the ``grads=`` extra argument of
        ``update`` when given, otherwise the incoming updates (for plain SGD these rank like
        the gradients); ``key`` is ``fold_in(key(seed), step)``.
      schedule: ``step -> sparsity`` (see :func:`constant`, :func:`one_shot`,
        :func:`polynomial`) or a number for a constant schedule.
      scope: ``"layer"`` or ``"global"``, as in :func:`compute_masks`.
      structure: unstructured (default), :func:`n_by_m` or :func:`channels`.
      distribution: ``"uniform"``, ``"erk"``, a per-layer dict or a callable, applied to the
        schedule's value at every mask update.
      filter_fn: ``(path, leaf) -> bool`` choosing prunable leaves; default: kernels only.
      seed: seed for the scorer's key (random scores).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with :class:`PruneState`.

    Raises:
      ValueError / TypeError: invalid arguments (checked here, eagerly), a missing
        ``params`` in ``update``, or a structure that does not fit a prunable leaf (in
        ``init``).

    Example:
      >>> schedule = polynomial(0.9, begin_step=0, end_step=1000, frequency=10)
      >>> tx = optax.chain(optax.adam(1e-3), prune("magnitude", schedule))
      >>> state = tx.init(params)  # doctest: +SKIP
      >>> updates, state = tx.update(grads, state, params)  # doctest: +SKIP
      >>> params = optax.apply_updates(params, updates)  # pruned weights are exactly 0.0
    """
    score_fn = get_scorer(scorer)
    if not callable(schedule):
        schedule = constant(schedule)
    structure = as_structure(structure)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}.")
    if isinstance(distribution, str) and distribution not in ("uniform", "erk"):
        raise ValueError(
            f"distribution must be 'uniform', 'erk', a dict or a callable, got {distribution!r}."
        )
    if scope == "global" and not (isinstance(distribution, str) and distribution == "uniform"):
        raise ValueError(f"scope='global' needs distribution='uniform', got {distribution!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    filter_fn = default_filter if filter_fn is None else filter_fn

    def make_masks(scores: PyTree, sparsity: jax.Array) -> PyTree:
        return compute_masks(
            scores,
            sparsity,
            scope=scope,
            structure=structure,
            filter_fn=filter_fn,
            distribution=distribution,
        )

    # A schedule that never changes (constant, one_shot at step 0) scored without gradients
    # needs its masks only once: init computes them and the update has no branch at all.
    fixed = getattr(schedule, "constant_sparsity", None)
    if not (isinstance(scorer, str) and scorer in ("magnitude", "random")):
        fixed = None

    def init_fn(params: PyTree) -> PruneState:
        # Validates structure / distribution against the params once, eagerly (shapes only).
        jax.eval_shape(lambda p: make_masks(p, jnp.float32(0.5)), params)
        masks = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
        if fixed is not None:
            key = jax.random.fold_in(jax.random.key(seed), 0)
            new = make_masks(score_fn(params, None, key), fixed)
            masks = jax.tree.map(lambda m: jnp.asarray(m, bool), new)
            return PruneState(jnp.zeros([], jnp.int32), jnp.asarray(fixed, jnp.float32), masks)
        return PruneState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32), masks)

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("prune needs params: call update(updates, state, params).")
        flags = _prunable_flags(params, filter_fn)
        if fixed is not None:
            new_updates = _masked_updates(updates, params, state.masks, flags)
            return new_updates, PruneState(state.count + 1, state.sparsity, state.masks)
        grads = extra_args.get("grads", updates)
        target = jnp.asarray(schedule(state.count), jnp.float32)

        def recompute(_):
            key = jax.random.fold_in(jax.random.key(seed), state.count)
            new = make_masks(score_fn(params, grads, key), target)
            return jax.tree.map(lambda m, old: m.astype(old.dtype), new, state.masks)

        masks = lax.cond(target != state.sparsity, recompute, lambda _: state.masks, None)
        new_updates = _masked_updates(updates, params, masks, flags)
        return new_updates, PruneState(state.count + 1, target, masks)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def keep_masks(masks: PyTree) -> optax.GradientTransformation:
    """Keeps the weights that fixed ``masks`` prune at exactly 0.0 (e.g. to train a ticket).

    Like :func:`prune` with the masks never recomputed: chain it after the optimizer.

    Args:
      masks: boolean pytree (True = kept) with the params' structure; None leaves = dense.

    Returns:
      An ``optax.GradientTransformation`` with :class:`KeepMasksState`.

    Raises:
      ValueError: in ``init`` if ``masks`` does not match the params.

    Example:
      >>> tx = optax.chain(optax.sgd(0.1), keep_masks(masks))  # doctest: +SKIP
    """

    def init_fn(params: PyTree) -> KeepMasksState:
        check_masks(params, masks)
        full = jax.tree.map(
            lambda m, p: jnp.ones(jnp.shape(p), bool) if m is None else jnp.asarray(m, bool),
            masks,
            params,
            is_leaf=lambda x: x is None,
        )
        return KeepMasksState(full)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("keep_masks needs params: call update(updates, state, params).")
        flags = [True] * len(jax.tree.leaves(params))
        return _masked_updates(updates, params, state.masks, flags), state

    return optax.GradientTransformation(init_fn, update_fn)


def find_prune_state(opt_state: PyTree) -> PruneState | KeepMasksState | None:
    """The first :class:`PruneState` / :class:`KeepMasksState` in an optimizer state, or None.

    Args:
      opt_state: an optimizer state (e.g. of ``optax.chain(adam, prune(...))``).

    Returns:
      The state of the first ``prune`` / ``keep_masks`` transform; its ``masks`` are the
      current masks.

    Example:
      >>> masks = find_prune_state(state.opt_state).masks
    """
    is_prune = lambda x: isinstance(x, (PruneState, KeepMasksState))
    for node in jax.tree.leaves(opt_state, is_leaf=is_prune):
        if is_prune(node):
            return node
    return None


def replace_masks(opt_state: PyTree, masks: PyTree) -> PyTree:
    """``opt_state`` with the masks of every :class:`KeepMasksState` replaced by ``masks``.

    Lets one compiled train step (``keep_masks`` in its optimizer) train under different
    fixed masks, e.g. the rounds of iterative magnitude pruning.

    Example:
      >>> opt_state = replace_masks(tx.init(params), masks)
    """
    is_keep = lambda x: isinstance(x, KeepMasksState)
    return jax.tree.map(
        lambda x: KeepMasksState(masks) if is_keep(x) else x, opt_state, is_leaf=is_keep
    )
