"""Per-layer compression budgets: one global target, a per-layer allocation from measured
sensitivity, returned as :func:`~jaxopt_models.models.compress_model` ``layers`` rules.

Every allocator returns an :class:`Allocation`: ``allocation.rules`` is a plain dict
``{layer path: {"sparsity": s}}`` or ``{layer path: {"bits": b}}`` (``"skip"`` for the
layers left out), used as it is as ``compress_model(..., layers=allocation.rules)`` with any
method that reads the setting (magnitude, Wanda, SparseGPT for sparsity; RTN, GPTQ, AWQ for
bits). A full layer path is the most specific pattern there is (``tree.best_rule``), so each
rule applies to exactly its layer. :func:`format_allocation` prints it and
:func:`save_allocation` writes it as JSON. Targets count the allocated layers only (the
linear layers :func:`~jaxopt_models.models.find_layers` finds, less ``exclude``; a tied
embedding / head is never one of them, so it stays float).

Rules:

- :func:`owl_sparsity`: OWL, "Outlier Weighed Layerwise sparsity" (Yin et al., 2023). A
  layer's outlier ratio ``D`` is the fraction of its Wanda scores ``|W_ij| * ||X_j||`` above
  ``m`` times their mean; ``D`` is min-max normalised over the layers to ``n`` in [0, 1] and
  the sparsity is ``s = target - lam * (2 n - 1) + c``, clipped to
  ``[target - lam, target + lam]`` and ``[0, max_sparsity]``, with the one shift ``c`` that
  makes the parameter-weighted mean exactly ``target`` (found by bisection; the clipped
  mean is monotone in ``c``). With layers of equal size and no clipping this is the paper's
  ``1 - s = (1 - target) + 2 lam n - mean(2 lam n)``. The paper scores a transformer block
  at a time (the outlier ratio of all its layers' scores together, one sparsity per block):
  ``groups="block"`` does that (a block is the first component of a layer's path), the
  default ``groups="layer"`` gives every layer its own ratio and sparsity.
- :func:`sensitivity_sparsity` / :func:`sensitivity_bits`: the cost of compressing each
  layer alone at each candidate level is measured (:func:`measure_costs`), then the levels
  minimising the summed cost under the global constraint are chosen (:func:`choose_levels`:
  the multiple-choice knapsack solved exactly by dynamic programming over the budget,
  counted in units of the greatest common divisor of the layers' weights, or in
  ``1 / resolution`` of the budget with weights rounded up when that is too fine).
  Constraints: sparsity, the parameter-weighted mean equals ``target`` (the knapsack
  keeps at most ``(1 - target) N`` weights; the slack it leaves is given back by lowering
  the sparsity of the layers whose measured cost falls fastest, linearly between two
  candidate levels, so the mean is exact); bits, the parameter-weighted mean bits at most
  ``average_bits``, or the bytes of the stored (bit-packed) kernels at most ``max_bytes``.
- :func:`uniform_allocation`: every layer at the same level (the baseline, in the same form).

Costs (``cost=``):

- ``"loss"`` (default, the most faithful): the calibration loss with only that layer
  compressed (by ``method`` at that level, from the float model's input statistics) minus
  the float model's. The default loss is the mean KL divergence of the model's softmax
  outputs from the float model's, which needs no labels; ``loss_fn(variables, batch)`` gives
  another (e.g. the task's cross-entropy). One forward pass over ``cost_batches`` per
  (layer, level).
- ``"output_error"``: the layer's output error ``||X (W - W_hat)||^2`` per input row, the
  Hessian-weighted error ``tr(D^T H D)``, from the statistics alone (no extra forward pass;
  it ignores how much the rest of the network amplifies the error).

Both sum per-layer costs, i.e. assume the layers' effects add up; compression itself then
runs sequentially as usual.

Example:
  >>> alloc = sensitivity_sparsity(model, variables, batches, target=0.7, method="sparsegpt")
  >>> print(format_allocation(alloc))
  >>> new_vars, report = compress_model(model, variables, batches, method="sparsegpt",
  ...                                   layers=alloc.rules)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models import quantization as qz
from jaxopt_models.checks import check_one_of
from jaxopt_models.fileio import atomic_write_bytes
from jaxopt_models.models import calibration as cal
from jaxopt_models.tree import FilterFn, path_matches
from jaxopt_models.typing import PyTree

SPARSITY_LEVELS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Default candidate sparsities of :func:`sensitivity_sparsity`."""

BIT_LEVELS = (2, 3, 4, 8)
"""Default candidate bit widths of :func:`sensitivity_bits`."""

SPARSITY_METHODS = ("magnitude", "wanda", "sparsegpt")
BITS_METHODS = ("rtn", "gptq", "awq")
COSTS = ("loss", "output_error")
GROUPS = ("layer", "block")


class LayerBudget(NamedTuple):
    """One layer of an :class:`Allocation`.

    Attributes:
      path: the layer's module path (its rule's pattern).
      params: weights of its kernel.
      level: the chosen sparsity (float) or bits (int).
      cost: measured cost at ``level`` (sensitivity rules; linear between two candidates
        for a sparsity between them), else None.
      outlier_ratio: OWL's ``D`` of the layer (of its group with ``groups="block"``), else
        None.
      costs: ``{candidate level: cost}`` (sensitivity rules), else None.
      bytes: stored bytes at ``level`` (bits allocations), else None.
    """

    path: str
    params: int
    level: float
    cost: float | None = None
    outlier_ratio: float | None = None
    costs: dict[float, float] | None = None
    bytes: int | None = None


class Allocation(NamedTuple):
    """What an allocator returns.

    Attributes:
      rule: ``"owl"``, ``"sensitivity"`` or ``"uniform"``.
      setting: ``"sparsity"`` or ``"bits"``: the setting each rule sets.
      constraint: ``"sparsity"`` (mean sparsity), ``"average_bits"`` or ``"bytes"``.
      target: the global target.
      achieved: the allocation's parameter-weighted mean sparsity / mean bits, or its total
        bytes.
      layers: one :class:`LayerBudget` per allocated layer, in forward order.
      rules: ``{path: {setting: level}}`` plus ``{path: "skip"}`` for the layers left out:
        ``compress_model``'s ``layers`` argument.
      details: the rule's hyperparameters and bookkeeping (method, levels, cost, seconds).
    """

    rule: str
    setting: str
    constraint: str
    target: float
    achieved: float
    layers: tuple[LayerBudget, ...]
    rules: dict[str, Any]
    details: dict[str, Any]


# ----------------------------------------------------------------------------- checks
def _check_number(name: str, value: Any, lo: float, hi: float, *, hi_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.number))
    if ok:
        value = float(value)
        ok = math.isfinite(value) and lo <= value and (value < hi if hi_open else value <= hi)
    if not ok:
        bracket = ")" if hi_open else "]"
        raise ValueError(f"{name}={value!r} must be a number in [{lo}, {hi}{bracket}")
    return value


def _check_sparsity_levels(levels: Any) -> tuple[float, ...]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise TypeError(f"levels={levels!r} must be a sequence of sparsities in [0, 1)")
    levels = list(levels)
    out = tuple(
        sorted(
            {_check_number(f"levels[{i}]", s, 0.0, 1.0, hi_open=True) for i, s in enumerate(levels)}
        )
    )
    if not out:
        raise ValueError("levels is empty: pass at least one candidate sparsity in [0, 1)")
    return out


def _check_bit_levels(levels: Any) -> tuple[int, ...]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise TypeError(f"levels={levels!r} must be a sequence of bit widths in [2, 8]")
    levels = list(levels)
    out = tuple(
        sorted({cal.check_setting("bits", b, f"levels[{i}]") for i, b in enumerate(levels)})
    )
    if not out:
        raise ValueError("levels is empty: pass at least one candidate bit width in [2, 8]")
    return out


def _setting_of(method: str) -> str:
    if method in SPARSITY_METHODS:
        return "sparsity"
    if method in BITS_METHODS:
        return "bits"
    raise ValueError(
        f"method={method!r} cannot take a per-layer budget; allowed values: "
        f"{SPARSITY_METHODS} (sparsity) and {BITS_METHODS} (bits)"
    )


def _base_settings(method: str, settings: Mapping[str, Any] | None, setting: str) -> dict:
    settings = dict(settings or {})
    if setting in settings:
        raise ValueError(
            f"settings.{setting}={settings[setting]!r}: the allocation chooses each layer's "
            f"{setting}; leave it out of settings"
        )
    if settings.get("n_m") is not None:
        raise ValueError(
            f"settings.n_m={settings['n_m']!r}: an n:m pattern fixes every layer's sparsity; "
            "a sparsity allocation needs unstructured pruning (n_m=None)"
        )
    settings.pop("n_m", None)
    cal.check_settings(method, settings)  # names and values
    return settings


class _Layers(NamedTuple):
    active: list[cal.LayerInfo]
    skipped: dict[str, str]  # {path: "skip"}


def _find(model, variables, sample, filter_fn, apply_kwargs, exclude) -> _Layers:
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError("variables must be a mapping with a 'params' collection")
    if isinstance(exclude, str) or not isinstance(exclude, Iterable):
        raise TypeError(f"exclude={exclude!r} must be a sequence of layer patterns")
    exclude = list(exclude)
    found = cal.find_layers(
        model, variables, sample, filter_fn=filter_fn, apply_kwargs=apply_kwargs
    )
    for pattern in exclude:
        if not any(path_matches(pattern, layer.name) for layer in found):
            raise ValueError(
                f"exclude names {pattern!r}, which matches no layer; the layers are "
                f"{[layer.path for layer in found]}"
            )
    active, skipped = [], {}
    for layer in found:
        if layer.unsupported is not None or any(path_matches(p, layer.name) for p in exclude):
            skipped[layer.path] = cal.SKIP
        else:
            active.append(layer)
    if not active:
        raise ValueError(
            f"model {type(model).__name__} has no linear layer left to allocate a budget to "
            f"(found {[layer.path for layer in found]}, exclude={exclude})"
        )
    return _Layers(active, skipped)


def _first_batch(batches: Any) -> tuple[list[Any], Any]:
    if isinstance(batches, (jax.Array, np.ndarray)):
        raise TypeError(
            "batches must be a sequence of input batches (e.g. [x[:256], x[256:512]]), not "
            "one array"
        )
    if not isinstance(batches, Iterable):
        raise TypeError(f"batches must be a sequence of input batches, got {batches!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: pass at least one calibration batch")
    return batches, batches[0]


def _validate_plan(model, variables, sample, method, settings, rules, filter_fn, kw):
    """compress_model's own checks (settings vs each layer) before anything is measured."""
    cal.plan_compression(
        model,
        variables,
        sample,
        method=method,
        settings=settings,
        layers=rules,
        filter_fn=filter_fn,
        apply_kwargs=kw,
    )


# ----------------------------------------------------------------------------- the solver
def choose_levels(
    costs: Any, weights: Any, capacity: float, *, resolution: int = 100_000
) -> np.ndarray:
    """Solves the multiple-choice knapsack: one level per layer, least total cost, total
    weight at most ``capacity``.

    Dynamic programming over the budget (``O(layers * levels * units)``). Integer weights
    are counted in units of their greatest common divisor, which is exact; when that gives
    more than ``resolution`` units, (or weights are not integers) each layer's weights above
    its lightest level are rounded up to ``1 / resolution`` of the budget left after the
    lightest levels, so the answer is always feasible and optimal up to that rounding.

    Args:
      costs: ``(layers, levels)`` float costs (``inf``: a level not allowed).
      weights: ``(layers, levels)`` non-negative weights (kept parameters, bits, bytes).
      capacity: the budget.
      resolution: most budget units of the dynamic program.

    Returns:
      ``(layers,)`` int array: the chosen level of each layer (ties: the lower index).

    Raises:
      ValueError: shapes differ, negative weights, NaN costs, or no choice fits
        ``capacity`` (naming the smallest total weight).

    Example:
      >>> choose_levels([[0.0, 1.0], [0.0, 5.0]], [[2, 1], [2, 1]], capacity=3).tolist()
      [1, 0]
    """
    c = np.asarray(costs, np.float64)
    w = np.asarray(weights, np.float64)
    if c.ndim != 2 or c.shape != w.shape or c.shape[1] == 0:
        raise ValueError(
            f"costs {c.shape} and weights {w.shape} must both be (layers, levels) with levels >= 1"
        )
    if np.any(np.isnan(c)) or np.any(~np.isfinite(w)) or np.any(w < 0):
        raise ValueError("costs must not be NaN and weights must be finite and >= 0")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution={resolution!r} must be a positive int")
    base = w.min(axis=1)
    lightest = float(base.sum())
    if lightest > capacity * (1 + 1e-12) + 1e-9:
        raise ValueError(
            f"capacity={capacity!r} is below {lightest!r}, the smallest total weight (every "
            "layer at its lightest level)"
        )
    extra = w - base[:, None]
    room = max(float(capacity) - lightest, 0.0)
    integral = np.all(extra == np.round(extra)) and extra.max() < 2**62
    unit = None
    if integral:
        g = np.gcd.reduce(extra.astype(np.int64).ravel())
        if g == 0:  # every layer has one weight only: any choice fits
            g = 1
        if room / g <= resolution:
            unit = float(g)
    if unit is None:
        unit = room / resolution if room > 0 else 1.0
        units = np.ceil(extra / unit - 1e-9).astype(np.int64)
    else:
        units = np.round(extra / unit).astype(np.int64)
    cap = int(math.floor(room / unit + 1e-9))
    n_layers, n_levels = c.shape
    dp = np.zeros(cap + 1)  # least cost of the layers so far within c units
    choice = np.zeros((n_layers, cap + 1), np.int32)
    for i in range(n_layers):
        new = np.full(cap + 1, np.inf)
        arg = np.zeros(cap + 1, np.int32)
        for k in range(n_levels):
            u = int(units[i, k])
            if u > cap or c[i, k] == np.inf:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[u:] = dp[: cap + 1 - u] + c[i, k]
            better = cand < new
            new[better] = cand[better]
            arg[better] = k
        dp, choice[i] = new, arg
    if not np.isfinite(dp[cap]):
        raise ValueError(f"capacity={capacity!r}: no choice of levels fits")
    out = np.zeros(n_layers, np.int64)
    left = cap
    for i in reversed(range(n_layers)):
        k = int(choice[i, left])
        out[i] = k
        left -= int(units[i, k])
    return out


# ----------------------------------------------------------------------------- OWL
def outlier_ratio(scores: Any, m: float) -> float:
    """OWL's outlier ratio: the fraction of ``scores`` greater than ``m`` times their mean.

    Args:
      scores: any array of non-negative scores (e.g. Wanda's ``|W| * ||X||``).
      m: the multiple of the mean, > 0.

    Example:
      >>> outlier_ratio(np.array([1.0, 1.0, 1.0, 9.0]), 2.0)
      0.25
    """
    s = np.asarray(scores, np.float64).ravel()
    if s.size == 0:
        return 0.0
    return float(np.mean(s > m * s.mean()))


def wanda_scores(w: jax.Array, stats: cal.LayerStats) -> np.ndarray:
    """Wanda's scores ``|W_ij| * ||X_j||`` of an ``(in, out)`` kernel view (float64 NumPy).

    ``||X_j||`` is the input's norm over the calibration rows, ``sqrt(H[j, j])``.

    Example:
      >>> wanda_scores(w, collect_stats(model, variables, batches)["Dense_0"]).shape
      (784, 300)
    """
    norms = np.sqrt(np.maximum(np.diagonal(np.asarray(stats.hessian, np.float64)), 0.0))
    return np.abs(np.asarray(w, np.float64)) * norms[:, None]


def _group_key(groups: Any, path: str) -> str:
    if callable(groups):
        return str(groups(path))
    if groups == "layer":
        return path
    head, sep, _ = path.partition("/")
    return head if sep else path


def _mean_fit(shift: np.ndarray, sizes: np.ndarray, target: float, lo: float, hi: float):
    """``clip(target + shift + c, lo, hi)`` with ``c`` such that the size-weighted mean is
    ``target`` (bisection; the mean is continuous and non-decreasing in ``c``)."""
    total = sizes.sum()

    def mean(c):
        return float(np.sum(sizes * np.clip(target + shift + c, lo, hi)) / total)

    a, b = lo - target - shift.max() - 1.0, hi - target - shift.min() + 1.0
    for _ in range(200):
        mid = 0.5 * (a + b)
        if mean(mid) < target:
            a = mid
        else:
            b = mid
    levels = np.clip(target + shift + 0.5 * (a + b), lo, hi)
    # Spread the float residue over the layers strictly inside their bounds.
    residue = target * total - float(np.sum(sizes * levels))
    free = (levels > lo) & (levels < hi)
    if free.any() and residue:
        levels = np.where(free, levels + residue / sizes[free].sum(), levels)
    return levels


def owl_sparsity(
    model: nn.Module,
    variables: PyTree,
    batches: Iterable[Any],
    *,
    target: float,
    lam: float = 0.08,
    m: float = 5.0,
    groups: str | Callable[[str], str] = "layer",
    max_sparsity: float = 0.99,
    stats: Mapping[str, cal.LayerStats] | None = None,
    exclude: Sequence[str] = (),
    filter_fn: FilterFn | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> Allocation:
    """OWL's outlier-weighted layerwise sparsity (see the module docstring).

    Args:
      model: a Flax module; variables: its variables; batches: calibration inputs (one
        forward pass collects each layer's input norms, on the float model).
      target: the parameter-weighted mean sparsity, in [0, max_sparsity].
      lam: the largest deviation from ``target`` (the paper's lambda, 0.02 to 0.15 there).
      m: outliers are scores above ``m`` times the mean (the paper's M, 3 to 10; 5 default).
      groups: ``"layer"`` (a ratio and a sparsity per layer), ``"block"`` (per first path
        component, e.g. a transformer block ``block_3``: the paper's unit) or a function
        ``path -> group name``.
      max_sparsity: no layer is pruned beyond this, in (0, 1).
      stats: the layers' :class:`~jaxopt_models.models.LayerStats` (from
        ``collect_stats``) to skip the calibration pass.
      exclude: layer patterns left out (``"skip"`` rules; e.g. a classifier head).
      filter_fn / apply_kwargs: as in ``compress_model``.

    Returns:
      An :class:`Allocation` of ``{"sparsity": s}`` rules; its mean sparsity is ``target``.

    Raises:
      ValueError / TypeError: a target, ``lam``, ``m`` or ``max_sparsity`` out of range, an
        unknown ``groups``, an ``exclude`` pattern matching no layer (before any forward
        pass).

    Example:
      >>> alloc = owl_sparsity(lm, variables, batches, target=0.7, lam=0.08, m=5)
      >>> compress_model(lm, variables, batches, method="wanda", layers=alloc.rules)
    """
    t0 = time.perf_counter()
    max_sparsity = _check_number("max_sparsity", max_sparsity, 0.0, 1.0, hi_open=True)
    target = _check_number("target", target, 0.0, max_sparsity)
    lam = _check_number("lam", lam, 0.0, 1.0)
    m = _check_number("m", m, 0.0, math.inf)
    if m <= 0:
        raise ValueError(f"m={m!r} must be > 0 (outliers are scores above m times the mean)")
    if not callable(groups):
        check_one_of("groups", groups, GROUPS)
    batches, sample = _first_batch(batches)
    variables = nn.meta.unbox(variables)
    kw = cal._check_model(model, apply_kwargs)
    found = _find(model, variables, sample, filter_fn, kw, exclude)
    if stats is None:
        stats = cal.collect_stats(model, variables, batches, filter_fn=filter_fn, apply_kwargs=kw)
    _check_stats(stats, found.active)
    params = variables["params"]
    keys = [_group_key(groups, layer.path) for layer in found.active]
    order = list(dict.fromkeys(keys))
    scores: dict[str, list[np.ndarray]] = {k: [] for k in order}
    for layer, key in zip(found.active, keys, strict=True):
        w = np.asarray(cal._get_kernel(params, layer.path)).reshape(layer.view)
        scores[key].append(wanda_scores(w, stats[layer.path]).ravel())
    ratio = {k: outlier_ratio(np.concatenate(scores[k]), m) for k in order}
    d = np.array([ratio[k] for k in keys])
    spread = d.max() - d.min()
    n = (d - d.min()) / spread if spread > 0 else np.full_like(d, 0.5)
    sizes = np.array([math.prod(layer.view) for layer in found.active], np.float64)
    lo, hi = max(0.0, target - lam), min(max_sparsity, target + lam)
    levels = _mean_fit(-lam * (2 * n - 1), sizes, target, lo, hi)
    budgets = tuple(
        LayerBudget(layer.path, int(size), float(s), outlier_ratio=float(r))
        for layer, size, s, r in zip(found.active, sizes, levels, d, strict=True)
    )
    return _allocation(
        "owl",
        "sparsity",
        "sparsity",
        target,
        budgets,
        found.skipped,
        {
            "lam": lam,
            "m": m,
            "groups": groups if isinstance(groups, str) else "custom",
            "max_sparsity": max_sparsity,
            "seconds": time.perf_counter() - t0,
        },
    )


def _check_stats(stats: Any, layers: Sequence[cal.LayerInfo]) -> None:
    if not isinstance(stats, Mapping):
        raise TypeError(f"stats must be a mapping {{layer path: LayerStats}}, got {stats!r}")
    missing = [layer.path for layer in layers if layer.path not in stats]
    if missing:
        raise ValueError(f"stats has no entry for layers {missing}")


def _allocation(rule, setting, constraint, target, budgets, skipped, details) -> Allocation:
    rules: dict[str, Any] = {b.path: {setting: b.level} for b in budgets}
    rules.update(skipped)
    sizes = np.array([b.params for b in budgets], np.float64)
    if constraint == "bytes":
        achieved = float(sum(b.bytes for b in budgets))
    else:
        achieved = float(np.sum(sizes * np.array([b.level for b in budgets])) / sizes.sum())
    return Allocation(
        rule=rule,
        setting=setting,
        constraint=constraint,
        target=float(target),
        achieved=achieved,
        layers=tuple(budgets),
        rules=rules,
        details=details,
    )


# ----------------------------------------------------------------------------- costs
def _with_kernel(params: PyTree, path: str, kernel: jax.Array) -> PyTree:
    parts = path.split("/")

    def go(node, i):
        node = dict(node)
        node[parts[i]] = (
            {**node[parts[i]], "kernel": kernel}
            if i == len(parts) - 1
            else go(node[parts[i]], i + 1)
        )
        return node

    return go(params, 0)


def _loss_cost(model, variables, cost_batches, loss_fn, kw) -> Callable[[PyTree], float]:
    """``cost(variables) -> float``: KL from the float model's outputs, or ``loss_fn``'s
    increase over the float model's, averaged over ``cost_batches``."""
    if loss_fn is None:

        def log_probs(v, x):
            out = model.apply(v, x, **kw)
            return jax.nn.log_softmax(jnp.asarray(out, jnp.float32), axis=-1)

        ref_fn = jax.jit(log_probs)
        refs = [ref_fn(variables, x) for x in cost_batches]

        @jax.jit
        def kl(v, x, ref):
            logp = log_probs(v, x)
            return jnp.mean(jnp.sum(jnp.exp(ref) * (ref - logp), axis=-1))

        def cost(v):
            return float(
                np.mean([float(kl(v, x, r)) for x, r in zip(cost_batches, refs, strict=True)])
            )

        return cost

    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (variables, batch) -> scalar, got {loss_fn!r}")
    jitted = jax.jit(loss_fn)

    def mean_loss(v):
        return float(np.mean([float(jitted(v, b)) for b in cost_batches]))

    base = mean_loss(variables)
    if not math.isfinite(base):
        raise ValueError(f"loss_fn gives {base} on the float model: the loss must be finite")
    return lambda v: mean_loss(v) - base


def measure_costs(
    model: nn.Module,
    variables: PyTree,
    batches: Iterable[Any],
    *,
    method: str,
    levels: Sequence[float] | Sequence[int],
    settings: Mapping[str, Any] | None = None,
    cost: str = "loss",
    loss_fn: Callable[[PyTree, Any], jax.Array] | None = None,
    cost_batches: Iterable[Any] | None = None,
    stats: Mapping[str, cal.LayerStats] | None = None,
    exclude: Sequence[str] = (),
    filter_fn: FilterFn | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[float, float]]:
    """The cost of compressing each layer alone at each level (see the module docstring).

    Every layer is compressed by ``method`` from the float model's input statistics (one
    calibration pass), at each level, with every other layer float.

    Args:
      model, variables, batches: the model, its variables and the calibration inputs.
      method: a pruning method (levels are sparsities) or ``"rtn"`` / ``"gptq"`` /
        ``"awq"`` (levels are bits).
      levels: candidate sparsities in [0, 1) or bit widths in [2, 8].
      settings: the method's other settings (e.g. ``group_size``; not the level itself).
      cost: ``"loss"`` or ``"output_error"``.
      loss_fn: ``(variables, batch) -> scalar`` mean loss (cost ``"loss"``; default: the
        KL divergence of the outputs from the float model's).
      cost_batches: what the loss is measured on (default ``batches``): model inputs for
        the default KL, ``loss_fn``'s batches otherwise.
      stats: precomputed ``collect_stats`` of the float model (skips the pass).
      exclude: layer patterns left out.
      filter_fn / apply_kwargs: as in ``compress_model``.
      log: called with one line per measured layer (progress).

    Returns:
      ``{layer path: {level: cost}}`` for the allocated layers.

    Example:
      >>> costs = measure_costs(model, variables, batches, method="gptq", levels=(2, 3, 4))
      >>> alloc = sensitivity_bits(model, variables, batches, method="gptq",
      ...                          average_bits=3, levels=(2, 3, 4), costs=costs)
    """
    check_one_of("cost", cost, COSTS)
    setting = _setting_of(method)
    if setting == "sparsity":
        levels = _check_sparsity_levels(levels)
    else:
        levels = _check_bit_levels(levels)
    settings = _base_settings(method, settings, setting)
    batches, sample = _first_batch(batches)
    variables = nn.meta.unbox(variables)
    kw = cal._check_model(model, apply_kwargs)
    found = _find(model, variables, sample, filter_fn, kw, exclude)
    rules = {layer.path: {setting: levels[0]} for layer in found.active}
    _validate_plan(
        model, variables, sample, method, settings, {**rules, **found.skipped}, filter_fn, kw
    )
    if cost == "output_error" and (loss_fn is not None or cost_batches is not None):
        raise ValueError("loss_fn and cost_batches are only read with cost='loss'")
    return _measure(
        model, variables, batches, method, levels, settings, cost, loss_fn,
        cost_batches, stats, found, filter_fn, kw, log,
    )  # fmt: skip


def _measure(
    model, variables, batches, method, levels, settings, cost, loss_fn, cost_batches, stats,
    found, filter_fn, kw, log,
) -> dict[str, dict[float, float]]:  # fmt: skip
    setting = _setting_of(method)
    if stats is None:
        stats = cal.collect_stats(model, variables, batches, filter_fn=filter_fn, apply_kwargs=kw)
    _check_stats(stats, found.active)
    if cost == "loss":
        if cost_batches is None:
            cost_batches = batches
        cost_batches = list(cost_batches)
        if not cost_batches:
            raise ValueError("cost_batches is empty")
        cost_of = _loss_cost(model, variables, cost_batches, loss_fn, kw)
    params = variables["params"]
    out: dict[str, dict[float, float]] = {}
    for layer in found.active:
        t0 = time.perf_counter()
        kernel = jnp.asarray(cal._get_kernel(params, layer.path))
        w = kernel.reshape(layer.view)
        st = stats[layer.path]
        row: dict[float, float] = {}
        for level in levels:
            if setting == "sparsity" and level == 0.0:
                row[level] = 0.0
                continue
            s = cal.check_settings(method, {**settings, setting: level})
            w_hat, _ = cal.compress_layer(method, w, st, s)
            if cost == "output_error":
                d = (w - w_hat).astype(jnp.float32)
                h = st.hessian
                err = jnp.sum(d * jnp.matmul(h, d, precision=jax.lax.Precision.HIGHEST))
                row[level] = float(err) / max(int(st.count), 1)
            else:
                new = _with_kernel(
                    params, layer.path, w_hat.reshape(layer.shape).astype(kernel.dtype)
                )
                row[level] = cost_of({**variables, "params": new})
        out[layer.path] = row
        if log is not None:
            costs = ", ".join(f"{k:g}: {v:.4g}" for k, v in row.items())
            log(f"{layer.path}: {costs} ({time.perf_counter() - t0:.1f} s)")
    return out


def _check_costs(costs: Any, layers: Sequence[cal.LayerInfo], levels: Sequence[float]) -> None:
    if not isinstance(costs, Mapping):
        raise TypeError(f"costs must be {{layer path: {{level: cost}}}}, got {costs!r}")
    for layer in layers:
        row = costs.get(layer.path)
        if not isinstance(row, Mapping) or any(level not in row for level in levels):
            raise ValueError(
                f"costs[{layer.path!r}] must hold a cost for every level {list(levels)}, got "
                f"{None if row is None else list(row)}"
            )


# ----------------------------------------------------------------------------- sensitivity
def _prepare(model, variables, batches, method, settings, setting, level, filter_fn, kw, exclude):
    """The checks both sensitivity rules run before measuring anything: the method's base
    settings, the calibration batches, the layers, and the plan with every layer at
    ``level`` of ``setting``. Returns ``(settings, batches, variables, apply_kwargs,
    found)``."""
    settings = _base_settings(method, settings, setting)
    batches, sample = _first_batch(batches)
    variables = nn.meta.unbox(variables)
    kw = cal._check_model(model, kw)
    found = _find(model, variables, sample, filter_fn, kw, exclude)
    rules = {layer.path: {setting: level} for layer in found.active}
    _validate_plan(
        model, variables, sample, method, settings, {**rules, **found.skipped}, filter_fn, kw
    )
    return settings, batches, variables, kw, found


def _cost_matrix(
    costs,
    model,
    variables,
    batches,
    method,
    levels,
    settings,
    cost,
    loss_fn,
    cost_batches,
    stats,
    found,
    filter_fn,
    kw,
    log,
) -> np.ndarray:
    """``(layers, levels)`` float64 costs: the given ``costs`` (checked) or measured."""
    if costs is None:
        costs = _measure(
            model, variables, batches, method, levels, settings, cost, loss_fn,
            cost_batches, stats, found, filter_fn, kw, log,
        )  # fmt: skip
    _check_costs(costs, found.active, levels)
    return np.array([[costs[layer.path][v] for v in levels] for layer in found.active], np.float64)


def sensitivity_sparsity(
    model: nn.Module,
    variables: PyTree,
    batches: Iterable[Any],
    *,
    target: float,
    method: str,
    levels: Sequence[float] = SPARSITY_LEVELS,
    settings: Mapping[str, Any] | None = None,
    cost: str = "loss",
    loss_fn: Callable[[PyTree, Any], jax.Array] | None = None,
    cost_batches: Iterable[Any] | None = None,
    costs: Mapping[str, Mapping[float, float]] | None = None,
    stats: Mapping[str, cal.LayerStats] | None = None,
    exclude: Sequence[str] = (),
    filter_fn: FilterFn | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    resolution: int = 100_000,
    log: Callable[[str], None] | None = None,
) -> Allocation:
    """Per-layer sparsities from measured costs, parameter-weighted mean exactly ``target``.

    Args:
      target: the mean sparsity, within ``[min(levels), max(levels)]``.
      method: the pruning method the costs are measured with (``"magnitude"``,
        ``"wanda"``, ``"sparsegpt"``): by default the one that will be applied.
      levels: candidate sparsities in [0, 1).
      costs: ``measure_costs``'s result to reuse (nothing is measured then).
      resolution: budget units of :func:`choose_levels`.
      the rest: see :func:`measure_costs`.

    Returns:
      An :class:`Allocation` of ``{"sparsity": s}`` rules (a sparsity between two levels
      where the exact mean needs it), with each layer's costs.

    Raises:
      ValueError: ``target`` outside the levels' range (naming both), an unknown method or
        setting, an ``exclude`` pattern matching no layer; all before any measurement.

    Example:
      >>> alloc = sensitivity_sparsity(model, variables, batches, target=0.7, method="wanda")
      >>> compress_model(model, variables, batches, method="wanda", layers=alloc.rules)
    """
    t0 = time.perf_counter()
    if _setting_of(method) != "sparsity":
        raise ValueError(
            f"method={method!r} does not prune; sensitivity_sparsity takes one of "
            f"{SPARSITY_METHODS} (use sensitivity_bits for {BITS_METHODS})"
        )
    levels = _check_sparsity_levels(levels)
    target = _check_number("target", target, 0.0, 1.0, hi_open=True)
    if not levels[0] - 1e-12 <= target <= levels[-1] + 1e-12:
        raise ValueError(
            f"target={target!r} cannot be met with levels={list(levels)}: the feasible range "
            f"of the mean sparsity is [{levels[0]}, {levels[-1]}]"
        )
    check_one_of("cost", cost, COSTS)
    settings, batches, variables, kw, found = _prepare(
        model, variables, batches, method, settings, "sparsity", target, filter_fn,
        apply_kwargs, exclude,
    )  # fmt: skip
    layers = found.active
    c = _cost_matrix(
        costs, model, variables, batches, method, levels, settings, cost, loss_fn,
        cost_batches, stats, found, filter_fn, kw, log,
    )  # fmt: skip
    sizes = np.array([math.prod(layer.view) for layer in layers], np.int64)
    kept = np.array([[n - round(s * n) for s in levels] for n in sizes], np.float64)
    capacity = float(sizes.sum()) * (1.0 - target)
    pick = choose_levels(c, kept, math.floor(capacity + 1e-6), resolution=resolution)
    chosen = np.array([levels[k] for k in pick], np.float64)
    chosen = _fill_slack(chosen, c, levels, sizes, target)
    budgets = tuple(
        LayerBudget(
            layer.path,
            int(n),
            float(s),
            cost=_interp_cost(s, levels, c[i]),
            costs={lv: float(x) for lv, x in zip(levels, c[i], strict=True)},
        )
        for i, (layer, n, s) in enumerate(zip(layers, sizes, chosen, strict=True))
    )
    return _allocation(
        "sensitivity",
        "sparsity",
        "sparsity",
        target,
        budgets,
        found.skipped,
        {
            "method": method,
            "settings": settings,
            "levels": list(levels),
            "cost": cost,
            "loss": "kl" if loss_fn is None else "loss_fn",
            "solver": "multiple-choice knapsack (dynamic programming), slack filled linearly",
            "seconds": time.perf_counter() - t0,
        },
    )


def _interp_cost(s: float, levels: Sequence[float], costs: np.ndarray) -> float:
    return float(np.interp(s, np.asarray(levels), costs))


def _fill_slack(chosen, c, levels, sizes, target) -> np.ndarray:
    """Moves sparsities linearly along their measured cost curves until the parameter-weighted
    mean is exactly ``target``: down where the knapsack pruned too much (the layer whose cost
    falls fastest per weight first), up where rounding left it short (cheapest first)."""
    x = np.asarray(chosen, np.float64).copy()
    lv = np.asarray(levels, np.float64)
    n = sizes.astype(np.float64)
    slack = float(np.sum(n * x)) - target * float(n.sum())  # weights pruned beyond target
    eps = 1e-12 * float(n.sum())
    for _ in range(4 * len(levels) * len(sizes) + 4):
        if abs(slack) <= eps:
            break
        best, best_rate = None, -np.inf
        for i in range(len(n)):
            if slack > 0:  # un-prune: segment [lv[j-1], lv[j]] with x in (lv[j-1], lv[j]]
                j = int(np.searchsorted(lv, x[i] - 1e-15))
                if j == 0:
                    continue
                rate = (c[i, j] - c[i, j - 1]) / (n[i] * (lv[j] - lv[j - 1]))
            else:  # prune more: segment [lv[j], lv[j+1]] with x in [lv[j], lv[j+1])
                j = int(np.searchsorted(lv, x[i] + 1e-15, side="right")) - 1
                if j >= len(lv) - 1:
                    continue
                rate = -(c[i, j + 1] - c[i, j]) / (n[i] * (lv[j + 1] - lv[j]))
            if rate > best_rate:
                best, best_rate = i, rate
        if best is None:
            break
        i = best
        if slack > 0:
            j = int(np.searchsorted(lv, x[i] - 1e-15))
            room = n[i] * (x[i] - lv[j - 1])
            step = min(room, slack)
            x[i] = lv[j - 1] if step >= room else x[i] - step / n[i]
            slack -= step
        else:
            j = int(np.searchsorted(lv, x[i] + 1e-15, side="right")) - 1
            room = n[i] * (lv[j + 1] - x[i])
            step = min(room, -slack)
            x[i] = lv[j + 1] if step >= room else x[i] + step / n[i]
            slack += step
    return x


def _stored_bytes(layer: cal.LayerInfo, method: str, bits: int, settings: Mapping[str, Any]) -> int:
    """Bytes of the layer's kernel stored at ``bits`` (bit-packed values, scales, zero
    points; AWQ adds its per-input multiplier), computed from shapes only."""
    s = cal.check_settings(method, {**settings, "bits": bits})
    grouping = {} if s["group_size"] is None else {"group_size": s["group_size"], "group_axis": 0}
    view = jax.ShapeDtypeStruct(layer.view, jnp.float32)
    packed = jax.eval_shape(
        lambda w: qz.pack(qz.quantize(w, bits, symmetric=s["symmetric"], axis=-1, **grouping)),
        view,
    )
    extra = layer.view[0] * 4 if method == "awq" else 0
    return int(qz.size_bytes(packed)) + extra


def sensitivity_bits(
    model: nn.Module,
    variables: PyTree,
    batches: Iterable[Any],
    *,
    method: str,
    average_bits: float | None = None,
    max_bytes: int | None = None,
    levels: Sequence[int] = BIT_LEVELS,
    settings: Mapping[str, Any] | None = None,
    cost: str = "loss",
    loss_fn: Callable[[PyTree, Any], jax.Array] | None = None,
    cost_batches: Iterable[Any] | None = None,
    costs: Mapping[str, Mapping[int, float]] | None = None,
    stats: Mapping[str, cal.LayerStats] | None = None,
    exclude: Sequence[str] = (),
    filter_fn: FilterFn | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    resolution: int = 100_000,
    log: Callable[[str], None] | None = None,
) -> Allocation:
    """Mixed precision: per-layer bit widths from measured costs under a global budget.

    Exactly one budget: ``average_bits`` (parameter-weighted mean weight bits, scales not
    counted, at most this) or ``max_bytes`` (the stored kernels' bytes, bit-packed, with
    scales and zero points, at most this).

    Args:
      method: ``"rtn"``, ``"gptq"`` or ``"awq"``: the quantizer the costs are measured with.
      average_bits: at least ``min(levels)``.
      max_bytes: at least the bytes with every layer at ``min(levels)``.
      levels: candidate bit widths in [2, 8].
      settings: the quantizer's other settings (``group_size``, ``symmetric``, ...), the
        same as will be applied.
      the rest: see :func:`measure_costs` and :func:`sensitivity_sparsity`.

    Returns:
      An :class:`Allocation` of ``{"bits": b}`` rules, each layer's costs and bytes.

    Raises:
      ValueError: both or neither budget, a budget that cannot be met (naming it and the
        feasible range), an unknown method or setting; all before any measurement.

    Example:
      >>> alloc = sensitivity_bits(model, variables, batches, method="gptq", average_bits=3,
      ...                          levels=(2, 3, 4, 8), settings={"group_size": 32})
      >>> compress_model(model, variables, batches, method="gptq",
      ...                settings={"group_size": 32}, layers=alloc.rules)
    """
    t0 = time.perf_counter()
    if _setting_of(method) != "bits":
        raise ValueError(
            f"method={method!r} does not quantize; sensitivity_bits takes one of "
            f"{BITS_METHODS} (use sensitivity_sparsity for {SPARSITY_METHODS})"
        )
    levels = _check_bit_levels(levels)
    if (average_bits is None) == (max_bytes is None):
        raise ValueError(
            f"pass exactly one of average_bits and max_bytes, got average_bits={average_bits!r}"
            f" and max_bytes={max_bytes!r}"
        )
    if average_bits is not None:
        average_bits = _check_number("average_bits", average_bits, 0.0, math.inf)
        if average_bits < levels[0]:
            raise ValueError(
                f"average_bits={average_bits!r} cannot be met with levels={list(levels)}: it "
                f"is below the smallest allowed bit width; the feasible range is "
                f"average_bits >= {levels[0]} (at {levels[-1]} or more every layer gets "
                f"{levels[-1]} bits)"
            )
    else:
        max_bytes = _check_number("max_bytes", max_bytes, 0.0, math.inf)
    check_one_of("cost", cost, COSTS)
    settings, batches, variables, kw, found = _prepare(
        model, variables, batches, method, settings, "bits", levels[0], filter_fn,
        apply_kwargs, exclude,
    )  # fmt: skip
    layers = found.active
    nbytes = np.array(
        [[_stored_bytes(layer, method, b, settings) for b in levels] for layer in layers],
        np.int64,
    )
    if max_bytes is not None:
        lo, hi = int(nbytes[:, 0].sum()), int(nbytes[:, -1].sum())
        if max_bytes < lo:
            raise ValueError(
                f"max_bytes={int(max_bytes)} cannot be met with levels={list(levels)}: every "
                f"layer at {levels[0]} bits takes {lo} bytes; the feasible range is "
                f"[{lo}, {hi}] ({hi} bytes: every layer at {levels[-1]} bits)"
            )
    c = _cost_matrix(
        costs, model, variables, batches, method, levels, settings, cost, loss_fn,
        cost_batches, stats, found, filter_fn, kw, log,
    )  # fmt: skip
    sizes = np.array([math.prod(layer.view) for layer in layers], np.int64)
    if average_bits is not None:
        weights = sizes[:, None] * np.asarray(levels, np.int64)[None, :]
        capacity = math.floor(average_bits * int(sizes.sum()) + 1e-6)
        constraint, target = "average_bits", average_bits
    else:
        weights, capacity = nbytes, int(max_bytes)
        constraint, target = "bytes", max_bytes
    pick = choose_levels(c, weights, capacity, resolution=resolution)
    budgets = tuple(
        LayerBudget(
            layer.path,
            int(sizes[i]),
            int(levels[k]),
            cost=float(c[i, k]),
            costs={b: float(x) for b, x in zip(levels, c[i], strict=True)},
            bytes=int(nbytes[i, k]),
        )
        for i, (layer, k) in enumerate(zip(layers, pick, strict=True))
    )
    alloc = _allocation(
        "sensitivity",
        "bits",
        constraint,
        target,
        budgets,
        found.skipped,
        {
            "method": method,
            "settings": settings,
            "levels": list(levels),
            "cost": cost,
            "loss": "kl" if loss_fn is None else "loss_fn",
            "solver": "multiple-choice knapsack (dynamic programming)",
            "bytes": int(sum(b.bytes for b in budgets)),
            "seconds": time.perf_counter() - t0,
        },
    )
    return alloc


def uniform_allocation(
    model: nn.Module,
    variables: PyTree,
    sample: Any,
    *,
    sparsity: float | None = None,
    bits: int | None = None,
    method: str | None = None,
    settings: Mapping[str, Any] | None = None,
    exclude: Sequence[str] = (),
    filter_fn: FilterFn | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> Allocation:
    """Every layer at the same sparsity or bits: the baseline, as an :class:`Allocation`.

    Args:
      sample: one input batch (shapes only; nothing is computed).
      sparsity / bits: exactly one, the level of every layer.
      method / settings: with ``bits``, the quantizer and its settings, to count bytes
        (default ``"rtn"``).

    Example:
      >>> print(format_allocation(uniform_allocation(model, variables, x[:1], sparsity=0.7)))
    """
    if (sparsity is None) == (bits is None):
        raise ValueError(
            f"pass exactly one of sparsity and bits, got sparsity={sparsity!r}, bits={bits!r}"
        )
    variables = nn.meta.unbox(variables)
    kw = cal._check_model(model, apply_kwargs)
    found = _find(model, variables, sample, filter_fn, kw, exclude)
    if sparsity is not None:
        level = cal.check_setting("sparsity", sparsity, "sparsity")
        budgets = tuple(
            LayerBudget(layer.path, math.prod(layer.view), level) for layer in found.active
        )
        return _allocation("uniform", "sparsity", "sparsity", level, budgets, found.skipped, {})
    level = cal.check_setting("bits", bits, "bits")
    method = method or "rtn"
    if _setting_of(method) != "bits":
        raise ValueError(f"method={method!r} does not quantize; allowed values: {BITS_METHODS}")
    settings = _base_settings(method, settings, "bits")
    budgets = tuple(
        LayerBudget(
            layer.path,
            math.prod(layer.view),
            level,
            bytes=_stored_bytes(layer, method, level, settings),
        )
        for layer in found.active
    )
    details = {"method": method, "settings": settings, "bytes": sum(b.bytes for b in budgets)}
    return _allocation("uniform", "bits", "average_bits", level, budgets, found.skipped, details)


# ----------------------------------------------------------------------------- reporting
def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def format_allocation(allocation: Allocation) -> str:
    """A markdown table of the allocation: level, weights, cost (and each candidate's),
    outlier ratio, bytes; a title line with the rule, target and what was achieved.

    Example:
      >>> print(format_allocation(owl_sparsity(model, variables, batches, target=0.7)))
    """
    a = allocation
    levels = a.details.get("levels") if any(b.costs for b in a.layers) else None
    header = ["layer", "params", a.setting]
    if any(b.outlier_ratio is not None for b in a.layers):
        header.append("outlier ratio")
    if any(b.cost is not None for b in a.layers):
        header.append("cost")
    if levels:
        header += [f"cost@{lv:g}" for lv in levels]
    if any(b.bytes is not None for b in a.layers):
        header.append("bytes")
    rows = []
    for b in a.layers:
        row = [
            b.path,
            f"{b.params:,}",
            f"{b.level:.4f}" if a.setting == "sparsity" else str(b.level),
        ]
        if "outlier ratio" in header:
            row.append("-" if b.outlier_ratio is None else f"{100 * b.outlier_ratio:.3f}%")
        if "cost" in header:
            row.append(_fmt(b.cost))
        if levels:
            row += [_fmt((b.costs or {}).get(lv)) for lv in levels]
        if "bytes" in header:
            row.append(_fmt(b.bytes))
        rows.append(row)
    for path, value in a.rules.items():
        if value == cal.SKIP:
            rows.append([path, "-", "skip"] + ["-"] * (len(header) - 3))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def fmt(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    extra = ", ".join(
        f"{k}={v}" for k, v in a.details.items() if k in ("method", "lam", "m", "groups", "cost")
    )
    title = (
        f"{a.rule} {a.setting} allocation: {a.constraint} target {a.target:g}, achieved "
        f"{a.achieved:.6g}" + (f" ({extra})" if extra else "")
    )
    return "\n".join([title, "", fmt(header), sep, *(fmt(r) for r in rows)]) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def allocation_dict(allocation: Allocation) -> dict[str, Any]:
    """The allocation as JSON-ready data (level keys of ``costs`` as strings).

    Example:
      >>> json.dumps(allocation_dict(alloc))
    """
    a = allocation
    return _jsonable(
        {
            "rule": a.rule,
            "setting": a.setting,
            "constraint": a.constraint,
            "target": a.target,
            "achieved": a.achieved,
            "rules": a.rules,
            "layers": [b._asdict() for b in a.layers],
            "details": a.details,
        }
    )


def save_allocation(allocation: Allocation, path: str | os.PathLike) -> None:
    """Writes :func:`allocation_dict` as JSON to ``path`` (atomically).

    Example:
      >>> save_allocation(alloc, "runs/lm/allocation_owl.json")
    """
    text = json.dumps(allocation_dict(allocation), indent=2, sort_keys=True)
    atomic_write_bytes(path, (text + "\n").encode())
