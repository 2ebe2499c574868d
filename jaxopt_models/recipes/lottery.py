"""The lottery-ticket recipe: iterative magnitude pruning with rewinding, against re-init.

Runs ``pruning.iterative_magnitude_pruning``: round 0 trains the dense model; every later
round removes ``lottery.prune_fraction`` of the surviving kernel weights, rewinds the
survivors to their initial values (or to the weights after ``lottery.rewind_steps`` dense
steps) and retrains for ``num_epochs`` with ``pruning.keep_masks`` after the optimizer (the
pruned weights stay exactly 0.0). With ``lottery.random_reinit`` every round's masks are
also trained from a fresh random init, the control that tells a winning ticket from a good
mask. Writes ``ticket/round_<r>/``, ``reinit/round_<r>/`` and ``summary.json``.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from ml_collections import config_dict

from jaxopt_models import pruning
from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import build
from jaxopt_models.recipes import config as schema
from jaxopt_models.recipes.train import train
from jaxopt_models.training import (
    atomic_write_json,
    create_train_state,
    initialize_distributed,
    make_optimizer,
    make_train_step,
)

SUMMARY_FILE = "summary.json"


def default_config() -> ml_collections.ConfigDict:
    """The lottery recipe's config: ``base_config()`` (``num_epochs`` per round) plus:

    Fields:
      lottery.rounds: pruning rounds after the dense round 0 (>= 0).
      lottery.prune_fraction: fraction of the surviving kernel weights removed per round.
      lottery.scope: ``"layer"`` or ``"global"`` magnitude threshold.
      lottery.rewind_steps: rewind to the weights after this many dense steps (0: init).
      lottery.random_reinit: also train every round's masks from a fresh random init.
      lottery.reinit_seed: its seed (``None``: ``seed + 1``).
      quantization: QAT of every round (``quantization_section()``).
    """
    c = schema.base_config()
    c.quantization = schema.quantization_section()
    c.lottery = ml_collections.ConfigDict()
    c.lottery.rounds = 3
    c.lottery.prune_fraction = 0.2
    c.lottery.scope = "layer"
    c.lottery.rewind_steps = 0
    c.lottery.random_reinit = False
    c.lottery.reinit_seed = config_dict.placeholder(int)
    return c


def lottery_settings(config) -> dict[str, Any]:
    """Validated ``config.lottery`` fields (errors name the field)."""
    s = config.lottery
    rounds = s.rounds
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"config.lottery.rounds={rounds!r} must be an int >= 0")
    fraction = s.prune_fraction
    ok = not isinstance(fraction, bool) and isinstance(fraction, (int, float))
    if not (ok and 0.0 < fraction < 1.0):
        raise ValueError(f"config.lottery.prune_fraction={fraction!r} must be in (0, 1)")
    check_one_of("config.lottery.scope", s.scope, ("layer", "global"))
    k = s.rewind_steps
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"config.lottery.rewind_steps={k!r} must be an int >= 0")
    if not isinstance(s.random_reinit, bool):
        raise TypeError(f"config.lottery.random_reinit={s.random_reinit!r} must be a bool")
    seed = s.reinit_seed if s.reinit_seed is not None else config.seed + 1
    return {
        "rounds": rounds,
        "prune_fraction": float(fraction),
        "scope": s.scope,
        "rewind_steps": k,
        "random_reinit": s.random_reinit,
        "reinit_seed": int(seed),
    }


def _init_params(model, data: build.Data, seed: int):
    state = create_train_state(model, jax.random.key(seed), data.x_train[:1], optax.identity())
    return jax.device_get(state.params)


def _pretrain(config, model, data: build.Data, params, steps: int):
    """``steps`` dense steps from ``params`` with the config's optimizer (the rewind point)."""
    n_steps = build.num_steps(len(data.x_train), config.batch_size)
    tx = make_optimizer(config.optimizer, n_steps * config.num_epochs)
    state = create_train_state(model, jax.random.key(config.seed), data.x_train[:1], tx)
    params = jax.tree.map(jnp.array, params)
    state = state.replace(params=params, opt_state=tx.init(params))
    step = make_train_step(
        loss_fn=build.loss_fn_of(config), params_fn=build.qat_params_fn(config.quantization)
    )
    batches = build.batches_fn(data.x_train, data.y_train, config.batch_size, config.seed)
    done, epoch = 0, 0
    while done < steps:
        for batch in batches(epoch, 0):
            if done == steps:
                break
            state, _ = step(state, batch)
            done += 1
        epoch += 1
    return jax.device_get(state.params)


def run(config, workdir: str | None, *, dataset=None, overwrite: bool = False) -> dict[str, Any]:
    """Runs every round; returns the summary (also ``<workdir>/summary.json``).

    Returns:
      ``{"rounds": [{"round", "target_sparsity", "kernel_sparsity", "nonzeros",
      "ticket_accuracy", "ticket_val_accuracy", "reinit_accuracy"}], ...}``.
    """
    with build.config_errors():
        schema.check_fields(config, default_config(), "lottery")
        settings = lottery_settings(config)
        build.prepare_workdir(workdir, overwrite=overwrite, resume=False, marker=SUMMARY_FILE)
        initialize_distributed(config)
        data = build.load_data(config, dataset)
        model = build.build_model(config.model, data.num_classes, config.quantization)
        n_steps = build.num_steps(len(data.x_train), config.batch_size)
        build.fit_settings(config, n_steps)
        build.qat_params_fn(config.quantization)
    init = _init_params(model, data, config.seed)
    k = settings["rewind_steps"]
    rewind = init if k == 0 else _pretrain(config, model, data, init, k)
    tickets: dict[int, dict] = {}
    reinits: dict[int, dict] = {}

    def outdir(kind: str, r: int) -> str | None:
        return None if workdir is None else os.path.join(workdir, kind, f"round_{r}")

    def train_masked(params, masks, out: str | None, r: int):
        tx = optax.chain(
            make_optimizer(config.optimizer, n_steps * config.num_epochs),
            # a copy: the train step donates its state, masks included
            pruning.keep_masks(jax.tree.map(jnp.array, masks)),
        )
        return train(
            config,
            data,
            out,
            model=model,
            tx=tx,
            init_variables={"params": params},
            description=f"lottery round {r}",
            results_extra=lambda final: {
                "pruning": pruning.sparsity_summary(
                    final.params, pruning.find_prune_state(final.opt_state).masks
                ),
                "lottery_round": r,
            },
        )

    def train_ticket(params, masks):
        r = len(tickets)
        final, tickets[r] = train_masked(params, masks, outdir("ticket", r), r)
        return jax.device_get(final.params)

    reinit_init = _init_params(model, data, settings["reinit_seed"])

    def callback(rnd: pruning.LotteryRound) -> None:
        line = f"round {rnd.round}: sparsity {rnd.sparsity:.4f}, ticket "
        line += f"{tickets[rnd.round]['test_accuracy']:.4f}"
        if settings["random_reinit"] and rnd.round > 0:
            params = pruning.apply_masks(reinit_init, rnd.masks)
            _, reinits[rnd.round] = train_masked(
                params, rnd.masks, outdir("reinit", rnd.round), rnd.round
            )
            line += f", random re-init {reinits[rnd.round]['test_accuracy']:.4f}"
        print(line, flush=True)

    result = pruning.iterative_magnitude_pruning(
        init,
        train_ticket,
        rounds=settings["rounds"],
        prune_fraction=settings["prune_fraction"],
        rewind_params=rewind,
        scope=settings["scope"],
        callback=callback,
    )
    rows = []
    for rnd in result.rounds:
        res, reinit = tickets[rnd.round], reinits.get(rnd.round)
        info = res["pruning"]
        rows.append(
            {
                "round": rnd.round,
                "target_sparsity": rnd.sparsity,
                "kernel_sparsity": info["prunable"]["sparsity"],
                "nonzeros": info["total"]["nonzeros"],
                "ticket_accuracy": res["test_accuracy"],
                "ticket_val_accuracy": res.get("val_accuracy"),
                "reinit_accuracy": None if reinit is None else reinit["test_accuracy"],
            }
        )
    summary = {
        "dataset": data.name,
        "model": config.model.name,
        "params": tickets[0]["params"],
        "epochs_per_round": config.num_epochs,
        "lottery": settings,
        "rounds": rows,
        "final_layer_sparsity": {
            path: row["sparsity"]
            for path, row in tickets[len(rows) - 1]["pruning"]["layers"].items()
        },
    }
    if workdir is not None and jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, SUMMARY_FILE), summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """Prints test accuracy against sparsity per round as a table."""
    print(f"\n{'round':>5} {'sparsity':>9} {'nonzeros':>9} {'ticket acc':>11} {'reinit acc':>11}")
    for row in summary["rounds"]:
        reinit = "-" if row["reinit_accuracy"] is None else f"{row['reinit_accuracy']:.4f}"
        print(
            f"{row['round']:>5} {100 * row['kernel_sparsity']:>8.2f}% {row['nonzeros']:>9,} "
            f"{row['ticket_accuracy']:>11.4f} {reinit:>11}"
        )
