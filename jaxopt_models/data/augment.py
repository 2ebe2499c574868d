"""Jittable per-example data augmentation: random shifts ("jitter") and flips.

Inputs are batches shaped like every ``Dataset`` here: ``(N, *spatial, C)`` (images
``(N, H, W, C)``, MNIST-1D signals ``(N, L, C)``). Each example draws its own transform from
``rng``, so the functions run inside a compiled train step on traced arrays (the train and
distillation steps apply them to the batch before the forward pass; a teacher inside the
distillation step sees the same augmented images as the student).

Example:
  >>> augment = make_augment(shift=2, flip=True)
  >>> x_aug = augment(jax.random.key(0), x)    # same shape and dtype as x
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]

SHIFT_MODES = ("edge", "constant")


def _check_shift(value, name: str, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0{unit}, got {value!r}")
    return value


def _check_mode(mode: str, name: str) -> str:
    if mode not in SHIFT_MODES:
        raise ValueError(f"{name}={mode!r} is not one of {SHIFT_MODES}")
    return mode


def _check_batch(x: jax.Array, name: str = "x") -> None:
    if x.ndim < 3:
        raise ValueError(
            f"{name} must be a batch (N, *spatial, C) with at least one spatial axis, got "
            f"shape {x.shape}"
        )


def random_shift(rng: jax.Array, x: jax.Array, max_shift: int, *, mode: str = "edge") -> jax.Array:
    """Translates each example by its own random integer offset per spatial axis.

    Offsets are uniform in ``[-max_shift, max_shift]`` on every spatial axis (independently);
    the uncovered border is filled by repeating the edge (``"edge"``: right for normalised
    images, whose background is not 0) or with zeros (``"constant"``).

    Args:
      rng: PRNG key.
      x: ``(N, *spatial, C)`` batch.
      max_shift: largest shift in pixels / samples, ``>= 0`` (0 returns ``x``).
      mode: ``"edge"`` or ``"constant"``.

    Returns:
      The shifted batch (same shape and dtype).

    Raises:
      ValueError: ``max_shift`` negative or not an int, an unknown ``mode``, or ``x`` with no
        spatial axis.
    """
    _check_shift(max_shift, "max_shift")
    _check_mode(mode, "mode")
    x = jnp.asarray(x)
    _check_batch(x)
    if max_shift == 0:
        return x
    nsp = x.ndim - 2
    pad = [(0, 0)] + [(max_shift, max_shift)] * nsp + [(0, 0)]
    padded = jnp.pad(x, pad, mode=mode)
    offsets = jax.random.randint(rng, (x.shape[0], nsp), 0, 2 * max_shift + 1)
    window = x.shape[1:]

    def crop(xi: jax.Array, off: jax.Array) -> jax.Array:
        return lax.dynamic_slice(xi, (*off, 0), window)

    return jax.vmap(crop)(padded, offsets)


def random_flip(rng: jax.Array, x: jax.Array, *, axis: int = -2) -> jax.Array:
    """Reverses each example along ``axis`` with probability 1/2.

    Args:
      rng: PRNG key.
      x: ``(N, *spatial, C)`` batch.
      axis: a spatial axis (default ``-2``: the width of ``(N, H, W, C)`` images, i.e. a
        horizontal flip); the batch axis 0 and the channel axis -1 are not allowed.

    Returns:
      The batch with about half of its examples flipped.

    Raises:
      ValueError: ``axis`` is not a spatial axis of ``x``.
    """
    x = jnp.asarray(x)
    _check_batch(x)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis!r} is out of range for x of shape {x.shape}")
    ax = axis % x.ndim
    if ax in (0, x.ndim - 1):
        raise ValueError(
            f"axis={axis!r} must be a spatial axis (1..{x.ndim - 2}) of x {x.shape}, not the "
            "batch or channel axis"
        )
    flip = jax.random.bernoulli(rng, 0.5, (x.shape[0],))
    flip = flip.reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(flip, jnp.flip(x, axis=ax), x)


def make_augment(shift: int = 0, flip: bool = False, *, mode: str = "edge") -> AugmentFn | None:
    """The augmentation ``fn(rng, x) -> x`` for a config, or ``None`` when it does nothing.

    Args:
      shift: ``random_shift``'s ``max_shift`` (0: no shifts).
      flip: apply ``random_flip`` (horizontal for ``(N, H, W, C)`` images; the last spatial
        axis in general).
      mode: border fill of the shifts (``"edge"`` or ``"constant"``).

    Returns:
      A jittable function, or ``None`` for ``shift=0, flip=False``.

    Raises:
      ValueError: a bad ``shift``, ``flip`` or ``mode``.
    """
    _check_shift(shift, "augment shift", " (pixels)")
    if not isinstance(flip, bool):
        raise ValueError(f"augment flip must be True or False, got {flip!r}")
    _check_mode(mode, "augment mode")
    if shift == 0 and not flip:
        return None

    def augment(rng: jax.Array, x: jax.Array) -> jax.Array:
        shift_rng, flip_rng = jax.random.split(rng)
        if shift:
            x = random_shift(shift_rng, x, shift, mode=mode)
        if flip:
            x = random_flip(flip_rng, x, axis=-2)
        return x

    return augment
