r"""Train-step throughput: our compiled step vs a minimal hand-written Flax + optax loop.

Same model architecture, same batch (128), same optimizer (Adam 1e-3), one process,
interleaved rounds, medians. Also times LeNet-5 variants to see what XLA's CPU backend
does with convolutions: pooling through ``reduce_window`` vs reshape+max, NHWC vs NCHW
layouts, and convolution as an explicit im2col matmul.

  python benchmarks/train_throughput.py            # full
  python benchmarks/train_throughput.py --quick    # < 1 minute

Prints a table and a final JSON line with ``lenet300_ratio`` and ``lenet5_ratio``
(throughput ours / minimal; > 1 means ours is faster).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _timing import (  # noqa: E402
    median,
    print_json,
    print_table,
    step_runner,
    time_interleaved,
)

from jaxopt_models import models, training  # noqa: E402

BATCH = 128


class MinimalMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(300)(x))
        x = nn.relu(nn.Dense(100)(x))
        return nn.Dense(10)(x)


class MinimalLeNet5(nn.Module):
    """LeNet-5 as a Flax user writes it: NHWC, ``nn.max_pool`` (reduce_window)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (5, 5), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(10)(x)


def _reshape_max_nchw(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


class NCHWLeNet5(nn.Module):
    """The same net with channels-first convolutions (lax.conv_general_dilated)."""

    @nn.compact
    def __call__(self, x):
        x = jnp.transpose(x, (0, 3, 1, 2))
        for i, (f, pad) in enumerate(((6, "SAME"), (16, "VALID"))):
            cin = x.shape[1]
            k = self.param(f"k{i}", nn.initializers.he_normal(), (f, cin, 5, 5))
            b = self.param(f"b{i}", nn.initializers.zeros, (f,))
            x = jax.lax.conv_general_dilated(
                x, k, (1, 1), pad, dimension_numbers=("NCHW", "OIHW", "NCHW")
            )
            x = _reshape_max_nchw(nn.relu(x + b[None, :, None, None]))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(10)(x)


class Im2colLeNet5(nn.Module):
    """Convolutions as explicit patch extraction + one matmul each (NHWC)."""

    @nn.compact
    def __call__(self, x):
        for i, (f, pad) in enumerate(((6, "SAME"), (16, "VALID"))):
            cin = x.shape[-1]
            patches = jax.lax.conv_general_dilated_patches(
                x, (5, 5), (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )  # (N, H, W, cin*25), feature order (cin, kh, kw)
            k = self.param(f"k{i}", nn.initializers.he_normal(), (cin * 25, f))
            b = self.param(f"b{i}", nn.initializers.zeros, (f,))
            x = nn.relu(patches @ k + b)
            x = models.pool(x, "max")
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(10)(x)


def minimal_step_fn(module, x, y, lr=1e-3):
    """A minimal hand-written Flax + optax train loop: returns a zero-arg step closure."""
    tx = optax.adam(lr)
    params = module.init(jax.random.key(0), x)["params"]
    holder = {"params": params, "opt": tx.init(params)}

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = module.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run():
        holder["params"], holder["opt"], loss = step(holder["params"], holder["opt"], x, y)
        return loss

    return run


def ours_step_fn(model, x, y, lr=1e-3):
    """Our library path: ``create_train_state`` + ``make_train_step`` (jit, donated state)."""
    state = training.create_train_state(model, jax.random.key(0), x, optax.adam(lr))
    return step_runner(training.make_train_step(), state, {"image": x, "label": y})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (< 1 minute)")
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args()
    rounds = args.rounds or (5 if args.quick else 15)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(BATCH, 28, 28, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, BATCH).astype(np.int32))

    mlp = time_interleaved(
        {
            "lenet300 minimal": minimal_step_fn(MinimalMLP(), x, y),
            "lenet300 ours": ours_step_fn(models.lenet300_100(), x, y),
        },
        rounds=rounds,
        iters=20 if args.quick else 50,
    )
    cnn_fns = {
        "lenet5 minimal (NHWC, reduce_window max)": minimal_step_fn(MinimalLeNet5(), x, y),
        "lenet5 ours (NHWC, reshape max)": ours_step_fn(models.lenet5(), x, y),
        "lenet5 ours, avg pool": ours_step_fn(models.lenet5(pool="avg"), x, y),
        "lenet5 NCHW conv, reshape max": minimal_step_fn(NCHWLeNet5(), x, y),
        "lenet5 im2col matmul conv": minimal_step_fn(Im2colLeNet5(), x, y),
    }
    cnn = time_interleaved(cnn_fns, rounds=rounds, iters=5 if args.quick else 10)

    timings = {**mlp, **cnn}
    base = {"lenet300": "lenet300 minimal", "lenet5": "lenet5 minimal (NHWC, reduce_window max)"}
    rows = []
    for name, ts in timings.items():
        sec = median(ts)
        ref = base["lenet300" if name.startswith("lenet300") else "lenet5"]
        rows.append(
            [
                name,
                f"{sec * 1e3:.3f}",
                f"{BATCH / sec:,.0f}",
                f"{median(timings[ref]) / sec:.3f}",
            ]
        )
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()}, "
        f"batch {BATCH}, adam, {rounds} interleaved rounds (medians)"
    )
    print_table(["train step", "ms/step", "examples/s", "speed vs minimal"], rows)
    lenet300_ratio = median(mlp["lenet300 minimal"]) / median(mlp["lenet300 ours"])
    lenet5_ratio = median(cnn[base["lenet5"]]) / median(cnn["lenet5 ours (NHWC, reshape max)"])
    print_json(
        {
            "lenet300_ratio": round(lenet300_ratio, 4),
            "lenet5_ratio": round(lenet5_ratio, 4),
            "lenet5_examples_per_s": round(
                BATCH / median(cnn["lenet5 ours (NHWC, reshape max)"]), 1
            ),
            "lenet300_examples_per_s": round(BATCH / median(mlp["lenet300 ours"]), 1),
            "backend": jax.default_backend(),
            "rounds": rounds,
        }
    )


if __name__ == "__main__":
    main()
