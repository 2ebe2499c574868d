"""Structural slimming: remove the neurons / conv filters that channel pruning zeroed.

Unstructured sparsity leaves every matrix its full shape; channel pruning zeroes whole
output units (a Dense column, a conv filter). :func:`slim` removes those units and the
matching inputs of the next layer, so the network is really smaller and faster, and
returns a smaller model of the same class whose outputs equal the masked model's.

Supported models are sequential stacks named the Flax way: ``Conv_0, Conv_1, ...``
(each optionally followed by ``BatchNorm_i``), then ``Dense_0, Dense_1, ...``, applied in
index order with an element-wise activation (ReLU by default) after every hidden layer,
and only channel-preserving operations between layers (pooling, flatten of channels-last
activations, global average pooling, dropout). The MLP, ConvNet (LeNet-5) and DeepCNN of
``jaxopt_models.models`` are such stacks.

A hidden unit ``j`` is removed when either

- nothing reads it: every weight of the next layer on input ``j`` is zero; or
- its own kernel slice ``[..., j]`` is all zero (masked). Its output is then the
  constant ``c_j = act(bias_j)`` (through its BatchNorm when there is one). When
  ``c_j == 0`` it is simply dropped; otherwise its contribution is folded into the
  next layer's bias, which is exact for a Dense consumer. A conv consumer pads its
  input with zeros, so a non-zero constant there is not a bias; such a unit is kept
  (mask its bias, or its BatchNorm scale and bias, too to make it removable).

Example:
  >>> masks = pruning.compute_masks(params, 0.5, structure="channels")
  >>> s = slim(model, params, masks)
  >>> logits = s.model.apply({"params": s.params}, x)   # == masked model's logits
"""

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models.typing import PyTree

_LAYER = re.compile(r"^(Conv|Dense|BatchNorm)_(\d+)$")


class Slimmed(NamedTuple):
    """The result of :func:`slim`.

    Attributes:
      model: the smaller module (same class, narrower hidden layers).
      params: its params (masked, removed units and inputs sliced out, constants folded).
      model_state: the other collections (e.g. ``batch_stats``) sliced the same way;
        ``{}`` when none were given.
      masks: the masks sliced like ``params`` (``None`` when no masks were given), to
        keep the remaining pruned weights at zero in further training.
      kept: ``{layer name: int array}``, the original indices of the units each hidden
        layer keeps.
    """

    model: Any
    params: PyTree
    model_state: PyTree
    masks: PyTree | None
    kept: dict[str, np.ndarray]


Rebuild = Callable[[Any, dict[str, int]], Any]
"""``rebuild(model, widths) -> model``: the module with hidden layer ``name`` of width
``widths[name]`` (every hidden layer is listed)."""


def _as_dict(tree: Any, arg: str) -> dict[str, dict[str, Any]]:
    if not isinstance(tree, Mapping):
        raise TypeError(f"{arg} must be a dict of layers, got {type(tree).__name__}")
    out = {}
    for k, v in tree.items():
        if not isinstance(v, Mapping):
            raise ValueError(
                f"{arg}[{k!r}] must be a dict of arrays (a flat stack of layers), got "
                f"{type(v).__name__}"
            )
        out[k] = dict(v)
    return out


def layer_chain(params: PyTree) -> list[str]:
    """The hidden and output layers of a sequential params tree, in application order.

    Args:
      params: ``{"Conv_i": {...}, "BatchNorm_i": {...}, "Dense_j": {...}}``.

    Returns:
      ``["Conv_0", ..., "Dense_0", ...]`` (convs by index, then denses by index).

    Raises:
      ValueError: another top-level name, a layer without a kernel, or a
        ``BatchNorm_i`` without ``Conv_i``.

    Example:
      >>> layer_chain({"Dense_1": {"kernel": k1}, "Dense_0": {"kernel": k0}})
      ['Dense_0', 'Dense_1']
    """
    tree = _as_dict(params, "params")
    convs, denses, norms = [], [], []
    for name, leaves in tree.items():
        m = _LAYER.match(name)
        if m is None:
            raise ValueError(
                f"slim supports sequential stacks of Conv_i / BatchNorm_i / Dense_j layers; "
                f"params has a layer named {name!r} (top-level names: {sorted(tree)})"
            )
        kind, idx = m.group(1), int(m.group(2))
        if kind == "BatchNorm":
            norms.append(idx)
            continue
        if "kernel" not in leaves:
            raise ValueError(f"layer {name!r} has no 'kernel' (leaves: {sorted(leaves)})")
        (convs if kind == "Conv" else denses).append(idx)
    for idx in norms:
        if idx not in convs:
            raise ValueError(f"BatchNorm_{idx} has no matching Conv_{idx} to follow")
    chain = [f"Conv_{i}" for i in sorted(convs)] + [f"Dense_{i}" for i in sorted(denses)]
    if len(chain) < 2:
        raise ValueError(f"slim needs at least two layers, params has {chain}")
    return chain


def _int_list(value: Any) -> list[int] | None:
    """The ints of a (nested) tuple/list of ints, else None."""
    if not isinstance(value, (tuple, list)):
        return None
    out: list[int] = []
    for v in value:
        if isinstance(v, (tuple, list)):
            inner = _int_list(v)
            if inner is None:
                return None
            out += inner
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.append(int(v))
        else:
            return None
    return out


def _replace_ints(value: Any, new: list[int]) -> Any:
    """``value`` with its ints replaced, in order, by ``new`` (nesting kept)."""
    it = iter(new)

    def rec(v):
        if isinstance(v, (tuple, list)):
            return type(v)(rec(x) for x in v)
        return next(it)

    return rec(value)


def rebuild_by_widths(model: Any, old: dict[str, int], new: dict[str, int]) -> Any:
    """The default ``rebuild`` of :func:`slim`: ``model`` with its width attributes changed.

    The module attribute whose (flattened) ints equal the old widths of the hidden conv
    layers (e.g. ``features=(20, 50)`` or ``stages=((32, 32), (64, 64))``), and the one
    equal to the old widths of the hidden Dense layers (e.g. ``hidden=(500,)`` or an
    MLP's ``features=(300, 100)``), get the new widths, nesting kept.

    Args:
      model: the Flax module (a dataclass with ``clone``).
      old: ``{hidden layer name: width}`` of ``model``.
      new: ``{hidden layer name: new width}``.

    Returns:
      ``model.clone(**changed_attributes)`` (``model`` itself when nothing changes).

    Raises:
      ValueError: when no attribute, or more than one, holds a width list that changes;
        pass your own ``rebuild`` to :func:`slim` then.

    Example:
      >>> rebuild_by_widths(MLP(features=(300, 100)), {"Dense_0": 300, "Dense_1": 100},
      ...                   {"Dense_0": 120, "Dense_1": 40}).features
      (120, 40)
    """
    fields = [
        f.name for f in dataclasses.fields(model) if f.name not in ("parent", "name") and f.init
    ]
    updates: dict[str, Any] = {}
    for kind in ("Conv", "Dense"):
        names = sorted(
            (n for n in old if n.startswith(kind + "_")), key=lambda n: int(n[len(kind) + 1 :])
        )
        old_w = [old[n] for n in names]
        new_w = [new[n] for n in names]
        if old_w == new_w:
            continue
        matches = [f for f in fields if _int_list(getattr(model, f)) == old_w]
        if len(matches) != 1:
            found = "no attribute" if not matches else f"several attributes {matches}"
            raise ValueError(
                f"cannot rebuild {type(model).__name__}: {found} holds the hidden {kind} "
                f"widths {old_w}; pass rebuild=(model, widths) -> model to slim"
            )
        if matches[0] in updates:
            raise ValueError(
                f"cannot rebuild {type(model).__name__}: attribute {matches[0]!r} matches both "
                "the conv and the dense widths; pass rebuild= to slim"
            )
        updates[matches[0]] = _replace_ints(getattr(model, matches[0]), new_w)
    return model.clone(**updates) if updates else model


def slim(
    model: Any,
    params: PyTree,
    masks: PyTree | None = None,
    *,
    model_state: PyTree | None = None,
    activation: Callable[[Any], Any] = jax.nn.relu,
    bn_epsilon: float = 1e-5,
    rebuild: Rebuild | None = None,
) -> Slimmed:
    """Removes the hidden units that channel pruning zeroed and the next layers' inputs.

    Args:
      model: the Flax module the params belong to (see the module docstring for the
        supported stacks).
      params: its params ``{"Conv_i" | "BatchNorm_i" | "Dense_j": {...}}``.
      masks: optional boolean masks like ``params`` (``None`` leaves keep a leaf whole);
        the masked weights are zeroed first. Without masks, zero weights count as pruned.
      model_state: optional other collections, e.g. ``{"batch_stats": {...}}``
        (BatchNorm running statistics), sliced with their channels.
      activation: the element-wise activation after every hidden layer; it gives the
        constant output ``activation(bias)`` of a unit whose kernel is all zero.
      bn_epsilon: the BatchNorm epsilon (Flax's default), for those constants.
      rebuild: ``(model, {hidden layer: width}) -> model``; default: change the one
        attribute holding the conv widths and the one holding the Dense widths
        (``features`` / ``hidden`` / ``stages`` of our models), found by value.

    Returns:
      A :class:`Slimmed` ``(model, params, model_state, masks, kept)``: applying
      ``model`` to ``params`` (and ``model_state``) gives the masked model's outputs up to
      float rounding (constants folded into biases change the summation order).

    Raises:
      ValueError / TypeError: an unsupported params structure, masks that do not match,
        inconsistent layer shapes, or a model the default ``rebuild`` cannot change.

    Example:
      >>> masks = pruning.compute_masks(pruning.magnitude_scores(params), 0.5,
      ...                               structure="channels")
      >>> s = slim(model, params, masks)
      >>> s.model.apply({"params": s.params}, x)
    """
    chain = layer_chain(params)
    P = {k: {n: np.asarray(v) for n, v in d.items()} for k, d in _as_dict(params, "params").items()}
    M = None
    if masks is not None:
        mask_tree = _as_dict(masks, "masks")
        if sorted(mask_tree) != sorted(P):
            raise ValueError(f"masks has layers {sorted(mask_tree)}, params has {sorted(P)}")
        M = {}
        for k, d in mask_tree.items():
            if sorted(d) != sorted(P[k]):
                raise ValueError(f"masks[{k!r}] has leaves {sorted(d)}, params has {sorted(P[k])}")
            M[k] = {}
            for n, m in d.items():
                if m is None:
                    M[k][n] = None
                    continue
                m = np.asarray(m).astype(bool)
                if m.shape != P[k][n].shape:
                    raise ValueError(
                        f"mask {k}/{n} has shape {m.shape}, the param has {P[k][n].shape}"
                    )
                M[k][n] = m
                P[k][n] = np.where(m, P[k][n], np.zeros((), P[k][n].dtype))
    state = {}
    if model_state:
        state = {
            col: {
                k: {n: np.asarray(v) for n, v in d.items()} for k, d in _as_dict(tree, col).items()
            }
            for col, tree in dict(model_state).items()
        }

    def norm_of(name: str) -> str | None:
        bn = "BatchNorm_" + name.split("_")[1]
        return bn if name.startswith("Conv_") and bn in P else None

    old_widths = {name: int(P[name]["kernel"].shape[-1]) for name in chain[:-1]}
    kept: dict[str, np.ndarray] = {}
    for i, name in enumerate(chain[:-1]):
        nxt = chain[i + 1]
        k = P[name]["kernel"]
        width = k.shape[-1]
        dead_out = np.all(k.reshape(-1, width) == 0, axis=0)
        pre = P[name].get("bias", np.zeros(width, k.dtype)).astype(np.float64)
        if pre.shape != (width,):
            raise ValueError(f"{name}/bias has shape {pre.shape}, expected ({width},)")
        bn = norm_of(name)
        if bn is not None:
            stats = state.get("batch_stats", {}).get(bn)
            if stats is None:
                raise ValueError(f"{bn} needs its running statistics: pass model_state")
            scale = P[bn].get("scale", np.ones(width)).astype(np.float64)
            shift = P[bn].get("bias", np.zeros(width)).astype(np.float64)
            mean, var = stats["mean"].astype(np.float64), stats["var"].astype(np.float64)
            pre = (pre - mean) * scale / np.sqrt(var + bn_epsilon) + shift
        const = np.asarray(activation(jnp.asarray(pre, jnp.float32)), np.float64)

        kn = P[nxt]["kernel"]
        out = kn.shape[-1]
        if nxt.startswith("Dense_"):
            if kn.ndim != 2 or kn.shape[0] % width:
                raise ValueError(
                    f"{nxt}/kernel has shape {kn.shape}: its inputs are not a whole number "
                    f"of copies of {name}'s {width} channels"
                )
            grouped = kn.reshape(-1, width, out)  # (positions, channels, out), channels last
            unused = np.all(grouped == 0, axis=(0, 2))
            fold = dead_out & ~unused & (const != 0)
            removable = unused | dead_out
            if fold.any() and "bias" not in P[nxt]:
                removable &= ~fold
                fold[:] = False
        else:
            if kn.ndim < 3 or kn.shape[-2] != width:
                raise ValueError(
                    f"{nxt}/kernel has shape {kn.shape}, expected {width} input channels "
                    f"(from {name})"
                )
            unused = np.all(np.moveaxis(kn, -2, 0).reshape(width, -1) == 0, axis=1)
            fold = np.zeros(width, bool)
            removable = unused | (dead_out & (const == 0))
        keep = ~removable
        if not keep.any():
            keep[0] = True  # keep one unit so the layer still exists (its output is exact)
            fold[0] = False
        fold &= ~keep

        if fold.any():  # constant inputs of a Dense layer: move them into its bias
            contrib = np.einsum("pco,c->o", grouped[:, fold, :].astype(np.float64), const[fold])
            b = P[nxt]["bias"]
            P[nxt]["bias"] = (b.astype(np.float64) + contrib).astype(b.dtype)

        def cut_out(d, leaves, keep=keep):
            if d is None:
                return
            for n in leaves:
                if d.get(n) is not None:
                    d[n] = d[n][..., keep]

        cut_out(P[name], ("kernel", "bias"))
        if M is not None:
            cut_out(M[name], ("kernel", "bias"))
        if bn is not None:
            cut_out(P[bn], list(P[bn]))
            if M is not None:
                cut_out(M[bn], list(M[bn]))
            for col in state.values():
                if bn in col:
                    cut_out(col[bn], list(col[bn]))

        def cut_in(x, keep=keep):
            if x is None:
                return None
            if nxt.startswith("Dense_"):
                return x.reshape(-1, width, out)[:, keep, :].reshape(-1, out)
            return x[..., keep, :]

        P[nxt]["kernel"] = cut_in(kn)
        if M is not None:
            M[nxt]["kernel"] = cut_in(M[nxt]["kernel"])
        kept[name] = np.flatnonzero(keep)

    new_widths = {name: int(P[name]["kernel"].shape[-1]) for name in chain[:-1]}
    if new_widths == old_widths:
        new_model = model
    elif rebuild is None:
        new_model = rebuild_by_widths(model, old_widths, new_widths)
    else:
        new_model = rebuild(model, new_widths)

    def to_jax(tree):
        return {
            k: {n: (None if v is None else jnp.asarray(v)) for n, v in d.items()}
            for k, d in tree.items()
        }

    new_state = {col: to_jax(tree) for col, tree in state.items()}
    return Slimmed(new_model, to_jax(P), new_state, None if M is None else to_jax(M), kept)
