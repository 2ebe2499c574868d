"""The ``quantization`` section of an experiment config: quantization-aware training.

``train_and_evaluate`` asks :func:`quant_params_fn` for the weight transform it applies
inside the loss (and at evaluation) and :func:`quant_model_kwargs` for the model's
``act_quant`` attribute; both are no-ops while the section keeps its defaults (float), so
any config trains quantized by setting a few fields:

  config.quantization.weight_bits = 4        # 4-bit per-channel symmetric weights (QAT)
  config.quantization.act_bits = 8           # 8-bit activations, per-batch min-max range
  config.quantization.weight_mode = "binary" # or sign(w) * mean|w| per channel (BinaryConnect)
"""

import functools
from collections.abc import Callable
from typing import Any

import ml_collections

from jaxopt_models import quantization as qz
from jaxopt_models.checks import check_one_of
from jaxopt_models.typing import PyTree

WEIGHT_MODES = ("uniform", "binary", "ternary")
CALIBRATIONS = ("minmax", "percentile", "mse")


def default_quantization_config() -> ml_collections.ConfigDict:
    """Returns the ``quantization`` section of ``default_config()`` (everything float).

    Fields:
      weight_mode: ``"uniform"`` (``fake_quant`` at ``weight_bits``), ``"binary"``
        (``fake_binarize``: sign times mean ``|w|``) or ``"ternary"`` (``fake_ternarize``).
      weight_bits: bits of uniform weight fake-quantization, 0 for float weights (1..16).
        Ignored by the binary / ternary modes.
      weight_symmetric: symmetric weight grid (no zero point).
      per_channel: one scale per output channel (last kernel axis) instead of per tensor.
      ternary_threshold: ``fake_ternarize``'s threshold (a fraction of mean ``|w|``).
      act_bits: bits of the activations fed to every Dense / Conv layer (the models'
        ``act_quant``), 0 for float activations.
      act_symmetric: symmetric activation grid (asymmetric suits ReLU outputs and images).
      act_calibration: how each batch's activation range is chosen: ``"minmax"``,
        ``"percentile"`` or ``"mse"``.

    Weights are quantized with a straight-through gradient inside the loss (the optimizer
    updates float latent weights) and at evaluation; kernels only, biases stay float.

    Example:
      >>> c = default_quantization_config()
      >>> c.weight_bits, c.act_bits
      (0, 0)
    """
    c = ml_collections.ConfigDict()
    c.weight_mode = "uniform"
    c.weight_bits = 0
    c.weight_symmetric = True
    c.per_channel = True
    c.ternary_threshold = 0.7
    c.act_bits = 0
    c.act_symmetric = False
    c.act_calibration = "minmax"
    return c


def _section(config) -> Any:
    section = config.get("quantization") if hasattr(config, "get") else None
    return section if section is not None else {}


def _get(section, key: str) -> Any:
    value = section.get(key)
    return default_quantization_config()[key] if value is None else value


def _bits(section, key: str) -> int:
    value = _get(section, key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 16:
        raise ValueError(
            f"config.quantization.{key}={value!r} must be an int in 0..16 (0 keeps it float)"
        )
    return value


def _flag(section, key: str) -> bool:
    value = _get(section, key)
    if not isinstance(value, bool):
        raise TypeError(f"config.quantization.{key}={value!r} must be a bool")
    return value


def _choice(section, key: str, allowed: tuple[str, ...]) -> str:
    return check_one_of(f"config.quantization.{key}", _get(section, key), allowed)


def weight_quantizer(config) -> Callable[[Any], Any] | None:
    """The ``kernel -> fake-quantized kernel`` callable of ``config.quantization`` or None.

    Raises:
      ValueError / TypeError: a field out of range, naming it (``config.quantization.<field>``).

    Example:
      >>> c = default_config(); c.quantization.weight_bits = 4
      >>> weight_quantizer(c)(jnp.ones((3, 2))).shape
      (3, 2)
    """
    s = _section(config)
    mode = _choice(s, "weight_mode", WEIGHT_MODES)
    bits = _bits(s, "weight_bits")
    axis = -1 if _flag(s, "per_channel") else None
    symmetric = _flag(s, "weight_symmetric")
    if mode == "binary":
        return functools.partial(qz.fake_binarize, axis=axis)
    if mode == "ternary":
        threshold = _get(s, "ternary_threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"config.quantization.ternary_threshold={threshold!r} must be a float")
        if not 0.0 <= float(threshold) < 2.0:
            raise ValueError(
                f"config.quantization.ternary_threshold={threshold!r} must be in [0, 2)"
            )
        return functools.partial(qz.fake_ternarize, axis=axis, threshold=float(threshold))
    if bits == 0:
        return None
    return functools.partial(qz.fake_quant, bits=bits, axis=axis, symmetric=symmetric)


def quant_params_fn(config) -> Callable[[PyTree], PyTree] | None:
    """``params -> params`` with every kernel fake-quantized (weight QAT), or None for float.

    Pass it as ``params_fn`` to ``make_train_step`` / ``make_eval_step``.

    Example:
      >>> c = default_config(); c.quantization.weight_bits = 4
      >>> step = make_train_step(params_fn=quant_params_fn(c))
    """
    quantizer = weight_quantizer(config)
    if quantizer is None:
        return None
    return functools.partial(qz.fake_quant_params, quantizer=quantizer)


def activation_quantizer(config) -> qz.ActivationQuantizer | None:
    """The models' ``act_quant`` for ``config.quantization.act_bits``, or None for float.

    The range is each batch's own (``act_calibration``), so it needs no state; the layer
    inputs are fake-quantized with a straight-through gradient.
    """
    s = _section(config)
    bits = _bits(s, "act_bits")
    symmetric = _flag(s, "act_symmetric")
    calibration = _choice(s, "act_calibration", CALIBRATIONS)
    if bits == 0:
        return None
    return qz.ActivationQuantizer(bits=bits, symmetric=symmetric, calibration=calibration)


def quant_model_kwargs(config) -> dict[str, Any]:
    """Extra ``get_model`` keyword arguments: ``{"act_quant": ...}`` or ``{}`` for float."""
    act_quant = activation_quantizer(config)
    return {} if act_quant is None else {"act_quant": act_quant}


def quantization_enabled(config) -> bool:
    """Whether ``config.quantization`` quantizes weights or activations during training."""
    return weight_quantizer(config) is not None or activation_quantizer(config) is not None
