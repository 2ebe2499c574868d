"""Convolutional classifiers: LeNet-5 style nets and a deeper conv-BN-ReLU net.

Both work on 1-D signals ``(N, L, C)`` and 2-D images ``(N, H, W, C)``; the number of
spatial dimensions is read from the input (a missing channel axis is added).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxopt_models.checks import check_one_of
from jaxopt_models.models.initializers import get_initializer
from jaxopt_models.models.mlp import ActQuant, _quant

POOLS = ("max", "avg", None)


def _as_channels_last(x: jax.Array, spatial_dims: int | None) -> jax.Array:
    """Adds a trailing channel axis to ``(N, L)`` / ``(N, H, W)`` inputs."""
    x = x.astype(jnp.float32)
    if spatial_dims is not None and x.ndim == spatial_dims + 1:
        return x[..., None]
    if x.ndim == 2:  # (N, L) signal
        return x[..., None]
    return x


def pool(x: jax.Array, kind: str | None, window: int = 2) -> jax.Array:
    """Non-overlapping ``window``-sized pooling over every spatial axis of ``x`` (N, ..., C).

    When each spatial size is divisible by ``window`` the pooling is a reshape followed
    by a reduction, which XLA's CPU backend runs much faster than ``reduce_window``;
    otherwise it falls back to ``flax.linen.max_pool`` / ``avg_pool`` with VALID padding.

    Args:
      x: channels-last activations, shape ``(N, *spatial, C)``.
      kind: ``"max"``, ``"avg"`` or ``None`` (identity).
      window: pooling window and stride along each spatial axis.

    Returns:
      The pooled activations, each spatial size divided by ``window`` (floored).
    """
    if kind is None:
        return x
    check_one_of("pool", kind, POOLS)
    spatial = x.shape[1:-1]
    if all(s % window == 0 for s in spatial):
        shape = [x.shape[0]]
        for s in spatial:
            shape += [s // window, window]
        shape.append(x.shape[-1])
        axes = tuple(2 + 2 * i for i in range(len(spatial)))
        y = x.reshape(shape)
        return y.max(axis=axes) if kind == "max" else y.mean(axis=axes)
    dims = (window,) * len(spatial)
    fn = nn.max_pool if kind == "max" else nn.avg_pool
    return fn(x, dims, strides=dims, padding="VALID")


class ConvNet(nn.Module):
    """LeNet-5 style CNN: ``[Conv -> ReLU -> Pool]*`` then ``[Dense -> ReLU]*`` then ``Dense``.

    The defaults are LeNet-5 (LeCun et al., 1998): conv 6@5x5 (SAME) -> pool ->
    conv 16@5x5 (VALID) -> pool -> 120 -> 84 -> classes.

    Attributes:
      features: output channels of each conv layer.
      kernel_size: int (same size on every spatial axis) or one int per conv layer.
      strides: conv stride (int, used on every spatial axis and layer).
      padding: ``"SAME"``/``"VALID"`` for every conv, or one entry per conv layer.
      pool: ``"max"``, ``"avg"`` or ``None`` after every conv layer (window 2).
      hidden: widths of the Dense layers after flattening.
      num_classes: number of output logits.
      kernel_init: initialiser name or callable.
      dropout_rate: dropout after each hidden Dense activation (when ``train``).
      act_quant: optional callable applied to the input of every Conv/Dense layer.
      spatial_dims: 1 or 2 to force the input interpretation; ``None`` infers it.

    Example:
      >>> model = ConvNet(num_classes=10)  # LeNet-5
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    """

    features: Sequence[int] = (6, 16)
    kernel_size: int | Sequence[int] = 5
    strides: int = 1
    padding: str | Sequence[str] = ("SAME", "VALID")
    pool: str | None = "max"
    hidden: Sequence[int] = (120, 84)
    num_classes: int = 10
    kernel_init: Any = "he_normal"
    dropout_rate: float = 0.0
    act_quant: ActQuant = None
    spatial_dims: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        init = get_initializer(self.kernel_init)
        x = _as_channels_last(x, self.spatial_dims)
        nsp = x.ndim - 2
        n = len(self.features)
        ks = [self.kernel_size] * n if isinstance(self.kernel_size, int) else self.kernel_size
        pads = [self.padding] * n if isinstance(self.padding, str) else self.padding
        if len(ks) != n or len(pads) != n:
            raise ValueError(
                f"kernel_size={self.kernel_size!r} and padding={self.padding!r} need one "
                f"entry per conv layer ({n}) or a single value"
            )
        for i, (f, k, p) in enumerate(zip(self.features, ks, pads, strict=True)):
            x = nn.Conv(
                f,
                (k,) * nsp,
                strides=(self.strides,) * nsp,
                padding=p,
                kernel_init=init,
                name=f"Conv_{i}",
            )(_quant(self.act_quant, x))
            x = pool(nn.relu(x), self.pool)
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            x = nn.relu(
                nn.Dense(width, kernel_init=init, name=f"Dense_{i}")(_quant(self.act_quant, x))
            )
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=init, name=f"Dense_{len(self.hidden)}")(
            _quant(self.act_quant, x)
        )


def lenet5(num_classes: int = 10, **kwargs) -> ConvNet:
    """LeNet-5: conv 6@5x5, conv 16@5x5, Dense 120, 84 (about 61k parameters on 28x28)."""
    return ConvNet(num_classes=num_classes, **kwargs)


def lenet5_caffe(num_classes: int = 10, **kwargs) -> ConvNet:
    """Caffe's LeNet-5 variant used by Deep Compression: conv 20@5x5, conv 50@5x5, Dense 500.

    About 431k parameters on 28x28 inputs (VALID convs, max pooling).
    """
    kwargs.setdefault("features", (20, 50))
    kwargs.setdefault("padding", "VALID")
    kwargs.setdefault("hidden", (500,))
    return ConvNet(num_classes=num_classes, **kwargs)


def mnist1d_cnn(num_classes: int = 10, **kwargs) -> ConvNet:
    """The MNIST-1D baseline CNN: three stride-2 convs of 25 channels, then a linear layer."""
    kwargs.setdefault("features", (25, 25, 25))
    kwargs.setdefault("kernel_size", (5, 3, 3))
    kwargs.setdefault("strides", 2)
    kwargs.setdefault("padding", "SAME")
    kwargs.setdefault("pool", None)
    kwargs.setdefault("hidden", ())
    kwargs.setdefault("spatial_dims", 1)
    return ConvNet(num_classes=num_classes, **kwargs)


class DeepCNN(nn.Module):
    """A deeper CNN of ``Conv -> BatchNorm -> ReLU`` blocks grouped in pooled stages.

    Attributes:
      stages: channels of each conv block, grouped by stage; a 2x pool follows each stage.
      kernel_size: conv kernel size on every spatial axis.
      pool: ``"max"`` or ``"avg"`` between stages.
      hidden: Dense widths after global average pooling.
      num_classes: number of output logits.
      kernel_init: initialiser name or callable.
      dropout_rate: dropout before the classifier (when ``train``).
      momentum: BatchNorm running-average momentum.
      act_quant: optional callable applied to the input of every Conv/Dense layer.
      spatial_dims: 1 or 2 to force the input interpretation; ``None`` infers it.

    Example:
      >>> model = DeepCNN()
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
      >>> logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    """

    stages: Sequence[Sequence[int]] = ((32, 32), (64, 64))
    kernel_size: int = 3
    pool: str = "max"
    hidden: Sequence[int] = (128,)
    num_classes: int = 10
    kernel_init: Any = "he_normal"
    dropout_rate: float = 0.0
    momentum: float = 0.9
    act_quant: ActQuant = None
    spatial_dims: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        init = get_initializer(self.kernel_init)
        x = _as_channels_last(x, self.spatial_dims)
        nsp = x.ndim - 2
        i = 0
        for stage in self.stages:
            for f in stage:
                x = nn.Conv(
                    f,
                    (self.kernel_size,) * nsp,
                    padding="SAME",
                    use_bias=False,
                    kernel_init=init,
                    name=f"Conv_{i}",
                )(_quant(self.act_quant, x))
                x = nn.BatchNorm(
                    use_running_average=not train, momentum=self.momentum, name=f"BatchNorm_{i}"
                )(x)
                x = nn.relu(x)
                i += 1
            x = pool(x, self.pool)
        x = x.mean(axis=tuple(range(1, x.ndim - 1)))
        for j, width in enumerate(self.hidden):
            x = nn.relu(
                nn.Dense(width, kernel_init=init, name=f"Dense_{j}")(_quant(self.act_quant, x))
            )
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=init, name=f"Dense_{len(self.hidden)}")(
            _quant(self.act_quant, x)
        )
