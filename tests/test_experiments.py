"""End-to-end smoke tests of every experiment config and of the ``experiments.train`` CLI."""

import glob
import json
import os
import subprocess
import sys

import pytest
from _helpers import ROOT, load_config, write_fake_fashion_mnist

from jaxopt_models import data, training

TRAIN_CONFIGS = [
    "digits_mlp",
    "fashion_mnist_lenet300",
    "fashion_mnist_lenet5",
    "mnist1d_mlp",
    "mnist1d_cnn",
    "mnist1d_gru",
]


@pytest.fixture(scope="module")
def fake_idx_dir(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion"), 256, 64)


def test_every_config_file_loads():
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(f"{ROOT}/experiments/configs/*.py"))
    names = [n for n in names if not n.startswith("_")]
    assert set(TRAIN_CONFIGS) <= set(names)
    for n in names:
        c = load_config(n)
        assert c.dataset.name in data.dataset_names(), n


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_train_config_runs_one_short_epoch(name, fake_idx_dir, tmp_path):
    c = load_config(name, "quick")
    c.num_epochs = 1
    c.progress = False
    c.eval_batch_size = 64
    if c.dataset.name == "fashion_mnist":
        c.dataset.data_dir = fake_idx_dir
    c.dataset.num_train = 128
    c.dataset.num_test = 64
    c.batch_size = min(c.batch_size, 32)
    _, results = training.train_and_evaluate(c, str(tmp_path))
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert results["num_test"] == 64
    assert (tmp_path / "results.json").exists()


def test_cli_trains_and_prints_a_table(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        "experiments/configs/digits_mlp.py",
        "--workdir",
        str(tmp_path),
        "--config.num_epochs=2",
        "--config.progress=False",
        "--config.optimizer.name=momentum",
        "--config.optimizer.learning_rate=0.05",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test accuracy" in out.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["optimizer"]["name"] == "momentum"
    assert results["test_accuracy"] > 0.7


def test_cli_rejects_unknown_optimizer(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        "experiments/configs/digits_mlp.py",
        "--workdir",
        str(tmp_path),
        "--config.optimizer.name=lion9",
        "--config.progress=False",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "optimizer.name='lion9'" in out.stderr and "allowed values" in out.stderr


def test_crossval_cli(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "experiments.crossval",
        "--config",
        "experiments/configs/digits_mlp.py",
        "--workdir",
        str(tmp_path),
        "--k",
        "2",
        "--config.num_epochs=2",
        "--config.progress=False",
        "--config.dataset.num_train=400",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cv = json.loads((tmp_path / "cv.json").read_text())
    assert cv["k"] == 2 and len(cv["folds"]) == 2
    assert "accuracy" in out.stdout and "±" in out.stdout
