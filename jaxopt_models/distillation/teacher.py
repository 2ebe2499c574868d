"""The frozen teacher and the per-example distillation loss a student is trained with.

Only the student is differentiated: a :class:`Teacher` (apply function + variables) is read
inside the compiled step (its variables an input, never an output) or its logits are
computed once with :func:`teacher_logits`. It never enters the student's optimizer state or
checkpoints. The train step that uses these is the engine's ``training.train_step`` with
``target_fn=`` (see ``jaxopt_models.recipes.distill``).
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jaxopt_models.checks import check_one_of
from jaxopt_models.distillation.losses import (
    distillation_loss,
    mse_logits_loss,
    validate_alpha,
    validate_temperature,
)
from jaxopt_models.typing import PyTree

DistillLossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
DISTILL_LOSSES = ("kl", "mse")


class Teacher(NamedTuple):
    """A frozen teacher model.

    Attributes:
      apply_fn: Flax ``apply``; called as ``apply_fn(variables, x, train=False)``.
      variables: all of the teacher's collections (``params`` and e.g. ``batch_stats``).

    Example:
      >>> teacher = Teacher(apply_fn=model.apply, variables={"params": params})
      >>> logits = teacher(x)
    """

    apply_fn: Callable[..., jax.Array]
    variables: PyTree

    @classmethod
    def from_state(cls, state: Any) -> "Teacher":
        """The teacher of a trained train state (its optimizer state is dropped)."""
        return cls(apply_fn=state.apply_fn, variables=state.variables)

    def __call__(self, x: jax.Array) -> jax.Array:
        """The teacher's logits for ``x`` in inference mode."""
        return self.apply_fn(self.variables, x, train=False)


def make_distill_loss(kind: str = "kl", *, temperature: float, alpha: float) -> DistillLossFn:
    """Builds a per-example ``(student_logits, teacher_logits, labels) -> (N,)`` loss.

    Args:
      kind: ``"kl"``: ``alpha * T² KL(teacher_T || student_T) + (1 - alpha) * CE``
        (Hinton et al.); ``"mse"``: ``alpha * mse_logits_loss + (1 - alpha) * CE``
        (``temperature`` unused).
      temperature: softmax temperature ``T > 0``.
      alpha: weight in ``[0, 1]`` of the teacher term.

    Returns:
      The loss function (per example; any leading batch axes).

    Raises:
      ValueError: unknown ``kind``, ``temperature <= 0`` or ``alpha`` outside ``[0, 1]``.

    Example:
      >>> loss_fn = make_distill_loss("kl", temperature=4.0, alpha=0.9)
      >>> loss_fn(student_logits, teacher_logits, labels).shape
      (128,)
    """
    check_one_of("kind", kind, DISTILL_LOSSES)
    validate_temperature(temperature)
    validate_alpha(alpha)
    if kind == "kl":
        return functools.partial(distillation_loss, temperature=temperature, alpha=alpha)

    def mse_loss(student_logits, teacher_logits, labels):
        ce = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
        return alpha * mse_logits_loss(student_logits, teacher_logits) + (1.0 - alpha) * ce

    return mse_loss


def teacher_logits(teacher: Teacher, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The teacher's logits (inference mode) for every example of ``x``, in one pass.

    Args:
      teacher: the ``Teacher``.
      x: inputs ``(N, ...)``.
      batch_size: examples per compiled call (the last batch is padded to this size, so
        there is one compilation).

    Returns:
      ``(N, C)`` ``float32`` NumPy logits.

    Example:
      >>> logits = teacher_logits(teacher, ds.x_train)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    x = np.asarray(x)
    forward = jax.jit(lambda variables, xb: teacher.apply_fn(variables, xb, train=False))
    outs = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        n = len(xb)
        if n < batch_size:
            xb = np.concatenate([xb, np.repeat(xb[-1:], batch_size - n, axis=0)])
        outs.append((forward(teacher.variables, xb), n))
    return np.concatenate([np.asarray(jax.device_get(o))[:n] for o, n in outs]).astype(np.float32)
