"""Integer inference: int8 Dense and Conv that accumulate in int32 and rescale once.

``int8_dense`` / ``int8_conv`` multiply int8 activations by int8 weights with
``lax.dot_general`` / ``lax.conv_general_dilated`` and ``preferred_element_type=int32`` (exact
integer sums), subtract the zero-point terms in int32, then apply the combined scale
``x_scale * w_scale`` (and the float bias) in a single float multiply-add:

    y = (sum_k (xq - zx) * (wq - zw)) * (sx * sw) + bias

which equals the float layer applied to ``dequantize(x)`` and ``dequantize(w)`` up to one
float rounding of the output. Weights may be per-tensor or per-output-channel; activations
per-tensor (or, for Dense, per-row).

``int8_conv`` can fuse a following max pooling into the integer domain (scales are positive,
so pooling commutes with the rescale) and offers several exact formulations. On XLA:CPU
(YNNPACK) an int8 x int8 -> int32 GEMM is fast but the integer convolution is widened to int32
and slow, so the default gathers patches with static slices and runs one GEMM; for thin
convolutions (few channels, e.g. LeNet-5) the ``"block"`` form computes a whole output tile
(the pooling window) per GEMM row, which widens the GEMM and turns the pooling into a max
over the tile.
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
      >>> x = jax.nn.relu(jax.random.normal(jax.random.key(0), (4, 16)))
      >>> kernel, bias = jax.random.normal(jax.random.key(1), (16, 3)), jnp.zeros(3)
      >>> xq = quantize(x, 8, symmetric=False)             # per-tensor activations
      >>> wq = quantize(kernel, 8, axis=-1)                # per-output-channel weights
      >>> y = int8_dense(xq, wq, bias)
      >>> bool(jnp.allclose(y, dequantize(xq) @ dequantize(wq), atol=1e-4))
      True
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
    window: Sequence[int],
    strides: Sequence[int],
    rhs_dilation: Sequence[int],
) -> jax.Array:
    """Channels-last patches ``(B, *out_spatial, prod(window) * C)`` of an already padded
    ``x``, gathered with static strided slices (offset-major, channel-minor order)."""
    nsp = len(window)
    in_sp = x.shape[1 : 1 + nsp]
    out_sp = [
        (i - (kk - 1) * d - 1) // s + 1
        for i, kk, s, d in zip(in_sp, window, strides, rhs_dilation, strict=True)
    ]
    cols = []
    for offset in np.ndindex(*window):
        start = [0] + [o * d for o, d in zip(offset, rhs_dilation, strict=True)] + [0]
        limit = (
            [x.shape[0]]
            + [st + (n - 1) * s + 1 for st, n, s in zip(start[1:-1], out_sp, strides, strict=True)]
            + [x.shape[-1]]
        )
        cols.append(lax.slice(x, start, limit, [1, *strides, 1]))
    return jnp.concatenate(cols, axis=-1)


def _block_kernel(w: jax.Array, block: int) -> jax.Array:
    """``(*k, C, O)`` -> ``(prod(k + block - 1) * C, block**nsp * O)``: one GEMM column block
    per output pixel of a ``block``-sized output tile (zeros where the kernel does not reach)."""
    nsp = w.ndim - 2
    k, c, o = w.shape[:nsp], w.shape[-2], w.shape[-1]
    big = tuple(kk + block - 1 for kk in k)
    out = jnp.zeros(big + (c,) + (block,) * nsp + (o,), w.dtype)
    for off in np.ndindex(*(block,) * nsp):
        index = tuple(slice(a, a + kk) for a, kk in zip(off, k, strict=True))
        out = out.at[index + (slice(None),) + off + (slice(None),)].set(w)
    return out.reshape(int(np.prod(big)) * c, block**nsp * o)


def _max_pool(acc: jax.Array, window: int) -> jax.Array:
    """Non-overlapping max pooling over the spatial axes (floor: partial windows dropped)."""
    nsp = acc.ndim - 2
    n = [d // window for d in acc.shape[1:-1]]
    acc = acc[(slice(None),) + tuple(slice(0, m * window) for m in n)]
    shape = [acc.shape[0]]
    for m in n:
        shape += [m, window]
    acc = acc.reshape(shape + [acc.shape[-1]])
    return acc.max(axis=tuple(2 + 2 * i for i in range(nsp)))


def _block_conv(xp: jax.Array, wv: jax.Array, block: int, pool: bool, pad_value) -> jax.Array:
    """Stride-1 convolution of padded ``xp`` computed ``block``-pixel tile by tile.

    Each GEMM row is one ``block**nsp`` output tile, so thin convolutions (few channels) become
    one wider GEMM; with ``pool`` the tile's max is taken (fused max pooling, floor).
    """
    nsp = wv.ndim - 2
    k, o = wv.shape[:nsp], wv.shape[-1]
    out_sp = [i - kk + 1 for i, kk in zip(xp.shape[1 : 1 + nsp], k, strict=True)]
    if pool:
        tiles = [d // block for d in out_sp]
    else:
        tiles = [-(-d // block) for d in out_sp]
        extra = [t * block - d for t, d in zip(tiles, out_sp, strict=True)]
        xp = jnp.pad(xp, ((0, 0), *[(0, e) for e in extra], (0, 0)), constant_values=pad_value)
    window = [kk + block - 1 for kk in k]
    patches = _im2col(xp, window, (block,) * nsp, (1,) * nsp)
    patches = patches[(slice(None),) + tuple(slice(0, t) for t in tiles)]
    acc = lax.dot_general(
        patches,
        _block_kernel(wv, block),
        (((patches.ndim - 1,), (0,)), ((), ())),
        preferred_element_type=jnp.int32,
    )
    acc = acc.reshape(acc.shape[:-1] + (block**nsp, o))
    if pool:
        return acc.max(axis=-2)
    acc = acc.reshape(acc.shape[: 1 + nsp] + (block,) * nsp + (o,))
    perm = [0] + [a for i in range(nsp) for a in (1 + i, 1 + nsp + i)] + [1 + 2 * nsp]
    acc = acc.transpose(perm).reshape((acc.shape[0], *[t * block for t in tiles], o))
    return acc[(slice(None),) + tuple(slice(0, d) for d in out_sp)]


_CHANNELS_LAST = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}
METHODS = ("auto", "block", "im2col", "conv")
BLOCK_MAX_CHANNELS = 64
"""``method="auto"`` uses the tiled ``"block"`` GEMM for stride-1 convolutions with at most
this many output channels (thin GEMMs), ``"im2col"`` otherwise."""


def int8_conv(
    x: QTensor | jax.Array,
    w: QTensor | jax.Array,
    bias: jax.Array | None = None,
    *,
    strides: Sequence[int] | None = None,
    padding: Padding = "SAME",
    rhs_dilation: Sequence[int] | None = None,
    pool_window: int | None = None,
    x_scale: Any = None,
    x_zero_point: Any = None,
    w_scale: Any = None,
    method: str = "auto",
    out_dtype: Any = jnp.float32,
) -> jax.Array:
    """Integer convolution (channels-last) in int8 x int8 -> int32, then one float rescale.

    Optionally fuses a following non-overlapping max pooling into the integer domain:
    ``max_pool(conv * s + b) == max_pool(conv) * s + b`` because every scale is positive and
    the bias is constant per channel (and ReLU commutes with max pooling too, so a model's
    ``pool(relu(conv))`` is ``relu(int8_conv(..., pool_window=2))``).

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
      pool_window: None, or the window (= stride) of a max pooling applied to the output
        (VALID: partial windows are dropped).
      x_scale, x_zero_point, w_scale: scales / zero point for raw int8 operands (positive
        scales).
      method: how the integer sum is computed, all exact:
        ``"block"``: stride-1 only; each GEMM row computes a ``pool_window``-sized (default
        2) tile of output pixels, which turns thin convolutions into one wider int8 GEMM and
        makes the pooling a max over the tile (the fastest for LeNet-5 on XLA:CPU);
        ``"im2col"``: patches gathered with static slices times the kernel matrix in one
        int8 GEMM; ``"conv"``: ``lax.conv_general_dilated`` with
        ``preferred_element_type=int32`` (XLA:CPU widens it to int32: slow there);
        ``"auto"``: ``"block"`` for stride-1, undilated convolutions with at most
        ``BLOCK_MAX_CHANNELS`` output channels, else ``"im2col"``.
      out_dtype: float dtype of the result.

    Returns:
      Float ``(B, *out_spatial, O)`` (pooled if ``pool_window``) equal to the float
      convolution of ``dequantize(x)`` and ``dequantize(w)`` plus ``bias`` (then max-pooled),
      up to the rounding of the final multiply.

    Example:
      >>> images = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
      >>> kernel, bias = jax.random.normal(jax.random.key(1), (5, 5, 1, 6)), jnp.zeros(6)
      >>> xq = quantize(images, 8, symmetric=False, clip_range=(0.0, 1.0))
      >>> wq = quantize(kernel, 8, axis=-1)
      >>> jax.nn.relu(int8_conv(xq, wq, bias, padding="SAME", pool_window=2)).shape
      (8, 14, 14, 6)
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
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if pool_window is not None and (
        isinstance(pool_window, bool) or not isinstance(pool_window, int) or pool_window < 1
    ):
        raise ValueError(f"pool_window must be None or a positive int, got {pool_window!r}.")
    o = wv.shape[-1]
    sw = sw.reshape(-1)
    if sw.size not in (1, o):
        raise ValueError(f"w_scale must have 1 or {o} entries, got shape {sw.shape}.")
    strides = tuple(int(v) for v in strides) if strides is not None else (1,) * nsp
    rhs_dilation = tuple(int(v) for v in rhs_dilation) if rhs_dilation is not None else (1,) * nsp
    if len(strides) != nsp or len(rhs_dilation) != nsp:
        raise ValueError(
            f"strides and rhs_dilation need {nsp} entries, got {strides}, {rhs_dilation}."
        )
    unit = all(v == 1 for v in strides + rhs_dilation)
    if method == "auto":
        method = "block" if unit and o <= BLOCK_MAX_CHANNELS else "im2col"
    if method == "block" and not unit:
        raise ValueError(
            f"method='block' needs strides and rhs_dilation of 1, got {strides}, {rhs_dilation}."
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
        strides,
        tuple(tuple(p) for p in pads),
        rhs_dilation,
        method,
        pool_window,
        jnp.dtype(out_dtype).name,
    )
    return _conv(xv, wv, sx, zx, sw, bias, config)


@functools.partial(jax.jit, static_argnums=6)
def _conv(xv, wv, sx, zx, sw, bias, config):
    """Traceable core of int8_conv (``config`` holds the static settings)."""
    strides, pads, rhs_dilation, method, pool_window, out_dtype = config
    nsp = wv.ndim - 2
    o = wv.shape[-1]
    pad_value = 0 if zx is None else zx.astype(xv.dtype)
    xp = jnp.pad(xv, ((0, 0), *pads, (0, 0)), constant_values=pad_value)
    if method == "block":
        acc = _block_conv(xp, wv, pool_window or 2, pool_window is not None, pad_value)
    elif method == "im2col":
        patches = _im2col(xp, wv.shape[:nsp], strides, rhs_dilation)
        acc = lax.dot_general(
            patches,
            wv.reshape(-1, o),
            (((patches.ndim - 1,), (0,)), ((), ())),
            preferred_element_type=jnp.int32,
        )
    else:
        acc = lax.conv_general_dilated(
            xp,
            wv,
            strides,
            "VALID",
            rhs_dilation=rhs_dilation,
            dimension_numbers=_CHANNELS_LAST[nsp],
            preferred_element_type=jnp.int32,
        )
    if pool_window is not None and method != "block":
        acc = _max_pool(acc, pool_window)
    if zx is not None:
        wsum = jnp.sum(_as_i32(wv).reshape(-1, o), axis=0)  # (O,)
        acc = acc - _as_i32(zx) * wsum
    compute = jnp.result_type(sx.dtype, sw.dtype, jnp.float32)
    y = acc.astype(compute) * (sx.reshape(()).astype(compute) * sw.astype(compute))
    if bias is not None:
        y = y + jnp.asarray(bias).astype(compute)
    return y.astype(out_dtype)
