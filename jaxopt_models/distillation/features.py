"""Hint (feature) distillation: match intermediate features (Romero et al., FitNets 2015).

``capture_features`` reads intermediate outputs of any Flax module through
``capture_intermediates``; ``feature_loss`` compares a student's features with a teacher's,
through a learned linear ``FeatureProjection`` when their widths differ;
``hidden_state_loss`` does the same per position (a transformer's hidden states, DistilBERT's
cosine loss or TinyBERT's projected MSE).
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxopt_models.checks import check_one_of
from jaxopt_models.typing import PyTree

HIDDEN_STATE_LOSSES = ("mse", "cosine")


class FeatureProjection(NamedTuple):
    """A learned linear map from student to teacher feature width (a pytree of params).

    Attributes:
      kernel: ``(student_width, teacher_width)`` weights.
      bias: ``(teacher_width,)`` offsets.
    """

    kernel: jax.Array
    bias: jax.Array


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return value


def init_feature_projection(
    key: jax.Array, student_width: int, teacher_width: int, *, dtype: Any = jnp.float32
) -> FeatureProjection:
    """Initialises a ``FeatureProjection`` (LeCun-normal kernel, zero bias).

    Args:
      key: PRNG key.
      student_width: size of the student features' last axis.
      teacher_width: size of the teacher features' last axis.
      dtype: parameter dtype.

    Returns:
      A ``FeatureProjection``; train it together with the student's params.

    Raises:
      ValueError: a width that is not a positive int.

    Example:
      >>> proj = init_feature_projection(jax.random.key(0), 32, 128)
      >>> loss = feature_loss(student_hidden, teacher_hidden, projection=proj).mean()
    """
    _positive_int(student_width, "student_width")
    _positive_int(teacher_width, "teacher_width")
    kernel = jax.nn.initializers.lecun_normal()(key, (student_width, teacher_width), dtype)
    return FeatureProjection(kernel=kernel, bias=jnp.zeros((teacher_width,), dtype))


def project_features(features: jax.Array, projection: FeatureProjection) -> jax.Array:
    """Applies ``features @ kernel + bias`` on the last axis.

    Args:
      features: ``(..., student_width)`` features.
      projection: a ``FeatureProjection``.

    Returns:
      ``(..., teacher_width)`` features.

    Raises:
      ValueError: the last axis of ``features`` does not match the kernel's first axis.

    Example:
      >>> project_features(jnp.ones((8, 32)), init_feature_projection(key, 32, 128)).shape
      (8, 128)
    """
    kernel, bias = projection
    if jnp.ndim(kernel) != 2 or jnp.shape(bias) != (jnp.shape(kernel)[1],):
        raise ValueError(
            f"projection must hold a 2-D kernel and a matching bias, got kernel shape "
            f"{jnp.shape(kernel)} and bias shape {jnp.shape(bias)}"
        )
    if jnp.shape(features)[-1] != jnp.shape(kernel)[0]:
        raise ValueError(
            f"student_features has width {jnp.shape(features)[-1]} (last axis) but "
            f"projection.kernel has shape {jnp.shape(kernel)}; its first axis must match"
        )
    return features @ kernel + bias


def feature_loss(
    student_features: jax.Array,
    teacher_features: jax.Array,
    *,
    projection: FeatureProjection | None = None,
) -> jax.Array:
    """Per-example hint loss: mean squared difference of (projected) student features.

    Args:
      student_features: ``(N, ..., D_s)`` intermediate student activations.
      teacher_features: ``(N, ..., D_t)`` teacher activations at the matching layer.
      projection: optional ``FeatureProjection`` ``D_s -> D_t``, required when the widths
        differ (see ``init_feature_projection``); gradients reach its params.

    Returns:
      ``(N,)`` losses: the mean over all non-batch axes of ``(proj(s) - t)**2``.

    Raises:
      ValueError: features without a batch and a feature axis, or shapes that do not match
        (after the projection).

    Example:
      >>> _, s_feats, _ = capture_features(student.apply, s_vars, x, ["Dense_0"])
      >>> _, t_feats, _ = capture_features(teacher.apply, t_vars, x, ["Dense_1"])
      >>> loss = feature_loss(s_feats["Dense_0"], t_feats["Dense_1"], projection=proj)
    """
    for name, f in (("student_features", student_features), ("teacher_features", teacher_features)):
        if jnp.ndim(f) < 2:
            raise ValueError(f"{name} must have shape (N, ..., D), got shape {jnp.shape(f)}")
    s = student_features if projection is None else project_features(student_features, projection)
    if jnp.shape(s) != jnp.shape(teacher_features):
        hint = "" if projection is not None else "; pass projection= when the widths differ"
        raise ValueError(
            f"teacher_features has shape {jnp.shape(teacher_features)} but the "
            f"{'projected ' if projection is not None else ''}student_features have shape "
            f"{jnp.shape(s)}; they must be equal{hint}"
        )
    return jnp.mean(jnp.square(s - teacher_features), axis=tuple(range(1, jnp.ndim(s))))


def hidden_state_loss(
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    *,
    kind: str = "mse",
    projection: FeatureProjection | None = None,
) -> jax.Array:
    """Per-position distance of (projected) student hidden states to the teacher's.

    Args:
      student_hidden: ``(..., D_s)`` student states (e.g. ``(B, T, D_s)`` block outputs).
      teacher_hidden: ``(..., D_t)`` teacher states at the matching layer.
      kind: ``"mse"``: ``mean_d (proj(s) - t)**2`` (TinyBERT); ``"cosine"``:
        ``1 - cos(proj(s), t)`` over the last axis (DistilBERT; scale free).
      projection: optional ``FeatureProjection`` ``D_s -> D_t``, required when the widths
        differ (``init_feature_projection``); gradients reach its params.

    Returns:
      ``(...)`` losses, one per position; ``0`` where the (projected) states are equal
      (for ``"cosine"``: parallel).

    Raises:
      ValueError: unknown ``kind``, or shapes that differ (after the projection).

    Example:
      >>> loss = hidden_state_loss(s_hidden, t_hidden, kind="cosine").mean()
    """
    check_one_of("kind", kind, HIDDEN_STATE_LOSSES)
    s = student_hidden if projection is None else project_features(student_hidden, projection)
    if jnp.ndim(s) < 1 or jnp.shape(s) != jnp.shape(teacher_hidden):
        hint = "" if projection is not None else "; pass projection= when the widths differ"
        raise ValueError(
            f"teacher_hidden has shape {jnp.shape(teacher_hidden)} but the "
            f"{'projected ' if projection is not None else ''}student_hidden have shape "
            f"{jnp.shape(s)}; they must be equal{hint}"
        )
    if kind == "cosine":
        return optax.cosine_distance(s, teacher_hidden, epsilon=1e-8)
    return jnp.mean(jnp.square(s - teacher_hidden), axis=-1)


def capture_features(
    apply_fn: Callable[..., Any],
    variables: PyTree,
    x: jax.Array,
    layers: Sequence[str],
    *,
    mutable: Sequence[str] = (),
    **apply_kwargs: Any,
) -> tuple[Any, dict[str, jax.Array], dict[str, Any]]:
    """Runs a Flax module and returns the outputs of the named submodules.

    Uses Flax's ``capture_intermediates``; a layer is named by its module path joined with
    ``"/"`` (e.g. ``"Dense_0"`` or ``"Block_1/Conv_0"``). Values a module stored itself with
    ``self.sow("intermediates", name, value)`` are found under ``"<path>/<name>"``.

    Args:
      apply_fn: the module's ``apply`` (e.g. ``model.apply`` or ``state.apply_fn``).
      variables: the variables for ``apply_fn``.
      x: the input batch.
      layers: the layer paths to return.
      mutable: other collections to update (e.g. ``["batch_stats"]`` with ``train=True``).
      **apply_kwargs: passed to ``apply_fn`` (e.g. ``train=False``, ``rngs=``).

    Returns:
      ``(output, features, updates)``: the module's output, ``{layer: array}`` for every
      name in ``layers``, and the updated ``mutable`` collections (``{}`` when none).

    Raises:
      ValueError: ``layers`` is empty or names a layer that produced no output; the message
        lists the available paths.

    Example:
      >>> logits, feats, _ = capture_features(model.apply, variables, x, ["Dense_0"],
      ...                                     train=False)
      >>> feats["Dense_0"].shape
      (N, 300)
    """
    if isinstance(layers, str) or not layers:
        raise ValueError(f"layers={layers!r} must be a non-empty sequence of layer paths")
    mutable = list(mutable)
    out, collections = apply_fn(
        variables,
        x,
        capture_intermediates=True,
        mutable=["intermediates", *[m for m in mutable if m != "intermediates"]],
        **apply_kwargs,
    )
    collections = dict(collections)
    flat = traverse_util.flatten_dict(dict(collections.pop("intermediates", {})), sep="/")
    available: dict[str, jax.Array] = {}
    for path, value in flat.items():
        key = path[: -len("/__call__")] if path.endswith("/__call__") else path
        available[key] = value[0] if isinstance(value, tuple) and len(value) == 1 else value
    missing = [name for name in layers if name not in available]
    if missing:
        raise ValueError(
            f"layers {missing} produced no output; available layer paths: {sorted(available)}"
        )
    updates = {k: v for k, v in collections.items() if k in mutable}
    return out, {name: available[name] for name in layers}, updates
