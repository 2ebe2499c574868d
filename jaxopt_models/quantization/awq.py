"""AWQ: activation-aware weight quantization of one Dense layer (per-input scales + RTN).

Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration". Inputs with large activations matter most, so their weights are scaled up
before round-to-nearest quantization and the activations scaled down by the same factor:
``y = x @ w = (x / s) @ (s[:, None] * w)``. The per-input scale is
``s = act_mag ** alpha`` (normalised so ``max(s) * min(s) = 1``), with ``alpha`` searched over
a grid in [0, 1] to minimise the layer's output error
``||X w - X Q(s w) / s||^2`` (``alpha = 0`` is plain RTN, so the search never does worse).

Folding the scales: the returned ``qweight`` quantizes ``s[:, None] * w``; the layer's input
must be divided by ``s``. Fold ``1 / s`` into the op that produces the input, so inference
costs nothing extra: for a LayerNorm / RMSNorm in front, divide its scale (and bias) by
``s``; for a Dense in front, divide its kernel's output columns and its bias by ``s``.
(The reference also clips the weight range per group after scaling; that step is not
part of this function.)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxopt_models import hessian as hs
from jaxopt_models.quantization._validation import check_bool
from jaxopt_models.quantization.fake_quant import fake_quant
from jaxopt_models.quantization.gptq import _check_gptq_bits
from jaxopt_models.quantization.qtensor import QTensor
from jaxopt_models.quantization.quantize import quantize


class AWQResult(NamedTuple):
    """What :func:`awq` returns.

    Attributes:
      qweight: :class:`QTensor` of ``scales[:, None] * w`` (shape ``(in, out)``), the kernel
        the layer stores.
      scales: ``(in,)`` float32 per-input scales ``s``; the layer's input must be divided by
        them (fold ``1 / s`` into the previous op, see the module docstring).
      alpha: float32 scalar, the chosen exponent.
      losses: ``(n_grid + 1,)`` float32 objective for each ``alpha = k / n_grid``.
    """

    qweight: QTensor
    scales: jax.Array
    alpha: jax.Array
    losses: jax.Array


def awq_scales(act_mag: jax.Array, alpha: Any) -> jax.Array:
    """AWQ's per-input scales ``act_mag ** alpha``, clipped at 1e-4, with ``max * min = 1``.

    Args:
      act_mag: ``(in,)`` mean absolute activation of each input feature.
      alpha: exponent in [0, 1] (Python number or traced scalar).

    Returns:
      ``(in,)`` positive scales in ``act_mag``'s float dtype (float32 or wider).

    Example:
      >>> awq_scales(jnp.array([1.0, 4.0]), 0.5).tolist()
      [0.7071067690849304, 1.4142135381698608]
    """
    mag = jnp.asarray(act_mag)
    mag = mag.astype(jnp.result_type(mag.dtype, jnp.float32))
    s = jnp.maximum(jnp.maximum(mag, 0) ** alpha, 1e-4)
    return s / jnp.sqrt(s.max() * s.min())


@functools.partial(
    jax.jit, static_argnames=("bits", "group_size", "symmetric", "n_grid", "objective")
)
def _search(w, act_mag, data, *, bits, group_size, symmetric, n_grid, objective):
    compute = jnp.result_type(w.dtype, jnp.float32)
    w = w.astype(compute)
    act_mag = act_mag.astype(compute)
    data = None if data is None else data.astype(compute)
    group_axis = None if group_size is None else 0

    def loss(alpha):
        s = awq_scales(act_mag, alpha)[:, None]
        q = fake_quant(
            s * w, bits, symmetric=symmetric, axis=-1, group_size=group_size, group_axis=group_axis
        )
        delta = w - q / s
        if objective == "x":
            return jnp.sum(jnp.matmul(data, delta, precision=hs.HIGHEST) ** 2)
        if objective == "hessian":
            return jnp.sum(delta * jnp.matmul(data, delta, precision=hs.HIGHEST))
        return jnp.sum((act_mag[:, None] * delta) ** 2)

    alphas = jnp.arange(n_grid + 1, dtype=compute) / n_grid
    losses = lax.map(loss, alphas)
    best = jnp.argmin(losses)
    return alphas[best], awq_scales(act_mag, alphas[best]), losses


def awq(
    w: jax.Array,
    act_mag: jax.Array,
    *,
    x: jax.Array | None = None,
    hessian: jax.Array | None = None,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    n_grid: int = 20,
) -> AWQResult:
    """Searches AWQ scales for a Dense kernel and quantizes the scaled kernel (RTN).

    The objective for each candidate ``alpha = k / n_grid`` (``k = 0..n_grid``) is the output
    error of the quantized layer ``w_hat = Q(s w) / s``, measured with the calibration inputs
    ``x`` (``||x w - x w_hat||^2``), or equivalently with their Gram matrix ``hessian``
    (``tr(D^T H D)``, ``D = w - w_hat``), or, given neither, with the diagonal proxy
    ``sum_i act_mag[i]^2 ||D[i]||^2``. Ties go to the smaller ``alpha``.

    Args:
      w: ``(in, out)`` float kernel (``y = x @ w``).
      act_mag: ``(in,)`` mean ``|x|`` of each input feature over the calibration data.
      x: optional ``(..., in)`` calibration inputs (leading axes are rows).
      hessian: optional ``(in, in)`` Gram matrix ``X^T X`` instead of ``x``.
      bits: bit width in [2, 8].
      group_size: inputs per quantization group (must divide ``in``), or None for one grid
        per output column.
      symmetric: symmetric grid (no zero point) or asymmetric.
      n_grid: number of grid steps; ``n_grid + 1`` candidates.

    Returns:
      :class:`AWQResult` ``(qweight, scales, alpha, losses)``; ``dequantize(qweight) /
      scales[:, None]`` is the effective kernel seen by unscaled inputs.

    Raises:
      ValueError: shapes that do not match, both ``x`` and ``hessian``, negative or
        non-finite ``act_mag``, bits outside [2, 8], a group size that does not divide ``in``.
      TypeError: non-float arrays or ill-typed settings.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (256, 64)) * jnp.linspace(0.1, 10, 64)
      >>> w = jax.random.normal(jax.random.key(1), (64, 32))
      >>> res = awq(w, jnp.abs(x).mean(0), x=x, bits=4, group_size=32)
      >>> res.qweight.shape, res.scales.shape, res.losses.shape
      ((64, 32), (64,), (21,))
    """
    if x is not None and hessian is not None:
        raise ValueError("pass at most one of x and hessian (its Gram matrix), got both.")
    if hessian is not None:
        w, hessian = hs.check_layer(w, hessian)
        data, objective = hessian, "hessian"
    else:
        w = hs.check_float_array(w, "w", (2,))
        hs.check_finite(w, "w")
        data, objective = None, "diagonal"
    n_in = w.shape[0]
    if x is not None:
        x = hs.check_float_array(x, "x", tuple(range(1, 8)))
        if x.shape[-1] != n_in:
            raise ValueError(
                f"x must have shape (..., {n_in}) to match w {w.shape}, got {x.shape}."
            )
        hs.check_finite(x, "x")
        data, objective = x.reshape(-1, n_in), "x"
    act_mag = hs.check_float_array(act_mag, "act_mag", (1,))
    if act_mag.shape != (n_in,):
        raise ValueError(
            f"act_mag must have shape ({n_in},) for a kernel w of shape {w.shape}, "
            f"got {act_mag.shape}."
        )
    hs.check_finite(act_mag, "act_mag")
    if not isinstance(act_mag, jax.core.Tracer) and bool(jnp.any(act_mag < 0)):
        raise ValueError("act_mag must be >= 0 (mean absolute activations).")
    bits = _check_gptq_bits(bits)
    symmetric = check_bool(symmetric, "symmetric")
    n_grid = hs.check_positive_int(n_grid, "n_grid")
    if group_size is not None:
        group_size = hs.check_positive_int(group_size, "group_size")
        if n_in % group_size:
            raise ValueError(
                f"group_size={group_size} does not divide the input axis of w (in={n_in}, "
                f"shape {w.shape}); use a divisor of {n_in} or None."
            )
    alpha, scales, losses = _search(
        w,
        act_mag,
        data,
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        n_grid=n_grid,
        objective=objective,
    )
    compute = jnp.result_type(w.dtype, jnp.float32)
    grouping = {} if group_size is None else {"group_size": group_size, "group_axis": 0}
    scaled = scales[:, None] * w.astype(compute)
    q = quantize(scaled, bits, symmetric=symmetric, axis=-1, **grouping)
    qweight = QTensor(
        q.values, q.scale, q.zero_point, q.bits, q.axis, q.group_size, q.group_axis, w.dtype
    )
    return AWQResult(qweight, scales, alpha, losses)
