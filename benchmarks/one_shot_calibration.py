r"""One-shot calibration: the memory it keeps alive and the time per layer.

``models.collect_stats`` runs the model on the calibration batches one at a time and adds
each batch's ``X^T X`` into one float32 ``(in, in)`` accumulator per distinct layer input.
This script checks that the memory this needs is the variables, one batch's activations and
the Hessians, never the activations of the whole calibration set:

- ``params``: bytes of the variables;
- ``hessians``: bytes of the accumulators (``in^2 + 2 in`` floats per distinct layer input)
  of a parallel pass over every layer; ``hessians_seq``: the largest input group's, what a
  sequential pass holds at a time;
- ``batch_in``: bytes of one input batch; ``acts``: the layer inputs of one batch (the
  rows every linear layer reads, ``rows * in * 4`` summed over distinct inputs);
- ``xla_temp``: the compiled step's temporary buffers (``memory_analysis()``: one batch's
  forward pass and Gram products);
- ``live_peak``: the largest sum of ``jax.live_arrays()`` sizes seen after any calibration
  step (what stays on the device between batches), and ``live_peak / (params + hessians +
  batch_in)``, which stays about 1 however many batches are read;
- ``rss_peak``: the process's peak resident memory (``resource.getrusage``).

Then ``models.compress_model`` (GPTQ 4-bit, sequential) prints each layer's calibration and
compression seconds (the first layer of each shape includes its compile).

  python benchmarks/one_shot_calibration.py            # LeNet-300-100 and llama_tiny
  python benchmarks/one_shot_calibration.py --quick    # fewer, smaller batches

Prints the tables and a final JSON line with ``<model>_<quantity>`` for every quantity
above (bytes), ``<model>_calibration_s`` / ``<model>_compress_s`` totals, and ``device``.
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _timing import print_json, print_table  # noqa: E402

from jaxopt_models.models import (  # noqa: E402
    compress_model,
    find_layers,
    init_stats,
    input_groups,
    lenet300_100,
    llama_tiny,
    make_stats_step,
)


def _bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _live_bytes() -> int:
    return int(sum(a.size * a.dtype.itemsize for a in jax.live_arrays()))


def _models(quick: bool):
    rng = np.random.default_rng(0)
    n, bs = (4, 256) if quick else (8, 1024)
    images = [rng.random((bs, 28, 28, 1), dtype=np.float32) for _ in range(n)]
    n, bs = (2, 4) if quick else (8, 8)
    tokens = [rng.integers(0, 256, (bs, 128)).astype(np.int32) for _ in range(n)]
    return [("lenet300", lenet300_100(), images), ("llama_tiny", llama_tiny(), tokens)]


def measure(name: str, model, batches: list) -> dict:
    """Memory of one parallel calibration pass, then a sequential GPTQ run with its times."""
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(batches[0][:1])
    layers = find_layers(model, variables, batches[0])

    def accumulator_bytes(group):
        distinct = {layer.inputs: layer.view[0] for layer in group}  # shared inputs count once
        return sum(4 * (n * n + 2 * n) for n in distinct.values())

    step = make_stats_step(model, layers)
    acc = init_stats(layers)
    analysis = step.lower(acc, variables, batches[0]).compile().memory_analysis()
    xla_temp = int(getattr(analysis, "temp_size_in_bytes", 0)) if analysis else 0
    one = step(init_stats(layers), variables, batches[0])  # rows per batch of each input
    by_path = {layer.path: layer for layer in layers}
    acts = sum(4 * int(s.count) * by_path[path].view[0] for path, s in one.items())
    del one
    live_peak = 0
    t0 = time.perf_counter()
    for x in batches:
        acc = step(acc, variables, jnp.asarray(x))
        jax.block_until_ready(acc)
        live_peak = max(live_peak, _live_bytes())
    pass_s = time.perf_counter() - t0
    params = _bytes(variables)
    hessians = _bytes(acc)
    batch_in = int(np.asarray(batches[0]).nbytes)
    del acc

    _, report = compress_model(model, variables, batches, method="gptq", settings={"bits": 4})
    rows = [
        [
            r.path,
            f"{r.view[0]}x{r.view[1]}",
            f"{r.rows:,}",
            f"{r.calibration_seconds:.2f}",
            f"{r.compress_seconds:.2f}",
            f"{r.rel_error:.2e}",
        ]
        for r in report.layers
    ]
    print(f"\n{name}: GPTQ 4-bit, sequential, {len(batches)} batches of {len(batches[0])}")
    print_table(["layer", "view", "rows", "calib s", "gptq s", "rel. error"], rows)
    out = {
        "params": params,
        "hessians": hessians,
        "hessians_seq": max(accumulator_bytes(g) for g in input_groups(layers)),
        "batch_in": batch_in,
        "acts": acts,
        "xla_temp": xla_temp,
        "live_peak": live_peak,
        "live_ratio": live_peak / (params + hessians + batch_in),
        "pass_s": pass_s,
        "calibration_s": report.calibration_seconds,
        "compress_s": sum(r.compress_seconds for r in report.layers),
    }
    return {f"{name}_{k}": v for k, v in out.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer, smaller batches")
    args = p.parse_args()
    record = {"device": jax.devices()[0].device_kind}
    names = []
    for name, model, batches in _models(args.quick):
        names.append(name)
        record.update(measure(name, model, batches))
    record["rss_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    keys = ["params", "hessians", "hessians_seq", "batch_in", "acts", "xla_temp", "live_peak"]
    print("\nbytes kept by one parallel calibration pass")
    print_table(
        ["model", *keys, "live / (params+H+batch)", "pass s"],
        [
            [
                n,
                *(f"{record[f'{n}_{k}']:,}" for k in keys),
                f"{record[f'{n}_live_ratio']:.2f}",
                f"{record[f'{n}_pass_s']:.2f}",
            ]  # fmt: skip
            for n in names
        ],
    )
    print(f"process peak RSS: {record['rss_peak']:,} bytes")
    print_json(record)


if __name__ == "__main__":
    main()
