"""Integer inference: int8 Dense and Conv that accumulate in int32 and rescale once.

``int8_dense`` / ``int8_conv`` multiply int8 activations by int8 weights with
``lax.dot_general`` / ``lax.conv_general_dilated`` and ``preferred_element_type=int32`` (exact
integer sums), subtract the zero-point terms in int32, then apply the combined scale
``x_scale * w_scale`` (and the float bias) in a single float multiply-add:

    y = (sum_k (xq - zx) * (wq - zw)) * (sx * sw) + bias

which equals the float layer applied to ``dequantize(x)`` and ``dequantize(w)`` up to one
float rounding of the output. Weights may be per-tensor or per-output-channel; activations
per-tensor (or, for Dense, per-row). ``int8_conv`` offers two formulations: XLA's integer
convolution, and ``"im2col"``: the patches are gathered with static slices and multiplied
with an int8 x int8 -> int32 matmul, which XLA:CPU runs on its fast integer GEMM (its integer
convolution widens to int32 and is much slower there).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxopt_models.quantization.qtensor import QTensor

Padding = str | Sequence[tuple[int, int]]


def _unpack_operand(
    v: Any, scale: Any, zero_point: Any, name: str
) -> tuple[jax.Array, jax.Array, jax.Array | None, QTensor | None]:
    """Returns (int values, scale, zero point, the QTensor or None) of a Dense/Conv operand."""
    if isinstance(v, QTensor):
        if scale is not None or zero_point is not None:
            raise ValueError(
                f"{name} is a QTensor, which carries its own scale and zero point; do not also "
                f"pass {name}_scale / {name}_zero_point."
            )
        if v.bits > 8:
            raise ValueError(f"{name} must have at most 8 bits for int8 inference, got {v.bits}.")
        if v.group_size is not None:
            raise ValueError(
                f"{name} is quantized per group (group_size={v.group_size}); int8 inference "
                "needs per-tensor or per-channel scales (one rescale per output)."
            )
        return v.values, v.scale, v.zero_point, v
    v = jnp.asarray(v)
    if v.dtype not in (jnp.int8, jnp.uint8):
        raise TypeError(
            f"{name} must be a QTensor or an int8 array, got dtype {v.dtype}; quantize it with "
            "quantize(..., bits=8)."
        )
    if scale is None:
        raise ValueError(f"{name} is a raw integer array, so {name}_scale is required.")
    zp = None if zero_point is None else jnp.asarray(zero_point)
    return v, jnp.asarray(scale), zp, None


def _as_i32(v: jax.Array) -> jax.Array:
    return v.astype(jnp.int32)


def int8_dense(
    x: QTensor | jax.Array,
    w: QTensor | jax.Array,
    bias: jax.Array | None = None,
    *,
    x_scale: Any = None,
    x_zero_point: Any = None,
    w_scale: Any = None,
    w_zero_point: Any = None,
    out_dtype: Any = jnp.float32,
) -> jax.Array:
    """Integer Dense layer: ``x @ w`` in int8 x int8 -> int32, then one float rescale.

    Args:
      x: activations ``(..., K)``: a QTensor (<= 8 bits, per-tensor or per-row scales, e.g.
        ``quantize(x, 8, symmetric=False, clip_range=(lo, hi))``) or an int8 array with
        ``x_scale`` (scalar or broadcastable to ``(..., 1)``) and optional ``x_zero_point``.
      w: kernel ``(K, N)``: a QTensor (per-tensor or per-output-channel ``axis=-1``) or an
        int8 array with ``w_scale`` (scalar or ``(N,)``) and optional ``w_zero_point``.
      bias: optional float ``(N,)``, added after the rescale.
      out_dtype: float dtype of the result.

    Returns:
      Float array ``(..., N)`` equal to ``dequantize(x) @ dequantize(w) + bias`` up to the
      rounding of the final multiply (the integer sum is exact).

    Raises:
      ValueError / TypeError: per-group or > 8-bit operands, shape mismatch, missing scales,
        activation scales varying along ``K`` or weight scales varying along ``K``.

    Example:
      >>> xq = quantize(x, 8, symmetric=False)             # per-tensor activations
      >>> wq = quantize(kernel, 8, axis=-1)                # per-output-channel weights
      >>> y = int8_dense(xq, wq, bias)
    """
    xv, sx, zx, xq = _unpack_operand(x, x_scale, x_zero_point, "x")
    wv, sw, zw, wq = _unpack_operand(w, w_scale, w_zero_point, "w")
    if wv.ndim != 2:
        raise ValueError(f"w must be a (K, N) kernel, got shape {wv.shape}.")
    if xv.ndim < 1 or xv.shape[-1] != wv.shape[0]:
        raise ValueError(
            f"x's last axis ({xv.shape[-1] if xv.ndim else None}) must match w's first axis "
            f"({wv.shape[0]}); got x {xv.shape}, w {wv.shape}."
        )
    if xq is not None and (xv.ndim - 1) in xq.axis:
        raise ValueError("x must not be quantized per channel along its last (contraction) axis.")
    if wq is not None and 0 in wq.axis:
        raise ValueError("w must not be quantized per channel along its first (input) axis.")
    k, n = wv.shape
    # Scales / zero points: x's broadcast against (..., 1); w's against (N,).
    sw = sw.reshape(-1) if sw.ndim else sw
    if zw is not None and zw.ndim:
        zw = zw.reshape(-1)
    if sw.size not in (1, n):
        raise ValueError(f"w_scale must have 1 or {n} entries, got shape {sw.shape}.")
    bias = None if bias is None else jnp.asarray(bias)
    return _dense(xv, wv, sx, zx, sw, zw, bias, jnp.dtype(out_dtype).name)


@functools.partial(jax.jit, static_argnums=7)
def _dense(xv, wv, sx, zx, sw, zw, bias, out_dtype):
    """Traceable core of int8_dense."""
    k = wv.shape[0]
    acc = lax.dot_general(
        xv, wv, (((xv.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32
    )
    if zx is not None:
        colsum = jnp.sum(_as_i32(wv), axis=0)  # (N,)
        acc = acc - _as_i32(zx) * colsum
    if zw is not None:
        rowsum = jnp.sum(_as_i32(xv), axis=-1, keepdims=True)  # (..., 1)
        acc = acc - _as_i32(zw) * rowsum
        if zx is not None:
            acc = acc + k * _as_i32(zx) * _as_i32(zw)
    compute = jnp.result_type(sx.dtype, sw.dtype, jnp.float32)
    y = acc.astype(compute) * (sx.astype(compute) * sw.astype(compute))
    if bias is not None:
        y = y + jnp.asarray(bias).astype(compute)
    return y.astype(out_dtype)


def _im2col(
    x: jax.Array,
    kernel_spatial: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int],
    pad_value: Any,
) -> jax.Array:
    """Channels-last patches ``(B, *out_spatial, prod(kernel) * C)``, offset-major order."""
    nsp = len(kernel_spatial)
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=pad_value)
    in_sp = x.shape[1 : 1 + nsp]
    out_sp = [
        (i - (kk - 1) * d - 1) // s + 1
        for i, kk, s, d in zip(in_sp, kernel_spatial, strides, rhs_dilation, strict=True)
    ]
    cols = []
    for offset in np.ndindex(*kernel_spatial):
        start = [0] + [o * d for o, d in zip(offset, rhs_dilation, strict=True)] + [0]
        limit = (
            [x.shape[0]]
            + [st + (n - 1) * s + 1 for st, n, s in zip(start[1:-1], out_sp, strides, strict=True)]
            + [x.shape[-1]]
        )
        cols.append(lax.slice(x, start, limit, [1, *strides, 1]))
    return jnp.concatenate(cols, axis=-1)


_CHANNELS_LAST = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


def int8_conv(
    x: QTensor | jax.Array,
    w: QTensor | jax.Array,
    bias: jax.Array | None = None,
    *,
    strides: Sequence[int] | None = None,
    padding: Padding = "SAME",
    rhs_dilation: Sequence[int] | None = None,
    x_scale: Any = None,
    x_zero_point: Any = None,
    w_scale: Any = None,
    method: str = "im2col",
    out_dtype: Any = jnp.float32,
) -> jax.Array:
    """Integer convolution (channels-last) in int8 x int8 -> int32, then one float rescale.

    Args:
      x: activations ``(B, *spatial, C)``: a per-tensor QTensor (<= 8 bits) or an int8
        array with scalar ``x_scale`` / ``x_zero_point``. Asymmetric activations are padded
        with their zero point, so padding means real zero (the range must contain 0, which
        :func:`quantize` guarantees).
      w: kernel ``(*kernel_spatial, C, O)`` (HWIO): a symmetric QTensor, per-tensor or
        per-output-channel (``axis=-1``), or an int8 array with ``w_scale`` (scalar / ``(O,)``).
      bias: optional float ``(O,)``.
      strides: per spatial axis, default all 1.
      padding: ``"SAME"``, ``"VALID"`` or one ``(low, high)`` pair per spatial axis.
      rhs_dilation: kernel dilation per spatial axis, default all 1.
      method: ``"im2col"`` (patches + integer matmul; fast on XLA:CPU) or ``"conv"``
        (``lax.conv_general_dilated`` with ``preferred_element_type=int32``). Both are exact.
      out_dtype: float dtype of the result.

    Returns:
      Float ``(B, *out_spatial, O)`` equal to the float convolution of ``dequantize(x)`` and
      ``dequantize(w)`` plus ``bias``, up to the rounding of the final multiply.

    Example:
      >>> xq = quantize(images, 8, symmetric=False, clip_range=(0.0, 1.0))
      >>> y = int8_conv(xq, quantize(kernel, 8, axis=-1), bias, padding="SAME")
    """
    xv, sx, zx, xq = _unpack_operand(x, x_scale, x_zero_point, "x")
    wv, sw, zw, _ = _unpack_operand(w, w_scale, None, "w")
    nsp = wv.ndim - 2
    if nsp not in _CHANNELS_LAST or xv.ndim != nsp + 2:
        raise ValueError(
            f"expected x of rank N+2 and w of rank N+2 with N in (1, 2, 3) spatial axes, got "
            f"x {xv.shape} and w {wv.shape}."
        )
    if xv.shape[-1] != wv.shape[-2]:
        raise ValueError(f"x has {xv.shape[-1]} channels but w expects {wv.shape[-2]}.")
    if zw is not None:
        raise ValueError("int8_conv needs symmetric weights (quantize(w, symmetric=True)).")
    if (xq is not None and xq.axis) or sx.size != 1 or (zx is not None and jnp.size(zx) != 1):
        raise ValueError("int8_conv needs per-tensor activation scale and zero point.")
    if method not in ("im2col", "conv"):
        raise ValueError(f"method must be 'im2col' or 'conv', got {method!r}.")
    o = wv.shape[-1]
    sw = sw.reshape(-1)
    if sw.size not in (1, o):
        raise ValueError(f"w_scale must have 1 or {o} entries, got shape {sw.shape}.")
    strides = tuple(strides) if strides is not None else (1,) * nsp
    rhs_dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * nsp
    if len(strides) != nsp or len(rhs_dilation) != nsp:
        raise ValueError(
            f"strides and rhs_dilation need {nsp} entries, got {strides}, {rhs_dilation}."
        )
    kernel_spatial = wv.shape[:nsp]
    dilated = [(kk - 1) * d + 1 for kk, d in zip(kernel_spatial, rhs_dilation, strict=True)]
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(xv.shape[1 : 1 + nsp], dilated, strides, padding)
    else:
        pads = [tuple(int(v) for v in p) for p in padding]
        if len(pads) != nsp:
            raise ValueError(f"padding needs {nsp} (low, high) pairs, got {padding!r}.")
    zx = None if zx is None else jnp.reshape(zx, ())
    bias = None if bias is None else jnp.asarray(bias)
    config = (
        tuple(strides),
        tuple(tuple(p) for p in pads),
        tuple(rhs_dilation),
        method,
        jnp.dtype(out_dtype).name,
    )
    return _conv(xv, wv, sx, zx, sw, bias, config)


@functools.partial(jax.jit, static_argnums=6)
def _conv(xv, wv, sx, zx, sw, bias, config):
    """Traceable core of int8_conv (``config`` holds the static settings)."""
    strides, pads, rhs_dilation, method, out_dtype = config
    nsp = wv.ndim - 2
    o = wv.shape[-1]
    kernel_spatial = wv.shape[:nsp]
    pad_value = 0 if zx is None else zx.astype(xv.dtype)
    if method == "im2col":
        patches = _im2col(xv, kernel_spatial, strides, pads, rhs_dilation, pad_value)
        wmat = wv.reshape(-1, o)
        acc = lax.dot_general(
            patches,
            wmat,
            (((patches.ndim - 1,), (0,)), ((), ())),
            preferred_element_type=jnp.int32,
        )
    else:
        xp = jnp.pad(xv, ((0, 0), *pads, (0, 0)), constant_values=pad_value)
        acc = lax.conv_general_dilated(
            xp,
            wv,
            strides,
            "VALID",
            rhs_dilation=rhs_dilation,
            dimension_numbers=_CHANNELS_LAST[nsp],
            preferred_element_type=jnp.int32,
        )
    if zx is not None:
        wsum = jnp.sum(_as_i32(wv).reshape(-1, o), axis=0)  # (O,)
        acc = acc - _as_i32(zx) * wsum
    compute = jnp.result_type(sx.dtype, sw.dtype, jnp.float32)
    y = acc.astype(compute) * (sx.reshape(()).astype(compute) * sw.astype(compute))
    if bias is not None:
        y = y + jnp.asarray(bias).astype(compute)
    return y.astype(out_dtype)
