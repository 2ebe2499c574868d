"""Loading a trained model back from a recipe's workdir."""

import json
import os
from typing import Any, NamedTuple

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
    results = _read_results(workdir)
    config = ml_collections.ConfigDict(results["config"])
    num_classes = config.model.get("num_classes") or _num_classes(results, config)
    model = build.build_model(config.model, num_classes, config.get("quantization"))
    if sample_input is None:
        sample_input = build.load_data(config).x_train[:1]
    template = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(sample_input)
    return model, load_variables(workdir, template)


def _read_results(workdir: str) -> dict[str, Any]:
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no results.json in {workdir}: not a finished training run")
    with open(path) as f:
        return json.load(f)


def _num_classes(results: dict[str, Any], config) -> int:
    if "num_classes" in results:
        return int(results["num_classes"])
    return build.load_data(config).num_classes


class TrainedLM(NamedTuple):
    """A finished language-model run read back by :func:`load_lm`.

    Attributes:
      model: the ``CausalLM`` rebuilt from the run's config.
      variables: its saved variables (``{"params": ...}``).
      dataset: the run's ``TextDataset`` (same corpus, split and saved tokenizer).
      config: the run's resolved config (a ``ConfigDict``).
      results: the run's ``results.json``.
    """

    model: Any
    variables: Any
    dataset: Any
    config: ml_collections.ConfigDict
    results: dict[str, Any]


def is_lm_run(results: dict[str, Any]) -> bool:
    """Whether a run's ``results.json`` comes from the language-model recipe."""
    return "tokenizer" in results and "context" in results.get("config", {})


def load_lm(workdir: str) -> TrainedLM:
    """A finished ``recipes.lm`` run: its model, variables, corpus split and tokenizer.

    The corpus is split again with the run's dataset fields and tokenized with the saved
    tokenizer (``<workdir>/tokenizer``), so the validation and test streams are the run's.

    Raises:
      FileNotFoundError: ``workdir`` holds no finished run (no ``results.json``).
      ValueError: the run is not a language-model run.

    Example:
      >>> lm = load_lm("runs/lm_bible")
      >>> logits = lm.model.apply(lm.variables, lm.dataset.val[None, :128], train=False)
    """
    from jaxopt_models.data import load_tokenizer
    from jaxopt_models.models import get_model
    from jaxopt_models.recipes.lm import load_text, model_kwargs

    results = _read_results(workdir)
    if not is_lm_run(results):
        raise ValueError(
            f"{workdir} holds a {results.get('model', 'classifier')!r} run, not a language "
            "model run of recipes.lm"
        )
    config = ml_collections.ConfigDict(results["config"])
    ds = load_text(config, load_tokenizer(os.path.join(workdir, "tokenizer")))
    model = get_model(config.model.name, **model_kwargs(config, ds.vocab_size))
    sample = np.zeros((1, config.context), np.int32)
    template = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), sample)
    return TrainedLM(model, load_variables(workdir, template), ds, config, results)
