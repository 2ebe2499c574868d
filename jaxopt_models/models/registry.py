"""A name -> model constructor registry."""

from collections.abc import Callable

import flax.linen as nn

from jaxopt_models.checks import check_one_of
from jaxopt_models.models.cnn import DeepCNN, lenet5, lenet5_caffe, mnist1d_cnn
from jaxopt_models.models.mlp import MLP, lenet300_100
from jaxopt_models.models.rnn import RNNClassifier
from jaxopt_models.models.transformer import (
    CausalLM,
    EncoderClassifier,
    bert_base,
    bert_tiny,
    gpt2,
    gpt_tiny,
    llama_tiny,
    tinyllama_1b,
)

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet300_100": lenet300_100,
    "lenet5": lenet5,
    "lenet5_caffe": lenet5_caffe,
    "mnist1d_cnn": mnist1d_cnn,
    "deep_cnn": DeepCNN,
    "lstm": lambda **kw: RNNClassifier(cell="lstm", **kw),
    "gru": lambda **kw: RNNClassifier(cell="gru", **kw),
    "rnn": RNNClassifier,
    "gpt": CausalLM,
    "gpt_tiny": gpt_tiny,
    "gpt2": gpt2,
    "llama_tiny": llama_tiny,
    "tinyllama_1b": tinyllama_1b,
    "bert": EncoderClassifier,
    "bert_tiny": bert_tiny,
    "bert_base": bert_base,
}


def model_names() -> tuple[str, ...]:
    """Returns the registered model names, sorted."""
    return tuple(sorted(_MODELS))


def register_model(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Registers ``constructor`` (``**kwargs -> nn.Module``) under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} must be a non-empty string")
    _MODELS[name] = constructor


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds the model registered as ``name`` with ``kwargs``.

    Args:
      name: one of ``model_names()``: ``"mlp"``, ``"lenet300_100"``, ``"lenet5"``,
        ``"lenet5_caffe"``, ``"mnist1d_cnn"``, ``"deep_cnn"``, ``"lstm"``, ``"gru"``, ``"rnn"``;
        transformers ``"gpt"`` (:class:`CausalLM`; presets ``"gpt_tiny"``, ``"gpt2"``,
        ``"llama_tiny"``, ``"tinyllama_1b"``) and ``"bert"`` (:class:`EncoderClassifier`;
        presets ``"bert_tiny"``, ``"bert_base"``). Their ``init`` returns plain arrays.
      **kwargs: module attributes, e.g. ``features=(300, 100)``, ``num_classes=10``,
        ``kernel_init="xavier_uniform"``; for transformers ``num_layers=4``,
        ``dtype=jnp.bfloat16``, ...

    Returns:
      An unbound Flax module.

    Example:
      >>> model = get_model("mlp", features=(300, 100), kernel_init="xavier_uniform")
    """
    check_one_of("model name", name, model_names())
    try:
        return _MODELS[name](**kwargs)
    except TypeError as e:
        raise TypeError(f"bad arguments for model {name!r}: {e}") from e
