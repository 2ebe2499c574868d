"""``experiments.quantize`` (``recipes.ptq``) and its configs end to end on tiny data."""

import json

import pytest
from _helpers import (
    load_config,
    run_script,
    set_fields,
    use_compilation_cache,
    write_fake_fashion_mnist,
)

from jaxopt_models.recipes import ptq

use_compilation_cache()

TINY = {
    "dataset.num_train": 256,
    "dataset.num_test": 128,
    "num_epochs": 1,
    "batch_size": 64,
    "eval_batch_size": 64,
    "plots": False,
    "ptq.calibration_examples": 128,
}


@pytest.fixture(scope="module")
def fake_idx_dir(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion_quant"), 256, 128)


def tiny(name: str, data_dir: str):
    return set_fields(load_config(name, "quick"), {**TINY, "dataset.data_dir": data_dir})


def read(path) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def ptq_run(fake_idx_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ptq")
    return ptq.run(tiny("fashion_mnist_lenet5_ptq", fake_idx_dir), str(workdir)), workdir


def test_ptq_experiment_runs_end_to_end(ptq_run, capsys):
    summary, workdir = ptq_run
    p = summary["ptq"]
    assert set(p["ranges"]) == {"Conv_0", "Conv_1", "Dense_0", "Dense_1", "Dense_2"}
    assert p["int8_vs_fake_quant_agreement"] >= 0.95
    assert p["float_bytes"] / p["int8_bytes"] > 3.5
    float_run = read(workdir / "float" / "results.json")
    assert summary["float"]["test_accuracy"] == float_run["test_accuracy"]
    assert p["float_accuracy"] == pytest.approx(float_run["test_accuracy"], abs=1e-6)
    assert p["drop_points"] == pytest.approx(100 * (p["float_accuracy"] - p["int8_accuracy"]))
    assert read(workdir / "summary.json")["ptq"]["int8_accuracy"] == p["int8_accuracy"]
    assert (workdir / "float" / "variables.msgpack").exists()
    assert "qat" not in summary  # the config is float
    ptq.print_summary(summary)
    out = capsys.readouterr().out
    assert "PTQ int8 path" in out and f"{100 * p['int8_accuracy']:>8.2f}%" in out


def test_qat_script_reuses_a_float_run(ptq_run, fake_idx_dir, tmp_path):
    base, workdir = ptq_run
    float_dir = str(workdir / "float")
    out = run_script(
        "quantize",
        "--config",
        "experiments/configs/fashion_mnist_lenet5_qat4.py:quick",
        "--workdir",
        str(tmp_path),
        "--float_dir",
        float_dir,
        f"--config.dataset.data_dir={fake_idx_dir}",
        *(f"--config.{k}={v}" for k, v in TINY.items()),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = read(tmp_path / "summary.json")
    assert summary["float"]["test_accuracy"] == base["float"]["test_accuracy"]
    assert summary["float"]["dir"] == float_dir and not (tmp_path / "float").exists()
    q = summary["qat"]
    assert q["quantization"]["weight_bits"] == 4 and "ptq" not in summary
    assert q["test_accuracy"] == read(tmp_path / "qat" / "results.json")["test_accuracy"]
    # 4-bit codes take a byte each before packing; packed they take half a byte.
    assert q["stored_bytes"] < q["float_bytes"] / 4
    assert "QAT" in out.stdout


def test_binary_experiment_stores_one_bit_weights(fake_idx_dir, tmp_path):
    summary = ptq.run(tiny("fashion_mnist_lenet300_binary", fake_idx_dir), str(tmp_path))
    q = summary["qat"]
    assert q["quantization"]["weight_mode"] == "binary"
    assert q["test_accuracy"] == read(tmp_path / "qat" / "results.json")["test_accuracy"]
    assert q["float_bytes"] / q["stored_bytes"] > 25  # 1-bit kernels, float biases and scales
    expected = 100 * (summary["float"]["test_accuracy"] - q["test_accuracy"])
    assert q["drop_points"] == pytest.approx(expected)
