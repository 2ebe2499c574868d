"""Activation quantization: range calibration, running range statistics, and the
``ActivationQuantizer`` callable that models apply to the inputs of their Dense / Conv layers.

Two ways to get activation ranges:

- collect a few batches of a layer's inputs and call :func:`calibrate_range` on them (min-max,
  percentile or MSE over all the samples), or
- keep a :class:`RangeStats` pytree and fold batches in with :func:`update_range_stats`
  (running min/max, running mean of per-batch percentiles, or an EMA); it works under ``jit``
  and can live in a train state; :func:`stats_range` reads the range back.

An :class:`ActivationQuantizer` with a fixed ``clip_range`` then fake-quantizes (QAT, or
simulating PTQ); with ``clip_range=None`` it uses each batch's own min-max range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_models.quantization._layout import make_layout
from jaxopt_models.quantization._validation import (
    check_bits,
    check_bool,
    check_finite,
    check_float_array,
)
from jaxopt_models.quantization.calibration import get_calibration
from jaxopt_models.quantization.fake_quant import fake_quant
from jaxopt_models.quantization.qtensor import QTensor
from jaxopt_models.quantization.quantize import quantize


def _stack(activations: Any) -> jax.Array:
    if isinstance(activations, (list, tuple)):
        if not activations:
            raise ValueError("activations must hold at least one array, got an empty sequence.")
        arrays = [check_float_array(a, "activations") for a in activations]
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) != 1:
            raise ValueError(
                f"all activation batches must share their trailing shape, got {sorted(shapes)}."
            )
        return jnp.concatenate(
            [a.reshape((-1,) + a.shape[1:]) if a.ndim else a[None] for a in arrays], axis=0
        )
    return check_float_array(activations, "activations")


def calibrate_range(
    activations: jax.Array | Sequence[jax.Array],
    bits: int = 8,
    *,
    symmetric: bool = False,
    method: Any = "minmax",
    axis: int | tuple[int, ...] | None = None,
    include_zero: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Calibrates an activation range ``(lo, hi)`` from collected activations.

    Args:
      activations: one array or a list of batches (concatenated along axis 0) of a layer's
        inputs, e.g. gathered from a few training batches.
      bits: bit width the range is meant for (used by ``method="mse"``).
      symmetric: calibrate for a symmetric grid (``lo = -hi``) or an asymmetric one.
      method: ``"minmax"``, ``"percentile"``, ``"mse"`` or a calibration object.
      axis: None for one range (per-tensor, what :func:`int8_dense` / :func:`int8_conv`
        need), or per-channel axes.
      include_zero: widen the range to contain 0 (zero must be exact for padding and
        ReLU outputs; the asymmetric grid does this anyway).

    Returns:
      ``(lo, hi)`` float arrays: scalars for ``axis=None``, else keepdims-shaped, ready for
      ``quantize(..., clip_range=(lo, hi))``, ``fake_quant`` or :class:`ActivationQuantizer`
      (``float(lo)``).

    Example:
      >>> batches = [jax.random.normal(jax.random.key(i), (32, 100)) for i in range(4)]
      >>> lo, hi = calibrate_range(batches, 8, method="percentile")
      >>> aq = ActivationQuantizer(bits=8, clip_range=(float(lo), float(hi)))
    """
    bits = check_bits(bits)
    symmetric = check_bool(symmetric, "symmetric")
    x = _stack(activations)
    check_finite(x, "activations")
    layout = make_layout(x.shape, axis)
    compute = jnp.result_type(x.dtype, jnp.float32)
    lo, hi = get_calibration(method)(
        x.astype(compute), reduce_axes=layout.reduce_axes, bits=bits, symmetric=symmetric
    )
    if include_zero:
        lo, hi = jnp.minimum(lo, 0), jnp.maximum(hi, 0)
    if symmetric:
        amax = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
        lo, hi = -amax, amax
    if not layout.axis:
        lo, hi = lo.reshape(()), hi.reshape(())
    return lo, hi


class RangeStats(NamedTuple):
    """Running activation-range statistics (a pytree; keep it in a train state).

    Attributes:
      lo: running lower bound (``+inf`` before the first batch).
      hi: running upper bound (``-inf`` before the first batch).
      count: number of batches folded in (int32).
    """

    lo: jax.Array
    hi: jax.Array
    count: jax.Array


def init_range_stats(shape: Sequence[int] = ()) -> RangeStats:
    """Empty :class:`RangeStats` of the given shape (``()`` for a per-tensor range).

    Example:
      >>> stats = init_range_stats()
      >>> stats = update_range_stats(stats, jnp.array([-1.0, 2.0]))
      >>> stats_range(stats)
      (Array(-1., dtype=float32), Array(2., dtype=float32))
    """
    shape = tuple(shape)
    return RangeStats(
        lo=jnp.full(shape, jnp.inf, jnp.float32),
        hi=jnp.full(shape, -jnp.inf, jnp.float32),
        count=jnp.zeros((), jnp.int32),
    )


def update_range_stats(
    stats: RangeStats,
    x: jax.Array,
    *,
    percentile: float | None = None,
    momentum: float | None = None,
    axis: int | tuple[int, ...] | None = None,
) -> RangeStats:
    """Folds one batch of activations into running range statistics (jit-friendly).

    Args:
      stats: from :func:`init_range_stats` (shape ``()`` per-tensor, or the keepdims scale
        shape for per-channel ``axis``).
      x: the batch of activations.
      percentile: None for the batch min / max; else the batch's ``(100 - p, p)`` percentiles.
      momentum: None to combine batches exactly (running min / max, or the running mean of
        per-batch percentiles); else an EMA ``new = momentum * old + (1 - momentum) * batch``
        (the first batch initialises it).
      axis: per-channel axes of ``x`` (must match the shape of ``stats``), None per-tensor.

    Returns:
      Updated :class:`RangeStats`.

    Example:
      >>> stats = init_range_stats()
      >>> for i in range(3):
      ...     x = jax.random.normal(jax.random.key(i), (32, 10))
      ...     stats = jax.jit(update_range_stats)(stats, x)
      >>> aq = ActivationQuantizer(8, clip_range=tuple(map(float, stats_range(stats))))
      >>> int(stats.count)
      3
    """
    x = check_float_array(x, "x")
    layout = make_layout(x.shape, axis)
    xf = x.astype(jnp.float32)
    axes = layout.reduce_axes
    if percentile is None:
        lo = jnp.min(xf, axis=axes, keepdims=True)
        hi = jnp.max(xf, axis=axes, keepdims=True)
    else:
        if not 0.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}.")
        q = float(percentile) / 100.0
        lo = jnp.quantile(xf, 1.0 - q, axis=axes, keepdims=True)
        hi = jnp.quantile(xf, q, axis=axes, keepdims=True)
    lo = lo.reshape(stats.lo.shape) if not layout.axis else lo
    hi = hi.reshape(stats.hi.shape) if not layout.axis else hi
    if lo.shape != stats.lo.shape:
        raise ValueError(
            f"stats have shape {stats.lo.shape} but this batch gives ranges of shape {lo.shape} "
            f"(axis={axis!r}); build stats with init_range_stats({lo.shape})."
        )
    first = stats.count == 0
    if momentum is not None:
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
        m = float(momentum)
        new_lo = jnp.where(first, lo, m * stats.lo + (1 - m) * lo)
        new_hi = jnp.where(first, hi, m * stats.hi + (1 - m) * hi)
    elif percentile is None:
        new_lo, new_hi = jnp.minimum(stats.lo, lo), jnp.maximum(stats.hi, hi)
    else:
        n = stats.count.astype(jnp.float32)
        new_lo = jnp.where(first, lo, (n * stats.lo + lo) / (n + 1))
        new_hi = jnp.where(first, hi, (n * stats.hi + hi) / (n + 1))
    return RangeStats(new_lo, new_hi, stats.count + 1)


def stats_range(stats: RangeStats, include_zero: bool = True) -> tuple[jax.Array, jax.Array]:
    """The ``(lo, hi)`` range of :class:`RangeStats` (optionally widened to contain 0).

    Raises:
      ValueError: the stats are concrete and have seen no batch.
    """
    if not isinstance(stats.count, jax.core.Tracer) and int(stats.count) == 0:
        raise ValueError(
            "range stats are empty: fold in at least one batch with update_range_stats."
        )
    lo, hi = stats.lo, stats.hi
    if include_zero:
        lo, hi = jnp.minimum(lo, 0), jnp.maximum(hi, 0)
    return lo, hi


@dataclasses.dataclass(frozen=True)
class ActivationQuantizer:
    """Fake-quantizes activations: the ``act_quant`` callable models apply to layer inputs.

    A frozen (hashable) dataclass, so it can be a Flax module attribute. ``__call__(x)`` is
    :func:`fake_quant` with a per-tensor range: the fixed ``clip_range`` if given (values
    outside are clipped, with zero gradient), else the batch's own min-max. The
    straight-through gradient makes it usable in QAT.

    Attributes:
      bits: bit width in [1, 16].
      symmetric: symmetric grid (e.g. for signed inputs) or asymmetric (e.g. after ReLU).
      clip_range: ``(lo, hi)`` as Python floats, or None for a dynamic per-batch range.
      calibration: calibration method for the dynamic range (``"minmax"`` by default).

    Example:
      >>> aq = ActivationQuantizer(bits=8, clip_range=(0.0, 6.0))
      >>> [round(v, 4) for v in aq(jnp.array([-1.0, 0.01, 7.0])).tolist()]
      [0.0, 0.0, 6.0]

      A model applies it to the inputs of its layers, e.g. ``MLP(act_quant=aq)``.
    """

    bits: int = 8
    symmetric: bool = False
    clip_range: tuple[float, float] | None = None
    calibration: Any = "minmax"

    def __post_init__(self):
        check_bits(self.bits)
        check_bool(self.symmetric, "symmetric")
        if self.clip_range is not None:
            if not isinstance(self.clip_range, (tuple, list)) or len(self.clip_range) != 2:
                raise TypeError(f"clip_range must be None or (lo, hi), got {self.clip_range!r}.")
            lo, hi = (float(v) for v in self.clip_range)
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ValueError(
                    f"clip_range must be finite with lo <= hi, got {self.clip_range!r}."
                )
            object.__setattr__(self, "clip_range", (lo, hi))
        get_calibration(self.calibration)

    def __call__(self, x: jax.Array) -> jax.Array:
        return fake_quant(
            x,
            self.bits,
            symmetric=self.symmetric,
            calibration=self.calibration,
            clip_range=self.clip_range,
        )

    def quantize(self, x: jax.Array) -> QTensor:
        """The real (integer) counterpart of ``__call__``: a per-tensor :class:`QTensor`."""
        return quantize(
            x,
            self.bits,
            symmetric=self.symmetric,
            calibration=self.calibration,
            clip_range=self.clip_range,
        )
