r"""Lottery ticket: iterative magnitude pruning with rewinding, against random re-init.

Runs ``pruning.iterative_magnitude_pruning`` with a ``train_fn`` built on the training loop
(``training.fit`` with ``pruning.keep_masks`` chained after the config's optimizer), then,
with ``lottery.random_reinit``, trains every round's masks once more from a fresh random
init. Prints test accuracy against sparsity per round and a final JSON line.

Usage:
  python -m experiments.lottery \
      --config experiments/configs/fashion_mnist_lenet300_lottery.py \
      --workdir runs/fm_lenet300_lottery
  # quick local try: --config=experiments/configs/fashion_mnist_lenet300_lottery.py:quick

Writes ``<workdir>/ticket/round_<r>/`` and ``<workdir>/reinit/round_<r>/`` (``results.json``
and ``metrics.jsonl`` each) and ``<workdir>/summary.json``.
"""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxopt_models import pruning
from jaxopt_models.data import Dataset, steps_per_epoch, train_batches
from jaxopt_models.models import get_model
from jaxopt_models.training import (
    atomic_write_json,
    create_train_state,
    cross_entropy,
    find_prune_state,
    fit,
    load_dataset,
    make_eval_step,
    make_optimizer,
    make_train_step,
    model_kwargs,
    sparsity_summary,
)

FLAGS = flags.FLAGS
if "workdir" not in FLAGS:  # several experiment modules may share a process
    flags.DEFINE_string("workdir", None, "Directory for the per-round results and summary.json.")
if "config" not in FLAGS:  # several experiment modules may share a process
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def lottery_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Validated ``config.lottery`` fields (errors name the field)."""
    section = config.get("lottery")
    if section is None:
        raise ValueError("config.lottery is missing; see fashion_mnist_lenet300_lottery.py")
    out = {
        "rounds": section.get("rounds"),
        "prune_fraction": section.get("prune_fraction"),
        "scope": section.get("scope", "layer"),
        "rewind_steps": section.get("rewind_steps", 0),
        "random_reinit": bool(section.get("random_reinit", False)),
        "reinit_seed": section.get("reinit_seed"),
    }
    rounds = out["rounds"]
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"config.lottery.rounds={rounds!r} must be an int >= 0")
    fraction = out["prune_fraction"]
    ok = not isinstance(fraction, bool) and isinstance(fraction, (int, float))
    if not (ok and 0.0 < fraction < 1.0):
        raise ValueError(f"config.lottery.prune_fraction={fraction!r} must be in (0, 1)")
    if out["scope"] not in ("layer", "global"):
        raise ValueError(
            f"config.lottery.scope={out['scope']!r} is not known; allowed values: "
            "('layer', 'global')"
        )
    k = out["rewind_steps"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"config.lottery.rewind_steps={k!r} must be an int >= 0")
    if out["reinit_seed"] is None:
        out["reinit_seed"] = config.seed + 1
    return out


def _loss_fn(config):
    return lambda logits, labels: cross_entropy(logits, labels, config.label_smoothing)


def init_params(config, model, ds: Dataset, seed: int):
    """The model's initial params for ``seed`` (as ``train_and_evaluate`` would make them)."""
    state = create_train_state(model, jax.random.key(seed), ds.x_train[:1], optax.identity())
    return state.params


def _with_masks(opt_state, masks):
    """``opt_state`` with the masks of its ``pruning.KeepMasksState`` replaced by ``masks``."""
    is_keep = lambda x: isinstance(x, pruning.KeepMasksState)
    return jax.tree.map(
        lambda x: pruning.KeepMasksState(masks) if is_keep(x) else x, opt_state, is_leaf=is_keep
    )


def make_masked_trainer(config, model, ds: Dataset):
    """``(train, pretrain)``: training under fixed masks, one compiled step for every round.

    The optimizer is the config's, followed by ``pruning.keep_masks`` (pruned weights stay
    exactly 0.0); the masks live in its state, so every round reuses the same compiled
    train and eval steps.

    Returns:
      ``train(params, masks, workdir, r) -> (final_state, results)``: ``config.num_epochs``
      through ``training.fit`` (metrics and results.json in ``workdir``; the results carry
      the sparsity summary under ``"pruning"`` and ``"lottery_round": r``), and
      ``pretrain(params, steps) -> params``: ``steps`` dense steps (the rewinding point).
    """
    total = steps_per_epoch(len(ds.x_train), config.batch_size) * config.num_epochs
    loss_fn = _loss_fn(config)
    base = create_train_state(model, jax.random.key(config.seed), ds.x_train[:1], optax.identity())
    dense = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), base.params)
    tx = optax.chain(make_optimizer(config.optimizer, total), pruning.keep_masks(dense))
    base = base.replace(tx=tx, opt_state=None)
    step_fn = make_train_step(loss_fn=loss_fn, parallel=config.get("parallel", "none"))
    eval_fn = make_eval_step(loss_fn=loss_fn)

    def start(params, masks):
        # The train step donates the state: fresh copies keep the caller's arrays alive.
        params, masks, model_state = jax.tree.map(jnp.array, (params, masks, base.model_state))
        return base.replace(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=_with_masks(tx.init(params), masks),
            model_state=model_state,
            rng=jax.random.split(jax.random.key(config.seed))[1],
        )

    def train(params, masks, workdir: str | None, r: int):
        return fit(
            config,
            start(params, masks),
            ds,
            workdir,
            train_fn=step_fn,
            eval_fn=eval_fn,
            extra_results=lambda final: {
                "pruning": sparsity_summary(final.params, find_prune_state(final.opt_state).masks),
                "lottery_round": r,
            },
        )

    def pretrain(params, steps: int):
        state = step_fn.place_state(start(params, dense))
        done, epoch = 0, 0
        while done < steps:
            batches = train_batches(
                ds.x_train, ds.y_train, config.batch_size, seed=config.seed, epoch=epoch
            )
            for batch in batches:
                if done == steps:
                    break
                state, _ = step_fn(state, batch)
                done += 1
            epoch += 1
        return jax.device_get(step_fn.local(state).params)

    return train, pretrain


def run(config: ml_collections.ConfigDict, workdir: str | None, dataset: Dataset | None = None):
    """Runs the whole experiment; returns the summary dict (also ``<workdir>/summary.json``).

    Args:
      config: a training config with a ``lottery`` section (``rounds``,
        ``prune_fraction``, ``scope``, ``rewind_steps``, ``random_reinit``,
        ``reinit_seed``); ``num_epochs`` is per round.
      workdir: output directory (``None``: write nothing).
      dataset: use this dataset instead of loading ``config.dataset``.

    Returns:
      ``{"rounds": [{"round", "target_sparsity", "kernel_sparsity", "nonzeros",
      "ticket_accuracy", "reinit_accuracy"}], ...}``.
    """
    settings = lottery_settings(config)
    ds = load_dataset(config, dataset)
    model = get_model(config.model.name, **model_kwargs(config, ds.num_classes))
    init = init_params(config, model, ds, config.seed)
    train, pretrain = make_masked_trainer(config, model, ds)
    k = settings["rewind_steps"]
    rewind = init if k == 0 else pretrain(init, k)
    tickets: dict[int, dict] = {}
    reinits: dict[int, dict] = {}

    def outdir(kind: str, r: int) -> str | None:
        return None if workdir is None else os.path.join(workdir, kind, f"round_{r}")

    def train_ticket(params, masks):
        r = len(tickets)
        final, tickets[r] = train(params, masks, outdir("ticket", r), r)
        return final.params

    reinit_init = init_params(config, model, ds, settings["reinit_seed"])

    def callback(rnd: pruning.LotteryRound) -> None:
        line = f"round {rnd.round}: sparsity {rnd.sparsity:.4f}, ticket "
        line += f"{tickets[rnd.round]['test_accuracy']:.4f}"
        if settings["random_reinit"] and rnd.round > 0:
            params = pruning.apply_masks(reinit_init, rnd.masks)
            _, reinits[rnd.round] = train(params, rnd.masks, outdir("reinit", rnd.round), rnd.round)
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
                "reinit_accuracy": None if reinit is None else reinit["test_accuracy"],
            }
        )
    summary = {
        "dataset": ds.name,
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
        atomic_write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """Prints accuracy against sparsity per round as a table, then one JSON line."""
    print(f"\n{'round':>5} {'sparsity':>9} {'nonzeros':>9} {'ticket acc':>11} {'reinit acc':>11}")
    for row in summary["rounds"]:
        reinit = "-" if row["reinit_accuracy"] is None else f"{row['reinit_accuracy']:.4f}"
        print(
            f"{row['round']:>5} {100 * row['kernel_sparsity']:>8.2f}% {row['nonzeros']:>9,} "
            f"{row['ticket_accuracy']:>11.4f} {reinit:>11}"
        )
    print(json.dumps(summary))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    print_summary(run(FLAGS.config, FLAGS.workdir))


if __name__ == "__main__":
    app.run(main)
