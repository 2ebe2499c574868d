"""Quantization over parameter pytrees: weight QAT (``fake_quant_params``) and PTQ.

Leaves are selected by ``filter_fn(path, leaf) -> bool`` where ``path`` is the leaf's
"/"-joined key path, e.g. ``"params/Dense_0/kernel"``; by default every array with more than
one dimension (Dense / Conv kernels) is quantized and biases / norm parameters stay float.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from jaxopt_models.quantization.fake_quant import fake_quant
from jaxopt_models.quantization.qtensor import QTensor, dequantize
from jaxopt_models.quantization.quantize import quantize
from jaxopt_models.tree import is_kernel
from jaxopt_models.typing import PyTree

FilterFn = Callable[[str, Any], bool]
"""``filter_fn(path, leaf) -> bool``: True for leaves to quantize."""


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_to_str(path: tuple[Any, ...]) -> str:
    """Joins a JAX key path into ``"params/Dense_0/kernel"`` form."""
    return "/".join(_key_name(k) for k in path)


def default_filter(path: str, leaf: Any) -> bool:
    """Quantizes floating arrays with more than one dimension (kernels), not biases.

    Example:
      >>> default_filter("Dense_0/kernel", jnp.zeros((3, 4)))
      True
      >>> default_filter("Dense_0/bias", jnp.zeros(4))
      False
    """
    return hasattr(leaf, "dtype") and is_kernel(path, leaf)


def _is_qtensor(x: Any) -> bool:
    return isinstance(x, QTensor)


def _map_selected(fn: Callable[[Any], Any], params: PyTree, filter_fn: FilterFn | None) -> PyTree:
    if filter_fn is None:
        filter_fn = default_filter
    if not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable (path, leaf) -> bool, got {filter_fn!r}.")

    def visit(path, leaf):
        if _is_qtensor(leaf):
            return leaf
        return fn(leaf) if filter_fn(path_to_str(path), leaf) else leaf

    return jax.tree_util.tree_map_with_path(visit, params, is_leaf=_is_qtensor)


def fake_quant_params(
    params: PyTree,
    bits: int = 8,
    *,
    quantizer: Callable[[jax.Array], jax.Array] | None = None,
    filter_fn: FilterFn | None = None,
    **quant_kwargs: Any,
) -> PyTree:
    """Fake-quantizes the selected leaves of ``params`` (weight QAT); use inside the loss.

    Args:
      params: parameter pytree (e.g. Flax ``variables["params"]``).
      bits: bit width for :func:`fake_quant`.
      quantizer: optional ``leaf -> leaf`` callable used instead of :func:`fake_quant`,
        e.g. ``fake_binarize`` or ``functools.partial(fake_ternarize, axis=-1)``.
      filter_fn: ``(path, leaf) -> bool`` selecting leaves; default :func:`default_filter`.
      **quant_kwargs: passed to :func:`fake_quant` (``symmetric``, ``axis``, ``group_size``,
        ``calibration``, ...). ``axis=-1`` (per output channel) is the usual weight choice.

    Returns:
      A pytree like ``params`` with selected leaves replaced by their fake-quantized values;
      gradients flow to the float params through the straight-through estimator.

    Example:
      >>> def loss_fn(params, x, y):
      ...     qparams = fake_quant_params(params, bits=4, axis=-1)
      ...     logits = model.apply({"params": qparams}, x)
      ...     return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    """
    if quantizer is None:
        quantizer = functools.partial(fake_quant, bits=bits, **quant_kwargs)
    elif quant_kwargs:
        raise TypeError(
            f"pass either quantizer or fake_quant keyword arguments, got both "
            f"(quantizer={quantizer!r}, kwargs={sorted(quant_kwargs)})."
        )
    return _map_selected(quantizer, params, filter_fn)


def quantize_params(
    params: PyTree,
    bits: int = 8,
    *,
    quantizer: Callable[[jax.Array], QTensor] | None = None,
    filter_fn: FilterFn | None = None,
    **quant_kwargs: Any,
) -> PyTree:
    """Post-training quantization: replaces the selected leaves by :class:`QTensor` s.

    Args:
      params: parameter pytree.
      bits: bit width for :func:`quantize`.
      quantizer: optional ``leaf -> QTensor`` callable used instead of :func:`quantize`,
        e.g. ``binarize``.
      filter_fn: ``(path, leaf) -> bool``; default :func:`default_filter` (kernels only).
      **quant_kwargs: passed to :func:`quantize` (``symmetric``, ``axis``, ``group_size``,
        ``calibration``, ``power_of_two``).

    Returns:
      A pytree like ``params`` where selected leaves are QTensors (other leaves unchanged).
      Leaves that already are QTensors are left as they are.

    Example:
      >>> params = {"Dense_0": {"kernel": jnp.ones((784, 300)), "bias": jnp.zeros(300)}}
      >>> qparams = quantize_params(params, bits=8, axis=-1)
      >>> type(qparams["Dense_0"]["kernel"]).__name__, size_bytes(params) / size_bytes(qparams)
      ('QTensor', 3.9...)
    """
    if quantizer is None:
        quantizer = functools.partial(quantize, bits=bits, **quant_kwargs)
    elif quant_kwargs:
        raise TypeError(
            f"pass either quantizer or quantize keyword arguments, got both "
            f"(quantizer={quantizer!r}, kwargs={sorted(quant_kwargs)})."
        )
    return _map_selected(quantizer, params, filter_fn)


def dequantize_params(qparams: PyTree) -> PyTree:
    """Replaces every :class:`QTensor` leaf of ``qparams`` by its dequantized float array.

    Example:
      >>> params = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}
      >>> dequantize_params(quantize_params(params, bits=8))["kernel"].shape
      (4, 3)
    """
    return jax.tree.map(
        lambda x: dequantize(x) if _is_qtensor(x) else x, qparams, is_leaf=_is_qtensor
    )
