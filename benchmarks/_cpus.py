"""Pinning a benchmark to some cores before JAX starts (its thread pool sizes itself from the
process's affinity mask, so this must run before ``import jax``)."""

import os
import sys


def pin_from_argv(default: str | None = None) -> None:
    """Restricts this process (and its children) to the cores of ``--cpus`` in ``sys.argv``
    (``--cpus 0,1`` or ``--cpus=0,1``), or to ``default`` when it is absent."""
    cpus = default
    for i, arg in enumerate(sys.argv):
        if arg.startswith("--cpus="):
            cpus = arg.split("=", 1)[1]
        elif arg == "--cpus" and i + 1 < len(sys.argv):
            cpus = sys.argv[i + 1]
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
