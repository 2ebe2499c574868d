"""Model-level one-shot compression: layer-input statistics, sequential calibration, and
magnitude / Wanda / SparseGPT / RTN / GPTQ / AWQ / SmoothQuant on every Dense and Conv kernel.

The single-layer algorithms (``pruning.sparsegpt``, ``pruning.wanda``, ``quantization.gptq``,
``quantization.awq``, ``quantization.smooth_scales``) need each kernel's input statistics:
the Hessian ``H = X^T X`` of the ``(rows, in)`` view of the layer's inputs (see
``models._linear``: flattened leading axes for Dense layers, im2col patches for convolutions),
the mean ``|x|`` per input (AWQ) and the max ``|x|`` per input (SmoothQuant).

- :func:`find_layers` traces the model once (``jax.eval_shape``, nothing is computed) with
  ``flax.linen.intercept_methods`` and lists the linear layers in the order the forward pass
  calls them, with their kernel's matrix view and which layers read the same input (the
  query / key / value projections of an attention block, a SwiGLU's gate and up).
- :func:`collect_stats` / :func:`collect_hessians` run the model on the calibration batches
  one at a time; a compiled step adds each batch's ``X^T X`` (float32) into per-layer
  accumulators, so memory holds the variables, one batch's activations and one
  ``(in, in)`` matrix per distinct layer input, never the activations of the whole
  calibration set. Layers that read the same input share one accumulator. The forward pass
  stops at the last layer it needs.
- :func:`compress_model` compresses every layer. In sequential mode (the papers' mode) the
  layers are visited in forward order, a group of layers reading the same input at a time,
  and each group is calibrated on the outputs of the already-compressed layers before it:
  the forward pass is simply run again with the current variables for every group (``L``
  passes over the calibration set for ``L`` groups; fine for small models and what makes the
  method generic over any Flax module). In parallel mode all layers are calibrated on the
  float model in one pass.

Stored results (``report.qparams``) are the params with each quantized kernel replaced by a
``QTensor`` (a Dense kernel) or a ``models.QuantizedKernel`` (a convolution or head projection
quantized through its matrix view, or a kernel with a per-input multiplier);
``models.apply_with_qtensors`` runs them. The returned float variables hold the kernels
those stand for (exact zeros for pruning). AWQ is applied as "quantize ``w * s``, dequantize,
divide by ``s``", which is exactly the weight-only layer; the stored form keeps ``1 / s`` as
an explicit per-input multiplier of the layer's input instead of folding it into the
previous op. SmoothQuant (W8A8) also quantizes each layer's input per token (or per tensor)
at run time; it needs Dense-like layers. ``"sparsegpt+gptq"`` is the joint SparseGPT sweep of
the paper: every kept weight is rounded onto a grid fixed before the sweep (per output column
from the whole kernel, or per group of inputs from the original kernel: static groups) and
the error of pruning and rounding is propagated together, so the pruned weights stay exactly
zero in the QTensor.

Example:
  >>> new_vars, report = compress_model(model, variables, [x_train[:256]], method="sparsegpt",
  ...                                   settings={"sparsity": 0.7})
  >>> print(format_layer_table(report))
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxopt_models import hessian as hs
from jaxopt_models import pruning
from jaxopt_models import quantization as qz
from jaxopt_models.checks import check_one_of
from jaxopt_models.models import _linear
from jaxopt_models.models.weight_only import (
    ACTIVATIONS,
    QuantizedKernel,
    apply_with_qtensors,
    dequantize_kernel,
)
from jaxopt_models.tree import FilterFn, best_rule, check_rules, is_kernel, map_with_names
from jaxopt_models.typing import PyTree

METHODS = (
    "magnitude",
    "wanda",
    "sparsegpt",
    "rtn",
    "gptq",
    "awq",
    "smoothquant",
    "sparsegpt+gptq",
)
PRUNING_METHODS = ("magnitude", "wanda", "sparsegpt")
QUANTIZING_METHODS = ("rtn", "gptq", "awq", "smoothquant", "sparsegpt+gptq")

METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "magnitude": ("sparsity", "n_m"),
    "wanda": ("sparsity", "n_m"),
    "sparsegpt": ("sparsity", "n_m", "damp", "block_size"),
    "rtn": ("bits", "group_size", "symmetric"),
    "gptq": ("bits", "group_size", "symmetric", "act_order", "damp", "block_size"),
    "awq": ("bits", "group_size", "symmetric", "n_grid"),
    "smoothquant": ("alpha", "act_bits", "activations"),
    "sparsegpt+gptq": ("sparsity", "n_m", "bits", "group_size", "symmetric", "damp", "block_size"),
}
"""The settings each method reads (every other name is refused)."""

DEFAULT_SETTINGS: dict[str, Any] = {
    "sparsity": 0.5,
    "n_m": None,
    "bits": 4,
    "group_size": None,
    "symmetric": False,
    "damp": 0.01,
    "block_size": 128,
    "act_order": False,
    "n_grid": 20,
    "alpha": 0.5,
    "act_bits": 8,
    "activations": "per_token",
}
"""Defaults of every setting.

``sparsity`` fraction of each kernel pruned, in [0, 1) (unused when ``n_m`` is set);
``n_m`` ``(n, m)`` or ``"n:m"``: keep ``n`` of every ``m`` consecutive inputs of each
output; ``bits`` weight bits in [2, 8]; ``group_size`` inputs per quantization group (None:
one grid per output column); ``symmetric`` grid without zero point; ``damp`` relative
Hessian damping >= 0; ``block_size`` rows per lazy-update block; ``act_order`` GPTQ's
decreasing-``H[i, i]`` order; ``n_grid`` AWQ's grid steps; ``alpha`` SmoothQuant's migration
strength in [0, 1]; ``act_bits`` SmoothQuant's bits of both weights and activations, in
[2, 8]; ``activations`` ``"per_token"`` or ``"per_tensor"`` activation grids."""

SKIP = "skip"
"""A per-layer rule value that leaves the layer uncompressed."""


# ----------------------------------------------------------------------------- settings
def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _parse_n_m(value: Any, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{where}={value!r} must be an 'n:m' string such as '2:4' or None")
        value = (int(parts[0]), int(parts[1]))
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(map(_is_int, value)):
        raise ValueError(f"{where}={value!r} must be an (n, m) pair of ints, 'n:m' or None")
    n, m = int(value[0]), int(value[1])
    if not 1 <= n < m:
        raise ValueError(f"{where}={value!r} must keep 1 <= n < m weights of every m")
    return n, m


def check_setting(key: str, value: Any, where: str) -> Any:
    """Returns one setting (see :data:`DEFAULT_SETTINGS`) checked and normalised.

    Args:
      key: the setting's name.
      value: its value.
      where: how messages name it (e.g. ``config.one_shot.bits``).

    Raises:
      ValueError / TypeError: an unknown name or a value out of range.

    Example:
      >>> check_setting("n_m", "2:4", "settings.n_m")
      (2, 4)
    """
    if key == "sparsity":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}={value!r} must be a number in [0, 1)")
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{where}={value!r} must be a number in [0, 1)")
        return float(value)
    if key == "n_m":
        return _parse_n_m(value, where)
    if key in ("bits", "act_bits"):
        if not _is_int(value) or not 2 <= value <= 8:
            raise ValueError(f"{where}={value!r} must be an int in [2, 8]")
        return int(value)
    if key == "group_size":
        if value is None:
            return None
        if not _is_int(value) or value < 1:
            raise ValueError(f"{where}={value!r} must be a positive int or None")
        return int(value)
    if key in ("symmetric", "act_order"):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{where}={value!r} must be a bool")
        return bool(value)
    if key == "damp":
        ok = not isinstance(value, bool) and isinstance(value, (int, float))
        if not ok or not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{where}={value!r} must be a finite number >= 0")
        return float(value)
    if key in ("block_size", "n_grid"):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{where}={value!r} must be a positive int")
        return int(value)
    if key == "alpha":
        ok = not isinstance(value, bool) and isinstance(value, (int, float))
        if not ok or not 0.0 <= value <= 1.0:
            raise ValueError(f"{where}={value!r} must be a number in [0, 1]")
        return float(value)
    if key == "activations":
        return check_one_of(where, value, ACTIVATIONS)
    raise ValueError(f"{where}: unknown setting {key!r}; known: {sorted(DEFAULT_SETTINGS)}")


def check_settings(
    method: str, settings: Mapping[str, Any] | None = None, field: str = "settings"
) -> dict[str, Any]:
    """The full settings of ``method``: ``settings`` checked, defaults filled in.

    Args:
      method: one of :data:`METHODS`.
      settings: ``{name: value}``; only names in ``METHOD_SETTINGS[method]``.
      field: how messages name the settings (``config.one_shot`` in a recipe).

    Returns:
      ``{name: value}`` for every setting the method reads. Pruning methods get exactly one
      of ``sparsity`` / ``n_m`` (an ``n_m`` replaces the default sparsity).

    Raises:
      ValueError / TypeError: an unknown method, a setting the method does not read, a value
      out of range (naming ``field.<name>`` and the value).

    Example:
      >>> check_settings("gptq", {"bits": 3})["bits"]
      3
    """
    check_one_of("method", method, METHODS)
    settings = dict(settings or {})
    reads = METHOD_SETTINGS[method]
    for key in settings:
        if key not in reads:
            raise ValueError(
                f"{field}.{key} is not read by method {method!r}; it reads {list(reads)}"
            )
    out = {}
    for key in reads:
        value = settings.get(key, DEFAULT_SETTINGS[key])
        out[key] = check_setting(key, value, f"{field}.{key}")
    if "n_m" in out:
        if out["n_m"] is not None and "sparsity" in settings and settings["sparsity"] is not None:
            raise ValueError(
                f"{field}: pass one of sparsity and n_m, got sparsity={settings['sparsity']!r} "
                f"and n_m={settings['n_m']!r}"
            )
        if out["n_m"] is not None:
            out["sparsity"] = None
        elif out["sparsity"] is None:
            raise ValueError(f"{field}: pass a sparsity in [0, 1) or an n_m pair, got neither")
    return out


# ----------------------------------------------------------------------------- layers
class LayerInfo(NamedTuple):
    """One linear layer as :func:`find_layers` sees it.

    Attributes:
      path: module path, e.g. ``"Dense_0"`` or ``"block_0/attn/query"``; the kernel leaf is
        ``path + "/kernel"`` in the params.
      kind: ``"dense"``, ``"dense_general"`` or ``"conv"``.
      shape: the kernel's shape.
      view: ``(in, out)``: the kernel's matrix view.
      calls: how often one forward pass calls the layer.
      inputs: one id per call of the distinct inputs (in forward order); layers with equal
        ``inputs`` read the same data and share their statistics.
      unsupported: why the layer cannot be compressed (None: it can).
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    view: tuple[int, int]
    calls: int
    inputs: tuple[int, ...]
    unsupported: str | None = None

    @property
    def name(self) -> str:
        """The kernel's leaf name in the params (``path + "/kernel"``)."""
        return f"{self.path}/kernel"


class LayerStats(NamedTuple):
    """Accumulated input statistics of one layer (over the ``(rows, in)`` input view).

    Attributes:
      hessian: ``(in, in)`` float32 ``X^T X``.
      count: int32 scalar, the number of rows.
      abs_sum: ``(in,)`` float32 ``sum |x|`` per input (``abs_sum / count``: AWQ's
        activation magnitude).
      abs_max: ``(in,)`` float32 ``max |x|`` per input (SmoothQuant's range).
    """

    hessian: jax.Array
    count: jax.Array
    abs_sum: jax.Array
    abs_max: jax.Array


def _apply(model: nn.Module, variables: PyTree, x: Any, apply_kwargs: Mapping[str, Any]):
    return model.apply(variables, x, **apply_kwargs)


def _check_model(model: Any, apply_kwargs: Any) -> dict[str, Any]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a flax.linen Module, got {type(model).__name__}")
    if apply_kwargs is None:
        return {}
    if not isinstance(apply_kwargs, Mapping):
        raise TypeError(f"apply_kwargs must be a mapping or None, got {apply_kwargs!r}")
    return dict(apply_kwargs)


def find_layers(
    model: nn.Module,
    variables: PyTree,
    sample: Any,
    *,
    filter_fn: FilterFn | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> tuple[LayerInfo, ...]:
    """The model's linear layers in forward order (one abstract trace, nothing computed).

    Args:
      model: a Flax module.
      variables: its variables (arrays or ``jax.ShapeDtypeStruct`` leaves).
      sample: an input batch (or its ``ShapeDtypeStruct``).
      filter_fn: ``(kernel leaf name, kernel) -> bool`` choosing the kernels (default
        ``tree.is_kernel``).
      apply_kwargs: more keyword arguments of ``model.apply``.

    Returns:
      A tuple of :class:`LayerInfo` ordered by first call.

    Example:
      >>> [l.path for l in find_layers(model, variables, x[:1])]
      ['Dense_0', 'Dense_1', 'Dense_2']
    """
    apply_kwargs = _check_model(model, apply_kwargs)
    variables = nn.meta.unbox(variables)
    filter_fn = filter_fn or is_kernel
    records: dict[str, dict[str, Any]] = {}
    ids: dict[tuple[int, tuple], int] = {}
    alive: list[Any] = []  # keeps traced inputs alive, so their ids stay unique

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        kind = _linear.linear_kind(module) if context.method_name == "__call__" else None
        if kind is None or not args:
            return next_fun(*args, **kwargs)
        out = next_fun(*args, **kwargs)
        if not module.has_variable("params", "kernel"):
            return out
        kernel = module.get_variable("params", "kernel")
        path = _linear.module_path(module)
        if not filter_fn(f"{path}/kernel", kernel):
            return out
        x = args[0]
        alive.append(x)
        key = (id(x), _linear.view_signature(kind, module))
        input_id = ids.setdefault(key, len(ids))
        rec = records.get(path)
        if rec is None:
            reason = _linear.unsupported_reason(kind, module)
            shape = tuple(kernel.shape)
            view = None if reason else _linear.view_shape(kind, module, shape)
            if view is not None:
                rows_in = _linear.input_rows(kind, module, x).shape[-1]
                if rows_in != view[0]:
                    reason = (
                        f"its kernel {shape} has {view[0]} inputs in its matrix view but its "
                        f"input gives {rows_in} (a kernel stacked by nn.scan / nn.vmap?)"
                    )
            rec = records[path] = {
                "kind": kind,
                "shape": shape,
                "view": view or (0, 0),
                "inputs": [],
                "unsupported": reason,
            }
        rec["inputs"].append(input_id)
        return out

    def fn(v, x):
        with nn.intercept_methods(interceptor):
            return _apply(model, v, x, apply_kwargs)

    jax.eval_shape(fn, variables, sample)
    return tuple(
        LayerInfo(
            path=path,
            kind=rec["kind"],
            shape=rec["shape"],
            view=rec["view"],
            calls=len(rec["inputs"]),
            inputs=tuple(rec["inputs"]),
            unsupported=rec["unsupported"],
        )
        for path, rec in records.items()
    )


def input_groups(layers: Sequence[LayerInfo]) -> list[list[LayerInfo]]:
    """Layers grouped by the inputs they read (connected through shared inputs), in
    forward order: the units of sequential calibration.

    Example:
      >>> [[l.path for l in g] for g in input_groups(find_layers(lm, variables, tokens))][:2]
      [['block_0/attn/query', 'block_0/attn/key', 'block_0/attn/value'], ['block_0/attn/out']]
    """
    parent = list(range(len(layers)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, layer in enumerate(layers):
        for input_id in layer.inputs:
            j = owner.setdefault(input_id, i)
            parent[find(i)] = find(j)
    groups: dict[int, list[LayerInfo]] = {}
    for i, layer in enumerate(layers):
        groups.setdefault(find(i), []).append(layer)
    return sorted(groups.values(), key=lambda g: min(min(layer.inputs) for layer in g))


class _Done(BaseException):
    """Stops a calibration forward pass once every target layer has been seen."""


def _batch_stats(rows: jax.Array) -> LayerStats:
    rows = rows.astype(jnp.result_type(rows.dtype, jnp.float32))
    a = jnp.abs(rows)
    return LayerStats(
        hessian=hs.gram_matrix(rows).astype(jnp.float32),
        count=jnp.asarray(rows.shape[0], jnp.int32),
        abs_sum=jnp.sum(a, axis=0).astype(jnp.float32),
        abs_max=jnp.max(a, axis=0).astype(jnp.float32),
    )


def _add_stats(a: LayerStats, b: LayerStats) -> LayerStats:
    return LayerStats(
        a.hessian + b.hessian,
        a.count + b.count,
        a.abs_sum + b.abs_sum,
        jnp.maximum(a.abs_max, b.abs_max),
    )


def _zero_stats(n_in: int) -> LayerStats:
    return LayerStats(
        jnp.zeros((n_in, n_in), jnp.float32),
        jnp.zeros((), jnp.int32),
        jnp.zeros((n_in,), jnp.float32),
        jnp.zeros((n_in,), jnp.float32),
    )


def _owners(layers: Sequence[LayerInfo]) -> dict[str, str]:
    """``{path: owner path}``: layers with equal inputs share the first one's statistics."""
    first: dict[tuple[int, ...], str] = {}
    return {layer.path: first.setdefault(layer.inputs, layer.path) for layer in layers}


def make_stats_step(
    model: nn.Module,
    layers: Sequence[LayerInfo],
    *,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[dict[str, LayerStats], PyTree, Any], dict[str, LayerStats]]:
    """The compiled calibration step ``(acc, variables, x) -> acc`` for ``layers``.

    ``acc`` maps each owner path (the first of the layers that read the same inputs) to its
    :class:`LayerStats` and is donated. ``variables`` may hold quantized kernels (they run
    as in :func:`~jaxopt_models.models.apply_with_qtensors`, activation quantization
    included). The forward pass stops once every layer has been called.

    Args:
      model: the Flax module.
      layers: the layers to calibrate (from :func:`find_layers`).
      apply_kwargs: more keyword arguments of ``model.apply``.

    Returns:
      The jitted step; ``step.lower(...).compile().memory_analysis()`` reports its temporary
      memory (one batch's activations and Gram matrices).

    Example:
      >>> step = make_stats_step(model, layers)
      >>> acc = step(init_stats(layers), variables, x)
    """
    apply_kwargs = _check_model(model, apply_kwargs)
    owners = _owners(layers)
    calls = {layer.path: layer.calls for layer in layers}

    def step(acc, variables, x):
        acc = dict(acc)
        seen = dict.fromkeys(calls, 0)
        cache: dict[tuple[int, tuple], LayerStats] = {}
        alive: list[Any] = []

        def interceptor(next_fun, args, kwargs, context):
            if context.method_name != "__call__" or not args:
                return next_fun(*args, **kwargs)
            module = context.module
            kind = _linear.linear_kind(module)
            path = _linear.module_path(module) if kind else None
            if path in calls:
                if owners[path] == path:
                    x_in = args[0]
                    key = (id(x_in), _linear.view_signature(kind, module))
                    if key not in cache:
                        alive.append(x_in)
                        cache[key] = _batch_stats(_linear.input_rows(kind, module, x_in))
                    acc[path] = _add_stats(acc[path], cache[key])
                seen[path] += 1
                if all(seen[p] >= n for p, n in calls.items()):
                    raise _Done
            return next_fun(*args, **kwargs)

        try:
            with nn.intercept_methods(interceptor):
                apply_with_qtensors(model, variables, x, on_the_fly=False, **apply_kwargs)
        except _Done:
            pass
        return acc

    return jax.jit(step, donate_argnums=0)


def init_stats(layers: Sequence[LayerInfo]) -> dict[str, LayerStats]:
    """Zero accumulators for :func:`make_stats_step` (one per owner layer)."""
    owners = _owners(layers)
    return {
        layer.path: _zero_stats(layer.view[0])
        for layer in layers
        if owners[layer.path] == layer.path
    }


def _check_batches(batches: Any) -> list[Any]:
    if isinstance(batches, (jax.Array, np.ndarray)):
        raise TypeError(
            "batches must be a sequence of input batches (e.g. [x[:256], x[256:512]]), not "
            "one array"
        )
    if not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be a sequence of input batches, got {type(batches).__name__}"
        )
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: pass at least one calibration batch")
    first = jax.tree.map(lambda a: tuple(np.shape(a))[1:], batches[0])
    for i, b in enumerate(batches):
        shape = jax.tree.map(lambda a: tuple(np.shape(a))[1:], b)
        if shape != first:
            raise ValueError(
                f"batches[{i}] has per-example shape {shape} but batches[0] has {first}; "
                "every calibration batch must have the model's input shape"
            )
    return batches


def _run_stats(model, variables, batches, layers, apply_kwargs) -> dict[str, LayerStats]:
    step = make_stats_step(model, layers, apply_kwargs=apply_kwargs)
    acc = init_stats(layers)
    for x in batches:
        acc = step(acc, variables, x)
    owners = _owners(layers)
    return {layer.path: acc[owners[layer.path]] for layer in layers}


def collect_stats(
    model: nn.Module,
    variables: PyTree,
    batches: Iterable[Any],
    *,
    filter_fn: FilterFn | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, LayerStats]:
    """Input statistics of every linear layer over the calibration batches (one pass).

    Args:
      model: a Flax module with Dense / DenseGeneral / Conv layers.
      variables: its variables.
      batches: input batches (a list; each is ``model.apply``'s input).
      filter_fn: ``(kernel leaf name, kernel) -> bool`` (default ``tree.is_kernel``).
      apply_kwargs: more keyword arguments of ``model.apply``.

    Returns:
      ``{layer path: LayerStats}``; layers reading the same input share the same arrays.

    Raises:
      TypeError / ValueError: no batches, batches of different shapes, a non-module model.

    Example:
      >>> stats = collect_stats(model, variables, [x[:256], x[256:512]])
      >>> stats["Dense_0"].hessian.shape
      (784, 784)
    """
    batches = _check_batches(batches)
    variables = nn.meta.unbox(variables)
    layers = find_layers(
        model, variables, batches[0], filter_fn=filter_fn, apply_kwargs=apply_kwargs
    )
    layers = [layer for layer in layers if layer.unsupported is None]
    return _run_stats(model, variables, batches, layers, _check_model(model, apply_kwargs))


def collect_hessians(
    model: nn.Module,
    variables: PyTree,
    batches: Iterable[Any],
    *,
    filter_fn: FilterFn | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """``{layer path: (X^T X, rows)}`` of every linear layer's inputs over the batches.

    The Hessian is the ``(in, in)`` float32 Gram matrix of the layer's input view
    (im2col patches for a convolution), accumulated batch by batch in a compiled step.

    Args:
      model, variables, batches, filter_fn, apply_kwargs: see :func:`collect_stats`.

    Returns:
      ``{path: (hessian, count)}`` with ``count`` the int32 number of rows.

    Example:
      >>> h, n = collect_hessians(model, variables, [x[:128]])["Dense_1"]
      >>> h.shape, int(n)
      ((300, 300), 128)
    """
    stats = collect_stats(model, variables, batches, filter_fn=filter_fn, apply_kwargs=apply_kwargs)
    return {path: (s.hessian, s.count) for path, s in stats.items()}


# ----------------------------------------------------------------------------- one layer
def _blocks_pruned(sparsity: float, n_in: int, n_out: int, block: int, n_pad: int) -> np.ndarray:
    ends = np.minimum(np.arange(0, n_pad + 1, block), n_in)
    cumulative = np.array([round(sparsity * n_out * int(e)) for e in ends], np.int64)
    return np.diff(cumulative).astype(np.int32)


@functools.partial(
    jax.jit, static_argnames=("bits", "symmetric", "group_size", "n_m", "block_size")
)
def _sparse_gptq_sweep(w, hessian, damp, ks, *, bits, symmetric, group_size, n_m, block_size):
    compute = jnp.result_type(w.dtype, jnp.float32)
    w, h = hs.prepare(w.astype(compute), hessian.astype(compute))
    n_in, n_out = w.shape
    g = group_size
    if g is None:
        scale, zp = qz.scale_and_zero_point(w.min(axis=0), w.max(axis=0), bits, symmetric)
        table = (scale[None], None if zp is None else zp[None])
    else:
        grouped = w.reshape(n_in // g, g, n_out)
        table = qz.scale_and_zero_point(grouped.min(axis=1), grouped.max(axis=1), bits, symmetric)
    u, ok = hs.inverse_cholesky_upper(hs.damped(h, damp))
    block = block_size
    n_pad = hs.round_up(n_in, block)
    w, u = hs.pad_rows(w, u, n_pad)
    rows = jnp.arange(n_pad)
    group_of_row = jnp.zeros_like(rows) if g is None else jnp.minimum(rows // g, n_in // g - 1)

    def round_row(i, row):
        k = group_of_row[i]
        s = table[0][k]
        z = None if table[1] is None else table[1][k]
        return qz.grid_to_float(qz.quantize_to_grid(row, s, z, bits), s, z, row.dtype)

    if n_m is None:

        def block_fn(i1, w1, u1, w_all, state):
            saliency = (w1 / jnp.diagonal(u1)[:, None]) ** 2
            real = (i1 + jnp.arange(block) < n_in)[:, None]
            saliency = jnp.where(real, saliency, jnp.inf).ravel()
            k = ks[i1 // block]
            rank = jnp.argsort(jnp.argsort(saliency, stable=True), stable=True)
            keep = (rank >= k).reshape(w1.shape)

            def row_fn(i, row):
                kept = lax.dynamic_index_in_dim(keep, i, 0, keepdims=False)
                return jnp.where(kept, round_row(i1 + i, row), jnp.zeros_like(row))

            z = jnp.zeros_like(w1)
            _, q1, err1 = hs.sweep_rows(w1, u1, z, z, 0, block, row_fn)
            return q1, err1, state

    else:
        n, m = n_m

        def block_fn(i1, w1, u1, w_all, state):
            diag = jnp.diagonal(u1)

            def group_body(s, carry):
                w1, q1, err1 = carry
                part = lax.dynamic_slice_in_dim(w1, s * m, m, 0)
                d = lax.dynamic_slice_in_dim(diag, s * m, m, 0)
                saliency = (part / d[:, None]) ** 2
                rank = jnp.argsort(jnp.argsort(-saliency, axis=0, stable=True), axis=0)
                keep = rank < n

                def row_fn(i, row):
                    kept = lax.dynamic_index_in_dim(keep, i - s * m, 0, keepdims=False)
                    return jnp.where(kept, round_row(i1 + i, row), jnp.zeros_like(row))

                return hs.sweep_rows(w1, u1, q1, err1, s * m, m, row_fn)

            z = jnp.zeros_like(w1)
            _, q1, err1 = lax.fori_loop(0, block // m, group_body, (w1, z, z))
            return q1, err1, state

    q, _ = hs.obs_sweep(w, u, block, block_fn, None)
    q = q[:n_in]
    scale, zp = table
    if g is None:
        values = qz.quantize_to_grid(q, scale, zp, bits)
    else:
        scale = scale[:, None, :]
        zp = None if zp is None else zp[:, None, :]
        values = qz.quantize_to_grid(q.reshape(n_in // g, g, n_out), scale, zp, bits)
    return values.reshape(n_in, n_out).astype(qz.storage_dtype(bits)), scale, zp, ok


def _sparse_gptq(w: jax.Array, hessian: jax.Array, s: Mapping[str, Any]) -> qz.QTensor:
    """SparseGPT with quantization in the same sweep (see the module docstring)."""
    n_in, n_out = w.shape
    n_m, g = s["n_m"], s["group_size"]
    if n_m is None:
        block = min(s["block_size"], n_in)
    else:
        block = n_m[1] * max(1, min(s["block_size"], n_in) // n_m[1])
    n_pad = hs.round_up(n_in, block)
    if n_m is None:
        ks = jnp.asarray(_blocks_pruned(s["sparsity"], n_in, n_out, block, n_pad))
    else:
        ks = jnp.zeros((n_pad // block,), jnp.int32)
    values, scale, zp, ok = _sparse_gptq_sweep(
        w,
        hessian,
        s["damp"],
        ks,
        bits=s["bits"],
        symmetric=s["symmetric"],
        group_size=g,
        n_m=n_m,
        block_size=block,
    )
    hs.raise_if_not_positive_definite(ok, s["damp"])
    return qz.QTensor(
        values,
        scale,
        zp,
        s["bits"],
        axis=(1,),
        group_size=g,
        group_axis=None if g is None else 0,
        dtype=w.dtype,
    )


@functools.partial(jax.jit, static_argnames=("k", "n_m"))
def _magnitude(w, *, k, n_m):
    """Layer-wise magnitude pruning of ``w`` (``(in, out)``): the ``k`` smallest ``|w|``
    (ties: lowest flat index first), or all but the ``n`` largest of every ``m``
    consecutive inputs of each output column."""
    score = jnp.abs(w)
    if n_m is None:
        rank = jnp.argsort(jnp.argsort(score.ravel(), stable=True), stable=True)
        keep = (rank >= k).reshape(w.shape)
    else:
        n, m = n_m
        groups = score.reshape(w.shape[0] // m, m, w.shape[1])
        rank = jnp.argsort(jnp.argsort(-groups, axis=1, stable=True), axis=1, stable=True)
        keep = (rank < n).reshape(w.shape)
    return jnp.where(keep, w, jnp.zeros_like(w))


def _grouping(s: Mapping[str, Any]) -> dict[str, Any]:
    g = s.get("group_size")
    return {} if g is None else {"group_size": g, "group_axis": 0}


def compress_layer(
    method: str, w: jax.Array, stats: LayerStats | None, settings: Mapping[str, Any]
) -> tuple[jax.Array, Any]:
    """Compresses one kernel's ``(in, out)`` matrix view with its input statistics.

    Args:
      method: one of :data:`METHODS`.
      w: ``(in, out)`` float kernel view.
      stats: the layer's :class:`LayerStats` (unused by ``magnitude`` and ``rtn``).
      settings: from :func:`check_settings`.

    Returns:
      ``(w_hat, stored)``: the ``(in, out)`` float kernel the compressed layer computes with,
      and its stored form (None for pruning; a QTensor, or for AWQ / SmoothQuant a
      :class:`~jaxopt_models.models.QuantizedKernel` of the view with the per-input
      multiplier ``1 / s``).

    Example:
      >>> w_hat, q = compress_layer("gptq", w, stats, check_settings("gptq", {"bits": 4}))
    """
    s = settings
    h = None if stats is None else stats.hessian
    if method == "magnitude":
        k = None if s["n_m"] is not None else round(s["sparsity"] * w.size)
        return _magnitude(w, k=k, n_m=s["n_m"]), None
    if method == "wanda":
        return pruning.wanda(w, h, sparsity=s["sparsity"], n_m=s["n_m"]), None
    if method == "sparsegpt":
        w_hat = pruning.sparsegpt(
            w,
            h,
            sparsity=s["sparsity"],
            n_m=s["n_m"],
            damp=s["damp"],
            block_size=s["block_size"],
        )
        return w_hat, None
    if method == "rtn":
        q = qz.quantize(w, s["bits"], symmetric=s["symmetric"], axis=-1, **_grouping(s))
        return qz.dequantize(q), q
    if method == "gptq":
        q = qz.gptq(
            w,
            h,
            bits=s["bits"],
            group_size=s["group_size"],
            symmetric=s["symmetric"],
            act_order=s["act_order"],
            damp=s["damp"],
            block_size=s["block_size"],
        )
        return qz.dequantize(q), q
    if method == "sparsegpt+gptq":
        q = _sparse_gptq(w, h, s)
        return qz.dequantize(q), q
    if method == "awq":
        act_mag = stats.abs_sum / jnp.maximum(stats.count, 1).astype(jnp.float32)
        res = qz.awq(
            w,
            act_mag,
            hessian=h,
            bits=s["bits"],
            group_size=s["group_size"],
            symmetric=s["symmetric"],
            n_grid=s["n_grid"],
        )
        multiplier = (1.0 / res.scales).astype(w.dtype)
        stored = QuantizedKernel(res.qweight, multiplier, w.shape)
        return dequantize_kernel(stored), stored
    if method == "smoothquant":
        scales = qz.smooth_scales(stats.abs_max, w, s["alpha"])
        scaled = (scales[:, None] * w.astype(scales.dtype)).astype(w.dtype)
        q = qz.quantize(scaled, s["act_bits"], symmetric=True, axis=-1)
        multiplier = (1.0 / scales).astype(w.dtype)
        stored = QuantizedKernel(
            q, multiplier, w.shape, act_bits=s["act_bits"], activations=s["activations"]
        )
        return dequantize_kernel(stored), stored
    raise ValueError(f"method={method!r} is not known; allowed values: {METHODS}")


@jax.jit
def _relative_error(w, w_hat, hessian):
    hp = hs.HIGHEST
    w = w.astype(jnp.float32)
    d = w - w_hat.astype(jnp.float32)
    num = jnp.sum(d * jnp.matmul(hessian, d, precision=hp))
    den = jnp.sum(w * jnp.matmul(hessian, w, precision=hp))
    return num / jnp.maximum(den, jnp.finfo(jnp.float32).tiny)


def output_error(w: jax.Array, w_hat: jax.Array, hessian: jax.Array) -> float:
    """Relative output error ``||X (w - w_hat)||^2 / ||X w||^2`` from ``H = X^T X``.

    Args:
      w: ``(in, out)`` original kernel view.
      w_hat: ``(in, out)`` compressed kernel view.
      hessian: ``(in, in)`` Gram matrix of the layer's inputs.

    Returns:
      The ratio as a Python float (0 for ``w_hat == w``).

    Example:
      >>> output_error(w, w, h)
      0.0
    """
    return float(_relative_error(jnp.asarray(w), jnp.asarray(w_hat), jnp.asarray(hessian)))


@jax.jit
def _count_bad(x):
    return jnp.sum(~jnp.isfinite(x))


@jax.jit
def _count_nonzero(x):
    return jnp.sum(x != 0)


# ----------------------------------------------------------------------------- the model
class LayerReport(NamedTuple):
    """One row of :func:`compress_model`'s report.

    Attributes:
      path: module path; kind: its kind; shape: kernel shape; view: ``(in, out)``.
      settings: the settings used, or None when a rule skipped the layer.
      rule: the ``layers`` pattern that applied (None: the global settings).
      rows: calibration rows seen (0 when not calibrated).
      rel_error: ``||X (w - w_hat)||^2 / ||X w||^2`` on its calibration inputs.
      nonzeros: nonzero weights of the compressed kernel; size: its number of weights.
      bits: weight bits (None: float).
      calibration_seconds: the calibration pass of its input group (shared by the group).
      compress_seconds: the compression of this kernel.
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    view: tuple[int, int]
    settings: dict[str, Any] | None
    rule: str | None
    rows: int
    rel_error: float | None
    nonzeros: int
    size: int
    bits: int | None
    calibration_seconds: float
    compress_seconds: float


class OneShotReport(NamedTuple):
    """What :func:`compress_model` reports besides the new variables.

    Attributes:
      method: the method.
      sequential: whether layers were calibrated on the compressed layers before them.
      layers: one :class:`LayerReport` per linear layer, in forward order.
      qparams: the params with every quantized kernel as a QTensor / QuantizedKernel (None
        for pruning methods): what to store, ``models.apply_with_qtensors`` runs it.
      seconds: wall time of the whole call; calibration_seconds: of its forward passes.
    """

    method: str
    sequential: bool
    layers: tuple[LayerReport, ...]
    qparams: PyTree | None
    seconds: float
    calibration_seconds: float


def _layer_settings(
    layers: Sequence[LayerInfo],
    method: str,
    settings: Mapping[str, Any],
    rules: Mapping[str, Any],
    field: str,
    layers_field: str,
) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
    """``{path: (settings or None (skipped), rule)}``, every value checked against the layer."""
    base = check_settings(method, settings, field)
    out = {}
    for layer in layers:
        rule = best_rule(rules, layer.name)
        value = None if rule is None else rules[rule]
        where = field if rule is None else f"{layers_field}[{rule!r}]"
        if value == SKIP:
            out[layer.path] = (None, rule)
            continue
        if layer.unsupported is not None:
            raise ValueError(
                f"layer {layer.path!r} cannot be compressed: {layer.unsupported}; leave it out "
                f"with {layers_field}={{{layer.path!r}: {SKIP!r}}} or a filter_fn"
            )
        s = base
        if value is not None:
            merged = {k: v for k, v in settings.items()}
            if "n_m" in value and value["n_m"] is not None:
                merged.pop("sparsity", None)
            if "sparsity" in value and value["sparsity"] is not None:
                merged.pop("n_m", None)
            merged.update(value)
            s = check_settings(method, merged, where)
        _check_layer_fit(layer, method, s, where)
        out[layer.path] = (s, rule)
    return out


def _check_layer_fit(layer: LayerInfo, method: str, s: Mapping[str, Any], where: str) -> None:
    n_in, n_out = layer.view
    desc = f"layer {layer.path!r} (kernel {layer.shape}, matrix view ({n_in}, {n_out}))"
    n_m = s.get("n_m")
    if n_m is not None and n_in % n_m[1]:
        raise ValueError(
            f"{where}.n_m={n_m[0]}:{n_m[1]} does not fit {desc}: m={n_m[1]} must divide its "
            f"{n_in} inputs"
        )
    g = s.get("group_size")
    if g is not None and n_in % g:
        raise ValueError(
            f"{where}.group_size={g} does not fit {desc}: it must divide its {n_in} inputs"
        )
    if method == "smoothquant" and layer.kind not in _linear.DENSE_KINDS:
        raise ValueError(
            f"method 'smoothquant' quantizes each layer's input per token, which {desc} (a "
            f"{layer.kind}) does not have; skip it with a rule {{{layer.path!r}: {SKIP!r}}}"
        )


def _check_rules(rules: Any, layers: Sequence[LayerInfo], params: PyTree, layers_field: str):
    if rules is None:
        return {}
    if not isinstance(rules, Mapping):
        raise TypeError(f"{layers_field} must be a mapping {{pattern: settings}}, got {rules!r}")
    rules = dict(rules)
    for pattern, value in rules.items():
        if value != SKIP and not isinstance(value, Mapping):
            raise TypeError(
                f"{layers_field}[{pattern!r}]={value!r} must be a mapping of settings or {SKIP!r}"
            )
    names = {layer.name for layer in layers}
    check_rules(rules, params, layers_field, filter_fn=lambda n, x: n in names)
    return {p: v if v == SKIP else dict(v) for p, v in rules.items()}


def _get_kernel(params: PyTree, path: str) -> Any:
    node = params
    for part in path.split("/"):
        node = node[part]
    return node["kernel"]


def _replace_kernels(params: PyTree, new: Mapping[str, Any]) -> PyTree:
    names = {f"{path}/kernel": value for path, value in new.items()}
    return map_with_names(lambda n, x: names.get(n, x), params)


def plan_compression(
    model: nn.Module,
    variables: PyTree,
    sample: Any,
    *,
    method: str,
    settings: Mapping[str, Any] | None = None,
    layers: Mapping[str, Any] | None = None,
    filter_fn: FilterFn | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    field: str = "settings",
    layers_field: str = "layers",
) -> tuple[tuple[LayerInfo, ...], dict[str, tuple[dict[str, Any] | None, str | None]]]:
    """Checks everything :func:`compress_model` would do, without computing anything.

    ``variables`` and ``sample`` may be ``jax.ShapeDtypeStruct`` trees (from
    ``jax.eval_shape``), so a recipe can refuse a bad setting before training.

    Returns:
      ``(layers, plan)``: the :class:`LayerInfo` s and ``{path: (settings or None, rule)}``.

    Raises:
      ValueError / TypeError: an unknown method or setting, a value out of range, a rule
      that matches no layer, an ``n_m`` / ``group_size`` that does not divide a layer's
      inputs, SmoothQuant on a convolution, an unsupported layer that is not skipped; each
      message names the layer and the setting (``field.<name>`` or
      ``layers_field[pattern].<name>``).

    Example:
      >>> _, plan = plan_compression(model, shapes, x[:1], method="gptq",
      ...                            settings={"bits": 3}, layers={"Dense_2": "skip"})
    """
    check_one_of("method", method, METHODS)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError("variables must be a mapping with a 'params' collection")
    found = find_layers(model, variables, sample, filter_fn=filter_fn, apply_kwargs=apply_kwargs)
    if not found:
        raise ValueError(
            f"model {type(model).__name__} has no Dense / DenseGeneral / Conv layer whose "
            "kernel the filter accepts: nothing to compress"
        )
    rules = _check_rules(layers, found, variables["params"], layers_field)
    settings = dict(settings or {})
    return found, _layer_settings(found, method, settings, rules, field, layers_field)


def compress_model(
    model: nn.Module,
    variables: PyTree,
    batches: Iterable[Any],
    *,
    method: str,
    settings: Mapping[str, Any] | None = None,
    sequential: bool = True,
    layers: Mapping[str, Any] | None = None,
    filter_fn: FilterFn | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    field: str = "settings",
    layers_field: str = "layers",
) -> tuple[PyTree, OneShotReport]:
    """One-shot compression of every linear layer of a Flax model, without retraining.

    Args:
      model: a Flax module with Dense / DenseGeneral / Conv layers (or the transformer's
        head projections).
      variables: its variables (``{"params": ..., ...}``).
      batches: calibration inputs, a list of batches (each ``model.apply``'s input); they
        are read once per input group in sequential mode.
      method: one of :data:`METHODS`.
      settings: the method's settings (see :data:`DEFAULT_SETTINGS`, :data:`METHOD_SETTINGS`).
      sequential: calibrate each layer group on the outputs of the compressed layers
        before it (True, as in the papers) or every layer on the float model (False).
      layers: per-layer rules ``{pattern: overrides}`` under the library's convention
        (``tree.rule_for``: ``"Dense"`` matches every ``Dense_<n>``, the most specific
        pattern wins); a value is a mapping of settings that replace the global ones for
        the layers it matches, or ``"skip"`` to leave them float.
      filter_fn: ``(kernel leaf name, kernel) -> bool`` (default ``tree.is_kernel``).
      apply_kwargs: more keyword arguments of ``model.apply``.
      field / layers_field: how messages name the settings and the rules.

    Returns:
      ``(new_variables, report)``: the variables with every compressed kernel replaced by
      the float kernel it now is (pruned weights exactly 0, quantized ones dequantized) and
      an :class:`OneShotReport` (per-layer rows, the stored ``qparams``, seconds).

    Raises:
      ValueError / TypeError: see :func:`plan_compression`; also empty or mismatched
      batches, and a calibration whose Hessian is not finite (naming the layer).

    Example:
      >>> new_vars, report = compress_model(model, variables, [x[:512]], method="gptq",
      ...                                   settings={"bits": 4, "group_size": 64})
      >>> logits = apply_with_qtensors(model, {**variables, "params": report.qparams}, x)
    """
    t_start = time.perf_counter()
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be a bool, got {sequential!r}")
    batches = _check_batches(batches)
    variables = nn.meta.unbox(variables)
    found, plan = plan_compression(
        model,
        variables,
        batches[0],
        method=method,
        settings=settings,
        layers=layers,
        filter_fn=filter_fn,
        apply_kwargs=apply_kwargs,
        field=field,
        layers_field=layers_field,
    )
    apply_kwargs = _check_model(model, apply_kwargs)
    active = [layer for layer in found if plan[layer.path][0] is not None]
    units = input_groups(active) if sequential else ([active] if active else [])
    params = variables["params"]
    stored: dict[str, Any] = {}
    floats: dict[str, Any] = {}
    rows: dict[str, LayerReport] = {}
    calibration_total = 0.0
    for unit in units:
        current = {**variables, "params": _replace_kernels(params, stored)}
        t0 = time.perf_counter()
        stats = _run_stats(model, current, batches, unit, apply_kwargs)
        jax.block_until_ready(stats)
        t_cal = time.perf_counter() - t0
        calibration_total += t_cal
        for layer in unit:
            s, rule = plan[layer.path]
            st = stats[layer.path]
            bad = int(_count_bad(st.hessian))
            if bad:
                raise ValueError(
                    f"layer {layer.path!r}: its calibration hessian holds {bad} NaN / Inf "
                    "values (the model's activations on the calibration batches are not "
                    "finite)"
                )
            kernel = jnp.asarray(_get_kernel(params, layer.path))
            w = kernel.reshape(layer.view)
            t1 = time.perf_counter()
            try:
                w_hat, store = compress_layer(method, w, st, s)
            except (ValueError, TypeError) as e:
                raise type(e)(f"layer {layer.path!r} ({method}): {e}") from None
            w_hat = jax.block_until_ready(w_hat)
            t_comp = time.perf_counter() - t1
            floats[layer.path] = w_hat.reshape(layer.shape).astype(kernel.dtype)
            if store is None:
                stored[layer.path] = floats[layer.path]
            elif isinstance(store, qz.QTensor) and layer.view != layer.shape:
                stored[layer.path] = QuantizedKernel(store, None, layer.shape)
            elif isinstance(store, QuantizedKernel):
                stored[layer.path] = QuantizedKernel(
                    store.qweight,
                    store.input_scale,
                    layer.shape,
                    store.act_bits,
                    store.activations,
                )
            else:
                stored[layer.path] = store
            bits = s.get("bits", s.get("act_bits")) if method in QUANTIZING_METHODS else None
            rows[layer.path] = LayerReport(
                path=layer.path,
                kind=layer.kind,
                shape=layer.shape,
                view=layer.view,
                settings=dict(s),
                rule=rule,
                rows=int(st.count),
                rel_error=output_error(w, w_hat, st.hessian),
                nonzeros=int(_count_nonzero(w_hat)),
                size=int(w.size),
                bits=bits,
                calibration_seconds=t_cal,
                compress_seconds=t_comp,
            )
    report_rows = []
    for layer in found:
        if layer.path in rows:
            report_rows.append(rows[layer.path])
            continue
        kernel = _get_kernel(params, layer.path)
        report_rows.append(
            LayerReport(
                path=layer.path,
                kind=layer.kind,
                shape=layer.shape,
                view=layer.view,
                settings=None,
                rule=plan[layer.path][1],
                rows=0,
                rel_error=None,
                nonzeros=int(_count_nonzero(jnp.asarray(kernel))),
                size=int(np.prod(layer.shape)),
                bits=None,
                calibration_seconds=0.0,
                compress_seconds=0.0,
            )
        )
    new_variables = {**variables, "params": _replace_kernels(params, floats)}
    qparams = _replace_kernels(params, stored) if method in QUANTIZING_METHODS else None
    report = OneShotReport(
        method=method,
        sequential=sequential,
        layers=tuple(report_rows),
        qparams=qparams,
        seconds=time.perf_counter() - t_start,
        calibration_seconds=calibration_total,
    )
    return new_variables, report


def format_layer_table(report: OneShotReport) -> str:
    """A markdown table of the report's layers (settings, error, nonzeros, seconds).

    Example:
      >>> print(format_layer_table(report))
    """
    header = ["layer", "view", "setting", "rows", "rel. error", "nonzeros", "calib s", "comp s"]
    lines = []
    for r in report.layers:
        if r.settings is None:
            setting = "skipped"
        else:
            setting = ", ".join(f"{k}={v}" for k, v in r.settings.items() if v is not None)
        lines.append(
            [
                r.path,
                f"{r.view[0]}x{r.view[1]}",
                setting,
                f"{r.rows:,}",
                "-" if r.rel_error is None else f"{r.rel_error:.4g}",
                f"{r.nonzeros:,}/{r.size:,}",
                f"{r.calibration_seconds:.2f}",
                f"{r.compress_seconds:.2f}",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(header)]

    def fmt(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    title = f"{report.method} ({'sequential' if report.sequential else 'parallel'})"
    return "\n".join([title, "", fmt(header), sep, *(fmt(row) for row in lines)]) + "\n"
