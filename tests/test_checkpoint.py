"""Tests for training.checkpoint and the resume / NaN-guard paths of training.fit."""

import json
import os
import runpy
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_models import models, training
from jaxopt_models.data import Dataset, epoch_permutation
from jaxopt_models.training import loop
from jaxopt_models.training.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_CONFIG = os.path.join(ROOT, "experiments", "configs", "digits_mlp.py")


class MaskState(NamedTuple):
    masks: dict


def keep_mask(threshold: float = 0.05) -> optax.GradientTransformation:
    """A pruning-like transform whose boolean masks live in the optimizer state."""

    def init(params):
        return MaskState(jax.tree.map(lambda w: jnp.abs(w) > threshold, params))

    def update(updates, state, params):
        return jax.tree.map(
            lambda u, m, p: jnp.where(m, u, -p), updates, state.masks, params
        ), state

    return optax.GradientTransformation(init, update)


def make_state(features=(16,), tx=None, seed=0):
    tx = tx or optax.chain(optax.adam(1e-2), keep_mask())
    model = models.MLP(features=features, num_classes=4)
    return training.create_train_state(model, jax.random.key(seed), np.zeros((1, 8)), tx)


def trained_state(steps=2):
    state = make_state()
    step = training.make_train_step()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = {
            "image": rng.normal(size=(16, 8)).astype(np.float32),
            "label": rng.integers(0, 4, 16).astype(np.int32),
        }
        state, _ = step(state, batch)
    return state


def leaves_equal(a, b) -> bool:
    def raw(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        raw(x).dtype == raw(y).dtype and np.array_equal(raw(x), raw(y))
        for x, y in zip(la, lb, strict=True)
    )


# ---------------------------------------------------------------- Checkpointer
def test_roundtrip_is_bitwise_with_masks_rng_and_step(tmp_path):
    state = trained_state()
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    ckpt.save(2, state, {"epoch": 0, "note": "x"})
    restored, meta = ckpt.restore(make_state())
    ckpt.close()
    assert meta == {"epoch": 0, "note": "x"}

    def paths(tree):
        return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]

    assert paths(restored) == paths(state)
    assert leaves_equal(restored, state)
    assert restored.opt_state[1].masks["Dense_0"]["kernel"].dtype == np.bool_
    assert jnp.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
    assert int(restored.step) == 2


def test_keeps_only_the_last_m(tmp_path):
    state = make_state()
    ckpt = Checkpointer(tmp_path, keep=2, every_steps=3)
    for step in (3, 6, 9, 12):
        ckpt.save(step, state)
    assert ckpt.all_steps() == [9, 12] and ckpt.latest_step() == 12
    assert [s for s in range(1, 13) if ckpt.should_save(s)] == [3, 6, 9, 12]
    ckpt.close()


def test_an_interrupted_write_is_never_the_latest(tmp_path):
    state = trained_state()
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(10, state)
    # What a write killed before its final rename leaves behind: a temporary directory.
    partial = tmp_path / "20.orbax-checkpoint-tmp-1700000000000000"
    partial.mkdir()
    (partial / "state").mkdir()
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)
    assert ckpt.latest_step() == 10
    restored, _ = ckpt.restore(make_state())
    assert leaves_equal(restored, state)
    ckpt.close()
    assert Checkpointer(tmp_path).latest_step() == 10


def test_a_different_model_structure_is_a_clear_error(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, make_state(features=(16,)))
    with pytest.raises(ValueError, match=r"does not match.*Dense_0.*\(8, 16\).*\(8, 32\)"):
        ckpt.restore(make_state(features=(32,)))
    with pytest.raises(ValueError, match=r"not match.*Dense_2.*is missing from the checkpoint"):
        ckpt.restore(make_state(features=(16, 16)))
    with pytest.raises(ValueError, match="does not match"):
        ckpt.restore(make_state(tx=optax.sgd(0.1)))
    ckpt.close()


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"keep": 0}, "keep=0"), ({"every_steps": -1}, "every_steps=-1")]
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Checkpointer(tmp_path, **kwargs)


def test_restore_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Checkpointer(tmp_path).restore(make_state())


# ------------------------------------------------------------ fit: resume, NaN
def tiny_dataset(nan_at: int | None = None) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(8, 4)), -1).astype(np.int32)
    if nan_at is not None:
        x[nan_at, 3] = np.nan
    return Dataset("tiny", x[:96], y[:96], x[96:], y[96:], 4)


def tiny_config(**overrides):
    c = training.default_config()
    c.model.features = (16,)
    c.batch_size = 16  # 6 steps per epoch
    c.eval_batch_size = 32
    c.num_epochs = 3
    c.progress = False
    c.checkpoint.every_steps = 4
    c.optimizer.learning_rate = 1e-2
    for key, value in overrides.items():
        target = c
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return c


def interrupt_after(n, monkeypatch):
    """Makes the loop's train step raise after ``n`` steps (a crash mid-run)."""
    real = loop.make_train_step

    def make(**kwargs):
        step = real(**kwargs)
        calls = []

        def crashing(state, batch):
            calls.append(1)
            if len(calls) > n:
                raise KeyboardInterrupt("simulated crash")
            return step(state, batch)

        return crashing

    monkeypatch.setattr(loop, "make_train_step", make)


def test_resume_after_a_crash_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, monkeypatch):
    ds = tiny_dataset()
    ref_state, ref = training.train_and_evaluate(tiny_config(), str(tmp_path / "ref"), dataset=ds)
    with monkeypatch.context() as m:
        interrupt_after(10, m)  # dies in epoch 2, after the checkpoint at step 8
        with pytest.raises(KeyboardInterrupt):
            training.train_and_evaluate(tiny_config(), str(tmp_path / "run"), dataset=ds)
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps() == [4, 8]
    state, res = training.train_and_evaluate(
        tiny_config(resume=True), str(tmp_path / "run"), dataset=ds
    )
    assert res["resumed_from_step"] == 8 and res["steps"] == 18
    assert leaves_equal(state.params, ref_state.params)
    assert leaves_equal(state.opt_state, ref_state.opt_state)

    def strip(history):
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in history]

    assert strip(res["history"]) == strip(ref["history"])
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        assert strip([json.loads(line) for line in f]) == strip(ref["history"])


def test_fresh_run_refuses_a_workdir_with_checkpoints(tmp_path):
    ds = tiny_dataset()
    training.train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path), dataset=ds)
    with pytest.raises(ValueError, match=r"already holds checkpoints \(latest step 6\).*--resume"):
        training.train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path), dataset=ds)


def test_resume_with_another_batch_size_is_a_clear_error(tmp_path):
    ds = tiny_dataset()
    training.train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path), dataset=ds)
    with pytest.raises(ValueError, match=r"batch_size=16 but this run has batch_size=32"):
        training.train_and_evaluate(
            tiny_config(num_epochs=1, batch_size=32, resume=True), str(tmp_path), dataset=ds
        )


def test_resume_needs_checkpointing(tmp_path):
    with pytest.raises(ValueError, match="resume=True needs a workdir"):
        training.train_and_evaluate(
            tiny_config(resume=True, **{"checkpoint.every_steps": 0}),
            str(tmp_path),
            dataset=tiny_dataset(),
        )


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    nan_at = int(epoch_permutation(96, 0, 0)[70])  # epoch 1, batch 5 (70 // 16 = 4): step 5
    config = tiny_config(**{"checkpoint.every_steps": 2})
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 5 \(epoch 1") as e:
        training.train_and_evaluate(config, str(tmp_path), dataset=tiny_dataset(nan_at=nan_at))
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.all_steps() == [2, 4]
    assert "last good checkpoint is step 4" in str(e.value)
    template = make_state(tx=training.make_optimizer(config.optimizer, 18))
    restored, meta = ckpt.restore(template)
    assert meta["step"] == 4 and int(restored.step) == 4
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored.params))


def test_nan_policy_skip_undoes_the_bad_steps_and_finishes(tmp_path):
    nan_at = 5
    ds = tiny_dataset(nan_at=nan_at)
    state, res = training.train_and_evaluate(
        tiny_config(nan_policy="skip"), str(tmp_path), dataset=ds
    )
    assert res["skipped_steps"] == 3  # the example is in one batch of each of the 3 epochs
    assert res["steps"] == 18
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
    assert all(np.isfinite(r["train_loss"]) for r in res["history"])


def test_unknown_nan_policy_lists_the_allowed_values(tmp_path):
    with pytest.raises(ValueError, match=r"nan_policy='ignore'.*'error', 'skip'"):
        training.train_and_evaluate(
            tiny_config(nan_policy="ignore"), str(tmp_path), dataset=tiny_dataset()
        )


# ------------------------------------------------- SIGKILL a real run, resume it
HANG_IN_FINALIZE = """
import os, runpy, sys, time
from orbax.checkpoint._src.path import atomicity

_finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize(self, *args, **kwargs):
    if self.get_final().name == os.environ["HANG_AT_STEP"]:  # data written, not yet renamed
        open(os.environ["HANG_MARKER"], "w").close()
        while True:
            time.sleep(1)
    return await _finalize(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.argv = ["train"] + sys.argv[1:]
runpy.run_module("experiments.train", run_name="__main__")
"""

KILL_OVERRIDES = {
    "num_epochs": 3,  # 22 steps per epoch on digits at batch 64: 66 steps
    "checkpoint.every_steps": 10,
    "progress": False,
    "log_every_epochs": 1,
}


def test_sigkilled_run_resumed_is_bitwise_equal_and_skips_the_partial_write(tmp_path):
    config = runpy.run_path(DIGITS_CONFIG)["get_config"]()
    config.update_from_flattened_dict(KILL_OVERRIDES)  # the same overrides the CLI run gets
    ref_state, ref = training.train_and_evaluate(config, str(tmp_path / "ref"))

    workdir = tmp_path / "run"
    args = [
        "--config",
        DIGITS_CONFIG,
        "--workdir",
        str(workdir),
        *[f"--config.{k}={v}" for k, v in KILL_OVERRIDES.items()],
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    marker = tmp_path / "hanging"
    env.update(HANG_AT_STEP="40", HANG_MARKER=str(marker))
    proc = subprocess.Popen(
        [sys.executable, "-c", HANG_IN_FINALIZE, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=5)[0].decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ckpt_dir = workdir / "checkpoints"
    assert any(p.name.startswith("40.orbax-checkpoint-tmp") for p in ckpt_dir.iterdir())
    assert Checkpointer(ckpt_dir).all_steps() == [10, 20, 30]
    assert not (workdir / "results.json").exists()

    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", *args, "--resume"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    with open(workdir / "results.json") as f:
        res = json.load(f)
    assert res["resumed_from_step"] == 30 and res["steps"] == 66
    restored, _ = Checkpointer(ckpt_dir).restore(ref_state, step=66)
    assert leaves_equal(restored.params, ref_state.params)
    assert leaves_equal(restored.opt_state, ref_state.opt_state)
    assert res["test_accuracy"] == ref["test_accuracy"]
    assert [r["train_loss"] for r in res["history"]] == [r["train_loss"] for r in ref["history"]]
