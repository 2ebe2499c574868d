"""End-to-end smoke tests of the pruning configs and of experiments/lottery.py (tiny data)."""

import json

import jax
import numpy as np
import pytest
from _helpers import write_fake_fashion_mnist

from experiments import lottery
from experiments.configs import fashion_mnist_lenet300_lottery, fashion_mnist_lenet300_prune
from jaxopt_models import training


@pytest.fixture(scope="module")
def fake_idx_dir(tmp_path_factory):
    """128 train / 64 test fake Fashion-MNIST images with a learnable class signal."""
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion_pruning"), 128, 64)


def _tiny(c, data_dir):
    c.dataset.data_dir = data_dir
    c.dataset.num_train = 128
    c.dataset.num_test = 64
    c.batch_size = 32
    c.eval_batch_size = 64
    c.progress = False
    return c


def test_prune_config_variants():
    assert fashion_mnist_lenet300_prune.get_config().pruning.sparsity == 0.9
    c = fashion_mnist_lenet300_prune.get_config("95")
    assert (c.pruning.sparsity, c.num_epochs, c.pruning.method) == (0.95, 20, "magnitude")
    q = fashion_mnist_lenet300_prune.get_config("95,quick")
    assert (q.pruning.sparsity, q.num_epochs, q.dataset.num_train) == (0.95, 2, 6000)
    with pytest.raises(ValueError, match="unknown variant 'fast'"):
        fashion_mnist_lenet300_prune.get_config("fast")


@pytest.mark.parametrize("variant,sparsity", [("quick", 0.9), ("95,quick", 0.95)])
def test_prune_config_quick_runs_to_its_target_sparsity(variant, sparsity, fake_idx_dir, tmp_path):
    c = _tiny(fashion_mnist_lenet300_prune.get_config(variant), fake_idx_dir)
    state, results = training.train_and_evaluate(c, str(tmp_path))
    info = json.loads((tmp_path / "results.json").read_text())["pruning"]
    assert info["target_sparsity"] == sparsity
    assert info["prunable"]["params"] - info["prunable"]["nonzeros"] == pytest.approx(
        sparsity * info["prunable"]["params"], abs=3
    )
    masks = training.find_prune_state(state.opt_state).masks
    for m, p in zip(jax.tree.leaves(masks), jax.tree.leaves(state.params), strict=True):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
    assert 0.0 <= results["test_accuracy"] <= 1.0


def test_lottery_quick_runs_end_to_end(fake_idx_dir, tmp_path, capsys):
    c = _tiny(fashion_mnist_lenet300_lottery.get_config("quick"), fake_idx_dir)
    c.lottery.rounds = 1
    c.lottery.rewind_steps = 2
    summary = lottery.run(c, str(tmp_path))
    lottery.print_summary(summary)
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(
        (tmp_path / "summary.json").read_text()
    )
    rows = summary["rounds"]
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["kernel_sparsity"] == 0.0 and rows[0]["reinit_accuracy"] is None
    kernels = 784 * 300 + 300 * 100 + 100 * 10
    assert rows[1]["kernel_sparsity"] == round(0.4 * kernels) / kernels  # global, exact
    assert 0.0 <= rows[1]["reinit_accuracy"] <= 1.0
    for sub in ("ticket/round_0", "ticket/round_1", "reinit/round_1"):
        assert (tmp_path / sub / "results.json").exists(), sub
    ticket = json.loads((tmp_path / "ticket" / "round_1" / "results.json").read_text())
    assert ticket["pruning"]["prunable"]["nonzeros"] == kernels - round(0.4 * kernels)
    assert ticket["pruning"]["layers"]["Dense_0/bias"]["sparsity"] < 0.5  # biases stay dense


def test_lottery_config_errors_name_the_field():
    c = fashion_mnist_lenet300_lottery.get_config("quick")
    c.lottery.prune_fraction = 1.0
    with pytest.raises(ValueError, match=r"config.lottery.prune_fraction=1.0 must be in \(0, 1\)"):
        lottery.lottery_settings(c)
    c = fashion_mnist_lenet300_lottery.get_config("quick")
    c.lottery.scope = "net"
    with pytest.raises(ValueError, match=r"config.lottery.scope='net' is not known"):
        lottery.lottery_settings(c)
    c = fashion_mnist_lenet300_lottery.get_config("quick")
    c.lottery.rewind_steps = -1
    with pytest.raises(ValueError, match=r"config.lottery.rewind_steps=-1"):
        lottery.lottery_settings(c)
