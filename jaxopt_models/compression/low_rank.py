"""Low-rank factorisation of Dense and conv kernels by truncated SVD.

A kernel ``W`` of shape ``(..., in, out)`` is reshaped to the matrix
``M = W.reshape(-1, out)`` (for a conv kernel ``(kh, kw, cin, cout)`` the rows are the
``kh * kw * cin`` receptive-field entries), factorised as ``M ≈ A @ B`` with
``A = U_r sqrt(S_r)`` and ``B = sqrt(S_r) V_r^T``, and stored as two leaves:
``kernel_a`` with the kernel's leading shape and ``r`` output channels, and
``kernel_b`` of shape ``(r, out)``. For a conv layer this is a ``kh x kw`` convolution
with ``r`` filters followed by a ``1 x 1`` convolution (a matmul over channels).

:class:`LowRankDense` and :class:`LowRankConv` apply the factorised params directly,
so a model built from them takes the output of :func:`low_rank` as its params;
:func:`reconstruct_low_rank` multiplies the factors back for the original model.

Example:
  >>> factored = low_rank(params, energy=0.9)
  >>> dense = reconstruct_low_rank(factored)          # params for the original model
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models.compression._tree import FilterFn, path_name
from jaxopt_models.tree import is_kernel
from jaxopt_models.typing import PyTree

SUFFIX_A, SUFFIX_B = "_a", "_b"


def _default_filter(path: str, leaf) -> bool:
    return path.split("/")[-1] == "kernel" and is_kernel(path, leaf)


def rank_for_energy(singular_values: np.ndarray, energy: float) -> int:
    """Smallest rank ``r`` keeping at least ``energy`` of the squared singular values.

    Args:
      singular_values: 1-D array, sorted descending.
      energy: fraction in ``(0, 1]`` of ``sum(s**2)`` to keep.

    Returns:
      ``r >= 1`` with ``sum(s[:r]**2) >= energy * sum(s**2)`` (up to a relative
      rounding tolerance of 1e-12).

    Example:
      >>> rank_for_energy(np.array([3.0, 1.0, 0.0]), 0.9)
      1
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    s2 = np.asarray(singular_values, np.float64) ** 2
    total = s2.sum()
    if total == 0:
        return 1
    kept = np.cumsum(s2) / total
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, s2.size))


def factorize(kernel: np.ndarray, rank: int | None = None, energy: float | None = None):
    """Truncated-SVD factors of one kernel (float64 SVD, float32 factors).

    Args:
      kernel: array of shape ``(..., out)`` with ``ndim >= 2``.
      rank: rank to keep (capped at ``min(rows, out)``), or
      energy: fraction of the squared singular values to keep.

    Returns:
      ``(a, b)`` with shapes ``kernel.shape[:-1] + (r,)`` and ``(r, out)``.

    Example:
      >>> a, b = factorize(np.eye(4), rank=2)
      >>> a.shape, b.shape
      ((4, 2), (2, 4))
    """
    k = np.asarray(kernel, np.float64)
    if k.ndim < 2:
        raise ValueError(f"kernel must have ndim >= 2, got shape {k.shape}")
    m = k.reshape(-1, k.shape[-1])
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    r = rank_for_energy(s, energy) if rank is None else min(int(rank), s.size)
    root = np.sqrt(s[:r])
    a = (u[:, :r] * root).astype(np.float32).reshape(k.shape[:-1] + (r,))
    b = (root[:, None] * vt[:r]).astype(np.float32)
    return a, b


def low_rank(
    params: PyTree,
    *,
    rank: int | Mapping[str, int] | Callable[[str, Any], int] | None = None,
    energy: float | None = None,
    filter_fn: FilterFn | None = None,
) -> PyTree:
    """Replaces selected kernels by two low-rank factors (truncated SVD).

    In the dict holding a selected leaf ``name``, the leaf is replaced by
    ``name + "_a"`` and ``name + "_b"`` (``kernel_a`` / ``kernel_b`` for Flax kernels),
    the parameter names of :class:`LowRankDense` and :class:`LowRankConv`.

    Args:
      params: params pytree of nested dicts.
      rank: rank per layer: an int, a dict ``{leaf name: rank}`` or a callable
        ``(name, leaf) -> rank``; capped at the full rank ``min(rows, out)``.
      energy: alternatively, keep the smallest rank whose singular values hold at
        least this fraction ``(0, 1]`` of the squared Frobenius norm (per layer).
      filter_fn: ``(name, leaf) -> bool`` choosing the leaves (default: leaves named
        ``kernel`` with ``ndim >= 2``).

    Returns:
      A new params tree with the factors in place of the selected kernels.

    Example:
      >>> factored = low_rank(params, rank={"Dense_0/kernel": 32, "Dense_1/kernel": 16})
      >>> y = LowRankMLP().apply({"params": factored}, x)
    """
    if (rank is None) == (energy is None):
        raise ValueError(
            f"give exactly one of rank and energy, got rank={rank!r}, energy={energy!r}"
        )
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    filter_fn = _default_filter if filter_fn is None else filter_fn

    def walk(node, path):
        if isinstance(node, Mapping):
            out = {}
            for key, child in node.items():
                child_path = path + (jax.tree_util.DictKey(key),)
                name = path_name(child_path)
                if not isinstance(child, Mapping) and filter_fn(name, child):
                    r = rank
                    if isinstance(rank, Mapping):
                        if name not in rank:
                            raise ValueError(f"rank has no entry for {name!r}; keys: {list(rank)}")
                        r = rank[name]
                    elif callable(rank):
                        r = rank(name, child)
                    if r is not None and (not isinstance(r, int | np.integer) or r < 1):
                        raise ValueError(f"rank for {name!r} must be an int >= 1, got {r!r}")
                    if getattr(child, "ndim", 0) < 2:
                        raise ValueError(f"{name!r} selected for low rank has shape {child.shape}")
                    a, b = factorize(child, rank=r, energy=energy)
                    out[f"{key}{SUFFIX_A}"] = jnp.asarray(a)
                    out[f"{key}{SUFFIX_B}"] = jnp.asarray(b)
                else:
                    out[key] = walk(child, child_path)
            return out
        return node

    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a nested dict, got {type(params).__name__}")
    return walk(params, ())


def reconstruct_low_rank(params: PyTree) -> PyTree:
    """Multiplies every ``<name>_a`` / ``<name>_b`` pair back into ``<name>``.

    Example:
      >>> dense = reconstruct_low_rank(low_rank(params, rank=8))
    """
    if not isinstance(params, Mapping):
        return params
    out = {}
    for key, child in params.items():
        if key.endswith(SUFFIX_A) and key[: -len(SUFFIX_A)] + SUFFIX_B in params:
            base = key[: -len(SUFFIX_A)]
            a, b = jnp.asarray(child), jnp.asarray(params[base + SUFFIX_B])
            w = jnp.dot(a.reshape(-1, a.shape[-1]), b, precision=jax.lax.Precision.HIGHEST)
            out[base] = w.reshape(a.shape[:-1] + (b.shape[-1],))
        elif key.endswith(SUFFIX_B) and key[: -len(SUFFIX_B)] + SUFFIX_A in params:
            continue
        else:
            out[key] = reconstruct_low_rank(child)
    return out


def low_rank_size(params: PyTree) -> int:
    """Number of parameters (all leaves), to compare before / after :func:`low_rank`."""
    return sum(int(np.size(x)) for x in jax.tree.leaves(params))


class LowRankDense(nn.Module):
    """Dense layer with a rank-``rank`` kernel: ``y = (x @ kernel_a) @ kernel_b + bias``.

    Attributes:
      features: output size.
      rank: inner dimension ``r``.
      use_bias: add a bias.
      kernel_init: initialiser of both factors.

    Example:
      >>> layer = LowRankDense(features=100, rank=16)
      >>> y = layer.apply({"params": low_rank(dense_params, rank=16)}, x)
    """

    features: int
    rank: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.param("kernel_a", self.kernel_init, (x.shape[-1], self.rank))
        b = self.param("kernel_b", self.kernel_init, (self.rank, self.features))
        y = x @ a @ b
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return y


class LowRankConv(nn.Module):
    """Convolution factorised as a ``kernel_size`` conv with ``rank`` filters and a 1x1 conv.

    Input and output are channels-last (``NHWC`` for 2-D kernels). ``kernel_a`` has
    shape ``(*kernel_size, in_features, rank)`` and ``kernel_b`` ``(rank, features)``.

    Attributes:
      features: output channels.
      kernel_size: spatial window, e.g. ``(5, 5)``.
      rank: number of intermediate channels ``r``.
      strides: stride per spatial dimension (int or sequence).
      padding: ``"SAME"``, ``"VALID"`` or explicit ``(low, high)`` pairs, as in ``nn.Conv``.
      use_bias: add a bias.
      kernel_init: initialiser of both factors.

    Example:
      >>> conv = LowRankConv(features=50, kernel_size=(5, 5), rank=8)
    """

    features: int
    kernel_size: Sequence[int]
    rank: int
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ks = tuple(self.kernel_size)
        nd = len(ks)
        strides = (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides)
        a = self.param("kernel_a", self.kernel_init, ks + (x.shape[-1], self.rank))
        b = self.param("kernel_b", self.kernel_init, (self.rank, self.features))
        if not 1 <= nd <= 3:
            raise ValueError(f"kernel_size must have 1 to 3 dimensions, got {ks}")
        spatial = "HWD"[:nd]
        dn = jax.lax.conv_dimension_numbers(
            x.shape, a.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        )
        padding = self.padding if isinstance(self.padding, str) else tuple(self.padding)
        h = jax.lax.conv_general_dilated(x, a, strides, padding, dimension_numbers=dn)
        y = h @ b
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return y
