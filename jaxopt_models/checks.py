"""Argument checks shared by every subpackage, so bad input gets one kind of message."""

from collections.abc import Collection
from typing import Any


def check_one_of(name: str, value: Any, allowed: Collection[Any]) -> Any:
    """Returns ``value`` if it is in ``allowed``; otherwise raises a ``ValueError`` that names
    the argument and lists the allowed values.

    Example:
      >>> check_one_of("optimizer.name", "adam", ("sgd", "adam"))
      'adam'
    """
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not known; allowed values: {allowed}")
    return value
