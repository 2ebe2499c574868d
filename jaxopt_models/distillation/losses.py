"""Knowledge-distillation losses on logits (Hinton et al., 2015; Ba & Caruana, 2014).

Every loss is per example: it maps ``(..., C)`` logits to ``(...)`` losses, so callers
choose the reduction (usually the batch mean).
"""

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _concrete_scalar(value: Any, name: str) -> float | None:
    """``float(value)`` for Python/NumPy/concrete JAX scalars, ``None`` for tracers."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={value!r} must be a real number, not a bool")
    if isinstance(value, jax.core.Tracer):
        return None  # traced (e.g. vmapped over temperatures): checked by the caller's math
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, jax.Array)):
        if value.shape != ():
            raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}")
        if not jnp.issubdtype(value.dtype, jnp.floating) and not jnp.issubdtype(
            value.dtype, jnp.integer
        ):
            raise TypeError(f"{name}={value!r} must be a real number")
        return float(value)
    raise TypeError(f"{name}={value!r} (type {type(value).__name__}) must be a real number")


def validate_temperature(temperature: Any) -> None:
    """Raises unless ``temperature`` is a real scalar > 0 (tracers are not checked).

    Args:
      temperature: the softmax temperature ``T``.

    Raises:
      TypeError: not a real number (e.g. a bool or a string).
      ValueError: not a scalar, not finite, or ``<= 0``.

    Example:
      >>> validate_temperature(4.0)
    """
    t = _concrete_scalar(temperature, "temperature")
    if t is not None and not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0")


def validate_alpha(alpha: Any) -> None:
    """Raises unless ``alpha`` is a real scalar in ``[0, 1]`` (tracers are not checked).

    Args:
      alpha: weight of the distillation term; ``1 - alpha`` weights the label loss.

    Raises:
      TypeError: not a real number.
      ValueError: not a scalar or outside ``[0, 1]``.

    Example:
      >>> validate_alpha(0.9)
    """
    a = _concrete_scalar(alpha, "alpha")
    if a is not None and not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha={alpha!r} must be in [0, 1]")


def _check_logits(student_logits: jax.Array, teacher_logits: jax.Array) -> None:
    s_shape, t_shape = jnp.shape(student_logits), jnp.shape(teacher_logits)
    if len(s_shape) < 1:
        raise ValueError(
            f"student_logits must have a class axis (shape (..., C)), got shape {s_shape}"
        )
    if s_shape != t_shape:
        raise ValueError(
            f"teacher_logits has shape {t_shape} but student_logits has shape {s_shape}; "
            "they must be equal"
        )


def _check_labels(labels: jax.Array, logits_shape: tuple[int, ...]) -> None:
    if jnp.shape(labels) != tuple(logits_shape[:-1]):
        raise ValueError(
            f"labels has shape {jnp.shape(labels)} but the logits have shape {logits_shape}; "
            f"labels must have shape {tuple(logits_shape[:-1])} (integer class ids)"
        )
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {jnp.result_type(labels)}")
    if isinstance(labels, jax.core.Tracer):
        return  # values unknown under jit / vmap: an out-of-range label gives a NaN loss
    num_classes = logits_shape[-1]
    ids = np.asarray(labels)
    bad = (ids < 0) | (ids >= num_classes)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise ValueError(
            f"labels must be class ids in [0, {num_classes}) for logits with {num_classes} "
            f"classes; got {int(ids[first])} at index {tuple(int(i) for i in first)} "
            f"({int(bad.sum())} labels out of range)"
        )


def kd_loss(
    student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float | jax.Array
) -> jax.Array:
    """Per-example ``T**2 * KL(softmax(teacher / T) || softmax(student / T))``.

    Computed from log-softmaxes (``p_t * (log p_t - log p_s)``), so it stays finite for
    logits of any magnitude; the ``T**2`` factor keeps the gradient scale independent of
    ``T``: ``d loss / d student_logits = T * (softmax(s / T) - softmax(t / T))``.

    Args:
      student_logits: ``(..., C)`` student scores (float).
      teacher_logits: ``(..., C)`` teacher scores, same shape. Gradients flow into them
        too; wrap them in ``jax.lax.stop_gradient`` if they come from a trainable model.
      temperature: ``T > 0``; a Python/NumPy scalar is checked eagerly.

    Returns:
      ``(...)`` float losses, ``>= 0`` and exactly ``0`` where student == teacher.

    Raises:
      ValueError: ``temperature <= 0`` or logits of different shapes.

    Example:
      >>> loss = kd_loss(student_logits, teacher_logits, temperature=4.0).mean()
    """
    validate_temperature(temperature)
    _check_logits(student_logits, teacher_logits)
    log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return jnp.square(temperature) * kl


def distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    temperature: float | jax.Array,
    alpha: float | jax.Array,
) -> jax.Array:
    """Per-example ``alpha * kd_loss + (1 - alpha) * cross_entropy(student, labels)``.

    Args:
      student_logits: ``(..., C)`` student scores.
      teacher_logits: ``(..., C)`` teacher scores, same shape.
      labels: ``(...)`` integer class ids of the hard targets, in ``[0, C)``. Checked when
        concrete; under ``jit`` / ``vmap`` the values are unknown, and an id outside the
        classes gives that example a NaN loss.
      temperature: ``T > 0`` of the soft targets (the label term uses ``T = 1``).
      alpha: weight in ``[0, 1]`` of the soft-target term.

    Returns:
      ``(...)`` float losses.

    Raises:
      ValueError: ``temperature <= 0``, ``alpha`` outside ``[0, 1]``, logits of different
        shapes, labels whose shape is not the logits' without the class axis, or
        (concrete) labels outside ``[0, C)``.

    Example:
      >>> loss = distillation_loss(s, t, y, temperature=4.0, alpha=0.9).mean()
    """
    validate_alpha(alpha)
    kd = kd_loss(student_logits, teacher_logits, temperature=temperature)
    _check_labels(labels, jnp.shape(student_logits))
    ce = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
    return alpha * kd + (1.0 - alpha) * ce


def mse_logits_loss(
    student_logits: jax.Array, teacher_logits: jax.Array, *, center: bool = False
) -> jax.Array:
    """Per-example mean squared difference of the logits (Ba & Caruana's logit matching).

    Args:
      student_logits: ``(..., C)`` student scores.
      teacher_logits: ``(..., C)`` teacher scores, same shape.
      center: subtract each example's mean logit difference first (softmax is shift
        invariant; as ``T`` grows, ``kd_loss`` tends to half of the centred loss).

    Returns:
      ``(...)`` losses: ``mean_c (s_c - t_c)**2``.

    Raises:
      ValueError: logits of different shapes.

    Example:
      >>> loss = mse_logits_loss(student_logits, teacher_logits).mean()
    """
    _check_logits(student_logits, teacher_logits)
    diff = student_logits - teacher_logits
    if center:
        diff = diff - diff.mean(axis=-1, keepdims=True)
    return jnp.mean(jnp.square(diff), axis=-1)
