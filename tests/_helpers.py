"""Helpers shared by the experiment tests: config loading and fake Fashion-MNIST files."""

import importlib.util
import inspect
import os

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
