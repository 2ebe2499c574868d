"""Helpers shared by the experiment tests: config loading and fake Fashion-MNIST files."""

import glob
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import numpy as np

from jaxopt_models import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, variant: str = ""):
    """``experiments/configs/<name>.py``'s ``get_config(variant)``, loaded from its file as
    ``--config`` loads it."""
    path = os.path.join(ROOT, "experiments", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(variant)


def set_fields(config, fields: dict):
    """Sets ``{"a.b": value}`` dotted fields of ``config`` (as ``--config.a.b=value`` would,
    but new keys are allowed); returns ``config``."""
    for dotted, value in fields.items():
        *parents, leaf = dotted.split(".")
        section = config
        for p in parents:
            section = section[p]
        section[leaf] = value
    return config


# JAX's persistent compilation cache, shared by the test processes and the scripts they run:
# the recipe tests train many tiny models whose compiled steps are the same programs, and
# compiling them is most of each run's time.
COMPILATION_CACHE = {
    "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(), "jaxopt_models_tests_xla"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(2**30),  # eviction on: entries written under a lock
}


def use_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache in this process (before its first compile;
    an earlier ``JAX_COMPILATION_CACHE_DIR`` setting wins). :func:`run_script` passes it on."""
    if jax.config.jax_compilation_cache_dir:
        return
    for name, value in COMPILATION_CACHE.items():
        jax.config.update(name.lower(), int(value) if value.isdigit() else value)


def recipe_of(script: str):
    """The ``jaxopt_models.recipes`` module that ``experiments/<script>.py`` runs."""
    module = importlib.import_module(f"experiments.{script}")
    recipes = [
        m
        for m in vars(module).values()
        if inspect.ismodule(m)
        and m.__name__.startswith("jaxopt_models.recipes.")
        and hasattr(m, "default_config")
        and hasattr(m, "run")
    ]
    assert len(recipes) == 1, (script, recipes)
    return recipes[0]


def experiment_scripts() -> list[str]:
    """The recipe scripts of ``experiments/`` (every ``*.py`` but the launcher)."""
    names = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))]
    return sorted(n for n in names if not n.startswith("_") and n != "launch")


def run_script(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``python -m experiments.<module> *args`` from the project root on the CPU.

    Returns the completed process (``returncode``, ``stdout``, ``stderr`` as text).
    """
    env = {**COMPILATION_CACHE, **os.environ, "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


def host_leaves(tree) -> list[np.ndarray]:
    """The leaves of ``tree`` as host NumPy arrays (PRNG keys as their key data)."""

    def raw(x):
        if isinstance(x, jax.Array) and jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(jax.device_get(x))

    return [raw(x) for x in jax.tree.leaves(tree)]


def assert_trees_bitwise_equal(a, b) -> None:
    """Asserts that two pytrees have the same structure and bit-identical leaves."""
    paths = lambda t: [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(t)]
    assert paths(a) == paths(b)  # (static fields such as a TrainState's tx may differ)
    for i, (x, y) in enumerate(zip(host_leaves(a), host_leaves(b), strict=True)):
        assert x.dtype == y.dtype and x.shape == y.shape, (i, x.dtype, x.shape, y.dtype, y.shape)
        bits = lambda v: np.ascontiguousarray(np.atleast_1d(v)).view(np.uint8)
        assert np.array_equal(bits(x), bits(y)), f"leaf {i} differs"


def synthetic_dataset(n_train: int = 200, n_test: int = 40, num_classes: int = 4):
    """A learnable ``data.Dataset`` of 6 features whose rows are all distinct: feature 0 is
    the row's index / 1000 (so a test can tell which examples went where)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_train + n_test, 6)).astype(np.float32)
    y = np.argmax(x[:, 1:] @ rng.normal(size=(5, num_classes)), -1).astype(np.int32)
    x[:, 0] = np.arange(n_train + n_test) / 1000
    train, test = slice(0, n_train), slice(n_train, None)
    return data.Dataset("synthetic", x[train], y[train], x[test], y[test], num_classes)


def train_tiny_lm(workdir: str, *, steps: int = 60) -> str:
    """A finished ``recipes.lm`` run of a 2-block, 32-wide byte LM on 80 kB of the Python
    standard library (seconds); returns ``workdir``."""
    from jaxopt_models.recipes import lm

    c = lm.default_config()
    c.dataset.max_bytes = 80_000
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.embed_dim = 32
    c.context = 32
    c.batch_size = 8
    c.num_steps = steps
    c.eval_every_steps = steps // 2
    c.eval_max_batches = 2
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 5
    c.checkpoint.every_seconds = 0.0
    c.plots = False
    c.generate.num_samples = 0
    lm.run(c, workdir)
    return workdir


def np_init(model, x, seed):
    """Variables of ``model`` with He-normal kernels and small biases drawn by NumPy
    (compiling jax.random's samplers costs seconds of CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)

    def draw(leaf):
        if len(leaf.shape) == 1:
            return np.asarray(0.1 * rng.standard_normal(leaf.shape), np.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return np.asarray(rng.standard_normal(leaf.shape) * np.sqrt(2 / fan_in), np.float32)

    return nn.meta.unbox(jax.tree.map(draw, nn.meta.unbox(shapes)))
