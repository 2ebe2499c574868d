"""Loading a trained model back from a recipe's workdir."""

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxopt_models.recipes import build
from jaxopt_models.training import load_variables


def load_trained(workdir: str, sample_input: np.ndarray | None = None) -> tuple[Any, Any]:
    """The model and variables a training recipe saved in ``workdir``.

    Reads ``results.json`` (the resolved config: model, dataset, quantization) and
    ``variables.msgpack``; the model is rebuilt from the config and the variables are
    checked against it.

    Args:
      workdir: a finished train run's directory (or a recipe's sub-run directory).
      sample_input: one input batch to build the template (default: one example of the
        config's dataset).

    Returns:
      ``(model, variables)``: ``model.apply(variables, x, train=False)`` gives logits.

    Example:
      >>> model, variables = load_trained("runs/digits")
      >>> logits = model.apply(variables, x, train=False)
    """
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no results.json in {workdir}: not a finished training run")
    with open(path) as f:
        results = json.load(f)
    config = ml_collections.ConfigDict(results["config"])
    num_classes = config.model.get("num_classes") or _num_classes(results, config)
    model = build.build_model(config.model, num_classes, config.get("quantization"))
    if sample_input is None:
        sample_input = build.load_data(config).x_train[:1]
    template = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(sample_input)
    return model, load_variables(workdir, template)


def _num_classes(results: dict[str, Any], config) -> int:
    if "num_classes" in results:
        return int(results["num_classes"])
    return build.load_data(config).num_classes
