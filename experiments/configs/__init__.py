"""Experiment configs: one ``get_config(variant="")`` per file, on a recipe's ``default_config()``.

Every config accepts ``variant="quick"`` (``--config FILE:quick``: a short local try) and
refuses an unknown variant naming the allowed ones. A config for another recipe than its
base config's (a lottery run on a train config's model and data) copies the base's fields
with :func:`inherit`.
"""

import copy
from collections.abc import Iterable

import ml_collections

# Sections copied whole: their keys are free-form (a model's keyword arguments, per-layer rules).
_WHOLE = ("model", "layers")


def inherit(
    config: ml_collections.ConfigDict, base: ml_collections.ConfigDict, drop: Iterable[str] = ()
) -> ml_collections.ConfigDict:
    """Copies every field of ``base`` into ``config`` (a recipe's ``default_config()``).

    Args:
      config: the config to fill (changed in place and returned).
      base: another config, e.g. a train config whose model, data and optimizer a lottery
        or PTQ config reuses.
      drop: top-level sections of ``base`` that ``config``'s recipe does not read (e.g. a
        train config's ``pruning`` for the lottery recipe); they are left out.

    Returns:
      ``config``.

    Raises:
      ValueError: ``base`` has a top-level field that ``config`` lacks and ``drop`` does
        not name (it would be lost without a word).

    Example:
      >>> c = inherit(lottery.default_config(), fashion_mnist_lenet300.get_config(),
      ...             drop=("pruning",))
    """
    drop = tuple(drop)
    unknown = sorted(set(base.keys()) - set(config.keys()) - set(drop))
    if unknown:
        raise ValueError(
            f"base config fields {unknown} do not exist in the target config; name them in "
            f"drop= to leave them out (drop={drop!r})"
        )
    for key in base.keys():
        if key not in drop:
            _copy_field(config, key, base[key])
    return config


def _copy_field(config, key: str, value) -> None:
    target = config.get(key)
    if (
        key not in _WHOLE
        and isinstance(value, ml_collections.ConfigDict)
        and isinstance(target, ml_collections.ConfigDict)
    ):
        for sub in value.keys():
            _copy_field(target, sub, value[sub])
    else:
        config[key] = copy.deepcopy(value)
