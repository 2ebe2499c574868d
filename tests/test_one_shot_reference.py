"""The comparison with the papers' PyTorch code, without PyTorch: flags, layer and helpers.

``benchmarks/one_shot_reference.py`` needs a Python with PyTorch and checkouts of the
authors' repositories; here it must refuse to run without them, naming what to pass, and
its JAX side must run every method on a tiny layer.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
SCRIPT = os.path.join(BENCHMARKS, "one_shot_reference.py")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, BENCHMARKS)
    try:
        spec = importlib.util.spec_from_file_location("one_shot_reference", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(BENCHMARKS)


def _run(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_refuses_to_run_without_the_reference_and_says_what_to_pass():
    out = _run("--quick")
    assert out.returncode == 2
    for flag in ("--torch_python", "--gptq_repo", "--sparsegpt_repo", "--wanda_repo"):
        assert flag in out.stderr
    assert "required" in out.stderr


def test_checks_the_paths(tmp_path):
    out = _run(
        *("--torch_python", sys.executable, "--gptq_repo", str(tmp_path)),
        *("--sparsegpt_repo", str(tmp_path), "--wanda_repo", str(tmp_path)),
    )
    assert out.returncode == 2
    assert "--gptq_repo" in out.stderr and "gptq.py" in out.stderr


def test_held_out_layer_and_every_method_runs(bench):
    x, w = bench.make_layer(128, 512)
    assert x.dtype == w.dtype == np.float32 and x.shape == (512, 128) and w.shape == (128, 128)
    again, _ = bench.make_layer(128, 512)
    np.testing.assert_array_equal(x, again)
    assert bench.HELD_OUT_SEED != 0
    x64 = x.astype(np.float64)
    h64 = x64.T @ x64
    y_norm = float(np.sum((x64 @ w) ** 2))
    h = bench.gram_matrix(x)
    import jax.numpy as jnp

    for name, spec in bench.METHODS.items():
        w_hat = np.asarray(bench.ours(spec, jnp.asarray(w), h, jnp.diagonal(h))())
        err = bench.relative_error(h64, w, w_hat, y_norm)
        direct = float(np.sum((x64 @ (w.astype(np.float64) - w_hat)) ** 2)) / y_norm
        np.testing.assert_allclose(err, direct, rtol=1e-8)
        assert 0 < err < 0.2, name
        if spec.get("n_m"):
            assert bench.n_m_exact(w_hat, *spec["n_m"])
        if "sparsity" in spec:
            assert np.mean(w_hat == 0) == pytest.approx(spec["sparsity"], abs=1e-3)
