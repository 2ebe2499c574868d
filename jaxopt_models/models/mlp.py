"""Multi-layer perceptron classifiers (LeNet-300-100 and friends)."""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxopt_models.models.initializers import get_initializer

ActQuant = Callable[[jax.Array], jax.Array] | None


def _quant(act_quant: ActQuant, x: jax.Array) -> jax.Array:
    return x if act_quant is None else act_quant(x)


class MLP(nn.Module):
    """Fully connected classifier: flatten, ``Dense -> ReLU`` per hidden width, ``Dense``.

    Attributes:
      features: hidden layer widths, e.g. ``(300, 100)`` for LeNet-300-100.
      num_classes: number of output logits.
      kernel_init: initialiser name (see ``models.KERNEL_INITS``) or callable.
      dropout_rate: dropout after each hidden activation (active only when ``train``).
      act_quant: optional callable applied to the input of every Dense layer
        (activation fake-quantization for QAT); ``None`` leaves activations float.

    Example:
      >>> model = MLP(features=(300, 100), num_classes=10)
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    """

    features: Sequence[int] = (300, 100)
    num_classes: int = 10
    kernel_init: Any = "he_normal"
    dropout_rate: float = 0.0
    act_quant: ActQuant = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        init = get_initializer(self.kernel_init)
        x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
        for i, width in enumerate(self.features):
            x = nn.Dense(width, kernel_init=init, name=f"Dense_{i}")(_quant(self.act_quant, x))
            x = nn.relu(x)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=init, name=f"Dense_{len(self.features)}")(
            _quant(self.act_quant, x)
        )


def lenet300_100(num_classes: int = 10, **kwargs) -> MLP:
    """LeNet-300-100: the MLP 784-300-100-10 of LeCun et al. (1998)."""
    return MLP(features=(300, 100), num_classes=num_classes, **kwargs)
