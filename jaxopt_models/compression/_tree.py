"""Pytree helpers of the compression package: the library's ``jaxopt_models.tree``."""

from jaxopt_models.tree import FilterFn as FilterFn
from jaxopt_models.tree import aligned as aligned
from jaxopt_models.tree import key_name as key_name
from jaxopt_models.tree import named_leaves as named_leaves
from jaxopt_models.tree import path_name as path_name
