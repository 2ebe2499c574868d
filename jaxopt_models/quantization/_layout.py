"""Which elements share a scale: per-tensor, per-channel (``axis``) and per-group layouts.

A layout views ``x`` (shape ``S``) in a *grouped* shape where the grouped axis ``g`` of
length ``n`` is split into ``(n // group_size, group_size)``. Scales have the grouped shape
with 1 on every reduced axis, so ``values.reshape(grouped) * scale`` broadcasts.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from jaxopt_models.quantization._validation import normalize_axes


class Layout(NamedTuple):
    """How a tensor of ``shape`` is split into independently scaled blocks."""

    shape: tuple[int, ...]
    axis: tuple[int, ...]
    group_size: int | None
    group_axis: int | None
    grouped_shape: tuple[int, ...]
    reduce_axes: tuple[int, ...]

    @property
    def scale_shape(self) -> tuple[int, ...]:
        """Shape of the scale array (grouped shape with reduced axes set to 1)."""
        return tuple(1 if i in self.reduce_axes else d for i, d in enumerate(self.grouped_shape))


def make_layout(
    shape: tuple[int, ...],
    axis: Any = None,
    group_size: Any = None,
    group_axis: Any = None,
) -> Layout:
    """Validates ``axis`` / ``group_size`` / ``group_axis`` for ``shape`` and builds a Layout.

    Args:
      shape: the tensor's shape.
      axis: None (one scale for the tensor), an int or a tuple of ints: the axes with an own
        scale per index (per-channel). Negative axes count from the end.
      group_size: None, or a positive int: consecutive blocks of ``group_size`` elements
        along ``group_axis`` get their own scale (per-group).
      group_axis: the axis split into groups; default the last axis not in ``axis``.

    Raises:
      ValueError: an axis out of range or repeated, ``group_axis`` in ``axis``, a
        ``group_size`` that is not positive or does not divide the grouped axis.
      TypeError: non-integer ``axis`` / ``group_size`` / ``group_axis``.
    """
    shape = tuple(int(d) for d in shape)
    ndim = len(shape)
    axes = normalize_axes(axis, ndim, "axis")
    if group_size is None:
        if group_axis is not None:
            raise ValueError(f"group_axis={group_axis!r} was given without a group_size.")
        reduce_axes = tuple(i for i in range(ndim) if i not in axes)
        return Layout(shape, axes, None, None, shape, reduce_axes)
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size must be None or a positive int, got {group_size!r}.")
    group_size = int(group_size)
    if group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size}.")
    if group_axis is None:
        free = [i for i in range(ndim) if i not in axes]
        if not free:
            raise ValueError(
                f"group_size={group_size} needs an axis to split, but axis={axis!r} covers "
                f"every axis of a rank-{ndim} array."
            )
        g = free[-1]
    else:
        if isinstance(group_axis, bool) or not isinstance(group_axis, (int, np.integer)):
            raise TypeError(f"group_axis must be None or an int, got {group_axis!r}.")
        (g,) = normalize_axes(group_axis, ndim, "group_axis")
        if g in axes:
            raise ValueError(f"group_axis={group_axis!r} must not be one of axis={axis!r}.")
    n = shape[g]
    if n % group_size:
        raise ValueError(
            f"group_size={group_size} does not divide axis {g} of length {n} "
            f"(shape {shape}); use a divisor of {n}."
        )
    grouped_shape = shape[:g] + (n // group_size, group_size) + shape[g + 1 :]
    kept = {a if a < g else a + 1 for a in axes} | {g}
    reduce_axes = tuple(i for i in range(ndim + 1) if i not in kept)
    return Layout(shape, axes, group_size, g, grouped_shape, reduce_axes)
