"""Saving and loading a trained model's variables (``variables.msgpack``).

Every training recipe writes the trained model's variables (``params`` and e.g.
``batch_stats``) with :func:`save_variables`; :func:`load_variables` reads them back into
the exact pytree of a template (a freshly initialised model of the same architecture), so a
file of another architecture fails loudly. ``jaxopt_models.recipes.load_trained`` rebuilds
the template from a run's saved config.
"""

import os

import jax
from flax import serialization

from jaxopt_models.training.io import atomic_write_bytes
from jaxopt_models.typing import PyTree

VARIABLES_FILE = "variables.msgpack"


def save_variables(directory: str, variables: PyTree) -> str:
    """Writes ``variables`` to ``<directory>/variables.msgpack`` atomically; returns the path.

    Example:
      >>> save_variables("runs/digits", state.variables)
      'runs/digits/variables.msgpack'
    """
    path = os.path.join(directory, VARIABLES_FILE)
    atomic_write_bytes(path, serialization.to_bytes(jax.device_get(variables)))
    return path


def load_variables(directory: str, template: PyTree) -> PyTree:
    """Reads ``<directory>/variables.msgpack`` into the structure of ``template``.

    Args:
      directory: where :func:`save_variables` wrote the file.
      template: variables of the same architecture (e.g. ``model.init(...)``, or only
        some of its collections when only those were saved); values are not used.

    Returns:
      The saved variables, shaped like ``template``.

    Raises:
      FileNotFoundError: no saved file in ``directory``.
      ValueError: the file does not match the template's tree.

    Example:
      >>> variables = load_variables("runs/digits", model.init(key, x[:1], train=False))
    """
    path = os.path.join(directory, VARIABLES_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved model variables at {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return serialization.from_bytes(template, data)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} does not hold variables of the expected model: {e}") from None
