"""Optimizers and learning-rate schedules from a config (optax underneath)."""

from typing import Any

import optax

from jaxopt_models.checks import check_one_of

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "warmup_constant")


def _get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def make_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """Builds the learning-rate schedule ``step -> lr``.

    Args:
      cfg: optimizer config with ``learning_rate`` (> 0), ``schedule`` (one of
        ``SCHEDULES``) and ``warmup_steps`` (>= 0, for the warmup schedules).
      total_steps: total number of optimizer steps (> 0).

    Returns:
      An optax schedule.
    """
    lr = _get(cfg, "learning_rate", None)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"optimizer.learning_rate={lr!r} must be a number > 0")
    name = _get(cfg, "schedule", "constant")
    check_one_of("optimizer.schedule", name, SCHEDULES)
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps!r} must be > 0")
    warmup = int(_get(cfg, "warmup_steps", 0))
    if warmup < 0 or warmup >= total_steps and name.startswith("warmup"):
        raise ValueError(
            f"optimizer.warmup_steps={warmup} must be in [0, total_steps={total_steps})"
        )
    lr = float(lr)
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, total_steps)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup]
    )


def make_optimizer(cfg: Any, total_steps: int = 1) -> optax.GradientTransformation:
    """Builds an optax optimizer from an ``optimizer`` config.

    Args:
      cfg: ``ConfigDict``/dict with ``name`` (one of ``OPTIMIZERS``), ``learning_rate``,
        ``schedule``, ``warmup_steps``, ``momentum`` (sgd family), ``b1``/``b2``/``eps``
        (adam family), ``weight_decay`` (decoupled for adamw, added to the gradient for
        the others) and ``grad_clip_norm`` (global-norm clipping when > 0).
      total_steps: the run's number of steps (for decaying schedules).

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> tx = make_optimizer({"name": "momentum", "learning_rate": 0.1, "momentum": 0.9},
      ...                     total_steps=1000)
    """
    name = _get(cfg, "name", None)
    check_one_of("optimizer.name", name, OPTIMIZERS)
    lr = make_schedule(cfg, total_steps)
    wd = float(_get(cfg, "weight_decay", 0.0))
    if wd < 0:
        raise ValueError(f"optimizer.weight_decay={wd!r} must be >= 0")
    clip = float(_get(cfg, "grad_clip_norm", 0.0))
    if clip < 0:
        raise ValueError(f"optimizer.grad_clip_norm={clip!r} must be >= 0 (0 disables)")
    momentum = float(_get(cfg, "momentum", 0.9))
    if name in ("momentum", "nesterov") and not 0.0 <= momentum < 1.0:
        raise ValueError(f"optimizer.momentum={momentum!r} must be in [0, 1)")
    b1, b2 = float(_get(cfg, "b1", 0.9)), float(_get(cfg, "b2", 0.999))
    eps = float(_get(cfg, "eps", 1e-8))
    if name == "sgd":
        opt = optax.sgd(lr)
    elif name in ("momentum", "nesterov"):
        opt = optax.sgd(lr, momentum=momentum, nesterov=name == "nesterov")
    elif name == "adam":
        opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    else:
        opt = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    parts = []
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    if wd > 0 and name != "adamw":
        parts.append(optax.add_decayed_weights(wd))
    return optax.chain(*parts, opt) if parts else opt
