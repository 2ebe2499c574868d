r"""QAT overhead: int8 quantization-aware train step vs the float train step (LeNet-5).

LeNet-5 (conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> 120 -> 84 -> 10) on 28x28x1 inputs,
batch 128, Adam, ``training.make_train_step`` (jit, state donated), one process,
interleaved rounds, medians:

- ``float``: the float train step;
- ``w8``: weights fake-quantized to int8 per output channel inside the loss
  (``params_fn=fake_quant_params(bits=8, axis=-1)``);
- ``w8a8``: ``w8`` plus every Conv/Dense input fake-quantized to int8 with its own per-batch
  min-max range (``act_quant=ActivationQuantizer(8)``, no calibration needed);
- ``w8a8_static``: ``w8`` plus activations fake-quantized with a fixed range (what QAT uses
  after calibrating the ranges), which skips the per-batch min / max reductions.

``qat_ratio`` is ``w8a8`` step time / ``float`` step time.

  python benchmarks/qat_overhead.py            # full
  python benchmarks/qat_overhead.py --quick    # < 1 minute

Prints a table and a final JSON line with ``qat_ratio`` and the ratio of every variant.
"""

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _timing import (  # noqa: E402
    median,
    print_json,
    print_table,
    step_runner,
    time_interleaved,
)

from jaxopt_models import models, quantization, training  # noqa: E402

VARIANTS = ("float", "w8", "w8a8", "w8a8_static")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (< 1 minute)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="steps per round")
    return p.parse_args()


def stepper(variant: str, x: np.ndarray, y: np.ndarray):
    """A no-argument callable running one train step of ``variant`` on its own state."""
    act_quant = {
        "w8a8": quantization.ActivationQuantizer(bits=8),
        "w8a8_static": quantization.ActivationQuantizer(bits=8, clip_range=(-1.0, 4.0)),
    }.get(variant)
    model = models.lenet5(num_classes=10, act_quant=act_quant)
    params_fn = None
    if variant != "float":
        params_fn = functools.partial(quantization.fake_quant_params, bits=8, axis=-1)
    state = training.create_train_state(model, jax.random.key(0), x[:1], optax.adam(1e-3))
    step = training.make_train_step(params_fn=params_fn)
    return step_runner(step, state, {"image": x, "label": y})


def main() -> None:
    args = _parse()
    rounds = args.rounds or (3 if args.quick else 15)
    iters = args.iters or (4 if args.quick else 20)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, args.batch).astype(np.int32)
    fns = {v: stepper(v, x, y) for v in VARIANTS}
    times = time_interleaved(fns, rounds=rounds, iters=iters, warmup=2)
    med = {v: median(times[v]) for v in VARIANTS}
    ratio = {v: med[v] / med["float"] for v in VARIANTS}
    print(
        f"LeNet-5 train step, Adam, batch {args.batch}, {jax.devices()[0].platform}, "
        f"{rounds} rounds x {iters} steps, medians"
    )
    print_table(
        ["variant", "ms/step", "vs float"],
        [[v, f"{1e3 * med[v]:.2f}", f"{ratio[v]:.3f}"] for v in VARIANTS],
    )
    print_json(
        {
            "benchmark": "qat_overhead",
            "platform": jax.devices()[0].platform,
            "batch": args.batch,
            "quick": args.quick,
            "ms_per_step": {v: round(1e3 * med[v], 3) for v in VARIANTS},
            "ratios": {v: round(ratio[v], 3) for v in VARIANTS},
            "qat_ratio": round(ratio["w8a8"], 3),
        }
    )


if __name__ == "__main__":
    main()
