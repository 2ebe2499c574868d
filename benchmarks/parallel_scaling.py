r"""Data-parallel scaling: train steps/s of parallel="none" | "sharding" | "pmap".

LeNet-300-100 (MLP 784-300-100-10), Adam, one fixed global batch (strong scaling),
``training.make_train_step(parallel=...)`` on every available device, batches placed on
the devices beforehand (so the host input pipeline is not timed), interleaved rounds,
medians. Without an accelerator, JAX is given ``--cpu_devices`` simulated CPU devices
(they share this machine's cores, so "scaling" there measures overhead, not speed-up);
on a GPU/TPU host the same command uses the real devices.

  python benchmarks/parallel_scaling.py            # full
  python benchmarks/parallel_scaling.py --quick    # < 1 minute

Prints a table and a final JSON line with ``steps_per_s`` and ``ratio_vs_none`` per mode.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (< 1 minute)")
    p.add_argument("--batch", type=int, default=1024, help="global batch size")
    p.add_argument("--cpu_devices", type=int, default=8, help="simulated devices on CPU")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="steps per round (<= 25)")
    return p.parse_args()


ARGS = _parse()
# Must happen before JAX starts its backends; affects the host (CPU) platform only.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.cpu_devices}"
).strip()

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

from jaxopt_models import models, training  # noqa: E402

MODES = training.PARALLEL_MODES


def stepper(mode: str, x: np.ndarray, y: np.ndarray):
    """A no-argument callable running one step of ``mode`` on its own state copy."""
    model = models.MLP(features=(300, 100), num_classes=10)
    state = training.create_train_state(model, jax.random.key(0), x[:1], optax.adam(1e-3))
    step = training.make_train_step(parallel=mode)
    return step_runner(step, state, {"image": x, "label": y}), step.num_devices


def main() -> None:
    rounds = ARGS.rounds or (3 if ARGS.quick else 7)
    iters = ARGS.iters or (5 if ARGS.quick else 20)
    if iters > 25:  # queues of 40+ collective steps deadlock simulated CPU devices
        raise SystemExit(f"--iters={iters} must be <= 25 (the benchmark blocks once per round)")
    n = jax.device_count()
    if ARGS.batch % n:
        raise SystemExit(f"--batch={ARGS.batch} must be a multiple of the {n} devices")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ARGS.batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, ARGS.batch).astype(np.int32)
    fns, devices = {}, {}
    for mode in MODES:
        fns[mode], devices[mode] = stepper(mode, x, y)
    times = time_interleaved(fns, rounds=rounds, iters=iters, warmup=2)
    med = {m: median(times[m]) for m in MODES}
    rows = [
        [
            m,
            devices[m],
            f"{1e3 * med[m]:.2f}",
            f"{1 / med[m]:.1f}",
            f"{ARGS.batch / med[m]:.0f}",
            f"{med['none'] / med[m]:.2f}",
        ]
        for m in MODES
    ]
    platform = jax.devices()[0].platform
    print(
        f"LeNet-300-100, Adam, global batch {ARGS.batch}, {n} {platform} device(s), "
        f"{rounds} rounds x {iters} steps, medians"
    )
    print_table(["mode", "devices", "ms/step", "steps/s", "examples/s", "vs none"], rows)
    print_json(
        {
            "benchmark": "parallel_scaling",
            "platform": platform,
            "devices": n,
            "global_batch": ARGS.batch,
            "quick": ARGS.quick,
            "steps_per_s": {m: round(1 / med[m], 2) for m in MODES},
            "ratio_vs_none": {m: round(med["none"] / med[m], 3) for m in MODES},
        }
    )


if __name__ == "__main__":
    main()
