r"""Starts N cooperating local processes (``jax.distributed`` on localhost) for testing.

Usage:
  python -m experiments.launch -n 2 -- -m experiments.train \
      --config experiments/configs/digits_mlp.py --workdir runs/digits_2proc \
      --config.parallel=sharding

Each process gets ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
(read by ``training.initialize_distributed``); on CPU they talk through gloo. Use
``--devices_per_process K`` to simulate K CPU devices in each process.
"""

import argparse
import os
import sys

from jaxopt_models.training.distributed import launch_local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--num_processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default free)")
    parser.add_argument(
        "--devices_per_process", type=int, default=0, help="simulated CPU devices (0: as is)"
    )
    parser.add_argument("--log_dir", default=None, help="per-process logs (default: terminal)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before stopping all")
    parser.add_argument("python_args", nargs=argparse.REMAINDER, help="-- then the Python args")
    args = parser.parse_args(argv)
    python_args = args.python_args[1:] if args.python_args[:1] == ["--"] else args.python_args
    if not python_args:
        parser.error("give the Python arguments after --, e.g. -- -m experiments.train ...")
    env = {}
    if args.devices_per_process > 0:
        flag = f"--xla_force_host_platform_device_count={args.devices_per_process}"
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    codes = launch_local(
        python_args,
        args.num_processes,
        port=args.port,
        env=env,
        log_dir=args.log_dir,
        timeout=args.timeout,
    )
    print(f"exit codes: {codes}", file=sys.stderr)
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
