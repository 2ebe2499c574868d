"""Pure train / eval steps and their compiled versions."""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxopt_models.training.state import TrainState
from jaxopt_models.typing import PyTree

Batch = dict[str, jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
ParamsFn = Callable[[PyTree], PyTree]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels (optionally smoothed).

    Args:
      logits: ``(N, C)`` scores.
      labels: ``(N,)`` integer labels.
      label_smoothing: mass in ``[0, 1)`` spread uniformly over the classes.

    Returns:
      ``(N,)`` losses.
    """
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def _forward(state: TrainState, params: PyTree, x: jax.Array, *, train: bool, rng=None):
    """Runs the model, returning ``(logits, new_model_state)``."""
    variables = {"params": params, **state.model_state}
    kwargs = {"rngs": {"dropout": rng}} if rng is not None else {}
    if train and state.model_state:
        return state.apply_fn(variables, x, train=True, mutable=list(state.model_state), **kwargs)
    return state.apply_fn(variables, x, train=train, **kwargs), state.model_state


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    loss_fn: LossFn = cross_entropy,
    params_fn: ParamsFn | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on ``batch`` (pure; jit it or use ``make_train_step``).

    Args:
      state: the current ``TrainState``.
      batch: ``{"image": (N, ...), "label": (N,)}``.
      loss_fn: per-example loss ``(logits, labels) -> (N,)``; averaged over the batch.
      params_fn: optional transform of the params inside the loss (e.g. weight
        fake-quantization for QAT); gradients flow through it to the float params.

    Returns:
      ``(new_state, {"loss": scalar, "accuracy": scalar})``.
    """
    rng = jax.random.fold_in(state.rng, state.step)

    def objective(params):
        p = params if params_fn is None else params_fn(params)
        logits, new_model_state = _forward(state, p, batch["image"], train=True, rng=rng)
        return loss_fn(logits, batch["label"]).mean(), (logits, new_model_state)

    (loss, (logits, new_model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params
    )
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    acc = (jnp.argmax(logits, -1) == batch["label"]).mean()
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, model_state=new_model_state
    )
    return new_state, {"loss": loss, "accuracy": acc}


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    loss_fn: LossFn = cross_entropy,
    params_fn: ParamsFn | None = None,
) -> dict[str, jax.Array]:
    """Per-example predictions and losses on ``batch`` in inference mode.

    Args:
      state: a ``TrainState`` (only ``params``, ``model_state`` and ``apply_fn`` are read).
      batch: ``{"image": (N, ...), "label": (N,)}`` (a ``"mask"`` is ignored here).
      loss_fn: per-example loss.
      params_fn: optional params transform (as in ``train_step``).

    Returns:
      ``{"pred": (N,) int32, "loss": (N,) float32}``.
    """
    p = state.params if params_fn is None else params_fn(state.params)
    logits, _ = _forward(state, p, batch["image"], train=False)
    return {
        "pred": jnp.argmax(logits, -1).astype(jnp.int32),
        "loss": loss_fn(logits, batch["label"]),
    }


def make_train_step(
    *,
    loss_fn: LossFn = cross_entropy,
    params_fn: ParamsFn | None = None,
    donate: bool = True,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Any]]]:
    """The compiled ``train_step`` with the state donated (its buffers are reused).

    Args:
      loss_fn: per-example loss.
      params_fn: optional params transform inside the loss.
      donate: donate the input state (do not use it after the call).

    Returns:
      ``step(state, batch) -> (state, metrics)``, jitted.

    Example:
      >>> step = make_train_step()
      >>> state, metrics = step(state, {"image": x, "label": y})
    """
    fn = functools.partial(train_step, loss_fn=loss_fn, params_fn=params_fn)
    return jax.jit(fn, donate_argnums=(0,) if donate else ())


def make_eval_step(
    *, loss_fn: LossFn = cross_entropy, params_fn: ParamsFn | None = None
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """The compiled ``eval_step``."""
    return jax.jit(functools.partial(eval_step, loss_fn=loss_fn, params_fn=params_fn))
