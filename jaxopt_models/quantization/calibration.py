"""Range calibration: min-max, percentile and MSE-optimal clipping.

A calibration method is a callable ``method(x, *, reduce_axes, bits, symmetric,
power_of_two) -> (lo, hi)`` returning the clipping range of every block of ``x`` (reduced over
``reduce_axes`` with ``keepdims=True``). :func:`quantize` and :func:`fake_quant` accept one of
these objects or its name (``"minmax"``, ``"percentile"``, ``"mse"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from jaxopt_models.quantization.affine import grid_to_float, quantize_to_grid, scale_and_zero_point


class Calibration(Protocol):
    """Protocol of a calibration method (see the module docstring)."""

    def __call__(
        self,
        x: jax.Array,
        *,
        reduce_axes: Sequence[int],
        bits: int,
        symmetric: bool,
        power_of_two: bool = False,
    ) -> tuple[jax.Array, jax.Array]: ...


@dataclasses.dataclass(frozen=True)
class MinMax:
    """The range is the block's minimum and maximum (nothing is clipped).

    Example:
      >>> lo, hi = MinMax()(jnp.array([[1.0, -2.0], [3.0, 0.0]]), reduce_axes=(0,), bits=8,
      ...                   symmetric=True)
      >>> lo.tolist(), hi.tolist()
      ([[1.0, -2.0]], [[3.0, 0.0]])
    """

    def __call__(self, x, *, reduce_axes, bits, symmetric, power_of_two=False):
        del bits, symmetric, power_of_two
        axes = tuple(reduce_axes)
        return jnp.min(x, axis=axes, keepdims=True), jnp.max(x, axis=axes, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Percentile:
    """Clips outliers: the range is a percentile of ``|x|`` (symmetric) or of ``x`` (both ends).

    Attributes:
      percentile: in (0, 100]; symmetric grids use ``(-P(|x|), P(|x|))``, asymmetric grids
        ``(P_{100 - p}(x), P_p(x))``.

    Example:
      >>> x = jnp.concatenate([jnp.linspace(-1, 1, 999), jnp.array([100.0])])
      >>> lo, hi = Percentile(99.0)(x, reduce_axes=(0,), bits=8, symmetric=True)
      >>> float(hi[0]) < 1.0
      True
    """

    percentile: float = 99.99

    def __post_init__(self):
        if not 0.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile!r}.")

    def __call__(self, x, *, reduce_axes, bits, symmetric, power_of_two=False):
        del bits, power_of_two
        axes = tuple(reduce_axes)
        if not axes:
            return x, x
        q = float(self.percentile) / 100.0
        if symmetric:
            amax = jnp.quantile(jnp.abs(x), q, axis=axes, keepdims=True)
            return -amax, amax
        lo = jnp.quantile(x, 1.0 - q, axis=axes, keepdims=True)
        hi = jnp.quantile(x, q, axis=axes, keepdims=True)
        return lo, hi


@dataclasses.dataclass(frozen=True)
class MSE:
    """Searches clip ratios ``r`` of the min-max range for the least squared quantization error.

    Tries ``num_candidates`` ratios evenly spaced in ``[min_ratio, 1]`` (the range
    ``(r * lo, r * hi)``) and keeps, per block, the one with the smallest
    ``sum((dequantize(quantize(x)) - x) ** 2)``. Runs as a ``lax.scan``, so memory stays at a
    few copies of ``x``.

    Attributes:
      num_candidates: number of clip ratios tried (>= 1).
      min_ratio: smallest ratio, in (0, 1].

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (4096,))
      >>> lo, hi = MSE()(x, reduce_axes=(0,), bits=4, symmetric=True)
      >>> bool(hi < jnp.abs(x).max())  # 4-bit MSE clipping cuts the Gaussian tails
      True
    """

    num_candidates: int = 64
    min_ratio: float = 0.1

    def __post_init__(self):
        if int(self.num_candidates) < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates!r}.")
        if not 0.0 < float(self.min_ratio) <= 1.0:
            raise ValueError(f"min_ratio must be in (0, 1], got {self.min_ratio!r}.")

    def __call__(self, x, *, reduce_axes, bits, symmetric, power_of_two=False):
        axes = tuple(reduce_axes)
        lo0, hi0 = MinMax()(x, reduce_axes=axes, bits=bits, symmetric=symmetric)
        if not axes:
            return lo0, hi0
        compute = jnp.result_type(x.dtype, jnp.float32)
        xc = x.astype(compute)
        lo0 = lo0.astype(compute)
        hi0 = hi0.astype(compute)

        def error(r):
            lo, hi = lo0 * r, hi0 * r
            scale, zp = scale_and_zero_point(lo, hi, bits, symmetric, power_of_two)
            q = quantize_to_grid(xc, scale, zp, bits)
            xh = grid_to_float(q, scale, zp, compute)
            return jnp.sum(jnp.square(xh - xc), axis=axes, keepdims=True)

        def step(carry, r):
            best_err, best_r = carry
            err = error(r)
            better = err < best_err
            return (jnp.where(better, err, best_err), jnp.where(better, r, best_r)), None

        ratios = jnp.linspace(1.0, float(self.min_ratio), int(self.num_candidates), dtype=compute)
        init = (error(ratios[0]), jnp.ones_like(lo0))
        (_, best_r), _ = jax.lax.scan(step, init, ratios[1:])
        return lo0 * best_r, hi0 * best_r


CALIBRATIONS: dict[str, Callable[[], Calibration]] = {
    "minmax": MinMax,
    "percentile": Percentile,
    "mse": MSE,
}
"""Calibration methods by name; each value builds the method with default settings."""


def get_calibration(calibration: Any) -> Calibration:
    """Resolves a calibration name or object into a calibration callable.

    Args:
      calibration: ``"minmax"``, ``"percentile"``, ``"mse"`` or an object following
        :class:`Calibration` (e.g. ``Percentile(99.9)``, ``MSE(num_candidates=32)``).

    Raises:
      ValueError: an unknown name. TypeError: neither a string nor a callable.

    Example:
      >>> get_calibration("mse")
      MSE(num_candidates=64, min_ratio=0.1)
    """
    if isinstance(calibration, str):
        try:
            return CALIBRATIONS[calibration]()
        except KeyError:
            raise ValueError(
                f"calibration must be one of {sorted(CALIBRATIONS)} or a calibration object, "
                f"got {calibration!r}."
            ) from None
    if callable(calibration):
        return calibration
    raise TypeError(
        f"calibration must be a name in {sorted(CALIBRATIONS)} or a callable, got "
        f"{type(calibration).__name__}."
    )
