"""The matrix view of the library's linear layers, shared by calibration and weight-only inference.

Every supported layer computes ``y = x_rows @ W`` for some ``(in, out)`` matrix ``W`` (the
*view* of its kernel) and some ``(rows, in)`` view of its input:

- ``nn.Dense`` and the transformer's ``HeadProjection``: ``W = kernel.reshape(in, -1)``,
  rows are the input with every leading axis flattened;
- ``nn.DenseGeneral`` (no ``batch_dims``): the contracted ``axis`` of the input moved to the
  end and flattened, ``W = kernel.reshape(prod(contracted), prod(features))``;
- ``nn.Conv`` (``feature_group_count=1``): the im2col patches of the (padded) input from
  ``lax.conv_general_dilated_patches``, reordered to ``(*kernel_size, in_channels)`` with the
  channel minor, so ``W = kernel.reshape(-1, out_channels)``.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxopt_models.models.transformer import HeadProjection

DENSE_KINDS = ("dense", "dense_general")
"""Kinds whose input view is a reshape (and transpose) of the input, so it can be undone."""


def linear_kind(module: Any) -> str | None:
    """``"dense"``, ``"dense_general"``, ``"conv"`` or None for a module that is not linear."""
    if isinstance(module, nn.Conv):
        return "conv"
    if isinstance(module, nn.DenseGeneral):
        return "dense_general"
    if isinstance(module, (nn.Dense, HeadProjection)):
        return "dense"
    return None


def module_path(module: Any) -> str:
    """The module's scope path joined with ``"/"`` (e.g. ``"block_0/attn/query"``)."""
    return "/".join(str(p) for p in module.scope.path)


def _axes(module: Any, ndim: int) -> tuple[int, ...]:
    axis = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
    return tuple(a % ndim for a in axis)


def unsupported_reason(kind: str, module: Any) -> str | None:
    """Why a linear module's kernel has no matrix view here (None: it has one)."""
    if kind == "dense_general" and tuple(np.atleast_1d(module.batch_dims)):
        return "DenseGeneral with batch_dims has one kernel per batch index"
    if kind == "conv" and module.feature_group_count != 1:
        return f"grouped convolution (feature_group_count={module.feature_group_count})"
    return None


def num_input_axes(kind: str, module: Any) -> int:
    """How many leading kernel axes are contracted with the input (the rest are outputs)."""
    if kind == "dense_general":
        return len(module.axis) if isinstance(module.axis, (tuple, list)) else 1
    return 1


def view_shape(kind: str, module: Any, kernel_shape: tuple[int, ...]) -> tuple[int, int]:
    """The ``(in, out)`` shape of the kernel's matrix view."""
    if kind == "conv":
        return int(np.prod(kernel_shape[:-1])), int(kernel_shape[-1])
    n_in = num_input_axes(kind, module)
    return int(np.prod(kernel_shape[:n_in])), int(np.prod(kernel_shape[n_in:]))


def view_signature(kind: str, module: Any) -> tuple:
    """A hashable key: two layers with equal signatures on the same input share their rows."""
    if kind == "conv":
        return (
            "conv",
            repr(module.kernel_size),
            repr(module.strides),
            repr(module.padding),
            repr(module.input_dilation),
            repr(module.kernel_dilation),
        )
    if kind == "dense_general":
        return ("dense_general", repr(module.axis))
    return ("dense",)


def to_rows(kind: str, module: Any, x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
    """A Dense-like layer's input as ``(rows, in)`` and the leading shape to restore it.

    Only for :data:`DENSE_KINDS`; :func:`from_rows` undoes it.
    """
    if kind == "dense_general":
        axes = _axes(module, x.ndim)
        moved = jnp.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
        lead = moved.shape[: x.ndim - len(axes)]
        return moved.reshape(int(np.prod(lead, dtype=np.int64)), -1), lead
    lead = x.shape[:-1]
    return x.reshape(-1, x.shape[-1]), lead


def from_rows(kind: str, module: Any, rows: jax.Array, like: jax.Array) -> jax.Array:
    """Inverse of :func:`to_rows`: ``rows`` back in the shape of the input ``like``."""
    if kind == "dense_general":
        axes = _axes(module, like.ndim)
        ends = tuple(range(like.ndim - len(axes), like.ndim))
        moved_shape = jnp.moveaxis(jnp.empty(like.shape, jnp.int8), axes, ends).shape
        return jnp.moveaxis(rows.reshape(moved_shape), ends, axes)
    return rows.reshape(like.shape)


def _broadcast(value: Any, n: int) -> tuple[int, ...]:
    if value is None:
        return (1,) * n
    if isinstance(value, int):
        return (value,) * n
    return tuple(value)


def conv_rows(module: Any, x: jax.Array) -> jax.Array:
    """The im2col rows ``(N * out_positions, prod(kernel_size) * in_channels)`` of a Conv.

    Follows ``nn.Conv``: leading batch axes are flattened and CIRCULAR / REFLECT / CAUSAL
    padding is applied to the input first.
    """
    ks = _broadcast(module.kernel_size, 1) if isinstance(module.kernel_size, int) else None
    ks = tuple(module.kernel_size) if ks is None else ks
    n = len(ks)
    x = x.reshape((-1,) + x.shape[-(n + 1) :])
    strides = _broadcast(module.strides, n)
    in_dil = _broadcast(module.input_dilation, n)
    k_dil = _broadcast(module.kernel_dilation, n)
    padding = nn.linear.canonicalize_padding(module.padding, n)
    if padding in ("CIRCULAR", "REFLECT"):
        dilated = [(k - 1) * d + 1 for k, d in zip(ks, k_dil, strict=True)]
        pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
        x = jnp.pad(x, pads, mode="wrap" if padding == "CIRCULAR" else "reflect")
        padding = "VALID"
    elif padding == "CAUSAL":
        x = jnp.pad(x, [(0, 0), (k_dil[0] * (ks[0] - 1), 0), (0, 0)])
        padding = "VALID"
    spatial = "HWD"[:n] if n <= 3 else None
    if spatial is None:
        raise ValueError(f"convolutions with {n} spatial axes are not supported")
    lhs = "N" + spatial + "C"
    patches = lax.conv_general_dilated_patches(
        x,
        ks,
        strides,
        padding,
        lhs_dilation=in_dil,
        rhs_dilation=k_dil,
        dimension_numbers=(lhs, "OI" + spatial, lhs),
    )
    c = x.shape[-1]
    k = int(np.prod(ks))
    lead = patches.shape[:-1]
    # patches are ordered (channel, *kernel_size); the kernel view is (*kernel_size, channel)
    patches = patches.reshape(*lead, c, k).swapaxes(-1, -2)
    return patches.reshape(-1, k * c)


def input_rows(kind: str, module: Any, x: jax.Array) -> jax.Array:
    """The ``(rows, in)`` view of a linear layer's input (see the module docstring)."""
    if kind == "conv":
        return conv_rows(module, x)
    return to_rows(kind, module, x)[0]
