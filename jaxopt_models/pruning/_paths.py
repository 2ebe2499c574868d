"""Leaf paths as strings ("Dense_0/kernel"): the library's ``jaxopt_models.tree`` helpers."""

from jaxopt_models.tree import best_rule as best_rule
from jaxopt_models.tree import flatten_with_paths as flatten_with_paths
from jaxopt_models.tree import key_name as key_to_str
from jaxopt_models.tree import path_matches as path_matches
from jaxopt_models.tree import path_name as path_to_str

__all__ = ["best_rule", "flatten_with_paths", "key_to_str", "path_matches", "path_to_str"]
