"""Eager argument checks shared by the quantization modules (ValueError / TypeError)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MIN_BITS = 1
MAX_BITS = 16


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (NumPy / Python / non-traced jax array), not a tracer."""
    return not isinstance(x, jax.core.Tracer)


def check_bits(bits: Any, name: str = "bits") -> int:
    """Returns ``bits`` as an int after checking it is an integer in [1, 16]."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(
            f"{name} must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r} "
            f"of type {type(bits).__name__}."
        )
    bits = int(bits)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{name} must be in [{MIN_BITS}, {MAX_BITS}], got {bits}.")
    return bits


def check_bool(value: Any, name: str) -> bool:
    """Returns ``value`` after checking it is a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}.")
    return bool(value)


def check_float_array(x: Any, name: str = "x") -> jax.Array:
    """Converts ``x`` to a jax array and checks it is non-empty with a floating dtype."""
    if not isinstance(x, (jax.Array, np.ndarray, np.generic, float, int)) or isinstance(x, bool):
        raise TypeError(f"{name} must be a floating-point array, got {type(x).__name__}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}.")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}.")
    return x


def check_finite(x: Any, name: str = "x") -> None:
    """Raises ValueError if a concrete ``x`` holds NaN or Inf; traced values are not checked."""
    if not is_concrete(x):
        return
    values = np.asarray(x)
    if not np.all(np.isfinite(values)):
        n_nan = int(np.isnan(values).sum())
        n_inf = int(np.isinf(values).sum())
        raise ValueError(
            f"{name} must be finite, got {n_nan} NaN and {n_inf} Inf values out of {values.size}."
        )


def normalize_axes(axis: Any, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """Normalises ``None`` / an int / a sequence of ints into sorted non-negative axes.

    Raises:
      TypeError: ``axis`` is not None, an int or a sequence of ints.
      ValueError: an axis is outside ``[-ndim, ndim)`` or repeated.
    """
    if axis is None:
        return ()
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        items: Sequence[Any] = (axis,)
    elif isinstance(axis, Sequence) and not isinstance(axis, str):
        items = tuple(axis)
    else:
        raise TypeError(f"{name} must be None, an int or a tuple of ints, got {axis!r}.")
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"{name} must contain ints, got {a!r} in {axis!r}.")
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{name}={axis!r} is out of range for an array of rank {ndim}; "
                f"allowed axes are {-ndim}..{ndim - 1}."
            )
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axis!r} repeats an axis.")
    return tuple(sorted(out))
