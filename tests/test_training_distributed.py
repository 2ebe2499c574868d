"""Tests of training/distributed.py: settings from config/env, the local launcher, and a
2-process ``jax.distributed`` run of the train recipe on localhost that matches the
single-process run."""

import json
import os

import jax
import numpy as np
import pytest
from _helpers import COMPILATION_CACHE, use_compilation_cache

from jaxopt_models.recipes import train
from jaxopt_models.training import Checkpointer
from jaxopt_models.training.distributed import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    distributed_settings,
    initialize_distributed,
    launch_local,
)

use_compilation_cache()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clean_env(monkeypatch):
    for name in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_nothing_set_means_a_single_process(clean_env):
    assert distributed_settings(None) is None
    assert distributed_settings(train.default_config()) is None
    assert initialize_distributed(train.default_config()) is False


def test_settings_come_from_the_environment(clean_env):
    clean_env.setenv(ENV_COORDINATOR, "10.0.0.1:1234")
    clean_env.setenv(ENV_NUM_PROCESSES, "4")
    clean_env.setenv(ENV_PROCESS_ID, "3")
    assert distributed_settings(train.default_config()) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
    }


def test_config_overrides_the_environment(clean_env):
    clean_env.setenv(ENV_COORDINATOR, "10.0.0.1:1234")
    clean_env.setenv(ENV_NUM_PROCESSES, "4")
    clean_env.setenv(ENV_PROCESS_ID, "3")
    config = train.default_config()
    config.distributed.coordinator_address = "host:99"
    config.distributed.process_id = 0
    assert distributed_settings(config) == {
        "coordinator_address": "host:99",
        "num_processes": 4,
        "process_id": 0,
    }


def test_auto_detection_passes_no_arguments(clean_env):
    config = train.default_config()
    config.distributed.auto = True
    assert distributed_settings(config) == {}


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({ENV_COORDINATOR: "h:1"}, r"num_processes=None must be an int >= 1"),
        ({ENV_COORDINATOR: "h:1", ENV_NUM_PROCESSES: "2"}, r"process_id=None must be an int in"),
        (
            {ENV_COORDINATOR: "h:1", ENV_NUM_PROCESSES: "2", ENV_PROCESS_ID: "2"},
            r"process_id=2 must be an int in \[0, 2\)",
        ),
        ({ENV_NUM_PROCESSES: "2"}, r"num_processes=2 needs a coordinator address"),
        ({ENV_NUM_PROCESSES: "two"}, r"JAX_NUM_PROCESSES='two' must be an int"),
    ],
)
def test_incomplete_settings_are_clear_errors(clean_env, env, match):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        distributed_settings(train.default_config())


def test_launcher_gives_each_process_its_id(tmp_path):
    code = (
        "import os; print(os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'], "
        "os.environ['JAX_COORDINATOR_ADDRESS'], os.environ['EXTRA'])"
    )
    codes = launch_local(["-c", code], 3, env={"EXTRA": "x"}, log_dir=str(tmp_path), port=4321)
    assert codes == [0, 0, 0]
    for i in range(3):
        text = (tmp_path / f"process_{i}.log").read_text().split()
        assert text == [str(i), "3", "127.0.0.1:4321", "x"]


def test_launcher_stops_the_others_when_one_fails(tmp_path):
    code = (
        "import os, sys, time; "
        "sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '0' else time.sleep(120)"
    )
    codes = launch_local(["-c", code], 2, log_dir=str(tmp_path), timeout=100)
    assert codes[0] == 3 and codes[1] < 0  # killed, long before its 120 s sleep ends


def test_launcher_rejects_bad_process_counts():
    with pytest.raises(ValueError, match="num_processes=0 must be an int >= 1"):
        launch_local(["-c", "pass"], 0)


# 640 digits, a tenth held out: 576 to train on in 9 batches of 64 per epoch; 18 steps
OVERRIDES = {
    "dataset.num_train": 640,
    "dataset.num_test": 200,
    "model.features": (32,),
    "batch_size": 64,
    "num_epochs": 2,
    "checkpoint.every_steps": 8,
    "plots": False,
}

# One process of the run: the train recipe, as an experiment script calls it.
DRIVER = """
import json, sys
from jaxopt_models.recipes import train
config = train.default_config()
config.update_from_flattened_dict(json.loads(sys.argv[2]))
train.run(config, sys.argv[1])
"""


@pytest.fixture(scope="module")
def single_process_run():
    config = train.default_config()
    config.update_from_flattened_dict(OVERRIDES)
    return train.run(config, None)


@pytest.mark.parametrize("parallel", ["sharding", "pmap"])
def test_two_processes_match_the_single_process_run(tmp_path, parallel, single_process_run):
    ref_state, ref = single_process_run
    workdir = tmp_path / "run"
    overrides = json.dumps({**OVERRIDES, "parallel": parallel})
    env = {
        **COMPILATION_CACHE,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    argv = ["-c", DRIVER, str(workdir), overrides]
    codes = launch_local(argv, 2, env=env, log_dir=str(tmp_path / "logs"), timeout=300)
    logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)

    with open(workdir / "results.json") as f:
        res = json.load(f)
    assert res["num_processes"] == 2 and res["num_devices"] == 2 and res["parallel"] == parallel
    assert res["steps"] == 18 and res["num_train"] == 576
    with open(workdir / "metrics.jsonl") as f:  # written by process 0 only: no duplicates
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]

    ckpt = Checkpointer(workdir / "checkpoints")
    assert ckpt.all_steps() == [8, 16, 18]
    state, _ = ckpt.restore(ref_state)
    for got, want in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True
    ):
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        [r["train_loss"] for r in res["history"]],
        [r["train_loss"] for r in ref["history"]],
        rtol=1e-5,
    )
    assert res["test_accuracy"] == pytest.approx(ref["test_accuracy"], abs=1 / 200)
