"""Helpers shared by the experiment tests: config loading and fake Fashion-MNIST files."""

import importlib.util
import inspect
import json
import os
import subprocess
import sys

import numpy as np

from jaxopt_models import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, variant: str = ""):
    """``experiments/configs/<name>.py``'s ``get_config(variant)`` (no variant, or a config
    without variants: ``get_config()``)."""
    path = os.path.join(ROOT, "experiments", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    takes_variant = bool(inspect.signature(mod.get_config).parameters)
    return mod.get_config(variant) if variant and takes_variant else mod.get_config()


def write_fake_fashion_mnist(directory, num_train: int, num_test: int) -> str:
    """Writes gzipped IDX train / t10k files of random 28x28 images with a learnable class
    signal (a bright row at ``2 * label``) into ``directory``; returns it as a string."""
    rng = np.random.default_rng(0)
    for split, n in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        images[np.arange(n), labels * 2, :] = 255
        data.write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte.gz"), images)
        data.write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"), labels)
    return str(directory)


REPORT_PREFIX = "REPORT "


def print_report(record: dict) -> None:
    """Prints ``record`` as the line :func:`run_on_simulated_devices` reads back."""
    print(REPORT_PREFIX + json.dumps(record), flush=True)


def run_on_simulated_devices(script: str, out_dir, num_devices: int, timeout: int) -> dict:
    """Runs ``python script out_dir`` with ``num_devices`` simulated CPU devices.

    ``XLA_FLAGS`` must be set before JAX starts its backend, hence a subprocess. Returns the
    dict of the script's last :func:`print_report` line; fails with its output otherwise.
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={num_devices}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(script), str(out_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(REPORT_PREFIX)]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len(REPORT_PREFIX) :])
