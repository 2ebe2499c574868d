"""Recurrent classifiers (LSTM / GRU) over sequences of vectors."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxopt_models.checks import check_one_of
from jaxopt_models.models.initializers import get_initializer
from jaxopt_models.models.mlp import ActQuant, _quant

CELLS = ("lstm", "gru")


class RNNClassifier(nn.Module):
    """Stacked LSTM or GRU over a sequence, classifying from the last time step.

    Inputs are ``(N, T, F)`` sequences of vectors; ``(N, T)`` signals (e.g. MNIST-1D) get a
    feature axis of size 1, and ``(N, H, W, 1)`` images are read row by row (T=H, F=W*1).

    Attributes:
      cell: ``"lstm"`` or ``"gru"``.
      hidden_size: recurrent state width.
      num_layers: number of stacked recurrent layers.
      num_classes: number of output logits.
      kernel_init: initialiser name or callable for the input kernels and the classifier.
      act_quant: optional callable applied to the classifier's input.

    Example:
      >>> model = RNNClassifier(cell="gru", hidden_size=64)
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 40, 1)))
    """

    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    num_classes: int = 10
    kernel_init: Any = "xavier_uniform"
    act_quant: ActQuant = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_one_of("cell", self.cell, CELLS)
        init = get_initializer(self.kernel_init)
        x = x.astype(jnp.float32)
        if x.ndim == 2:
            x = x[..., None]
        elif x.ndim > 3:
            x = x.reshape(x.shape[0], x.shape[1], -1)
        cell_cls = nn.OptimizedLSTMCell if self.cell == "lstm" else nn.GRUCell
        for i in range(self.num_layers):
            cell = cell_cls(self.hidden_size, kernel_init=init, name=f"cell_{i}")
            x = nn.RNN(cell, name=f"RNN_{i}")(x)
        x = x[:, -1]
        return nn.Dense(self.num_classes, kernel_init=init, name="Dense_0")(
            _quant(self.act_quant, x)
        )
