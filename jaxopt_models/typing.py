"""Type aliases shared across the library."""

from typing import Any

import jax

PyTree = Any
"""A nested structure of containers (dict, list, tuple, NamedTuple) with array leaves."""

Array = jax.Array
