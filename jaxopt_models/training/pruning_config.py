"""The ``pruning`` section of an experiment config and its translation to ``pruning.prune``.

``train_and_evaluate`` calls :func:`with_pruning` on the optimizer it builds (a no-op while
``config.pruning.method == "none"``, the default) and :func:`pruning_results` on the final
state, so any config prunes by setting a few fields:

  config.pruning.method = "magnitude"
  config.pruning.sparsity = 0.9
  config.pruning.schedule = "polynomial"   # Zhu & Gupta, from begin to end, every frequency
"""

from typing import Any

import jax
import ml_collections
import optax
from ml_collections import config_dict

from jaxopt_models import pruning
from jaxopt_models.checks import check_one_of
from jaxopt_models.pruning.structures import as_structure
from jaxopt_models.typing import PyTree

PRUNING_METHODS = ("none", "magnitude", "random", "saliency")
PRUNING_SCHEDULES = ("one_shot", "polynomial", "constant")
PRUNING_SCOPES = ("layer", "global")
PRUNING_DISTRIBUTIONS = ("uniform", "erk")


def default_pruning_config() -> ml_collections.ConfigDict:
    """Returns the ``pruning`` section of ``default_config()`` (pruning off).

    Fields:
      method: ``"none"`` (dense training, the default) or a scorer name of
        ``pruning.SCORERS``: ``"magnitude"``, ``"random"``, ``"saliency"`` (``|w * g|``
        with the step's raw gradients).
      sparsity: final sparsity of the prunable weights (kernels), in [0, 1).
      schedule: ``"polynomial"`` (gradual, Zhu & Gupta: cubic from ``initial_sparsity`` at
        the begin step to ``sparsity`` at the end step, masks updated every ``frequency``
        steps), ``"one_shot"`` (dense until the begin step, then ``sparsity``) or
        ``"constant"`` (``sparsity`` from the first step).
      begin_step / end_step: the schedule's steps, at most ``total_steps - 1`` (the last
        update; the masks of update ``t`` are those of ``schedule(t)``); when ``None`` they
        are ``begin_fraction`` / ``end_fraction`` of the run's total steps (rounded down,
        capped at ``total_steps - 1``).
      begin_fraction / end_fraction: in [0, 1], ``begin <= end``.
      frequency: steps between mask updates of the polynomial schedule (>= 1).
      initial_sparsity: the polynomial schedule's sparsity at the begin step.
      power: the polynomial schedule's exponent (3 in the paper).
      scope: ``"layer"`` (every prunable layer at the sparsity) or ``"global"`` (one
        threshold over all prunable weights; needs ``distribution="uniform"``).
      structure: ``"unstructured"``, ``"channels"`` (whole output neurons / filters) or an
        ``"n:m"`` string such as ``"2:4"``.
      structure_axis: the axis of the ``"n:m"`` groups / the channel axis (default -1;
        ``-2`` puts N:M groups on the input axis of Dense and Conv kernels).
      distribution: ``"uniform"`` or ``"erk"`` (Erdős–Rényi-kernel: larger layers sparser).
      layer_sparsity: ``{layer path pattern: sparsity}`` for single layers (e.g.
        ``{"Dense_2": 0.5}``; a pattern matches a contiguous run of path components), with
        ``distribution="uniform"`` and ``scope="layer"``: listed layers are pruned to their
        value at the first mask update, the others follow the schedule.
      seed: seed of the random scorer (``None``: the config's ``seed``).

    Example:
      >>> c = default_pruning_config()
      >>> c.method, c.schedule
      ('none', 'polynomial')
    """
    c = ml_collections.ConfigDict()
    c.method = "none"
    c.sparsity = 0.9
    c.schedule = "polynomial"
    c.begin_step = config_dict.placeholder(int)
    c.end_step = config_dict.placeholder(int)
    c.begin_fraction = 0.0
    c.end_fraction = 0.5
    c.frequency = 100
    c.initial_sparsity = 0.0
    c.power = 3.0
    c.scope = "layer"
    c.structure = "unstructured"
    c.structure_axis = -1
    c.distribution = "uniform"
    c.layer_sparsity = ml_collections.ConfigDict()
    c.seed = config_dict.placeholder(int)
    return c


def _section(config) -> Any:
    section = config.get("pruning") if hasattr(config, "get") else None
    return section if section is not None else {}


def _get(section, key: str, default: Any) -> Any:
    value = section.get(key, default) if hasattr(section, "get") else default
    return default if value is None else value


def pruning_enabled(config) -> bool:
    """True when ``config.pruning.method`` is set to something other than ``"none"``.

    Args:
      config: an experiment config (a missing ``pruning`` section means off).

    Returns:
      Whether :func:`with_pruning` adds a ``prune`` transform.

    Raises:
      ValueError: for an unknown ``config.pruning.method``, naming the field.

    Example:
      >>> pruning_enabled(default_config())
      False
    """
    method = _get(_section(config), "method", "none")
    check_one_of("config.pruning.method", method, PRUNING_METHODS)
    return method != "none"


def _number(section, key: str, low: float, high: float, *, high_open: bool) -> float:
    value = _get(section, key, None)
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(
            f"config.pruning.{key}={value!r} must be a number in [{low}, {high}{bracket}"
        )
    return float(value)


def _step(section, key: str, total_steps: int) -> int | None:
    value = _get(section, key, None)
    if value is None:
        return None
    last = total_steps - 1
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= last:
        raise ValueError(
            f"config.pruning.{key}={value!r} must be an int in [0, total_steps - 1 = {last}] "
            "(the run's last update)"
        )
    return value


def schedule_steps(config, total_steps: int) -> tuple[int, int]:
    """The schedule's ``(begin_step, end_step)`` for a run of ``total_steps`` steps.

    Args:
      config: an experiment config with a ``pruning`` section.
      total_steps: the run's number of optimizer steps.

    Returns:
      ``begin_step``/``end_step`` when set, else ``int(fraction * total_steps)`` capped at
      ``total_steps - 1``.

    Raises:
      ValueError: a step or fraction out of range, or ``begin > end``, naming the field.

    Example:
      >>> schedule_steps(config, 1000)  # begin_fraction=0.1, end_fraction=0.6
      (100, 600)
    """
    section = _section(config)
    begin = _step(section, "begin_step", total_steps)
    end = _step(section, "end_step", total_steps)
    last = max(total_steps - 1, 0)
    if begin is None:
        begin = _number(section, "begin_fraction", 0.0, 1.0, high_open=False)
        begin = min(int(begin * total_steps), last)
    if end is None:
        end = min(
            int(_number(section, "end_fraction", 0.0, 1.0, high_open=False) * total_steps), last
        )
    if begin > end:
        raise ValueError(
            f"config.pruning begins at step {begin} after it ends at step {end}; set "
            "begin_step <= end_step (or begin_fraction <= end_fraction)"
        )
    return begin, end


def make_pruning(config, total_steps: int) -> optax.GradientTransformationExtraArgs | None:
    """Translates ``config.pruning`` into a ``pruning.prune`` transform (None when off).

    Every field is checked here, eagerly; an error names the ``config.pruning`` field, its
    value and what is allowed.

    Args:
      config: an experiment config shaped like ``training.default_config()``.
      total_steps: the run's number of optimizer steps (for fractions of the run).

    Returns:
      ``pruning.prune(method, schedule, scope=..., structure=..., distribution=...,
      seed=...)``, or ``None`` when ``config.pruning.method == "none"``.

    Raises:
      ValueError / TypeError: an invalid field, naming it.

    Example:
      >>> config.pruning.method = "magnitude"
      >>> tx = optax.chain(optax.adam(1e-3), make_pruning(config, total_steps=9380))
    """
    if not pruning_enabled(config):
        return None
    section = _section(config)
    method = _get(section, "method", "none")
    sparsity = _number(section, "sparsity", 0.0, 1.0, high_open=True)
    name = _get(section, "schedule", "polynomial")
    check_one_of("config.pruning.schedule", name, PRUNING_SCHEDULES)
    begin, end = schedule_steps(config, total_steps)
    if name == "constant":
        schedule = pruning.constant(sparsity)
    elif name == "one_shot":
        schedule = pruning.one_shot(sparsity, begin)
    else:
        frequency = _get(section, "frequency", 100)
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"config.pruning.frequency={frequency!r} must be an int >= 1")
        initial = _number(section, "initial_sparsity", 0.0, 1.0, high_open=True)
        if initial > sparsity:
            raise ValueError(
                f"config.pruning.initial_sparsity={initial!r} must be <= "
                f"config.pruning.sparsity={sparsity!r}"
            )
        power = _get(section, "power", 3.0)
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
            raise ValueError(f"config.pruning.power={power!r} must be a number > 0")
        schedule = pruning.polynomial(sparsity, begin, end, initial, float(power), frequency)
    scope = _get(section, "scope", "layer")
    check_one_of("config.pruning.scope", scope, PRUNING_SCOPES)
    structure = _get(section, "structure", "unstructured")
    try:
        structure = as_structure(structure)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.pruning.structure={structure!r} is not valid: {e}") from None
    axis = _get(section, "structure_axis", -1)
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"config.pruning.structure_axis={axis!r} must be an int")
    if isinstance(structure, pruning.NByM):
        structure = pruning.n_by_m(structure.n, structure.m, axis)
    elif isinstance(structure, pruning.Channels):
        structure = pruning.channels(axis, structure.norm)
    distribution = _get(section, "distribution", "uniform")
    check_one_of("config.pruning.distribution", distribution, PRUNING_DISTRIBUTIONS)
    if scope == "global" and distribution != "uniform":
        raise ValueError(
            f"config.pruning.scope='global' needs config.pruning.distribution='uniform', "
            f"got {distribution!r}"
        )
    layers = _get(section, "layer_sparsity", {})
    layers = layers.to_dict() if hasattr(layers, "to_dict") else dict(layers)
    if layers:
        if scope != "layer" or distribution != "uniform":
            raise ValueError(
                "config.pruning.layer_sparsity needs config.pruning.scope='layer' and "
                f"distribution='uniform', got scope={scope!r}, distribution={distribution!r}"
            )
        for key, value in layers.items():
            ok = not isinstance(value, bool) and isinstance(value, (int, float))
            if not (ok and 0.0 <= value < 1.0):
                raise ValueError(
                    f"config.pruning.layer_sparsity[{key!r}]={value!r} must be a number in [0, 1)"
                )
        distribution = layers
    seed = _get(section, "seed", config.get("seed", 0) if hasattr(config, "get") else 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"config.pruning.seed={seed!r} must be an int or None")
    return pruning.prune(
        method, schedule, scope=scope, structure=structure, distribution=distribution, seed=seed
    )


def with_pruning(tx: optax.GradientTransformation, config, total_steps: int):
    """``tx`` followed by the ``prune`` transform of ``config.pruning`` (``tx`` when off).

    The chain passes the incoming gradients to ``prune`` as its ``grads=`` extra argument,
    so the saliency scorer sees the raw loss gradients, not the optimizer's updates.

    Args:
      tx: the optimizer (any optax transform).
      config: an experiment config with a ``pruning`` section.
      total_steps: the run's number of optimizer steps.

    Returns:
      ``tx`` unchanged when pruning is off, else an ``optax.GradientTransformationExtraArgs``
      whose state is ``(tx's state, pruning.PruneState)``.

    Example:
      >>> tx = with_pruning(make_optimizer(config.optimizer, 9380), config, 9380)
    """
    prune = make_pruning(config, total_steps)
    if prune is None:
        return tx
    chained = optax.chain(tx, prune)

    def update_fn(updates, state, params=None, **extra_args):
        extra_args.setdefault("grads", updates)
        return chained.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(chained.init, update_fn)


def find_prune_state(
    opt_state: PyTree,
) -> pruning.PruneState | pruning.KeepMasksState | None:
    """The first ``pruning.PruneState`` / ``KeepMasksState`` in an optimizer state, or None.

    Args:
      opt_state: an optimizer state (e.g. of ``optax.chain(adam, pruning.prune(...))``).

    Returns:
      The state of the first ``prune`` / ``keep_masks`` transform; its ``masks`` are the
      current masks.

    Example:
      >>> masks = find_prune_state(state.opt_state).masks
    """
    is_prune = lambda x: isinstance(x, (pruning.PruneState, pruning.KeepMasksState))
    for node in jax.tree.leaves(opt_state, is_leaf=is_prune):
        if is_prune(node):
            return node
    return None


def sparsity_summary(params: PyTree, masks: PyTree | None = None) -> dict[str, Any]:
    """``pruning.summary`` plus the totals over the prunable kernels alone.

    Args:
      params: a params pytree.
      masks: optional boolean masks (a weight counts as nonzero when nonzero and kept).

    Returns:
      ``{"layers", "total"}`` of ``pruning.summary`` and ``"prunable"``: params / nonzeros /
      sparsity over the leaves ``pruning.default_filter`` prunes (kernels, not biases).

    Example:
      >>> sparsity_summary(state.params)["prunable"]["sparsity"]
      0.9
    """
    params = jax.device_get(params)
    info = pruning.summary(params, None if masks is None else jax.device_get(masks))
    n = nz = 0
    for (path, row), leaf in zip(info["layers"].items(), jax.tree.leaves(params), strict=True):
        if pruning.default_filter(path, leaf):
            n += row["params"]
            nz += row["nonzeros"]
    return {
        **info,
        "prunable": {"params": n, "nonzeros": nz, "sparsity": 1.0 - nz / n if n else 0.0},
    }


def pruning_results(params: PyTree, opt_state: PyTree, config) -> dict[str, Any]:
    """The final sparsity report of a pruned run, for ``results.json``.

    Args:
      params: the final params.
      opt_state: the final optimizer state (holds the masks).
      config: the experiment config.

    Returns:
      :func:`sparsity_summary` of ``params`` under the state's masks (``"layers"``,
      ``"total"``, ``"prunable"``) plus ``"target_sparsity"``, ``"method"`` and
      ``"schedule"`` of ``config.pruning``.

    Example:
      >>> pruning_results(state.params, state.opt_state, config)["prunable"]["sparsity"]
      0.9
    """
    state = find_prune_state(opt_state)
    section = _section(config)
    return {
        **sparsity_summary(params, None if state is None else state.masks),
        "target_sparsity": float(_get(section, "sparsity", 0.0)),
        "method": _get(section, "method", "none"),
        "schedule": _get(section, "schedule", "polynomial"),
    }
