r"""Pruning overhead: masked training steps and mask recomputation vs the dense step.

LeNet-300-100 (MLP 784-300-100-10), batch 256, Adam, jitted steps, one process,
interleaved rounds, medians:

- ``dense``: ``adam``;
- ``one_shot``: ``chain(adam, prune("magnitude", one_shot(0.9)))``: a schedule that never
  changes, so ``init`` computes the masks and the step has no recomputation branch;
- ``one_shot_in_step``: ``one_shot(0.9, step=1)``: masks computed inside the compiled step
  at step 1, the ``lax.cond`` branch stays in every step;
- ``gradual10``: ``chain(adam, prune("magnitude", polynomial(0.9, 0, N, frequency=10)))``
  with N = the number of timed steps, so the masks are recomputed every 10 steps while the
  sparsity ramps from 0 to 90% during the measurement;
- ``keep_masks``: ``chain(adam, keep_masks(masks))``, 90% masks fixed up front (the floor:
  no schedule and no recomputation branch in the step);
- one jitted ``compute_masks(magnitude_scores(params), s)`` with a traced ``s`` (as inside
  the step), on the dense initial weights at 90% and on 80%-pruned weights at 85% (the
  gradual regime), plus a full-argsort recomputation for reference.

  python benchmarks/pruning_overhead.py            # full
  python benchmarks/pruning_overhead.py --quick    # < 1 minute

Prints a table and a final JSON line with ``one_shot_ratio``, ``gradual10_ratio`` (step
time / dense step time) and ``mask_recompute_ms`` (the slower of the two recomputations),
plus ``one_shot_in_step_ratio``, ``keep_masks_ratio``, ``dense_step_ms`` and
``argsort_recompute_ms``.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from _timing import median, print_json, print_table, time_interleaved  # noqa: E402

from jaxopt_models import models, pruning  # noqa: E402

BATCH = 256
SPARSITY = 0.9


def make_step(model, tx):
    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def stepper(model, tx, params, x, y):
    """A no-argument callable running one training step on its own copy of the state."""
    params = jax.tree.map(jnp.array, params)  # private copy (the step donates its inputs)
    state = {"params": params, "opt": tx.init(params)}
    step = make_step(model, tx)

    def run():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], x, y)
        return loss

    return run, state


def argsort_masks(params, sparsity):
    """Reference recomputation with a full sort, as sort-based pruning libraries do."""

    def one(w):
        if w.ndim < 2:
            return jnp.ones(w.shape, bool)
        flat = jnp.abs(w).ravel()
        k = jnp.round(sparsity * flat.size).astype(jnp.int32)
        ranks = jnp.argsort(jnp.argsort(flat))
        return (ranks >= k).reshape(w.shape)

    return jax.tree.map(one, params)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (< 1 minute)")
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args()
    # Many short rounds: the machine is shared, and with 10 steps per round every round of
    # the gradual run contains exactly one mask recomputation.
    rounds = args.rounds or (30 if args.quick else 150)
    iters = 10
    timed_steps = rounds * iters

    model = models.MLP(features=(300, 100), num_classes=10, kernel_init="he_normal")
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (BATCH, 784))
    y = jax.random.randint(ky, (BATCH,), 0, 10)
    params = model.init(kp, x[:1])["params"]

    adam = lambda: optax.adam(1e-3)
    fixed_masks = pruning.compute_masks(pruning.magnitude_scores(params), SPARSITY)
    gradual = pruning.polynomial(SPARSITY, begin_step=0, end_step=timed_steps, frequency=10)
    runs = {
        "dense": stepper(model, adam(), params, x, y),
        "one_shot": stepper(
            model,
            optax.chain(adam(), pruning.prune("magnitude", pruning.one_shot(SPARSITY))),
            params,
            x,
            y,
        ),
        "one_shot_in_step": stepper(
            model,
            optax.chain(adam(), pruning.prune("magnitude", pruning.one_shot(SPARSITY, step=1))),
            params,
            x,
            y,
        ),
        "gradual10": stepper(
            model, optax.chain(adam(), pruning.prune("magnitude", gradual)), params, x, y
        ),
        # The floor for a fixed mask: no schedule, no in-step recomputation branch.
        "keep_masks": stepper(
            model, optax.chain(adam(), pruning.keep_masks(fixed_masks)), params, x, y
        ),
    }
    # time_interleaved warms up with 2 calls each; the gradual run then ramps over the timed
    # steps. Warm-up steps shift its schedule by 2 steps, which does not change the count of
    # recomputations per round.
    steps = time_interleaved({n: r[0] for n, r in runs.items()}, rounds=rounds, iters=iters)

    recompute = jax.jit(lambda p, s: pruning.compute_masks(pruning.magnitude_scores(p), s))
    pruned80 = pruning.apply_masks(
        params, pruning.compute_masks(pruning.magnitude_scores(params), 0.8)
    )
    sort_recompute = jax.jit(argsort_masks)
    s90, s85 = jnp.float32(SPARSITY), jnp.float32(0.85)
    masks = time_interleaved(
        {
            "recompute_dense@0.90": lambda: recompute(params, s90),
            "recompute_pruned80@0.85": lambda: recompute(pruned80, s85),
        },
        rounds=rounds,
        iters=5,
    )
    sort_ms = time_interleaved(
        {"argsort_recompute": lambda: sort_recompute(params, s90)},
        rounds=3 if args.quick else 10,
        iters=1,
    )
    masks.update(sort_ms)

    # Sanity: the gradual run really pruned to 90% and the one-shot run stayed at 90%.
    for name in ("one_shot", "one_shot_in_step", "gradual10"):
        state = runs[name][1]
        info = pruning.summary(state["params"], state["opt"][-1].masks)
        kernels = [v for k, v in info["layers"].items() if k.endswith("kernel")]
        achieved = 1 - sum(v["nonzeros"] for v in kernels) / sum(v["params"] for v in kernels)
        assert abs(achieved - SPARSITY) < 1e-3, (name, achieved)

    dense = median(steps["dense"])
    rows = [
        [name, f"{1e3 * median(ts):.3f}", f"{median(ts) / dense:.3f}"] for name, ts in steps.items()
    ]
    rows += [[name, f"{1e3 * median(ts):.3f}", ""] for name, ts in masks.items()]
    print(
        f"LeNet-300-100, batch {BATCH}, adam, {rounds} rounds x {iters} steps, "
        f"devices: {jax.devices()[0].platform} x{jax.device_count()}"
    )
    print_table(["what", "ms", "/ dense step"], rows)
    recompute_ms = 1e3 * max(
        median(masks["recompute_dense@0.90"]), median(masks["recompute_pruned80@0.85"])
    )
    print_json(
        {
            "one_shot_ratio": round(median(steps["one_shot"]) / dense, 4),
            "gradual10_ratio": round(median(steps["gradual10"]) / dense, 4),
            "mask_recompute_ms": round(recompute_ms, 3),
            "dense_step_ms": round(1e3 * dense, 3),
            "argsort_recompute_ms": round(1e3 * median(masks["argsort_recompute"]), 3),
            "keep_masks_ratio": round(median(steps["keep_masks"]) / dense, 4),
            "one_shot_in_step_ratio": round(median(steps["one_shot_in_step"]) / dense, 4),
        }
    )


if __name__ == "__main__":
    main()
