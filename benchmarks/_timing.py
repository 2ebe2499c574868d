"""Timing helpers shared by the benchmark scripts: interleaved rounds, medians, JSON line."""

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import jax


def time_interleaved(
    fns: dict[str, Callable[[], object]], *, rounds: int, iters: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of each ``fn``, measured in interleaved rounds.

    Every round runs each function ``iters`` times back to back (blocking on the result at
    the end); the order of the functions rotates from round to round, so slow phases of a
    shared machine hit all of them alike.

    Returns:
      ``{name: [seconds per call, one entry per round]}``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            fn = fns[n]
            t0 = time.perf_counter()
            res = None
            for _ in range(iters):
                res = fn()
            jax.block_until_ready(res)
            out[n].append((time.perf_counter() - t0) / iters)
    return out


def step_runner(step, state, batch: dict) -> Callable[[], jax.Array]:
    """A no-argument callable running the compiled library ``step`` once on its own state.

    ``step`` is a ``training.make_train_step(...)`` result; ``state`` and ``batch`` are
    placed once for its parallel mode, the state is carried from call to call (it is
    donated), and each call returns the step's loss.
    """
    box = {"state": step.place_state(state)}
    batch = step.place_batch(batch)

    def run():
        box["state"], metrics = step(box["state"], batch)
        return metrics["loss"]

    return run


def load_average() -> float:
    """The 1-minute load average, rounded: printed beside timings (the machine may be shared)."""
    return round(os.getloadavg()[0], 2)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(fmt.format(*[str(c) for c in r]))


def print_json(record: dict) -> None:
    print(json.dumps(record, sort_keys=True))


def shape_names(parser: argparse.ArgumentParser, value: str, shapes: dict) -> list[str]:
    """The comma list ``--shapes`` as names of ``shapes``; an unknown one is a parser error
    naming the allowed ones."""
    names = value.split(",")
    for name in names:
        if name not in shapes:
            parser.error(f"--shapes: unknown shape {name!r}; choose from {sorted(shapes)}")
    return names
