"""End-to-end smoke tests of ``experiments/quantize.py`` and its configs on tiny data."""

import json
import os

import pytest
from _helpers import load_config, write_fake_fashion_mnist

from experiments import quantize
from jaxopt_models.training.model_io import VARIABLES_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [
    "fashion_mnist_lenet5_ptq",
    "fashion_mnist_lenet5_qat4",
    "fashion_mnist_lenet300_binary",
]


@pytest.fixture(scope="module")
def fake_idx_dir(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion_quant"), 256, 128)


def tiny(name: str, data_dir: str):
    c = load_config(name, "quick")
    c.dataset.data_dir = data_dir
    c.dataset.num_train = 256
    c.dataset.num_test = 128
    c.num_epochs = 1
    c.batch_size = 64
    c.eval_batch_size = 64
    c.progress = False
    if c.ptq.enabled:
        c.ptq.calibration_examples = 128
    return c


def test_ptq_experiment_runs_end_to_end(fake_idx_dir, tmp_path, capsys):
    summary = quantize.run(tiny("fashion_mnist_lenet5_ptq", fake_idx_dir), str(tmp_path))
    p = summary["ptq"]
    assert set(p["ranges"]) == {"Conv_0", "Conv_1", "Dense_0", "Dense_1", "Dense_2"}
    assert p["int8_vs_fake_quant_agreement"] >= 0.95
    assert p["float_bytes"] / p["int8_bytes"] > 3.5
    assert summary["float"]["test_accuracy"] == pytest.approx(p["float_accuracy"], abs=1e-6)
    assert (
        json.loads((tmp_path / "summary.json").read_text())["ptq"]["int8_accuracy"]
        == (p["int8_accuracy"])
    )
    assert (tmp_path / "float" / VARIABLES_FILE).exists()
    quantize.print_summary(summary)
    assert "PTQ int8 path" in capsys.readouterr().out


def test_qat_experiment_reuses_a_float_run(fake_idx_dir, tmp_path):
    float_run = tiny("fashion_mnist_lenet5_ptq", fake_idx_dir)
    float_run.ptq.enabled = False
    base = quantize.run(float_run, str(tmp_path / "ptq"))
    c = tiny("fashion_mnist_lenet5_qat4", fake_idx_dir)
    summary = quantize.run(c, str(tmp_path / "qat"), float_dir=str(tmp_path / "ptq" / "float"))
    assert summary["float"]["test_accuracy"] == base["float"]["test_accuracy"]
    assert summary["qat"]["quantization"]["weight_bits"] == 4
    assert "ptq" not in summary
    # 4-bit codes take a byte each before packing; packed they take half a byte.
    assert summary["qat"]["stored_bytes"] < summary["qat"]["float_bytes"] / 4


def test_binary_experiment_stores_one_bit_weights(fake_idx_dir, tmp_path):
    summary = quantize.run(tiny("fashion_mnist_lenet300_binary", fake_idx_dir), str(tmp_path))
    q = summary["qat"]
    assert 0.0 <= q["test_accuracy"] <= 1.0
    assert q["float_bytes"] / q["stored_bytes"] > 25  # 1-bit kernels, float biases and scales
    assert "drop_points" in q
