"""Saving and loading a trained model's variables (``variables.msgpack``) for reuse.

Experiments that train a model once and reuse it in later runs (a distillation teacher,
the float model behind PTQ) write its variables with :func:`save_variables` and rebuild
them with :func:`load_variables`, which restores the exact pytree of a freshly initialised
model of the same config (so a file from a different architecture fails loudly).
"""

import os

import jax
from flax import serialization

from jaxopt_models.models import get_model
from jaxopt_models.training.io import atomic_write_bytes
from jaxopt_models.training.loop import model_kwargs
from jaxopt_models.typing import PyTree

VARIABLES_FILE = "variables.msgpack"


def save_variables(directory: str, variables: PyTree) -> str:
    """Writes ``variables`` to ``<directory>/variables.msgpack`` atomically; returns the path."""
    path = os.path.join(directory, VARIABLES_FILE)
    atomic_write_bytes(path, serialization.to_bytes(jax.device_get(variables)))
    return path


def load_variables(
    directory: str, config, sample_input, num_classes: int, *, collections=None
) -> tuple[PyTree, object]:
    """Reads ``<directory>/variables.msgpack`` into the variables of ``config.model``.

    Args:
      directory: where :func:`save_variables` wrote the file.
      config: the model's training config (``config.model`` builds the template).
      sample_input: one batch of inputs (e.g. ``x_train[:1]``) to initialise the template.
      num_classes: the dataset's number of classes.
      collections: keep only these top-level collections of the template (e.g.
        ``("params",)`` when only the params were saved); default: all.

    Returns:
      ``(variables, model)``.

    Raises:
      FileNotFoundError: no saved file in ``directory``.
      ValueError: the file does not match the config's model.
    """
    path = os.path.join(directory, VARIABLES_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved model variables at {path}")
    model = get_model(config.model.name, **model_kwargs(config, num_classes))
    template = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(sample_input)
    if collections is not None:
        template = {k: template[k] for k in collections}
    with open(path, "rb") as f:
        data = f.read()
    try:
        return serialization.from_bytes(template, data), model
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} does not hold variables of model {config.model.name!r} as configured: {e}"
        ) from None
