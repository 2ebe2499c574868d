"""Iterative magnitude pruning with weight rewinding (the lottery-ticket procedure)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_models.pruning.distributions import FilterFn, check_sparsity
from jaxopt_models.pruning.masks import apply_masks, check_masks, compute_masks
from jaxopt_models.typing import PyTree

TrainFn = Callable[[PyTree, PyTree], PyTree]
"""``train_fn(params, masks) -> trained params``; it must keep pruned weights at zero
(e.g. by chaining :func:`keep_masks` after its optimizer)."""


class LotteryRound(NamedTuple):
    """One round of iterative magnitude pruning.

    Attributes:
      round: 0 for the dense run, then 1, 2, ...
      sparsity: target sparsity of the prunable weights during this round's training.
      masks: the boolean masks trained with.
      params: what ``train_fn`` returned.
    """

    round: int
    sparsity: float
    masks: PyTree
    params: PyTree


class LotteryResult(NamedTuple):
    """Result of :func:`iterative_magnitude_pruning`.

    Attributes:
      masks: the final ticket's masks.
      params: the final ticket after training.
      rounds: every round, dense first.
    """

    masks: PyTree
    params: PyTree
    rounds: list[LotteryRound]


def iterative_magnitude_pruning(
    init_params: PyTree,
    train_fn: TrainFn,
    *,
    rounds: int,
    prune_fraction: float = 0.2,
    rewind_params: PyTree | None = None,
    scope: str = "layer",
    filter_fn: FilterFn | None = None,
    initial_masks: PyTree | None = None,
    callback: Callable[[LotteryRound], None] | None = None,
) -> LotteryResult:
    """Lottery-ticket search: train, prune the smallest weights, rewind, repeat.

    Round 0 trains ``rewind_params`` (default ``init_params``) densely (or under
    ``initial_masks``). Each later round prunes ``prune_fraction`` of the weights that are
    still alive by magnitude of the last trained weights (so round ``r`` reaches sparsity
    ``1 - (1 - prune_fraction) ** r`` of the prunable weights, exactly, per layer or
    globally), resets the survivors to ``rewind_params`` and trains again. With
    ``rewind_params`` = the weights after a few hundred steps this is weight rewinding
    (Frankle et al., 2020); with the initial weights it is the original lottery ticket
    (Frankle & Carbin, 2019). ``train_fn`` is called ``rounds + 1`` times.

    Args:
      init_params: the initial parameters.
      train_fn: ``(params, masks) -> trained params``; it must keep masked weights at 0.
      rounds: number of pruning rounds (>= 0).
      prune_fraction: fraction of the remaining prunable weights removed per round, in [0, 1).
      rewind_params: weights the survivors are reset to (default ``init_params``).
      scope: ``"layer"`` (as for LeNet in the paper) or ``"global"``.
      filter_fn: ``(path, leaf) -> bool`` choosing prunable leaves; default: kernels only.
      initial_masks: masks for round 0 (default: all True).
      callback: called with each :class:`LotteryRound` as soon as it is trained.

    Returns:
      A :class:`LotteryResult` with the final masks, the final trained ticket and the rounds.

    Raises:
      ValueError: invalid ``rounds`` / ``prune_fraction`` / ``scope`` or mismatched trees.

    Example:
      >>> result = iterative_magnitude_pruning(params, train_fn, rounds=5)  # doctest: +SKIP
      >>> [round(r.sparsity, 3) for r in result.rounds]  # doctest: +SKIP
      [0.0, 0.2, 0.36, 0.488, 0.59, 0.672]
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an int >= 0, got {rounds!r}.")
    prune_fraction = check_sparsity(prune_fraction, "prune_fraction")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}.")
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable (params, masks) -> params, got {train_fn!r}.")
    rewind = init_params if rewind_params is None else rewind_params
    if jax.tree.structure(rewind) != jax.tree.structure(init_params):
        raise ValueError("rewind_params must have the structure of init_params.")
    if initial_masks is None:
        masks = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), init_params)
    else:
        check_masks(init_params, initial_masks)
        masks = initial_masks

    history: list[LotteryRound] = []
    trained: Any = None
    for r in range(rounds + 1):
        sparsity = 0.0 if r == 0 else 1.0 - (1.0 - prune_fraction) ** r
        if r > 0:
            # Dead weights score -1 so they stay pruned whatever train_fn left in them.
            scores = jax.tree.map(
                lambda w, m: jnp.where(m, jnp.abs(w).astype(jnp.float32), -1.0), trained, masks
            )
            masks = compute_masks(scores, sparsity, scope=scope, filter_fn=filter_fn)
        trained = train_fn(apply_masks(rewind, masks), masks)
        record = LotteryRound(r, sparsity, masks, trained)
        history.append(record)
        if callback is not None:
            callback(record)
    return LotteryResult(masks, trained, history)
