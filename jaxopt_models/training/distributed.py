"""Multi-process (multi-host) set-up: ``jax.distributed`` from config/env, a local launcher.

A run spans several processes when ``jax.distributed.initialize`` is called in each of
them before any other JAX call. ``initialize_distributed(config)`` does that from
``config.distributed`` or, for the fields left unset, from the environment:

* ``JAX_COORDINATOR_ADDRESS`` — ``host:port`` of process 0 (read by JAX itself too);
* ``JAX_NUM_PROCESSES`` — number of processes;
* ``JAX_PROCESS_ID`` — this process's index in ``[0, JAX_NUM_PROCESSES)``.

On TPU pods, Slurm or Open MPI set ``config.distributed.auto = True`` and JAX detects
everything. ``launch_local`` starts N processes on this machine with those variables set
(CPU collectives through gloo), which is how the multi-process path is tested here.
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _field(config: Any, key: str) -> Any:
    if config is None:
        return None
    dist = config.get("distributed") if hasattr(config, "get") else None
    if dist is None:
        return None
    return dist.get(key) if hasattr(dist, "get") else getattr(dist, key, None)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an int") from None


def distributed_settings(config: Any = None) -> dict[str, Any] | None:
    """The ``jax.distributed.initialize`` arguments requested by ``config`` / environment.

    Args:
      config: an experiment config with an optional ``distributed`` section
        (``coordinator_address``, ``num_processes``, ``process_id``, ``auto``).

    Returns:
      ``None`` for a single-process run, ``{}`` for auto-detection, otherwise
      ``{"coordinator_address", "num_processes", "process_id"}``.

    Raises:
      ValueError: a coordinator is given without a valid process count and id.

    Example:
      >>> distributed_settings(None)  # nothing set: single process
    """
    address = _field(config, "coordinator_address") or os.environ.get(ENV_COORDINATOR)
    num = _field(config, "num_processes")
    num = _env_int(ENV_NUM_PROCESSES) if num is None else num
    pid = _field(config, "process_id")
    pid = _env_int(ENV_PROCESS_ID) if pid is None else pid
    if not address:
        if _field(config, "auto"):
            return {}
        if num is not None and num > 1:
            raise ValueError(
                f"num_processes={num} needs a coordinator address "
                f"(config.distributed.coordinator_address or {ENV_COORDINATOR})"
            )
        return None
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(
            f"num_processes={num!r} must be an int >= 1 (config.distributed.num_processes "
            f"or {ENV_NUM_PROCESSES}) when a coordinator address is set"
        )
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < num:
        raise ValueError(
            f"process_id={pid!r} must be an int in [0, {num}) (config.distributed.process_id "
            f"or {ENV_PROCESS_ID})"
        )
    return {"coordinator_address": str(address), "num_processes": num, "process_id": pid}


def initialize_distributed(config: Any = None) -> bool:
    """Calls ``jax.distributed.initialize`` if ``config``/the environment asks for it.

    Must run before any other JAX computation. Idempotent: does nothing when already
    initialised. On CPU the cross-process collectives use gloo.

    Args:
      config: an experiment config (see ``distributed_settings``), or ``None`` to read
        the environment only.

    Returns:
      Whether the distributed runtime is initialised after the call.

    Example:
      >>> initialize_distributed(config)  # first thing in main()
      >>> jax.process_index(), jax.process_count()
    """
    if jax.distributed.is_initialized():
        return True
    settings = distributed_settings(config)
    if settings is None:
        return False
    try:  # the CPU backend needs a cross-process collectives implementation
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, KeyError, ValueError):  # an older/newer JAX without the option
        pass
    jax.distributed.initialize(**settings)
    return True


def is_main_process() -> bool:
    """Whether this is process 0 (the one that logs and writes files)."""
    return jax.process_index() == 0


def free_port() -> int:
    """A TCP port on localhost that is free right now (for a local coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(
    argv: Sequence[str],
    num_processes: int,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    log_dir: str | None = None,
    timeout: float | None = None,
) -> list[int]:
    """Runs ``python argv...`` as ``num_processes`` cooperating local processes.

    Each process gets ``JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>``, ``JAX_NUM_PROCESSES``
    and its ``JAX_PROCESS_ID``; the script calls ``initialize_distributed`` (as
    ``experiments/train.py`` does). If one process fails, the others are stopped.

    Args:
      argv: the Python arguments, e.g. ``["-m", "experiments.train", "--config", ...]``.
      num_processes: how many processes (>= 1).
      port: the coordinator port (default: a free one).
      env: extra environment variables for every process.
      log_dir: write each process's stdout+stderr to ``<log_dir>/process_<i>.log``
        (default: inherit this process's streams).
      timeout: stop every process after this many seconds (``None``: wait).

    Returns:
      The exit codes, in process order (negative: killed by that signal).

    Example:
      >>> launch_local(["-m", "experiments.train", "--config", cfg, "--workdir", wd], 2)
    """
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes={num_processes!r} must be an int >= 1")
    port = free_port() if port is None else int(port)
    procs, logs = [], []
    try:
        for i in range(num_processes):
            child_env = dict(os.environ)
            child_env.update(env or {})
            child_env.update(
                {
                    ENV_COORDINATOR: f"127.0.0.1:{port}",
                    ENV_NUM_PROCESSES: str(num_processes),
                    ENV_PROCESS_ID: str(i),
                }
            )
            out = None
            if log_dir is not None:
                os.makedirs(log_dir, exist_ok=True)
                out = open(os.path.join(log_dir, f"process_{i}.log"), "wb")  # noqa: SIM115
                logs.append(out)
            procs.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    env=child_env,
                    stdout=out,
                    stderr=subprocess.STDOUT if out is not None else None,
                )
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                return [int(c) for c in codes]
            failed = any(c not in (None, 0) for c in codes)
            expired = deadline is not None and time.monotonic() > deadline
            if failed or expired:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                return [int(p.wait()) for p in procs]
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
