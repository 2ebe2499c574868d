"""The training state: params, optimizer state, step, extra model collections, RNG."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxopt_models.typing import PyTree


@struct.dataclass
class TrainState:
    """Everything a train step reads and writes, as one pytree.

    Attributes:
      step: ``int32`` scalar, number of optimizer updates applied.
      params: the model's ``params`` collection.
      opt_state: the optimizer's state (including any pruning masks).
      model_state: the other mutable collections, e.g. ``{"batch_stats": ...}``; ``{}``
        for models without any.
      rng: base PRNG key; step ``t`` uses ``fold_in(rng, t)`` (resumable).
      apply_fn: the model's ``apply`` (static).
      tx: the optimizer (static).
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    model_state: PyTree
    rng: jax.Array
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> dict[str, Any]:
        """``{"params": params, **model_state}`` as Flax's ``apply`` expects."""
        return {"params": self.params, **self.model_state}


def create_train_state(
    model: nn.Module,
    rng: jax.Array,
    sample_input: jax.Array,
    tx: optax.GradientTransformation,
) -> TrainState:
    """Initialises ``model`` on ``sample_input`` and the optimizer on its params.

    Args:
      model: a Flax module whose ``__call__(x, train=...)`` returns logits.
      rng: PRNG key; split for initialisation and the training RNG.
      sample_input: one batch of inputs, shape ``(N, ...)`` (values ignored).
      tx: the optimizer.

    Returns:
      A ``TrainState`` at step 0.

    Example:
      >>> state = create_train_state(MLP(), jax.random.key(0), jnp.zeros((1, 784)),
      ...                            optax.adam(1e-3))
    """
    init_rng, train_rng = jax.random.split(rng)
    variables = jax.jit(lambda r, x: model.init(r, x, train=False))(
        init_rng, jnp.asarray(sample_input)
    )
    variables = dict(variables)
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=variables,
        rng=train_rng,
        apply_fn=model.apply,
        tx=tx,
    )


def count_params(params: PyTree) -> int:
    """Total number of scalar entries in a params pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))
