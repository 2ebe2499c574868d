"""Teacher-student distillation: the compiled train step and ``train_and_distill``.

Only the student is differentiated and optimized. The teacher is a ``Teacher`` (apply
function + variables) whose variables enter the compiled step as a frozen argument: they
are never part of the student's ``TrainState``, its optimizer state or its checkpoints.
Teacher logits are computed inside the same compiled step, or once for the whole training
set (``compute_teacher_logits``) and gathered per batch on the device.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxopt_models.checks import check_one_of
from jaxopt_models.data import Dataset, eval_batches, steps_per_epoch
from jaxopt_models.data.augment import AugmentFn
from jaxopt_models.distillation import (
    distillation_loss,
    mse_logits_loss,
    validate_alpha,
    validate_temperature,
)
from jaxopt_models.models import get_model
from jaxopt_models.training.config import augment_from_config
from jaxopt_models.training.distributed import initialize_distributed
from jaxopt_models.training.loop import fit, load_dataset, model_kwargs
from jaxopt_models.training.optimizers import make_optimizer
from jaxopt_models.training.parallel import ParallelStep
from jaxopt_models.training.state import TrainState, count_params, create_train_state
from jaxopt_models.training.steps import (
    apply_objective,
    augment_images,
    cross_entropy,
    forward,
    make_eval_step,
    make_train_step,
    step_rng,
)
from jaxopt_models.typing import PyTree

Batch = dict[str, jax.Array]
DistillLossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
ParamsFn = Callable[[PyTree], PyTree]

DISTILL_LOSSES = ("kl", "mse")


class Teacher(NamedTuple):
    """A frozen teacher model.

    Attributes:
      apply_fn: Flax ``apply``; called as ``apply_fn(variables, x, train=False)``.
      variables: all of the teacher's collections (``params`` and e.g. ``batch_stats``).

    Example:
      >>> teacher_state, _ = train_and_evaluate(teacher_config, "runs/teacher")
      >>> teacher = Teacher.from_state(teacher_state)
    """

    apply_fn: Callable[..., jax.Array]
    variables: PyTree

    @classmethod
    def from_state(cls, state: TrainState) -> "Teacher":
        """The teacher of a trained ``TrainState`` (its optimizer state is dropped)."""
        return cls(apply_fn=state.apply_fn, variables=state.variables)


def make_distill_loss(kind: str = "kl", *, temperature: float, alpha: float) -> DistillLossFn:
    """Builds a per-example ``(student_logits, teacher_logits, labels) -> (N,)`` loss.

    Args:
      kind: ``"kl"``: ``alpha * kd_loss(T) + (1 - alpha) * CE`` (Hinton et al.);
        ``"mse"``: ``alpha * mse_logits_loss + (1 - alpha) * CE`` (``temperature`` unused).
      temperature: softmax temperature ``T > 0``.
      alpha: weight in ``[0, 1]`` of the teacher term.

    Returns:
      The loss function.

    Raises:
      ValueError: unknown ``kind``, ``temperature <= 0`` or ``alpha`` outside ``[0, 1]``.

    Example:
      >>> loss_fn = make_distill_loss("kl", temperature=4.0, alpha=0.9)
    """
    check_one_of("kind", kind, DISTILL_LOSSES)
    validate_temperature(temperature)
    validate_alpha(alpha)
    if kind == "kl":
        return functools.partial(distillation_loss, temperature=temperature, alpha=alpha)

    def mse_loss(student_logits, teacher_logits, labels):
        ce = cross_entropy(student_logits, labels)
        return alpha * mse_logits_loss(student_logits, teacher_logits) + (1.0 - alpha) * ce

    return mse_loss


def default_distill_config() -> ml_collections.ConfigDict:
    """The ``config.distill`` fields ``train_and_distill`` reads.

    Fields:
      loss: ``"kl"`` or ``"mse"`` (see ``make_distill_loss``).
      temperature: softmax temperature of the soft targets.
      alpha: weight of the teacher term (``1 - alpha`` for the hard labels).
      precompute_teacher: compute the teacher's logits once for the whole training set
        instead of inside every step (cheaper for a fixed teacher and no augmentation).
      teacher_batch_size: batch size of that one pass.

    Example:
      >>> config = default_config()
      >>> config.distill = default_distill_config()
    """
    c = ml_collections.ConfigDict()
    c.loss = "kl"
    c.temperature = 4.0
    c.alpha = 0.9
    c.precompute_teacher = True
    c.teacher_batch_size = 1000
    return c


def compute_teacher_logits(teacher: Teacher, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The teacher's logits (inference mode) for every example of ``x``, in one pass.

    Args:
      teacher: the ``Teacher``.
      x: inputs ``(N, ...)``.
      batch_size: examples per compiled call (the last batch is padded).

    Returns:
      ``(N, C)`` ``float32`` NumPy logits.

    Example:
      >>> logits = compute_teacher_logits(teacher, ds.x_train)
    """
    forward = jax.jit(lambda variables, xb: teacher.apply_fn(variables, xb, train=False))
    labels = np.zeros(len(x), np.int32)
    outs, masks = [], []
    for batch in eval_batches(x, labels, batch_size):
        masks.append(batch["mask"])
        outs.append(forward(teacher.variables, batch["image"]))
    logits = np.concatenate(jax.device_get(outs))[np.concatenate(masks)]
    return logits.astype(np.float32)


def distill_train_step(
    state: TrainState,
    batch: Batch,
    teacher_variables: PyTree = None,
    *,
    loss_fn: DistillLossFn,
    teacher_apply_fn: Callable[..., jax.Array] | None = None,
    params_fn: ParamsFn | None = None,
    augment_fn: AugmentFn | None = None,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update of the student towards the teacher (pure; jit it).

    Gradients are taken w.r.t. ``state.params`` only; ``teacher_variables`` is an input
    that is read, never differentiated or returned.

    Args:
      state: the student's ``TrainState`` (any optax ``tx``, e.g. one chained with a
        pruning transform).
      batch: ``{"image", "label"}`` and, when the teacher's logits were precomputed,
        ``"teacher_logits"`` ``(N, C)`` (then ``teacher_variables`` is ignored).
      teacher_variables: the teacher's variables (frozen).
      loss_fn: per-example ``(student_logits, teacher_logits, labels) -> (N,)``, e.g.
        ``make_distill_loss(...)``; averaged over the batch.
      teacher_apply_fn: the teacher's ``apply``, run with ``train=False`` inside this step.
      params_fn: optional transform of the student's params inside the loss and the
        forward pass (e.g. weight fake-quantization for QAT).
      augment_fn: optional ``fn(rng, images) -> images`` (``data.make_augment``) applied to
        the batch before both networks run, so the teacher labels exactly the augmented
        images the student sees ("consistent" teaching). Needs the in-step teacher.
      axis_name: the ``pmap`` axis when run under ``pmap`` (``make_train_step`` passes
        it): gradients, metrics and batch statistics are averaged over it. ``None``
        under ``jit``.

    Returns:
      ``(new_state, {"loss": scalar, "accuracy": scalar})`` (accuracy on the labels).

    Raises:
      ValueError: neither ``batch["teacher_logits"]`` nor ``teacher_apply_fn`` is given,
        or ``augment_fn`` with precomputed teacher logits.

    Example:
      >>> step = jax.jit(functools.partial(distill_train_step, loss_fn=loss_fn,
      ...                                  teacher_apply_fn=teacher.apply_fn))
      >>> state, metrics = step(state, batch, teacher.variables)
    """
    rng = step_rng(state, axis_name)
    if "teacher_logits" in batch:
        if augment_fn is not None:
            raise ValueError(
                "augment_fn needs the teacher inside the step: precomputed teacher_logits "
                "belong to the un-augmented images"
            )
        images = batch["image"]
        t_logits = batch["teacher_logits"]
    elif teacher_apply_fn is not None:
        images = augment_images(rng, batch["image"], augment_fn)
        t_logits = teacher_apply_fn(teacher_variables, images, train=False)
    else:
        raise ValueError(
            "distill_train_step needs teacher_apply_fn (and teacher_variables) or "
            "batch['teacher_logits']"
        )
    t_logits = jax.lax.stop_gradient(t_logits)

    def objective(params):
        p = params if params_fn is None else params_fn(params)
        logits, new_model_state = forward(state, p, images, train=True, rng=rng)
        return loss_fn(logits, t_logits, batch["label"]).mean(), (logits, new_model_state)

    return apply_objective(state, objective, batch["label"], axis_name=axis_name)


def make_distill_train_step(
    *,
    loss_fn: DistillLossFn,
    teacher_apply_fn: Callable[..., jax.Array] | None = None,
    params_fn: ParamsFn | None = None,
    augment_fn: AugmentFn | None = None,
    parallel: str = "none",
    mesh: jax.sharding.Mesh | None = None,
    donate: bool = True,
    skip_nonfinite: bool = False,
) -> ParallelStep:
    """The compiled ``distill_train_step``: ``step(state, batch, teacher_variables)``.

    Args:
      loss_fn: per-example distillation loss (see ``make_distill_loss``).
      teacher_apply_fn: the teacher's ``apply``; ``None`` when every batch carries
        ``"teacher_logits"``.
      params_fn: optional params transform of the student (QAT).
      augment_fn: optional batch augmentation seen by both teacher and student.
      parallel: ``"none"``, ``"sharding"`` or ``"pmap"`` (see ``make_train_step``); the
        teacher's variables are replicated like the student's state.
      mesh: the mesh for ``"sharding"``.
      donate: donate the student's state (the teacher's variables are never donated).
      skip_nonfinite: undo steps with a non-finite loss or state.

    Returns:
      A ``ParallelStep``.

    Example:
      >>> step = make_distill_train_step(loss_fn=make_distill_loss(temperature=4, alpha=0.9),
      ...                                teacher_apply_fn=teacher.apply_fn)
      >>> state, metrics = step(state, batch, teacher.variables)
    """
    fn = functools.partial(
        distill_train_step,
        loss_fn=loss_fn,
        teacher_apply_fn=teacher_apply_fn,
        params_fn=params_fn,
        augment_fn=augment_fn,
    )
    return make_train_step(
        fn,
        parallel=parallel,
        mesh=mesh,
        donate=donate,
        skip_nonfinite=skip_nonfinite,
    )


def make_precomputed_distill_train_step(
    *,
    loss_fn: DistillLossFn,
    params_fn: ParamsFn | None = None,
    parallel: str = "none",
    mesh: jax.sharding.Mesh | None = None,
    donate: bool = True,
    skip_nonfinite: bool = False,
) -> ParallelStep:
    """A compiled step that gathers inputs and teacher logits on the device by index.

    ``step(state, {"index": (B,), "label": (B,)}, inputs, teacher_logits)`` where
    ``inputs`` ``(N, ...)`` and ``teacher_logits`` ``(N, C)`` hold the whole training set
    (placed on the device(s) once), so no teacher runs during training.

    Args:
      loss_fn: per-example distillation loss.
      params_fn: optional params transform of the student (QAT).
      parallel: ``"none"``, ``"sharding"`` or ``"pmap"`` (the index batch is split, the
        inputs and logits are replicated).
      mesh: the mesh for ``"sharding"``.
      donate: donate the student's state.
      skip_nonfinite: undo steps with a non-finite loss or state.

    Returns:
      A ``ParallelStep``.

    Example:
      >>> step = make_precomputed_distill_train_step(loss_fn=loss_fn)
      >>> state, m = step(state, {"index": idx, "label": y[idx]}, x_dev, logits_dev)
    """

    def step(state, batch, inputs, teacher_logits, *, axis_name=None):
        idx = batch["index"]
        full = {
            "image": jnp.take(inputs, idx, axis=0),
            "label": batch["label"],
            "teacher_logits": jnp.take(teacher_logits, idx, axis=0),
        }
        return distill_train_step(
            state, full, loss_fn=loss_fn, params_fn=params_fn, axis_name=axis_name
        )

    return make_train_step(
        step, parallel=parallel, mesh=mesh, donate=donate, skip_nonfinite=skip_nonfinite
    )


class _BoundStep(ParallelStep):
    """A ``ParallelStep`` that appends frozen ``extra`` arguments to every call.

    ``fit`` calls ``train_fn(state, batch)``; the teacher's variables (or the precomputed
    inputs and logits) ride along as extra arguments, placed on the device(s) once.
    """

    def __init__(self, step: ParallelStep, extra: tuple[Any, ...], batch_fn=None):
        self.__dict__.update(vars(step))
        # "none" passes extras through as given: put them on the device once here
        self._bound_extra = jax.device_put(extra) if step.mode == "none" else extra
        self._batch_fn = batch_fn

    def __call__(self, state, batch, *extra):
        if self._batch_fn is not None:
            batch = self._batch_fn(batch)
        return super().__call__(state, batch, *self._bound_extra, *extra)


def _distill_field(config, key: str, default: Any) -> Any:
    distill = config.get("distill")
    if distill is None:
        raise ValueError("config.distill is missing; add training.default_distill_config()")
    value = distill.get(key, default)
    return default if value is None else value


def train_and_distill(
    config,
    workdir: str | None,
    *,
    teacher: Teacher | TrainState | None,
    dataset: Dataset | None = None,
    teacher_logits: np.ndarray | None = None,
    params_fn: ParamsFn | None = None,
    tx: optax.GradientTransformation | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Trains the config's (student) model to match ``teacher``, then evaluates it.

    The same loop as ``train_and_evaluate`` (``fit``: ``metrics.jsonl``, ``results.json``,
    test metrics of the student); the results also hold ``distill`` (the settings) and
    ``teacher_params``. With ``config.augment`` on, every batch is augmented inside the
    compiled step and the teacher runs there on the augmented images (this needs
    ``config.distill.precompute_teacher=False``).

    Args:
      config: a student config shaped like ``training.default_config()`` with a
        ``distill`` field (``default_distill_config()``).
      workdir: output directory; ``None`` writes nothing.
      teacher: the frozen teacher (a ``Teacher`` or a trained ``TrainState``); may be
        ``None`` when ``teacher_logits`` is given.
      dataset: use this ``Dataset`` instead of loading ``config.dataset``.
      teacher_logits: ``(N_train, C)`` teacher logits of ``dataset.x_train`` computed
        earlier (reused across runs); implies the precomputed path.
      params_fn: optional params transform of the student (weight QAT), used in training
        and evaluation.
      tx: the student's optimizer (e.g. chained with pruning); default
        ``make_optimizer(config.optimizer, total_steps)``.

    Returns:
      ``(student_state, results)``.

    Raises:
      ValueError: missing ``config.distill``, bad temperature/alpha/loss, no teacher, or
        ``teacher_logits`` of the wrong shape.

    Example:
      >>> teacher_state, _ = train_and_evaluate(teacher_config, "runs/teacher")
      >>> student, results = train_and_distill(student_config, "runs/kd",
      ...                                      teacher=teacher_state)
    """
    kind = _distill_field(config, "loss", "kl")
    temperature = _distill_field(config, "temperature", 4.0)
    alpha = _distill_field(config, "alpha", 0.9)
    precompute = bool(_distill_field(config, "precompute_teacher", True))
    teacher_batch_size = int(_distill_field(config, "teacher_batch_size", 1000))
    loss_fn = make_distill_loss(kind, temperature=temperature, alpha=alpha)
    if isinstance(teacher, TrainState):
        teacher = Teacher.from_state(teacher)
    if teacher is None and teacher_logits is None:
        raise ValueError("teacher=None needs teacher_logits= (the teacher's training-set logits)")
    if teacher is not None and not isinstance(teacher, Teacher):
        raise TypeError(f"teacher must be a Teacher or a TrainState, got {type(teacher).__name__}")

    initialize_distributed(config)
    parallel = config.get("parallel", "none")
    skip_nonfinite = config.get("nan_policy") == "skip"
    ds = load_dataset(config, dataset)
    model = get_model(config.model.name, **model_kwargs(config, ds.num_classes))
    if tx is None:
        total_steps = steps_per_epoch(len(ds.x_train), config.batch_size) * config.num_epochs
        tx = make_optimizer(config.optimizer, total_steps)
    state = create_train_state(model, jax.random.key(config.seed), ds.x_train[:1], tx)
    eval_fn = make_eval_step(loss_fn=cross_entropy, params_fn=params_fn)
    augment_fn = augment_from_config(config)
    if augment_fn is not None and (teacher_logits is not None or precompute):
        raise ValueError(
            "config.augment is on, so the teacher must label the augmented images inside the "
            "step: set config.distill.precompute_teacher=False (and pass no teacher_logits)"
        )

    if teacher_logits is not None or precompute:
        if teacher_logits is None:
            teacher_logits = compute_teacher_logits(teacher, ds.x_train, teacher_batch_size)
        expected = (len(ds.x_train), ds.num_classes)
        if np.shape(teacher_logits) != expected:
            raise ValueError(
                f"teacher_logits has shape {np.shape(teacher_logits)}; expected {expected} "
                "(one row of logits per training example)"
            )
        step = make_precomputed_distill_train_step(
            loss_fn=loss_fn, params_fn=params_fn, parallel=parallel, skip_nonfinite=skip_nonfinite
        )
        extras = (np.asarray(ds.x_train), np.asarray(teacher_logits, np.float32))
        # fit batches example indices; the step gathers images and logits on the device.
        train_fn = _BoundStep(
            step, extras, batch_fn=lambda b: {"index": b["image"], "label": b["label"]}
        )
        fit_ds = ds._replace(x_train=np.arange(len(ds.x_train), dtype=np.int32))
    else:
        step = make_distill_train_step(
            loss_fn=loss_fn,
            teacher_apply_fn=teacher.apply_fn,
            params_fn=params_fn,
            augment_fn=augment_fn,
            parallel=parallel,
            skip_nonfinite=skip_nonfinite,
        )
        train_fn = _BoundStep(step, (teacher.variables,))
        fit_ds = ds

    extra = {
        "distill": {
            "loss": kind,
            "temperature": float(temperature),
            "alpha": float(alpha),
            "precomputed_teacher_logits": teacher_logits is not None,
            "augment": augment_fn is not None,
        },
    }
    if teacher is not None:
        extra["teacher_params"] = count_params(teacher.variables.get("params", teacher.variables))
    return fit(
        config, state, fit_ds, workdir, train_fn=train_fn, eval_fn=eval_fn, extra_results=extra
    )
