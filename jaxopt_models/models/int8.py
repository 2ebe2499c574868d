"""Post-training int8 inference for the MLP and ConvNet (LeNet) models.

The pipeline of a PTQ run:

1. :func:`calibrate_activation_ranges` runs the float model on a few batches, captures the
   input of every ``Dense`` / ``Conv`` layer with ``flax.linen.intercept_methods`` and turns
   each into one per-tensor range ``(lo, hi)`` (min-max, percentile or MSE).
2. :func:`fake_quant_apply` is the *fake-quant model*: the float model with per-channel
   symmetric fake-quantized kernels and every layer input fake-quantized with its range.
3. :func:`build_int8_model` stores int8 kernels (per output channel, symmetric) and the
   activation grids; :func:`int8_apply` runs it layer by layer with
   ``quantization.int8_dense`` / ``int8_conv`` (int8 x int8 products, int32 sums, one float
   rescale per layer, max pooling fused into the integer convolution). It computes the same
   function as the fake-quant model up to float rounding of the rescale.

Example:
  >>> model = get_model("lenet5")
  >>> ranges = calibrate_activation_ranges(model, variables, [x_train[:512]])
  >>> net = build_int8_model(model, variables["params"], ranges)
  >>> logits = jax.jit(int8_apply)(net, x_test)
"""

from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models import quantization as qz
from jaxopt_models.models.cnn import ConvNet, pool
from jaxopt_models.models.mlp import MLP
from jaxopt_models.typing import PyTree

SUPPORTED_MODELS = (MLP, ConvNet)
Ranges = dict[str, tuple[float, float]]


def _check_model(model: Any) -> None:
    if not isinstance(model, SUPPORTED_MODELS):
        raise TypeError(
            f"model must be an MLP or a ConvNet (LeNet-300-100 / LeNet-5 style, no "
            f"BatchNorm), got {type(model).__name__}"
        )
    if model.act_quant is not None:
        raise ValueError(
            "model must be the float model (act_quant=None); the activation ranges of "
            "the int8 path come from calibrate_activation_ranges"
        )


def _layer_name(context: Any) -> str:
    return "/".join(str(p) for p in context.module.scope.path)


def capture_layer_inputs(model: nn.Module, variables: PyTree, x: jax.Array) -> dict[str, Any]:
    """The input of every ``Dense`` / ``Conv`` layer of ``model`` on ``x``, by layer name.

    Args:
      model: a Flax module.
      variables: its variables (``{"params": ...}``).
      x: a batch of inputs.

    Returns:
      ``{"Conv_0": array, ..., "Dense_2": array}`` (layer path joined with ``"/"``).

    Example:
      >>> inputs = capture_layer_inputs(model, variables, x[:32])
      >>> inputs["Dense_0"].shape
      (32, 784)
    """
    captured: dict[str, Any] = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, (nn.Dense, nn.Conv)):
            captured[_layer_name(context)] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(variables, x)
    return captured


def calibrate_activation_ranges(
    model: nn.Module,
    variables: PyTree,
    batches: Iterable[jax.Array],
    *,
    bits: int = 8,
    symmetric: bool = False,
    method: Any = "minmax",
) -> Ranges:
    """Per-layer activation ranges from the layer inputs seen on a few calibration batches.

    Args:
      model: the float model.
      variables: its variables.
      batches: input batches (e.g. a few hundred training images in total).
      bits: the activation bit width (used by ``method="mse"``).
      symmetric: calibrate for a symmetric grid.
      method: ``"minmax"``, ``"percentile"``, ``"mse"`` or a calibration object
        (see ``quantization.calibrate_range``).

    Returns:
      ``{layer name: (lo, hi)}`` with Python floats, each range containing 0.

    Example:
      >>> ranges = calibrate_activation_ranges(model, variables, [x_train[:512]])
      >>> ranges["Conv_0"]
      (0.0, 1.0)
    """
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: pass at least one calibration batch")
    apply = jax.jit(lambda v, x: capture_layer_inputs(model, v, x))
    seen: dict[str, list[jax.Array]] = {}
    for x in batches:
        for name, value in apply(variables, jnp.asarray(x)).items():
            seen.setdefault(name, []).append(value.reshape(value.shape[0], -1))
    ranges = {}
    for name, values in seen.items():
        lo, hi = qz.calibrate_range(values, bits, symmetric=symmetric, method=method)
        ranges[name] = (float(lo), float(hi))
    return ranges


def _check_ranges(ranges: Mapping[str, Any], names: Iterable[str]) -> None:
    missing = [n for n in names if n not in ranges]
    if missing:
        raise ValueError(
            f"ranges has no activation range for layers {missing}; got {sorted(ranges)} "
            "(use calibrate_activation_ranges)"
        )


def fake_quant_apply(
    model: nn.Module,
    params: PyTree,
    x: jax.Array,
    ranges: Mapping[str, tuple[float, float]],
    *,
    weight_bits: int = 8,
    act_bits: int = 8,
) -> jax.Array:
    """The fake-quant model: fake-quantized kernels and layer inputs, computed in float.

    Kernels are fake-quantized per output channel (symmetric), the input of every ``Dense``
    / ``Conv`` layer with its calibrated per-tensor range (asymmetric), biases stay float.
    :func:`int8_apply` computes the same function with integer arithmetic.

    Args:
      model: the float model.
      params: its ``params`` collection.
      x: inputs.
      ranges: ``{layer name: (lo, hi)}`` from :func:`calibrate_activation_ranges`.
      weight_bits / act_bits: bit widths.

    Returns:
      The logits.
    """

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, (nn.Dense, nn.Conv)):
            name = _layer_name(context)
            _check_ranges(ranges, [name])
            xq = qz.fake_quant(args[0], act_bits, symmetric=False, clip_range=ranges[name])
            args = (xq, *args[1:])
        return next_fun(*args, **kwargs)

    qparams = qz.fake_quant_params(params, bits=weight_bits, axis=-1)
    with nn.intercept_methods(interceptor):
        return model.apply({"params": qparams}, x)


class Int8Layer(flax.struct.PyTreeNode):
    """One integer Dense / Conv layer: int8 kernel, float bias and its input grid.

    For a Dense layer ``bias`` already holds the input zero point's constant contribution,
    ``bias - x_zero_point * sum_k(w_q) * x_scale * w_scale`` (computed once in float64), so
    the layer needs only the integer sum ``sum_k x_q * w_q``; a Conv layer keeps its bias
    and subtracts the zero-point term itself (padding makes it position-dependent).
    """

    kernel: qz.QTensor
    bias: jax.Array
    x_scale: jax.Array
    x_zero_point: jax.Array
    padding: Any = flax.struct.field(pytree_node=False, default="SAME")


class Int8Model(flax.struct.PyTreeNode):
    """An MLP / ConvNet with int8 kernels and activation grids (see :func:`int8_apply`)."""

    convs: tuple[Int8Layer, ...]
    dense: tuple[Int8Layer, ...]
    strides: int = flax.struct.field(pytree_node=False, default=1)
    pool: str | None = flax.struct.field(pytree_node=False, default=None)
    spatial_dims: int | None = flax.struct.field(pytree_node=False, default=None)
    is_conv: bool = flax.struct.field(pytree_node=False, default=False)


def _layer(params: PyTree, name: str, lo_hi: tuple[float, float], bits: int, padding: Any):
    p = params[name]
    kernel = jnp.asarray(p["kernel"])
    scale, zero_point = qz.scale_and_zero_point(
        jnp.float32(lo_hi[0]), jnp.float32(lo_hi[1]), bits, symmetric=False
    )
    wq = qz.quantize(kernel, 8, axis=-1)
    bias = np.asarray(p["bias"], np.float64)
    if kernel.ndim == 2:  # Dense: fold the zero point's term into the bias
        colsum = np.asarray(wq.values, np.int64).sum(0)
        w_scale = np.asarray(wq.scale, np.float64).reshape(-1)
        bias = bias - int(zero_point) * colsum * float(scale) * w_scale
    return Int8Layer(
        kernel=wq,
        bias=jnp.asarray(bias, jnp.float32),
        x_scale=scale,
        x_zero_point=zero_point,
        padding=padding,
    )


def build_int8_model(
    model: nn.Module, params: PyTree, ranges: Mapping[str, tuple[float, float]], *, act_bits=8
) -> Int8Model:
    """Quantizes a float MLP / ConvNet for :func:`int8_apply`.

    Kernels become int8 :class:`~jaxopt_models.quantization.QTensor` s (symmetric, one scale
    per output channel); every layer input gets the asymmetric ``act_bits`` grid of its
    calibrated range. Biases stay float32 (added after the rescale).

    Args:
      model: the float ``MLP`` or ``ConvNet`` the params belong to.
      params: its ``params`` collection.
      ranges: ``{layer name: (lo, hi)}`` for every Dense / Conv layer.
      act_bits: activation bits, at most 8.

    Returns:
      An :class:`Int8Model` pytree (``quantization.size_bytes`` gives its real size).

    Raises:
      TypeError: an unsupported model; ValueError: a missing range or ``act_bits`` > 8.
    """
    _check_model(model)
    if isinstance(act_bits, bool) or not isinstance(act_bits, int) or not 2 <= act_bits <= 8:
        raise ValueError(f"act_bits={act_bits!r} must be an int in 2..8 for int8 inference")
    if isinstance(model, MLP):
        conv_names, pads = [], []
        dense_names = [f"Dense_{i}" for i in range(len(model.features) + 1)]
    else:
        n = len(model.features)
        conv_names = [f"Conv_{i}" for i in range(n)]
        pads = [model.padding] * n if isinstance(model.padding, str) else list(model.padding)
        dense_names = [f"Dense_{i}" for i in range(len(model.hidden) + 1)]
    _check_ranges(ranges, conv_names + dense_names)
    convs = tuple(
        _layer(params, name, ranges[name], act_bits, pad)
        for name, pad in zip(conv_names, pads, strict=True)
    )
    dense = tuple(_layer(params, name, ranges[name], act_bits, None) for name in dense_names)
    if isinstance(model, MLP):
        return Int8Model(convs=convs, dense=dense)
    return Int8Model(
        convs=convs,
        dense=dense,
        strides=model.strides,
        pool=model.pool,
        spatial_dims=model.spatial_dims,
        is_conv=True,
    )


def _quantize_input(layer: Int8Layer, x: jax.Array) -> jax.Array:
    bits = 8
    return qz.quantize_to_grid(x, layer.x_scale, layer.x_zero_point, bits).astype(jnp.int8)


def int8_apply(net: Int8Model, x: jax.Array) -> jax.Array:
    """Runs an :class:`Int8Model`: integer Dense / Conv layers, float ReLU between them.

    Each layer rounds its float input onto its int8 grid, multiplies by the int8 kernel with
    int32 accumulation, rescales once (``x_scale * w_scale``) and adds the float bias. Max
    pooling after a convolution is fused into the integer convolution. Jit it.

    Args:
      net: from :func:`build_int8_model`.
      x: inputs as for the float model (e.g. ``(N, 28, 28, 1)`` images).

    Returns:
      Float32 logits ``(N, num_classes)``.
    """
    x = jnp.asarray(x, jnp.float32)
    if net.is_conv:
        if net.spatial_dims is not None and x.ndim == net.spatial_dims + 1:
            x = x[..., None]
        elif x.ndim == 2:
            x = x[..., None]
        nsp = x.ndim - 2
        fused = net.pool if net.pool == "max" else None
        for layer in net.convs:
            y = qz.int8_conv(
                _quantize_input(layer, x),
                layer.kernel,
                layer.bias,
                x_scale=layer.x_scale,
                x_zero_point=layer.x_zero_point,
                strides=(net.strides,) * nsp,
                padding=layer.padding,
                pool_window=2 if fused else None,
            )
            x = jax.nn.relu(y)
            if not fused:
                x = pool(x, net.pool)
    x = x.reshape((x.shape[0], -1))
    for i, layer in enumerate(net.dense):
        # The zero point's term is folded into the bias (see Int8Layer).
        x = qz.int8_dense(
            _quantize_input(layer, x), layer.kernel, layer.bias, x_scale=layer.x_scale
        )
        if i + 1 < len(net.dense):
            x = jax.nn.relu(x)
    return x
