"""Pure train / eval steps and their compiled versions."""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxopt_models.checks import check_one_of
from jaxopt_models.training.parallel import (
    DATA_AXIS,
    PARALLEL_MODES,
    ParallelStep,
    cross_replica_mean,
)
from jaxopt_models.training.sharded import SHARDED_MODES, ShardedStep
from jaxopt_models.training.state import TrainState
from jaxopt_models.typing import PyTree

Batch = dict[str, jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
ParamsFn = Callable[[PyTree], PyTree]
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``augment_fn(rng, inputs) -> inputs``: a jittable batch augmentation."""
TargetFn = Callable[..., jax.Array]
"""``target_fn(inputs, batch, *extra) -> targets``: frozen per-example targets (no gradient)."""


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


def forward(state: TrainState, params: PyTree, x: jax.Array, *, train: bool, rng=None):
    """Runs the model, returning ``(logits, new_model_state)``."""
    variables = {"params": params, **state.model_state}
    kwargs = {"rngs": {"dropout": rng}} if rng is not None else {}
    if train and state.model_state:
        return state.apply_fn(variables, x, train=True, mutable=list(state.model_state), **kwargs)
    return state.apply_fn(variables, x, train=train, **kwargs), state.model_state


def step_rng(state: TrainState, axis_name: str | None = None) -> jax.Array:
    """The PRNG key of this step (dropout), distinct per step and per ``pmap`` device."""
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    return rng


# Folded into the step's key for augmentation, so the dropout key is the same with and
# without it.
_AUGMENT_STREAM = 0x417567


def augment_images(rng: jax.Array, images: jax.Array, augment_fn: AugmentFn | None) -> jax.Array:
    """``augment_fn`` applied to the batch with a key derived from the step's ``rng``."""
    if augment_fn is None:
        return images
    return augment_fn(jax.random.fold_in(rng, _AUGMENT_STREAM), images)


def apply_objective(
    state: TrainState,
    objective: Callable[[PyTree], tuple[jax.Array, tuple[jax.Array, PyTree]]],
    labels: jax.Array,
    *,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update from ``objective(params) -> (loss, (logits, new_model_state))``.

    The shared core of ``train_step`` and the distillation step: differentiates
    ``objective`` w.r.t. ``state.params`` only, averages gradients, batch statistics and
    metrics over ``axis_name`` (``pmap``), applies ``state.tx`` and advances the step.

    Returns:
      ``(new_state, {"loss": scalar, "accuracy": scalar})`` (accuracy of ``logits`` on
      ``labels``).
    """
    (loss, (logits, new_model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params
    )
    grads = cross_replica_mean(grads, axis_name)
    new_model_state = cross_replica_mean(new_model_state, axis_name)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    acc = (jnp.argmax(logits, -1) == labels).mean()
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, model_state=new_model_state
    )
    return new_state, cross_replica_mean({"loss": loss, "accuracy": acc}, axis_name)


def train_step(
    state: TrainState,
    batch: Batch,
    *extra: Any,
    loss_fn: Callable[..., jax.Array] = cross_entropy,
    params_fn: ParamsFn | None = None,
    augment_fn: AugmentFn | None = None,
    target_fn: TargetFn | None = None,
    axis_name: str | None = None,
    input_key: str = "image",
    label_key: str = "label",
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on ``batch`` (pure; jit it or use ``make_train_step``).

    Args:
      state: the current ``TrainState``.
      batch: ``{input_key: (N, ...), label_key: (N, ...)}`` and anything ``target_fn``
        reads.
      *extra: frozen inputs passed to ``target_fn`` (e.g. a teacher's variables); read,
        never differentiated or returned.
      loss_fn: per-example loss ``(logits, labels) -> (N, ...)``, or with ``target_fn``
        ``(logits, targets, labels) -> (N, ...)``; averaged over all its elements.
      params_fn: optional transform of the params inside the loss (e.g. weight
        fake-quantization for QAT); gradients flow through it to the float params.
      augment_fn: optional ``fn(rng, inputs) -> inputs`` applied to the batch first, with a
        key derived from the state's key and step.
      target_fn: optional ``fn(inputs, batch, *extra) -> targets`` computed on the
        (augmented) inputs under ``stop_gradient``, e.g. a frozen teacher's logits
        (``lambda x, batch, variables: teacher.apply_fn(variables, x, train=False)``) or
        logits carried by the batch (``lambda x, batch: batch["teacher_logits"]``).
      axis_name: the ``pmap`` axis when run under ``pmap`` (``make_train_step`` passes
        it): gradients, metrics and batch statistics are averaged over it and each
        device draws its own dropout mask. ``None`` under ``jit``.
      input_key / label_key: the batch keys of the model input and the labels.

    Returns:
      ``(new_state, {"loss": scalar, "accuracy": scalar})``.
    """
    rng = step_rng(state, axis_name)
    inputs = augment_images(rng, batch[input_key], augment_fn)
    labels = batch[label_key]
    targets = None
    if target_fn is not None:
        targets = jax.lax.stop_gradient(target_fn(inputs, batch, *extra))
    elif extra:
        raise TypeError(f"train_step got {len(extra)} extra argument(s) but no target_fn")

    def objective(params):
        p = params if params_fn is None else params_fn(params)
        logits, new_model_state = forward(state, p, inputs, train=True, rng=rng)
        per_example = loss_fn(logits, labels) if target_fn is None else loss_fn(
            logits, targets, labels
        )
        return per_example.mean(), (logits, new_model_state)

    return apply_objective(state, objective, labels, axis_name=axis_name)


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    loss_fn: LossFn = cross_entropy,
    params_fn: ParamsFn | None = None,
    input_key: str = "image",
    label_key: str = "label",
) -> dict[str, jax.Array]:
    """Per-example predictions and losses on ``batch`` in inference mode.

    Args:
      state: a ``TrainState`` (only ``params``, ``model_state`` and ``apply_fn`` are read).
      batch: ``{input_key: (N, ...), label_key: (N, ...)}`` (a ``"mask"`` is ignored here).
      loss_fn: per-example loss ``(logits, labels)``.
      params_fn: optional params transform (as in ``train_step``).
      input_key / label_key: the batch keys of the model input and the labels.

    Returns:
      ``{"pred": (N, ...) int32, "loss": (N, ...) float32}``.
    """
    p = state.params if params_fn is None else params_fn(state.params)
    logits, _ = forward(state, p, batch[input_key], train=False)
    return {
        "pred": jnp.argmax(logits, -1).astype(jnp.int32),
        "loss": loss_fn(logits, batch[label_key]),
    }


def make_train_step(
    step_fn: Callable[..., tuple[TrainState, dict[str, Any]]] | None = None,
    *,
    loss_fn: LossFn | None = None,
    params_fn: ParamsFn | None = None,
    augment_fn: AugmentFn | None = None,
    target_fn: TargetFn | None = None,
    input_key: str = "image",
    label_key: str = "label",
    parallel: str = "none",
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = DATA_AXIS,
    donate: bool = True,
    skip_nonfinite: bool = False,
    param_specs: PyTree | None = None,
) -> ParallelStep:
    """The compiled train step in one of the ``parallel`` modes, state donated.

    Args:
      step_fn: any pure step ``step_fn(state, batch, *extra) -> (state, metrics)`` with
        a scalar ``metrics["loss"]`` (e.g. a distillation step taking the teacher's
        variables as ``extra``); for ``parallel="pmap"`` it must take ``axis_name=`` and
        average its gradients and metrics with ``cross_replica_mean``. Default:
        ``train_step`` with ``loss_fn`` and ``params_fn``.
      loss_fn: per-example loss of the default step (default ``cross_entropy``).
      params_fn: optional params transform inside the loss of the default step (QAT).
      augment_fn: optional batch augmentation of the default step (``data.make_augment``).
      target_fn: optional frozen targets of the default step (see ``train_step``); the
        step is then called ``step(state, batch, *extra)``.
      input_key / label_key: the batch keys of the default step's model input and labels
        (e.g. ``"tokens"`` / ``"targets"`` for a language model).
      parallel: ``"none"`` (jit), ``"sharding"`` (jit over ``mesh``, batch sharded on
        ``axis_name``, state replicated), ``"pmap"``, or over a 2-D ``("data", "tensor")``
        mesh ``"fsdp"`` (params and optimizer state split over ``data`` too) or
        ``"tensor"`` (params split as ``param_specs`` say); see ``training.sharded``.
      mesh: the mesh for ``"sharding"`` (default: all devices on a ``"data"`` axis) or for
        ``"fsdp"``/``"tensor"`` (``make_device_mesh``; default: all devices on ``data``
        for ``"fsdp"``, on ``tensor`` for ``"tensor"``).
      axis_name: the mesh axis the batch is split on / the ``pmap`` axis name.
      donate: donate the input state (do not use it after the call).
      skip_nonfinite: undo a step whose loss or new state is not finite (the step
        counter still advances; ``metrics["skipped"]`` is 1).
      param_specs: ``"fsdp"``/``"tensor"`` only: a ``PartitionSpec`` per param over the
        mesh axes (e.g. ``models.transformer.mesh_specs``); ``None`` with ``"fsdp"``
        splits each param's largest divisible dimension over ``data``.

    Returns:
      A ``ParallelStep``: ``step(state, batch, *extra) -> (state, metrics)``, with
      ``place_state`` / ``local`` / ``process_rows`` for the mode's data layout.

    Example:
      >>> step = make_train_step(parallel="sharding")
      >>> state = step.place_state(state)
      >>> state, metrics = step(state, {"image": x, "label": y})
    """
    if step_fn is None:
        step_fn = functools.partial(
            train_step,
            loss_fn=loss_fn or cross_entropy,
            params_fn=params_fn,
            augment_fn=augment_fn,
            target_fn=target_fn,
            input_key=input_key,
            label_key=label_key,
        )
    elif any(f is not None for f in (loss_fn, params_fn, augment_fn, target_fn)):
        raise TypeError(
            "loss_fn, params_fn, augment_fn and target_fn configure the default train_step; "
            "with step_fn= bind them into step_fn (functools.partial) instead"
        )
    check_one_of("parallel", parallel, (*PARALLEL_MODES, *SHARDED_MODES))
    if parallel in SHARDED_MODES:
        return ShardedStep(
            step_fn,
            parallel=parallel,
            mesh=mesh,
            param_specs=param_specs,
            axis_name=axis_name,
            donate=donate,
            skip_nonfinite=skip_nonfinite,
        )
    if param_specs is not None:
        raise ValueError(
            f"param_specs= is only used with parallel in {SHARDED_MODES}, got "
            f"parallel={parallel!r}"
        )
    return ParallelStep(
        step_fn,
        parallel=parallel,
        mesh=mesh,
        axis_name=axis_name,
        donate=donate,
        skip_nonfinite=skip_nonfinite,
    )


def make_eval_step(
    *,
    loss_fn: LossFn = cross_entropy,
    params_fn: ParamsFn | None = None,
    input_key: str = "image",
    label_key: str = "label",
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """The compiled ``eval_step`` (see its arguments)."""
    return jax.jit(
        functools.partial(
            eval_step,
            loss_fn=loss_fn,
            params_fn=params_fn,
            input_key=input_key,
            label_key=label_key,
        )
    )
