"""The pruning configs (``recipes.train``) and ``experiments.lottery`` end to end on tiny data."""

import json

import jax
import numpy as np
import pytest
from _helpers import (
    load_config,
    run_script,
    set_fields,
    use_compilation_cache,
    write_fake_fashion_mnist,
)

from jaxopt_models import pruning
from jaxopt_models.recipes import lottery, train

use_compilation_cache()


@pytest.fixture(scope="module")
def fake_idx_dir(tmp_path_factory):
    """128 train / 64 test fake Fashion-MNIST images with a learnable class signal."""
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion_pruning"), 128, 64)


TINY = {
    "dataset.num_train": 128,
    "dataset.num_test": 64,
    "batch_size": 32,
    "eval_batch_size": 64,
    "plots": False,
}


def _tiny(c, data_dir):
    return set_fields(c, {**TINY, "dataset.data_dir": data_dir})


def test_prune_config_variants():
    assert load_config("fashion_mnist_lenet300_prune").pruning.sparsity == 0.9
    c = load_config("fashion_mnist_lenet300_prune", "95")
    assert (c.pruning.sparsity, c.num_epochs, c.pruning.method) == (0.95, 20, "magnitude")
    q = load_config("fashion_mnist_lenet300_prune", "95,quick")
    assert (q.pruning.sparsity, q.num_epochs, q.dataset.num_train) == (0.95, 2, 6000)
    with pytest.raises(ValueError, match="unknown variant 'fast'.*allowed values"):
        load_config("fashion_mnist_lenet300_prune", "fast")


@pytest.mark.parametrize("variant,sparsity", [("quick", 0.9), ("95,quick", 0.95)])
def test_prune_config_quick_runs_to_its_target_sparsity(variant, sparsity, fake_idx_dir, tmp_path):
    c = _tiny(load_config("fashion_mnist_lenet300_prune", variant), fake_idx_dir)
    state, results = train.run(c, str(tmp_path))
    info = json.loads((tmp_path / "results.json").read_text())["pruning"]
    assert info == json.loads(json.dumps(results["pruning"]))
    assert info["target_sparsity"] == sparsity
    assert info["prunable"]["params"] - info["prunable"]["nonzeros"] == pytest.approx(
        sparsity * info["prunable"]["params"], abs=3
    )
    masks = pruning.find_prune_state(state.opt_state).masks
    for m, p in zip(jax.tree.leaves(masks), jax.tree.leaves(state.params), strict=True):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
    # ERK: the 1,000-weight output layer keeps most of its weights, the big kernel few
    layers = info["layers"]
    assert layers["Dense_2/kernel"]["sparsity"] < layers["Dense_0/kernel"]["sparsity"]


def test_lottery_script_runs_end_to_end(fake_idx_dir, tmp_path):
    out = run_script(
        "lottery",
        "--config",
        "experiments/configs/fashion_mnist_lenet300_lottery.py:quick",
        "--workdir",
        str(tmp_path),
        f"--config.dataset.data_dir={fake_idx_dir}",
        *(f"--config.{k}={v}" for k, v in TINY.items()),
        "--config.lottery.rounds=1",
        "--config.lottery.rewind_steps=2",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = summary["rounds"]
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["kernel_sparsity"] == 0.0 and rows[0]["reinit_accuracy"] is None
    kernels = 784 * 300 + 300 * 100 + 100 * 10
    assert rows[1]["kernel_sparsity"] == round(0.4 * kernels) / kernels  # global, exact
    ticket = json.loads((tmp_path / "ticket" / "round_1" / "results.json").read_text())
    reinit = json.loads((tmp_path / "reinit" / "round_1" / "results.json").read_text())
    assert rows[1]["reinit_accuracy"] == reinit["test_accuracy"]
    assert rows[1]["ticket_accuracy"] == ticket["test_accuracy"]
    assert ticket["pruning"]["prunable"]["nonzeros"] == kernels - round(0.4 * kernels)
    assert ticket["pruning"]["layers"]["Dense_0/bias"]["sparsity"] < 0.5  # biases stay dense
    assert reinit["pruning"]["prunable"]["nonzeros"] == kernels - round(0.4 * kernels)
    for row in rows:  # the printed table
        assert f"{row['ticket_accuracy']:>11.4f}" in out.stdout


def test_lottery_config_errors_name_the_field():
    c = load_config("fashion_mnist_lenet300_lottery", "quick")
    c.lottery.prune_fraction = 1.0
    with pytest.raises(ValueError, match=r"config.lottery.prune_fraction=1.0 must be in \(0, 1\)"):
        lottery.lottery_settings(c)
    c = load_config("fashion_mnist_lenet300_lottery", "quick")
    c.lottery.scope = "net"
    with pytest.raises(ValueError, match=r"config.lottery.scope='net' is not known"):
        lottery.lottery_settings(c)
    c = load_config("fashion_mnist_lenet300_lottery", "quick")
    c.lottery.rewind_steps = -1
    with pytest.raises(ValueError, match=r"config.lottery.rewind_steps=-1"):
        lottery.lottery_settings(c)
