"""Weight-only quantized inference: integer kernels dequantized on the fly inside ``jit``.

A one-shot compressed model (``models.compress_model``) stores its kernels as
:class:`~jaxopt_models.quantization.QTensor` s (e.g. group-wise int4 / int3 from GPTQ),
optionally bit-packed with ``quantization.pack`` (4 or 3 bits per value), and keeps every
other leaf float. This module runs such a model:

- :func:`weight_only_dense` is the Dense layer ``y = x @ W + b`` on a quantized ``W``: inside
  the compiled call the integers are read, converted and scaled in one elementwise pass
  (``(v - z) * s`` per group) that feeds one matrix product. Bit-packed 2-, 4- and 8-bit
  kernels are read straight from their bytes: byte ``j`` of a row holds ``8 / bits``
  consecutive output columns, so each bit plane (``(packed >> (i * bits)) & mask``) is the
  kernel's every ``8 / bits``-th column; one product per plane, and the outputs are
  interleaved back (no weight-sized shuffle). Other widths (3 bits) are unpacked first.

  Why not integers into the product: XLA:CPU's matrix products take float operands, so
  a float copy of ``W`` is written per call whatever the formulation; scaling it in the same
  pass costs nothing, while applying scales to per-group partial sums
  (``sum_g s_g * x_g @ (v_g - z_g)``) needs a batched product over the groups, which
  XLA:CPU ran up to 7x slower (16 rows of a ``512 x 2048`` kernel, groups of 128). On the
  CPU the per-call conversion makes a quantized product slower than the float one at batch
  1 (``benchmarks/lm_decode_quantized.py``); what it saves is memory.
- :func:`apply_with_qtensors` runs any Flax model whose ``params`` hold quantized kernels:
  every Dense-like layer (``nn.Dense``, ``nn.DenseGeneral``, the transformer's head
  projections) with a quantized kernel goes through :func:`weight_only_dense`; any other
  quantized leaf (a convolution kernel, say) is dequantized inside the compiled function.
- :class:`QuantizedKernel` is the stored form when a plain QTensor is not enough: a kernel
  whose ``(in, out)`` matrix view was quantized (a convolution or a head projection), or
  one with a per-input multiplier (AWQ, SmoothQuant) or dynamic activation quantization
  (SmoothQuant's W8A8).

Example:
  >>> q = quantization.gptq(kernel, hessian, bits=4, group_size=32)
  >>> y = jax.jit(weight_only_dense)(x, quantization.pack(q), bias)
  >>> logits = jax.jit(functools.partial(apply_with_qtensors, model))(qvariables, x)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxopt_models import quantization as qz
from jaxopt_models.checks import check_one_of
from jaxopt_models.models import _linear
from jaxopt_models.tree import named_leaves
from jaxopt_models.typing import PyTree

ACTIVATIONS = ("per_token", "per_tensor")


@jax.tree_util.register_pytree_node_class
class QuantizedKernel:
    """A kernel stored as a quantized ``(in, out)`` matrix with an optional input transform.

    The layer computes ``y = act(x_rows * input_scale) @ dequantize(qweight)``, where
    ``x_rows`` is the ``(rows, in)`` view of its input and ``act`` rounds every row (or the
    whole tensor) onto a symmetric ``act_bits`` grid when ``act_bits`` is set. Without
    ``act_bits`` this is the float kernel ``input_scale[:, None] * dequantize(qweight)``
    reshaped to ``shape`` (:func:`dequantize_kernel`).

    Children (arrays): ``qweight`` (a QTensor or PackedQTensor of shape ``(in, out)``) and
    ``input_scale`` (``(in,)`` float multiplier or None). Static: ``shape`` (the kernel's own
    shape), ``act_bits`` (None or 2..16) and ``activations`` (``"per_token"`` /
    ``"per_tensor"``).

    Example:
      >>> k = QuantizedKernel(quantization.quantize(w, 4, axis=-1), None, w.shape)
      >>> dequantize_kernel(k).shape == w.shape
      True
    """

    __slots__ = ("qweight", "input_scale", "shape", "act_bits", "activations")

    def __init__(
        self,
        qweight: Any,
        input_scale: Any,
        shape: tuple[int, ...],
        act_bits: int | None = None,
        activations: str = "per_token",
    ):
        self.qweight = qweight
        self.input_scale = input_scale
        self.shape = tuple(int(d) for d in shape)
        self.act_bits = None if act_bits is None else int(act_bits)
        self.activations = activations

    def tree_flatten(self):
        aux = (self.shape, self.act_bits, self.activations)
        return (self.qweight, self.input_scale), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def dtype(self) -> jnp.dtype:
        """The float dtype of the kernel (that of the quantized one)."""
        return self.qweight.dtype

    def __repr__(self) -> str:
        return (
            f"QuantizedKernel(shape={self.shape}, qweight={self.qweight!r}, "
            f"input_scale={'None' if self.input_scale is None else 'set'}, "
            f"act_bits={self.act_bits}, activations={self.activations!r})"
        )


def is_quantized(x: Any) -> bool:
    """Whether ``x`` is a quantized kernel leaf (QTensor, PackedQTensor, QuantizedKernel)."""
    return isinstance(x, (qz.QTensor, qz.PackedQTensor, QuantizedKernel))


def _as_qtensor(q: Any) -> qz.QTensor:
    return qz.unpack(q) if isinstance(q, qz.PackedQTensor) else q


def dequantize_kernel(kernel: Any) -> jax.Array:
    """The float kernel a quantized leaf stands for (arrays pass through unchanged).

    Args:
      kernel: a QTensor, PackedQTensor, :class:`QuantizedKernel` or a float array.

    Returns:
      The float kernel in the quantized tensor's dtype; for a QuantizedKernel
      ``input_scale[:, None] * dequantize(qweight)`` reshaped to ``kernel.shape`` (its
      activation quantization, if any, is not part of the kernel).

    Example:
      >>> dequantize_kernel(quantization.pack(quantization.quantize(w, 4, axis=-1))).shape
      (64, 32)
    """
    if isinstance(kernel, QuantizedKernel):
        w = qz.dequantize(_as_qtensor(kernel.qweight))
        if kernel.input_scale is not None:
            w = w * kernel.input_scale.astype(w.dtype)[:, None]
        return w.reshape(kernel.shape)
    if isinstance(kernel, (qz.QTensor, qz.PackedQTensor)):
        return qz.dequantize(_as_qtensor(kernel))
    return kernel


def dequantize_tree(tree: PyTree) -> PyTree:
    """Every quantized leaf of ``tree`` replaced by its float kernel (:func:`dequantize_kernel`).

    Example:
      >>> float_params = dequantize_tree(qparams)
    """
    return jax.tree.map(dequantize_kernel, tree, is_leaf=is_quantized)


def _check_matrix(q: Any) -> None:
    if len(q.shape) != 2:
        raise ValueError(
            f"weight_only_dense needs a 2-D (in, out) quantized kernel, got shape {q.shape}"
        )


def _plane_layout(p: qz.PackedQTensor) -> bool:
    """Whether a packed ``(in, out)`` kernel can be read plane by plane (see the module doc)."""
    return (
        p.bits in (2, 4, 8)
        and len(p.shape) == 2
        and p.shape[1] % (8 // p.bits) == 0
        and p.group_axis in (None, 0)
    )


def _columns(a: jax.Array, i: int, per: int) -> jax.Array:
    """Columns ``i::per`` of a per-column array (last axis ``out``); broadcast ones as is."""
    if a.ndim == 0 or a.shape[-1] == 1:
        return a
    return a.reshape(*a.shape[:-1], a.shape[-1] // per, per)[..., i]


def _plane_kernels(p: qz.PackedQTensor, dtype: Any) -> list[jax.Array]:
    """The float ``(in, out / per)`` kernels of columns ``i::per`` of a packed kernel.

    Each is ``(codes + qmin - zero_point) * scale``, equal to ``dequantize`` (small integers
    are exact in float32) with one conversion per weight.
    """
    per = 8 // p.bits
    n_in, n_out = p.shape
    mask = (1 << p.bits) - 1
    compute = jnp.result_type(p.scale.dtype, jnp.float32)
    qmin = qz.integer_range(p.bits, p.symmetric)[0]
    offset = jnp.asarray(qmin, compute)
    if p.zero_point is not None:
        offset = offset - p.zero_point.astype(compute)
    grouped = (n_in, n_out // per)
    if p.group_size is not None:
        grouped = (n_in // p.group_size, p.group_size, n_out // per)
    rows = p.packed.reshape(n_in, n_out // per)
    planes = []
    for i in range(per):
        codes = (rows >> (i * p.bits)) & mask if per > 1 else rows
        w = (codes.astype(compute).reshape(grouped) + _columns(offset, i, per)) * _columns(
            p.scale.astype(compute), i, per
        )
        planes.append(w.reshape(n_in, n_out // per).astype(p.dtype).astype(dtype))
    return planes


def _quantized_matmul(x: jax.Array, q: Any, dtype: Any, precision: Any) -> jax.Array:
    """``x @ dequantize(q)`` for ``(rows, in)`` ``x``, the kernel dequantized in the call."""
    if isinstance(q, qz.PackedQTensor) and _plane_layout(q):
        ys = [jnp.matmul(x, w, precision=precision) for w in _plane_kernels(q, dtype)]
        return jnp.stack(ys, axis=-1).reshape(x.shape[0], q.shape[1])
    w = qz.dequantize(_as_qtensor(q)).astype(dtype)
    return jnp.matmul(x, w, precision=precision)


def transform_input(kernel: Any, rows: jax.Array) -> jax.Array:
    """``act(rows * input_scale)`` of a :class:`QuantizedKernel` (other kernels: ``rows``).

    Args:
      kernel: the layer's stored kernel.
      rows: ``(rows, in)`` inputs.

    Returns:
      The inputs the quantized matrix multiplies.
    """
    if not isinstance(kernel, QuantizedKernel):
        return rows
    if kernel.input_scale is not None:
        rows = rows * kernel.input_scale.astype(rows.dtype)
    if kernel.act_bits is not None:
        axis = 0 if kernel.activations == "per_token" else None
        rows = qz.fake_quant(rows, kernel.act_bits, symmetric=True, axis=axis)
    return rows


def weight_only_dense(
    x: jax.Array,
    kernel: Any,
    bias: jax.Array | None = None,
    *,
    dtype: Any = None,
    precision: Any = None,
) -> jax.Array:
    """A Dense layer ``x @ W + b`` on a quantized ``W``, dequantized on the fly.

    The stored integers are what the compiled function reads: they are converted and scaled
    in one fused pass feeding the matrix product (see the module docstring; a bit-packed
    2-, 4- or 8-bit kernel is read plane by plane without unpacking). Jit it (or the model
    around it).

    Args:
      x: ``(..., in)`` inputs.
      kernel: a QTensor or PackedQTensor of shape ``(in, out)`` (any bit width, e.g. int4 /
        int3 group-wise), or a :class:`QuantizedKernel` whose ``qweight`` is one (its input
        multiplier and activation quantization are applied to ``x`` first).
      bias: optional ``(out,)`` bias.
      dtype: compute dtype (default: the result type of ``x`` and the kernel's dtype).
      precision: ``jax.lax`` precision of the matrix products.

    Returns:
      ``(..., out)`` outputs in ``dtype``.

    Raises:
      TypeError: ``kernel`` is not quantized. ValueError: it is not 2-D or ``x`` does not
      have its ``in`` features.

    Example:
      >>> q = quantization.quantize(w, 4, symmetric=False, axis=-1, group_size=32)
      >>> y = weight_only_dense(x, quantization.pack(q), b)
      >>> bool(jnp.allclose(y, x @ quantization.dequantize(q) + b, atol=1e-5))
      True
    """
    if not is_quantized(kernel):
        raise TypeError(
            "kernel must be a QTensor, PackedQTensor or QuantizedKernel, got "
            f"{type(kernel).__name__}; use a plain matmul for float kernels"
        )
    q = kernel.qweight if isinstance(kernel, QuantizedKernel) else kernel
    _check_matrix(q)
    if x.shape[-1] != q.shape[0]:
        raise ValueError(
            f"x must have shape (..., {q.shape[0]}) for a kernel of shape {q.shape}, got {x.shape}"
        )
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(x.dtype, q.dtype)
    lead = x.shape[:-1]
    rows = transform_input(kernel, x.reshape(-1, x.shape[-1]).astype(dtype))
    y = _quantized_matmul(rows, q, dtype, precision)
    if bias is not None:
        y = y + jnp.asarray(bias).astype(dtype).reshape(1, -1)
    return y.reshape(*lead, q.shape[1])


def _module_dtype(module: Any, x: jax.Array, kernel: Any) -> Any:
    dtype = getattr(module, "dtype", None)
    if dtype is None and hasattr(module, "cfg"):
        dtype = getattr(module.cfg, "dtype", None)
    return dtype if dtype is not None else jnp.result_type(x.dtype, kernel.dtype)


def _kernel_shape(kernel: Any) -> tuple[int, ...]:
    return tuple(kernel.shape)


def quantized_kernels(params: PyTree) -> dict[str, Any]:
    """``{module path: quantized kernel leaf}`` of a params tree (leaves named ``kernel``).

    Example:
      >>> sorted(quantized_kernels({"Dense_0": {"kernel": q, "bias": b}}))
      ['Dense_0']
    """
    out = {}
    for name, leaf in named_leaves(params, is_leaf=is_quantized):
        head, _, last = name.rpartition("/")
        if last == "kernel" and is_quantized(leaf):
            out[head] = leaf
    return out


def apply_with_qtensors(
    model: nn.Module, variables: PyTree, *args: Any, on_the_fly: bool = True, **kwargs: Any
) -> Any:
    """``model.apply(variables, *args, **kwargs)`` for variables with quantized kernels.

    Dense-like layers (``nn.Dense``, ``nn.DenseGeneral``, head projections) whose kernel is
    quantized run :func:`weight_only_dense` (with ``on_the_fly``), every other quantized
    leaf is dequantized inside the call; a :class:`QuantizedKernel`'s input multiplier and
    activation quantization are applied to the layer's input. Jit the call: the integer
    kernels are then what the device stores, and the dequantization is part of the
    compiled function.

    Args:
      model: the Flax module the variables belong to.
      variables: ``{"params": ..., ...}`` where kernel leaves may be QTensor,
        PackedQTensor or QuantizedKernel (e.g. ``report.qparams`` of ``compress_model``).
      *args: the model's inputs.
      on_the_fly: False dequantizes every kernel first (the reference path).
      **kwargs: passed to ``model.apply`` (``train=False``, ``mutable=...``).

    Returns:
      What ``model.apply`` returns.

    Raises:
      ValueError: activation quantization on a convolution (it has no per-row input).

    Example:
      >>> fn = jax.jit(functools.partial(apply_with_qtensors, model))
      >>> logits = fn({"params": qparams}, x)
    """
    if not isinstance(on_the_fly, bool):
        raise TypeError(f"on_the_fly must be a bool, got {on_the_fly!r}")
    variables = nn.meta.unbox(variables)
    quantized = quantized_kernels(variables.get("params", {}))
    float_variables = dequantize_tree(variables)

    def interceptor(next_fun, margs, mkwargs, context):
        if context.method_name != "__call__" or not margs:
            return next_fun(*margs, **mkwargs)
        module = context.module
        kind = _linear.linear_kind(module)
        kernel = quantized.get(_linear.module_path(module)) if kind else None
        if kernel is None:
            return next_fun(*margs, **mkwargs)
        x = margs[0]
        if kind not in _linear.DENSE_KINDS:
            if isinstance(kernel, QuantizedKernel) and kernel.act_bits is not None:
                raise ValueError(
                    f"layer {_linear.module_path(module)!r}: activation quantization needs a "
                    "Dense-like layer, not a convolution"
                )
            # the dequantized kernel (input multiplier folded in) is already in the variables
            return next_fun(*margs, **mkwargs)
        rows, lead = _linear.to_rows(kind, module, x)
        dtype = _module_dtype(module, x, kernel)
        if on_the_fly:
            bias = None
            if module.has_variable("params", "bias"):
                bias = module.get_variable("params", "bias").reshape(-1)
            y = weight_only_dense(
                rows, kernel, bias, dtype=dtype, precision=getattr(module, "precision", None)
            )
            out_shape = _kernel_shape(kernel)[_linear.num_input_axes(kind, module) :]
            return y.reshape(*lead, *out_shape)
        if isinstance(kernel, QuantizedKernel) and kernel.act_bits is not None:
            # float path: y = act(x * m) @ W_q = (act(x * m) / m) @ (m * W_q)
            rows = rows.astype(dtype)
            scale = kernel.input_scale
            moved = transform_input(kernel, rows)
            rows = moved if scale is None else moved / scale.astype(dtype)
            x = _linear.from_rows(kind, module, rows, x)
        return next_fun(x, *margs[1:], **mkwargs)

    with nn.intercept_methods(interceptor):
        return model.apply(float_variables, *args, **kwargs)


def check_activations(activations: Any, field: str = "activations") -> str:
    """Returns ``activations`` after checking it is ``"per_token"`` or ``"per_tensor"``."""
    return check_one_of(field, activations, ACTIVATIONS)


def stored_bytes(tree: PyTree) -> int:
    """Bytes ``tree`` stores with every QTensor bit-packed (``quantization.size_bytes``).

    Example:
      >>> stored_bytes({"Dense_0": {"kernel": quantization.quantize(w, 4, axis=-1)}})
      1152
    """
    packed = jax.tree.map(
        lambda x: qz.pack(x) if isinstance(x, qz.QTensor) else x,
        tree,
        is_leaf=lambda x: isinstance(x, (qz.QTensor, qz.PackedQTensor)),
    )
    return qz.size_bytes(packed)
