"""Argument checks and column-wise selection shared by the one-shot pruners (SparseGPT, Wanda)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxopt_models.pruning.distributions import check_sparsity


def _where(name: str | None) -> str:
    return f"{name}: " if name else ""


def check_target(
    sparsity: Any, n_m: Any, n_in: int, name: str | None = None
) -> tuple[float | None, tuple[int, int] | None]:
    """Checks that exactly one of ``sparsity`` / ``n_m`` is given, and that it is valid.

    Args:
      sparsity: None or a number in [0, 1).
      n_m: None or ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs, ``1 <= n < m``,
        ``m`` dividing ``n_in``.
      n_in: the kernel's input size.
      name: optional layer name for messages.

    Returns:
      ``(sparsity, n_m)`` with Python floats / ints (one of them None).

    Raises:
      ValueError / TypeError: both or neither given, a sparsity outside [0, 1), a bad pair.
    """
    where = _where(name)
    if (sparsity is None) == (n_m is None):
        raise ValueError(
            f"{where}pass exactly one of sparsity (a number in [0, 1)) and n_m (an (n, m) "
            f"pair), got sparsity={sparsity!r} and n_m={n_m!r}."
        )
    if sparsity is not None:
        if isinstance(sparsity, jax.core.Tracer):
            raise TypeError(f"{where}sparsity must be a Python number, not a traced value.")
        return check_sparsity(sparsity), None
    if not isinstance(n_m, (tuple, list)) or len(n_m) != 2:
        raise TypeError(f"{where}n_m must be an (n, m) pair of ints, got {n_m!r}.")
    n, m = n_m
    for arg, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{where}n_m must hold ints, got {arg}={value!r} in {n_m!r}.")
    n, m = int(n), int(m)
    if not 1 <= n < m:
        raise ValueError(
            f"{where}n_m=({n}, {m}) must keep 1 <= n < m inputs of every m, got n={n}, m={m}."
        )
    if n_in % m:
        raise ValueError(
            f"{where}n_m=({n}, {m}): m={m} does not divide the input axis of w (in={n_in}); "
            f"use an m that divides {n_in}."
        )
    return None, (n, m)
