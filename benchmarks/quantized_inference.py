r"""Integer inference: int8 path vs float32 forward pass (LeNet-300-100 and LeNet-5).

Each model is built with random He-normal weights, its per-layer activation ranges are
calibrated on 512 random images (``models.calibrate_activation_ranges``) and it is run at
batch 1024 (default) two ways, both jitted, in one process with interleaved rounds and
medians:

- ``float32``: ``model.apply`` (XLA's float Dense / Conv);
- ``int8``: ``models.int8_apply`` on ``build_int8_model``: per layer, the input is rounded
  onto its int8 grid, multiplied by int8 per-channel kernels with int32 accumulation
  (``quantization.int8_dense`` / ``int8_conv``, LeNet-5's max pooling fused into the
  integer convolution) and rescaled once.

Also reports the stored weight bytes (float32 params vs int8 kernels + float scales and
biases, ``quantization.size_bytes``) and the fraction of images on which both paths
predict the same class.

  python benchmarks/quantized_inference.py            # full
  python benchmarks/quantized_inference.py --quick    # < 1 minute

Final JSON line keys: ``mlp_int8_speedup``, ``lenet5_int8_speedup`` (float32 time / int8
time), ``weight_bytes`` and ``weight_ratio`` per model, and ``gemm_int8_speedup``: for each
of LeNet-300-100's three layer shapes at this batch, a bare float32 ``x @ w`` against a bare
int8 x int8 -> int32 ``lax.dot_general`` (the ceiling of any int8 MLP path built on XLA's
dot: when the int8 GEMM itself is no faster than the float one, the MLP cannot be).
"""

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _timing import median, print_json, print_table, time_interleaved  # noqa: E402

from jaxopt_models import models, quantization  # noqa: E402
from jaxopt_models.models.int8 import (  # noqa: E402
    build_int8_model,
    calibrate_activation_ranges,
    int8_apply,
)

MODELS = {"mlp": models.lenet300_100, "lenet5": models.lenet5}
MLP_LAYERS = ((784, 300), (300, 100), (100, 10))


def gemm_fns(batch: int) -> dict:
    """Bare float32 and int8 GEMMs of LeNet-300-100's layer shapes, keyed ``gemm KxN/dtype``."""
    f32 = jax.jit(lambda a, b: a @ b)
    i8 = jax.jit(
        lambda a, b: jax.lax.dot_general(
            a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32
        )
    )
    fns = {}
    for i, (k, n) in enumerate(MLP_LAYERS):
        kx, kw = jax.random.split(jax.random.key(10 + i))
        x, w = jax.random.normal(kx, (batch, k)), jax.random.normal(kw, (k, n))
        xq = jax.random.randint(kx, (batch, k), -127, 128, dtype=jnp.int8)
        wq = jax.random.randint(kw, (k, n), -127, 128, dtype=jnp.int8)
        fns[f"gemm {k}x{n}/float32"] = functools.partial(f32, x, w)
        fns[f"gemm {k}x{n}/int8"] = functools.partial(i8, xq, wq)
    return fns


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (< 1 minute)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="forward passes per round")
    return p.parse_args()


def build(name: str, x: jax.Array):
    """``(float_fn, int8_fn, float_params, int8_model)`` for model ``name``."""
    model = MODELS[name](num_classes=10)
    variables = model.init(jax.random.key(0), x[:1])
    calib = jax.random.uniform(jax.random.key(2), (512, *x.shape[1:]))
    ranges = calibrate_activation_ranges(model, variables, [calib])
    net = build_int8_model(model, variables["params"], ranges)
    float_apply = jax.jit(model.apply)
    int8 = jax.jit(int8_apply)
    return (
        functools.partial(float_apply, variables, x),
        functools.partial(int8, net, x),
        variables["params"],
        net,
    )


def main() -> None:
    args = _parse()
    rounds = args.rounds or (3 if args.quick else 21)
    iters = args.iters or (3 if args.quick else 20)
    x = jax.random.uniform(jax.random.key(1), (args.batch, 28, 28, 1))
    fns, info = {}, {}
    for name in MODELS:
        f, q, params, net = build(name, x)
        fns[f"{name}/float32"], fns[f"{name}/int8"] = f, q
        agree = float(jnp.mean(jnp.argmax(f(), -1) == jnp.argmax(q(), -1)))
        info[name] = {
            "float_bytes": quantization.size_bytes(params),
            "int8_bytes": quantization.size_bytes(net),
            "agreement": agree,
        }
    fns.update(gemm_fns(args.batch))
    times = time_interleaved(fns, rounds=rounds, iters=iters, warmup=3)
    med = {k: median(v) for k, v in times.items()}
    speedup = {n: med[f"{n}/float32"] / med[f"{n}/int8"] for n in MODELS}
    gemm = {
        f"{k}x{n}": med[f"gemm {k}x{n}/float32"] / med[f"gemm {k}x{n}/int8"] for k, n in MLP_LAYERS
    }
    print(
        f"forward pass, batch {args.batch}, {jax.devices()[0].platform}, "
        f"{rounds} rounds x {iters} calls, medians"
    )
    rows = []
    for n in MODELS:
        i = info[n]
        rows.append(
            [
                n,
                f"{1e3 * med[f'{n}/float32']:.2f}",
                f"{1e3 * med[f'{n}/int8']:.2f}",
                f"{speedup[n]:.2f}x",
                f"{i['float_bytes']:,}",
                f"{i['int8_bytes']:,}",
                f"{i['float_bytes'] / i['int8_bytes']:.2f}x",
                f"{100 * i['agreement']:.1f}%",
            ]
        )
    print_table(
        [
            "model",
            "float32 ms",
            "int8 ms",
            "speedup",
            "float32 bytes",
            "int8 bytes",
            "smaller",
            "same pred",
        ],
        rows,
    )
    print_table(
        ["MLP layer GEMM", "float32 ms", "int8 ms", "int8 speedup"],
        [
            [
                shape,
                f"{1e3 * med[f'gemm {shape}/float32']:.3f}",
                f"{1e3 * med[f'gemm {shape}/int8']:.3f}",
                f"{r:.2f}x",
            ]
            for shape, r in gemm.items()
        ],
    )
    print_json(
        {
            "benchmark": "quantized_inference",
            "platform": jax.devices()[0].platform,
            "batch": args.batch,
            "quick": args.quick,
            "ms": {k: round(1e3 * v, 3) for k, v in med.items()},
            "weight_bytes": {n: [info[n]["float_bytes"], info[n]["int8_bytes"]] for n in MODELS},
            "weight_ratio": {
                n: round(info[n]["float_bytes"] / info[n]["int8_bytes"], 3) for n in MODELS
            },
            "agreement": {n: round(info[n]["agreement"], 4) for n in MODELS},
            "mlp_int8_speedup": round(speedup["mlp"], 3),
            "lenet5_int8_speedup": round(speedup["lenet5"], 3),
            "gemm_int8_speedup": {k: round(v, 3) for k, v in gemm.items()},
        }
    )


if __name__ == "__main__":
    main()
