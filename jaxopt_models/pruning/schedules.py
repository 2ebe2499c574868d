"""Sparsity schedules: ``step -> sparsity`` functions written in ``jnp`` (jit-friendly).

The :func:`prune` transform recomputes masks on the steps where the schedule's value
changes, so a schedule's steps are also its mask-update steps. Schedules that never change
(:func:`constant`, :func:`one_shot` at step 0) carry a ``constant_sparsity`` attribute; for
them :func:`prune` computes the masks once, in ``init``, and its update has no branch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_models.pruning.distributions import check_sparsity

Schedule = Callable[[Any], jax.Array]
"""``schedule(step) -> sparsity``: an int step in, a float32 scalar sparsity out."""


def _check_step(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}.")
    return value


def constant(sparsity: float) -> Schedule:
    """The same sparsity from step 0 on (masks computed once, at the first step).

    Args:
      sparsity: in [0, 1).

    Returns:
      ``schedule(step) -> float32 sparsity``.

    Raises:
      ValueError: if ``sparsity`` is outside [0, 1).

    Example:
      >>> float(constant(0.9)(123))
      0.8999999761581421
    """
    sparsity = check_sparsity(sparsity)

    def schedule(step):
        del step
        return jnp.asarray(sparsity, jnp.float32)

    schedule.constant_sparsity = sparsity
    return schedule


def one_shot(sparsity: float, step: int = 0) -> Schedule:
    """Dense until ``step``, then ``sparsity`` (one-shot pruning at ``step``).

    Args:
      sparsity: target sparsity, in [0, 1).
      step: the step at which the masks are computed (>= 0).

    Returns:
      ``schedule(t) -> float32``: 0 for ``t < step``, ``sparsity`` afterwards.

    Raises:
      ValueError: ``sparsity`` outside [0, 1) or a negative step.

    Example:
      >>> s = one_shot(0.9, step=100)
      >>> float(s(99)), round(float(s(100)), 3)
      (0.0, 0.9)
    """
    sparsity = check_sparsity(sparsity)
    step = _check_step(step, "step")

    def schedule(t):
        return jnp.where(jnp.asarray(t) >= step, jnp.float32(sparsity), jnp.float32(0.0))

    if step == 0:
        schedule.constant_sparsity = sparsity
    return schedule


def polynomial(
    final: float,
    begin_step: int,
    end_step: int,
    initial: float = 0.0,
    power: float = 3.0,
    frequency: int = 1,
) -> Schedule:
    """Zhu & Gupta (2017) gradual pruning: ``s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^power``.

    The sparsity is 0 before ``begin_step``, rises from ``initial`` at ``begin_step`` to
    ``final`` at ``end_step`` and stays there; it only changes every ``frequency`` steps
    (``dt``), so masks are recomputed every ``frequency`` steps.

    Args:
      final: final sparsity ``s_f`` in [0, 1).
      begin_step: first pruning step ``t0`` (>= 0).
      end_step: step at which ``final`` is reached (``t0 + n dt``), >= ``begin_step``.
      initial: sparsity ``s_i`` at ``begin_step``, in [0, final].
      power: the exponent (3 in the paper), > 0.
      frequency: steps between mask updates ``dt`` (>= 1).

    Returns:
      ``schedule(step) -> float32 sparsity``.

    Raises:
      ValueError: for values outside the ranges above. TypeError: non-integer steps.

    Example:
      >>> s = polynomial(0.9, begin_step=0, end_step=1000, frequency=100)
      >>> [round(float(s(t)), 3) for t in (0, 99, 100, 1000, 5000)]
      [0.0, 0.0, 0.244, 0.9, 0.9]
    """
    final = check_sparsity(final, "final")
    initial = check_sparsity(initial, "initial")
    begin_step = _check_step(begin_step, "begin_step")
    end_step = _check_step(end_step, "end_step")
    frequency = _check_step(frequency, "frequency")
    if end_step < begin_step:
        raise ValueError(f"end_step must be >= begin_step={begin_step}, got {end_step}.")
    if frequency < 1:
        raise ValueError(f"frequency must be >= 1, got {frequency}.")
    if initial > final:
        raise ValueError(f"initial must be <= final={final}, got {initial}.")
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power!r}.")
    span = max(end_step - begin_step, 1)

    def schedule(step):
        t = jnp.asarray(step, jnp.int32)
        elapsed = jnp.clip(t - begin_step, 0, end_step - begin_step)
        elapsed = (elapsed // frequency) * frequency
        if end_step - begin_step > 0:
            elapsed = jnp.where(t >= end_step, end_step - begin_step, elapsed)
        progress = elapsed.astype(jnp.float32) / span
        value = final + (initial - final) * (1.0 - progress) ** power
        if end_step == begin_step:
            value = jnp.float32(final)
        return jnp.where(t >= begin_step, value, 0.0).astype(jnp.float32)

    return schedule
