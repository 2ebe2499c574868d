r"""Does slimming make a channel-pruned CNN faster? Masked dense model vs ``compression.slim``.

Half of the filters of every conv layer and half of the hidden Dense neurons are pruned
(lowest L2 norm; their biases / BatchNorm scale and shift too, so their outputs are 0).
The masked dense model still multiplies by the zeros; ``slim`` removes them and the
matching inputs of the next layer. Both run the same batch under ``jax.jit`` (inference
mode) in one process, in interleaved rounds; the table shows medians, and the outputs
are checked to agree (allclose).

Models: the deeper CNN (``DeepCNN``, conv-BN-ReLU) at 64-64 / 128-128 channels (the
headline), the same net at its default 32-32 / 64-64, and LeNet-5 (Caffe's 20-50-500).
XLA's CPU convolution switches to a slower kernel for small channel counts (for
example a 5x5 conv of a 1-channel image with <= 16 filters takes about twice as long as
with 17-32 filters), so halving already narrow layers saves less time than FLOPs.

  python benchmarks/slim_speedup.py            # full
  python benchmarks/slim_speedup.py --quick    # the headline model only, < 1 minute

Final JSON line: ``slim_speedup`` (the headline model's masked time / slim time; > 1
means the slim model is faster) and the speedup of every model.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _timing import median, print_json, print_table, time_interleaved  # noqa: E402

from jaxopt_models import compression, models, pruning  # noqa: E402

HEADLINE = "deep_cnn_64_128"
MODELS = {
    HEADLINE: lambda: models.DeepCNN(stages=((64, 64), (128, 128)), hidden=(128,)),
    "deep_cnn_32_64": lambda: models.DeepCNN(stages=((32, 32), (64, 64)), hidden=(128,)),
    "lenet5_caffe": lambda: models.lenet5_caffe(),
}


def channel_masks(params, fraction: float):
    """Masks pruning ``fraction`` of every hidden layer's units, with their biases / BN."""
    chain = compression.layer_chain(params)
    out_layer = chain[-1]
    masks = pruning.compute_masks(
        pruning.magnitude_scores(params),
        fraction,
        structure="channels",
        filter_fn=lambda p, leaf: leaf.ndim > 1 and not p.startswith(out_layer + "/"),
    )
    for layer in chain[:-1]:
        k = masks[layer]["kernel"]
        alive = jnp.any(k.reshape(-1, k.shape[-1]), axis=0)
        if "bias" in masks[layer]:
            masks[layer]["bias"] = alive
        bn = "BatchNorm_" + layer.split("_")[1]
        if layer.startswith("Conv_") and bn in masks:
            masks[bn] = {n: alive for n in masks[bn]}
    return masks


def run(name: str, batch: int, rounds: int, iters: int) -> dict:
    model = MODELS[name]()
    x = jax.random.normal(jax.random.key(1), (batch, 28, 28, 1))
    variables = model.init(jax.random.key(0), x[:1])
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    masks = channel_masks(params, 0.5)
    masked = {"params": pruning.apply_masks(params, masks), **state}
    s = compression.slim(model, params, masks, model_state=state)
    small = {"params": s.params, **s.model_state}

    f_masked = jax.jit(lambda v, xb: model.apply(v, xb, train=False))
    f_slim = jax.jit(lambda v, xb: s.model.apply(v, xb, train=False))
    ref, out = f_masked(masked, x), f_slim(small, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)
    times = time_interleaved(
        {"masked": lambda: f_masked(masked, x), "slim": lambda: f_slim(small, x)},
        rounds=rounds,
        iters=iters,
    )
    t_masked, t_slim = median(times["masked"]), median(times["slim"])
    return {
        "model": name,
        "params_masked": int(sum(a.size for a in jax.tree.leaves(params))),
        "params_slim": int(sum(a.size for a in jax.tree.leaves(s.params))),
        "kept": {k: int(len(v)) for k, v in s.kept.items()},
        "ms_masked": 1e3 * t_masked,
        "ms_slim": 1e3 * t_slim,
        "speedup": t_masked / t_slim,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="headline model, fewer rounds")
    parser.add_argument("--batch", type=int, default=128, help="inference batch size")
    args = parser.parse_args()
    rounds, iters = (5, 1) if args.quick else (15, 4)
    names = [HEADLINE] if args.quick else list(MODELS)
    results = [run(name, args.batch, rounds, iters) for name in names]
    print(f"batch {args.batch}, {rounds} interleaved rounds x {iters} calls, medians")
    print_table(
        ["model", "params masked", "params slim", "ms masked", "ms slim", "speedup"],
        [
            [
                r["model"],
                f"{r['params_masked']:,}",
                f"{r['params_slim']:,}",
                f"{r['ms_masked']:.2f}",
                f"{r['ms_slim']:.2f}",
                f"{r['speedup']:.2f}x",
            ]
            for r in results
        ],
    )
    headline = next(r for r in results if r["model"] == HEADLINE)
    record = {"slim_speedup": headline["speedup"], "model": HEADLINE, "batch": args.batch}
    record.update({r["model"]: round(r["speedup"], 3) for r in results})
    print_json(record)


if __name__ == "__main__":
    main()
