"""Sparsity structures: which groups of weights are pruned together."""

from __future__ import annotations

from typing import NamedTuple


class Unstructured(NamedTuple):
    """Every weight is pruned on its own."""


class NByM(NamedTuple):
    """N:M sparsity: in every group of ``m`` consecutive weights along ``axis`` keep ``n``.

    2:4 (``NByM(2, 4)``) is the pattern sparse tensor cores accelerate. The sparsity it
    reaches is fixed at ``1 - n / m``; a layer whose target sparsity is 0 stays dense.
    """

    n: int
    m: int
    axis: int = -1


class Channels(NamedTuple):
    """Whole output neurons / conv filters: slices along ``axis`` pruned as one unit.

    A channel's score is the L1 (``norm="l1"``) or L2 (``norm="l2"``) norm of its weights'
    scores over all other axes. For a Dense kernel ``(in, out)`` and a Conv kernel
    ``(h, w, in, out)`` the default ``axis=-1`` prunes output neurons / filters.
    """

    axis: int = -1
    norm: str = "l2"


Structure = Unstructured | NByM | Channels


def unstructured() -> Unstructured:
    """Unstructured (per-weight) sparsity.

    Returns:
      An :class:`Unstructured` structure.

    Example:
      >>> masks = compute_masks(scores, 0.9, structure=unstructured())  # doctest: +SKIP
    """
    return Unstructured()


def n_by_m(n: int, m: int, axis: int = -1) -> NByM:
    """N:M structured sparsity (keep ``n`` of every ``m`` consecutive weights along ``axis``).

    Args:
      n: weights kept per group, 1 <= n <= m.
      m: group size, >= 1. The leaf's size along ``axis`` must be a multiple of ``m``.
      axis: the axis the groups run along (default: the last).

    Returns:
      An :class:`NByM` structure.

    Raises:
      ValueError: if ``n > m``, ``n < 1`` or ``m < 1``. TypeError: for non-integers.

    Example:
      >>> n_by_m(2, 4)
      NByM(n=2, m=4, axis=-1)
    """
    for name, value in (("n", n), ("m", m), ("axis", axis)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}.")
    if m < 1:
        raise ValueError(f"m must be >= 1, got m={m}.")
    if not 1 <= n <= m:
        raise ValueError(f"n must satisfy 1 <= n <= m, got n={n}, m={m}.")
    return NByM(n, m, axis)


def channels(axis: int = -1, norm: str = "l2") -> Channels:
    """Channel / filter pruning by the L1 or L2 norm of each slice along ``axis``.

    Args:
      axis: the output-channel axis (default: the last, right for flax Dense and Conv).
      norm: ``"l1"`` or ``"l2"``.

    Returns:
      A :class:`Channels` structure.

    Raises:
      ValueError: for another norm. TypeError: for a non-integer axis.

    Example:
      >>> channels(norm="l1")
      Channels(axis=-1, norm='l1')
    """
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {axis!r}.")
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}.")
    return Channels(axis, norm)


def as_structure(structure: Structure | str | None) -> Structure:
    """Accepts a structure, ``None`` / ``"unstructured"``, ``"channels"`` or an ``"n:m"`` string.

    Args:
      structure: a structure NamedTuple or one of the strings above.

    Returns:
      The structure NamedTuple.

    Raises:
      ValueError: for an unknown string. TypeError: for another type.

    Example:
      >>> as_structure("2:4")
      NByM(n=2, m=4, axis=-1)
    """
    if structure is None:
        return Unstructured()
    if isinstance(structure, (Unstructured, NByM, Channels)):
        if isinstance(structure, NByM):
            return n_by_m(structure.n, structure.m, structure.axis)
        if isinstance(structure, Channels):
            return channels(structure.axis, structure.norm)
        return structure
    if isinstance(structure, str):
        if structure == "unstructured":
            return Unstructured()
        if structure == "channels":
            return Channels()
        parts = structure.split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return n_by_m(int(parts[0]), int(parts[1]))
        raise ValueError(
            "structure must be 'unstructured', 'channels', an 'n:m' string or a structure "
            f"from unstructured()/n_by_m()/channels(), got {structure!r}."
        )
    raise TypeError(f"structure must be a structure or a string, got {structure!r}.")
