r"""One-shot compression speed: compiled GPTQ, SparseGPT and Wanda on one Dense layer.

A 1024 x 1024 kernel with a Hessian from 4096 calibration rows (transformer-like inputs: a
few outlier channels). Each method is called through its public function (argument checks
included); the first call's time minus the steady time is the compile time, the steady time
is the median over interleaved rounds of later calls:

- ``gptq_4bit_g128``: ``gptq(w, h, bits=4, group_size=128)``;
- ``gptq_4bit_g128_act_order``: the same with ``act_order=True``;
- ``sparsegpt_50``: ``sparsegpt(w, h, sparsity=0.5)``;
- ``sparsegpt_2_4``: ``sparsegpt(w, h, n_m=(2, 4))``;
- ``wanda_50``: ``wanda(w, h, sparsity=0.5)``;
- ``rtn_4bit_g128``: plain ``quantize(w, 4, axis=-1, group_size=128)`` for reference.

The relative output error ``||X w - X w_hat||^2 / ||X w||^2`` is printed beside each time.

  python benchmarks/one_shot_speed.py            # full
  python benchmarks/one_shot_speed.py --quick    # fewer rounds

Prints a table and a final JSON line with ``<method>_ms`` (steady time per call),
``<method>_compile_s`` and ``<method>_rel_error`` for every method, plus ``size``, ``rows``
and ``device``.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _timing import median, print_json, print_table, time_interleaved  # noqa: E402

from jaxopt_models import pruning, quantization  # noqa: E402
from jaxopt_models.hessian import HIGHEST, gram_matrix  # noqa: E402


def make_layer(size: int, rows: int):
    """Correlated inputs with 8 outlier channels, a 1/sqrt(in)-scaled kernel and X^T X."""
    kx, km, kw, kh = jax.random.split(jax.random.key(0), 4)
    mix = jnp.eye(size) + 0.4 * jax.random.normal(km, (size, size)) / jnp.sqrt(size)
    x = jnp.matmul(jax.random.normal(kx, (rows, size)), mix, precision=HIGHEST)
    hot = jax.random.choice(kh, size, (8,), replace=False)
    x = x.at[:, hot].multiply(20.0)
    w = jax.random.normal(kw, (size, size)) / jnp.sqrt(size)
    return x, w, gram_matrix(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds")
    p.add_argument("--size", type=int, default=1024, help="input = output size of the layer")
    p.add_argument("--rows", type=int, default=4096, help="calibration rows")
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)

    x, w, h = make_layer(args.size, args.rows)
    jax.block_until_ready((x, w, h))
    methods = {
        "gptq_4bit_g128": lambda: quantization.dequantize(
            quantization.gptq(w, h, bits=4, group_size=128)
        ),
        "gptq_4bit_g128_act_order": lambda: quantization.dequantize(
            quantization.gptq(w, h, bits=4, group_size=128, act_order=True)
        ),
        "sparsegpt_50": lambda: pruning.sparsegpt(w, h, sparsity=0.5),
        "sparsegpt_2_4": lambda: pruning.sparsegpt(w, h, n_m=(2, 4)),
        "wanda_50": lambda: pruning.wanda(w, h, sparsity=0.5),
        "rtn_4bit_g128": lambda: quantization.dequantize(
            quantization.quantize(w, 4, symmetric=False, axis=-1, group_size=128)
        ),
    }
    first = {}
    outputs = {}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        outputs[name] = jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
    steady = time_interleaved(methods, rounds=rounds, iters=1, warmup=1)

    y = jnp.matmul(x, w, precision=HIGHEST)
    y_norm = float(jnp.sum(y**2))
    rel = {
        n: float(jnp.sum((y - jnp.matmul(x, o, precision=HIGHEST)) ** 2)) / y_norm
        for n, o in outputs.items()
    }
    record = {"size": args.size, "rows": args.rows, "device": jax.devices()[0].platform}
    rows = []
    for name in methods:
        run_s = median(steady[name])
        compile_s = max(first[name] - run_s, 0.0)
        rows.append([name, f"{compile_s:.2f}", f"{1e3 * run_s:.1f}", f"{rel[name]:.3e}"])
        record[f"{name}_ms"] = round(1e3 * run_s, 2)
        record[f"{name}_compile_s"] = round(compile_s, 2)
        record[f"{name}_rel_error"] = float(f"{rel[name]:.4e}")
    print(
        f"{args.size} x {args.size} kernel, {args.rows} calibration rows, {rounds} rounds, "
        f"devices: {jax.devices()[0].platform} x{jax.device_count()}"
    )
    print_table(["method", "compile s", "run ms", "rel. output error"], rows)
    print_json(record)


if __name__ == "__main__":
    main()
