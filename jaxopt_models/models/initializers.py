"""Selectable kernel initialisers (Xavier / He / LeCun) by name."""

from collections.abc import Callable

import flax.linen as nn

from jaxopt_models.checks import check_one_of

Initializer = Callable

_INITIALIZERS: dict[str, Callable[[], Initializer]] = {
    "xavier_uniform": nn.initializers.xavier_uniform,
    "xavier_normal": nn.initializers.xavier_normal,
    "glorot_uniform": nn.initializers.glorot_uniform,
    "he_normal": nn.initializers.he_normal,
    "he_uniform": nn.initializers.he_uniform,
    "kaiming_normal": nn.initializers.kaiming_normal,
    "lecun_normal": nn.initializers.lecun_normal,
    "lecun_uniform": nn.initializers.lecun_uniform,
}

KERNEL_INITS = tuple(sorted(_INITIALIZERS))


def get_initializer(name: str | Initializer) -> Initializer:
    """Returns the kernel initialiser called ``name``.

    Args:
      name: one of ``KERNEL_INITS`` (``"xavier_uniform"``, ``"he_normal"``,
        ``"lecun_normal"``, ...) or an initialiser callable, returned unchanged.

    Returns:
      A ``(key, shape, dtype) -> array`` initialiser.

    Example:
      >>> init = get_initializer("he_normal")
    """
    if callable(name):
        return name
    return _INITIALIZERS[check_one_of("kernel_init", name, KERNEL_INITS)]()
