"""Sparsity summaries: per-layer and total parameters, nonzeros and sparsity."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxopt_models.pruning._paths import flatten_with_paths
from jaxopt_models.pruning.masks import check_masks
from jaxopt_models.tree import is_kernel
from jaxopt_models.typing import PyTree


def summary(params: PyTree, masks: PyTree | None = None) -> dict[str, Any]:
    """Per-layer and total parameter counts, nonzeros and sparsity.

    A weight counts as nonzero when it is nonzero and (with ``masks``) kept by its mask.

    Args:
      params: parameter pytree.
      masks: optional boolean masks with ``params``' structure (None leaves = dense).

    Returns:
      ``{"layers": {path: {"shape", "params", "nonzeros", "sparsity"}}, "total": {"params",
      "nonzeros", "sparsity"}}`` with Python ints and floats; print it with
      :func:`format_summary`.

    Raises:
      ValueError: if ``masks`` does not match ``params``.

    Example:
      >>> s = summary({"w": jnp.array([0.0, 1.0, 2.0, 0.0])})
      >>> s["total"]
      {'params': 4, 'nonzeros': 2, 'sparsity': 0.5}
    """
    paths, leaves, _ = flatten_with_paths(params)
    if masks is None:
        mask_leaves = [None] * len(leaves)
    else:
        check_masks(params, masks)
        mask_leaves = jax.tree.leaves(masks, is_leaf=lambda x: x is None)
    layers: dict[str, dict[str, Any]] = {}
    total_params = total_nonzeros = 0
    for path, leaf, mask in zip(paths, leaves, mask_leaves, strict=True):
        value = np.asarray(leaf)
        alive = value != 0
        if mask is not None:
            alive &= np.asarray(mask, bool)
        n, nz = int(value.size), int(alive.sum())
        layers[path] = {
            "shape": tuple(value.shape),
            "params": n,
            "nonzeros": nz,
            "sparsity": 1.0 - nz / n if n else 0.0,
        }
        total_params += n
        total_nonzeros += nz
    total = {
        "params": total_params,
        "nonzeros": total_nonzeros,
        "sparsity": 1.0 - total_nonzeros / total_params if total_params else 0.0,
    }
    return {"layers": layers, "total": total}


def format_summary(info: dict[str, Any]) -> str:
    """Renders a :func:`summary` dict as a fixed-width table.

    Args:
      info: the dict returned by :func:`summary`.

    Returns:
      The table as one string (one row per layer and a total row).

    Example:
      >>> print(format_summary(summary(params, masks)))  # doctest: +SKIP
      layer            shape        params  nonzeros  sparsity
      Dense_0/kernel   (784, 300)   235200     23520    90.00%
      ...
    """
    rows = [
        (path, str(row["shape"]), row["params"], row["nonzeros"], row["sparsity"])
        for path, row in info["layers"].items()
    ]
    t = info["total"]
    rows.append(("total", "", t["params"], t["nonzeros"], t["sparsity"]))
    name_w = max([len("layer")] + [len(r[0]) for r in rows])
    shape_w = max([len("shape")] + [len(r[1]) for r in rows])
    header = (
        f"{'layer':<{name_w}}  {'shape':<{shape_w}}  "
        f"{'params':>10}  {'nonzeros':>10}  {'sparsity':>8}"
    )
    lines = [header, "-" * len(header)]
    for i, (name, shape, n, nz, s) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(header))
        lines.append(f"{name:<{name_w}}  {shape:<{shape_w}}  {n:>10d}  {nz:>10d}  {100 * s:>7.2f}%")
    return "\n".join(lines)


def sparsity_summary(params: PyTree, masks: PyTree | None = None) -> dict[str, Any]:
    """:func:`summary` plus the totals over the prunable kernels alone.

    Args:
      params: a params pytree.
      masks: optional boolean masks (a weight counts as nonzero when nonzero and kept).

    Returns:
      ``{"layers", "total"}`` of :func:`summary` and ``"prunable"``: params / nonzeros /
      sparsity over the leaves ``jaxopt_models.tree.is_kernel`` selects (kernels, not
      biases, norm scales or embeddings).

    Example:
      >>> sparsity_summary(state.params)["prunable"]["sparsity"]
      0.9
    """
    params = jax.device_get(params)
    info = summary(params, None if masks is None else jax.device_get(masks))
    n = nz = 0
    for (path, row), leaf in zip(info["layers"].items(), jax.tree.leaves(params), strict=True):
        if is_kernel(path, leaf):
            n += row["params"]
            nz += row["nonzeros"]
    return {
        **info,
        "prunable": {"params": n, "nonzeros": nz, "sparsity": 1.0 - nz / n if n else 0.0},
    }
