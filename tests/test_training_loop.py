"""Tests of the engine's ``fit`` (training/loop.py): logging, evaluation, checkpoints by step
and by time, bit-for-bit resumption (after an exception, a corrupt checkpoint or a SIGKILL in
the middle of a checkpoint write) and the non-finite loss policies.

Run as a script (``python tests/test_training_loop.py WORKDIR``) it trains the reference run
into ``WORKDIR``; the SIGKILL test starts it that way in a subprocess.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import COMPILATION_CACHE, ROOT, assert_trees_bitwise_equal, use_compilation_cache

from jaxopt_models import models, pruning, training
from jaxopt_models.data import train_batches
from jaxopt_models.training import (
    Checkpointer,
    CheckpointMismatchError,
    FitSettings,
    fit,
    loop,
)

use_compilation_cache()

N_TRAIN, BATCH, STEPS, EPOCHS = 96, 16, 6, 3  # 18 steps
TOTAL = STEPS * EPOCHS


def tiny_data(nan_rows=()):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_TRAIN + 32, 8)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(8, 4)), -1).astype(np.int32)
    x[list(nan_rows), 3] = np.nan
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


@functools.cache
def _host_state(features):
    tx = optax.chain(
        optax.adam(1e-2), pruning.prune("magnitude", pruning.polynomial(0.5, 0, 12, frequency=3))
    )
    model = models.MLP(features=features, num_classes=4)
    state = training.create_train_state(model, jax.random.key(0), np.zeros((1, 8)), tx)
    return jax.device_get(state.replace(rng=jax.random.key_data(state.rng)))


def make_state(features=(16,)):
    """An MLP whose optimizer prunes gradually (the masks live in the optimizer state).

    Fresh buffers every call (the steps donate their input state).
    """
    state = jax.tree.map(jnp.array, _host_state(tuple(features)))
    return state.replace(rng=jax.random.wrap_key_data(state.rng))


@functools.cache
def train_step(skip_nonfinite=False):
    """One compiled step per process (every run here compiles it only once)."""
    return training.make_train_step(skip_nonfinite=skip_nonfinite)


class Crash(Exception):
    """Raised from the batches to simulate a run dying mid-epoch."""


def make_batches(x, y, crash_at=None, on_batch=None):
    """``fit``'s batches; raises ``Crash`` instead of yielding global step ``crash_at``."""

    def batches(epoch, start_step):
        for i, batch in enumerate(
            train_batches(x, y, BATCH, seed=0, epoch=epoch, start_step=start_step), start_step
        ):
            step = epoch * STEPS + i + 1
            if step == crash_at:
                raise Crash(f"simulated crash before step {step}")
            if on_batch is not None:
                on_batch(step)
            yield batch

    return batches


def settings(**overrides):
    return FitSettings(**{"num_epochs": EPOCHS, "steps_per_epoch": STEPS, **overrides})


def run(workdir=None, *, crash_at=None, data=None, state=None, evaluate=None, **overrides):
    x, y, *_ = data or tiny_data()
    step = train_step(overrides.get("nan_policy") == "skip")
    return fit(
        state or make_state(),
        step,
        make_batches(x, y, crash_at),
        settings(**overrides),
        evaluate=evaluate,
        workdir=None if workdir is None else str(workdir),
    )


_REFERENCE = {}


def reference():
    """The uninterrupted run (computed once)."""
    if not _REFERENCE:
        _REFERENCE["run"] = run()
    return _REFERENCE["run"]


def strip_seconds(history):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in history]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def assert_same_run(got, want):
    (state, info), (ref_state, ref_info) = got, want
    assert_trees_bitwise_equal(state.params, ref_state.params)
    assert_trees_bitwise_equal(state.opt_state, ref_state.opt_state)
    assert strip_seconds(info["history"]) == strip_seconds(ref_info["history"])
    assert info["steps"] == ref_info["steps"] == TOTAL


# ----------------------------------------------------------------------------- logging
def test_fit_logs_every_epoch_and_evaluates_on_its_schedule(tmp_path):
    x, y, xv, yv = tiny_data()
    seen, records = [], []

    def evaluate(state):
        seen.append(int(state.step))
        logits = state.apply_fn(state.variables, xv, train=False)
        return {"accuracy": float((np.argmax(logits, -1) == yv).mean())}

    step = train_step()
    state, info = fit(
        make_state(),
        step,
        make_batches(x, y),
        settings(eval_every_epochs=2),
        evaluate=evaluate,
        workdir=str(tmp_path),
        on_epoch=records.append,
    )
    assert seen == [12, 18]  # every 2nd epoch and after the last
    history = info["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[-1]["step"] == TOTAL
    assert ["val_accuracy" in r for r in history] == [False, True, True]
    assert info["last_eval"] == {"accuracy": history[-1]["val_accuracy"]}
    assert records == history == read_jsonl(tmp_path / "metrics.jsonl")
    assert info["steps"] == TOTAL and info["resumed_from_step"] == 0
    assert (info["parallel"], info["num_devices"], info["num_processes"]) == ("none", 1, 1)
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")

    # the logged train loss is the mean of the epoch's step losses; the same compiled steps
    # by hand give bitwise the same final state
    manual, losses = make_state(), []
    for epoch in range(EPOCHS):
        for batch in train_batches(x, y, BATCH, seed=0, epoch=epoch):
            manual, m = step(manual, batch)
            losses.append(float(m["loss"]))
    per_epoch = np.asarray(losses, np.float64).reshape(EPOCHS, STEPS).mean(1)
    np.testing.assert_allclose([r["train_loss"] for r in history], per_epoch, rtol=1e-12)
    assert_trees_bitwise_equal(state.params, manual.params)


# ----------------------------------------------------------------------------- resuming
def test_resume_after_a_crash_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    with pytest.raises(Crash):
        run(tmp_path, crash_at=11, checkpoint_every_steps=4)  # dies in epoch 2
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [4, 8]
    state, info = run(tmp_path, checkpoint_every_steps=4, resume=True)
    assert info["resumed_from_step"] == 8
    assert_same_run((state, info), reference())
    assert strip_seconds(read_jsonl(tmp_path / "metrics.jsonl")) == strip_seconds(
        reference()[1]["history"]
    )
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [12, 16, 18]


class FakeClock:
    """``loop.time`` with a ``monotonic`` that advances 10 s per batch the run reads."""

    def __init__(self):
        self.now = 0.0

    def tick(self, step):
        self.now = 10.0 * step

    def monotonic(self):
        return self.now

    def perf_counter(self):
        return time.perf_counter()


def test_checkpoint_every_seconds_saves_by_the_clock_and_resumes(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(loop, "time", clock)
    x, y, *_ = tiny_data()
    by_time = settings(checkpoint_every_seconds=35.0, sync_every_steps=1, checkpoint_keep=10)

    def fit_by_time(workdir, crash_at=None, **overrides):
        clock.now = 0.0
        return fit(
            make_state(),
            train_step(),
            make_batches(x, y, crash_at, on_batch=clock.tick),
            by_time._replace(**overrides),
            workdir=str(workdir),
        )

    # 10 s per step, a save once 35 s have passed since the last: steps 4, 8, 12, 16 and,
    # since the run checkpoints, the final step
    fit_by_time(tmp_path / "full")
    assert Checkpointer(tmp_path / "full" / "checkpoints").all_steps() == [4, 8, 12, 16, 18]
    # the clock is checked where the metrics are synced: a longer sync interval saves less
    fit_by_time(tmp_path / "sync3", sync_every_steps=3)
    assert Checkpointer(tmp_path / "sync3" / "checkpoints").all_steps() == [6, 12, 18]
    # a killed run resumes from its last timed checkpoint and ends as if never stopped
    with pytest.raises(Crash):
        fit_by_time(tmp_path / "run", crash_at=15)
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps() == [4, 8, 12]
    got = fit_by_time(tmp_path / "run", resume=True)
    assert got[1]["resumed_from_step"] == 12
    assert_same_run(got, reference())


def _garble(path):
    data = bytearray(path.read_bytes())
    for i in range(min(100, len(data) // 2), len(data), 7):
        data[i] ^= 0x55
    path.write_bytes(bytes(data))


def _damage(step_dir, how):
    if how == "delete_meta":
        (step_dir / "meta" / "metadata").unlink()
    elif how == "delete_state":
        files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
        for p in files:
            p.unlink()
    else:
        files = [p for p in (step_dir / "state" / "d").iterdir() if p.is_file()]
        assert files
        for p in files:
            _garble(p)


# (orbax may leave a callback for its closed event loop after a failed read: harmless)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["delete_meta", "delete_state", "garble_state"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, how):
    with pytest.raises(Crash):
        run(tmp_path, crash_at=11, checkpoint_every_steps=4)
    _damage(tmp_path / "checkpoints" / "8", how)
    with pytest.warns(RuntimeWarning, match=r"checkpoint step 8 in .* cannot be read") as w:
        got = run(tmp_path, checkpoint_every_steps=4, resume=True)
    assert any(str(tmp_path / "checkpoints") in str(x.message) for x in w)
    assert got[1]["resumed_from_step"] == 4
    assert_same_run(got, reference())
    # the unreadable step was replaced by this run's own step 8, then rotated out
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [12, 16, 18]


def test_a_checkpoint_of_another_model_is_refused_not_skipped(tmp_path):
    run(tmp_path, checkpoint_every_steps=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: a mismatch is not corruption
        with pytest.raises(CheckpointMismatchError, match=r"Dense_0.*\(8, 16\).*\(8, 32\)"):
            run(tmp_path, checkpoint_every_steps=6, resume=True, state=make_state((32,)))


def test_resume_after_the_last_epoch_trains_nothing_and_still_evaluates(tmp_path):
    run(tmp_path, checkpoint_every_steps=6)
    evaluated = []
    state, info = run(
        tmp_path,
        checkpoint_every_steps=6,
        resume=True,
        evaluate=lambda s: evaluated.append(int(s.step)) or {"accuracy": 0.5},
    )
    assert info["resumed_from_step"] == TOTAL and evaluated == [TOTAL]
    assert info["last_eval"] == {"accuracy": 0.5}
    assert_same_run((state, info), reference())


def test_fit_refuses_checkpoints_it_cannot_continue(tmp_path):
    run(tmp_path, checkpoint_every_steps=6, num_epochs=1, data_signature={"batch_size": 16})
    with pytest.raises(ValueError, match=r"already holds checkpoints \(latest step 6\).*resume"):
        run(tmp_path, checkpoint_every_steps=6)
    with pytest.raises(ValueError, match=r"batch_size=16 but this run has batch_size=32"):
        run(
            tmp_path,
            checkpoint_every_steps=6,
            resume=True,
            data_signature={"batch_size": 32},
        )
    with pytest.raises(ValueError, match=r"steps_per_epoch=6 but this run has steps_per_epoch=3"):
        fit(
            make_state(),
            train_step(),
            make_batches(*tiny_data()[:2]),
            FitSettings(num_epochs=2, steps_per_epoch=3, checkpoint_every_steps=6, resume=True),
            workdir=str(tmp_path),
        )
    with pytest.raises(ValueError, match="resume=True needs a workdir and checkpoints"):
        run(tmp_path, resume=True)


def test_data_signature_is_stored_and_compared(tmp_path):
    run(tmp_path, checkpoint_every_steps=6, num_epochs=1, data_signature={"batch_size": 16})
    meta = Checkpointer(tmp_path / "checkpoints").metadata()
    assert meta["metadata"]["data_signature"] == {"batch_size": 16}
    assert meta["metadata"]["steps_per_epoch"] == STEPS


# ----------------------------------------------------------------------------- NaN policy
def _row_of_step(step):
    """A training row that lands in global step ``step`` (epoch order of train_batches)."""
    from jaxopt_models.data import epoch_permutation  # noqa: PLC0415

    epoch, i = divmod(step - 1, STEPS)
    return int(epoch_permutation(N_TRAIN, 0, epoch)[i * BATCH])


def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    data = tiny_data(nan_rows=[_row_of_step(5)])
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 5 \(epoch 1, b"):
        run(tmp_path, data=data, checkpoint_every_steps=2)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.all_steps() == [2, 4]
    restored, meta = ckpt.restore(make_state())
    assert meta["step"] == 4 and int(restored.step) == 4
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored.params))


def test_nan_policy_skip_undoes_the_bad_steps_and_finishes(tmp_path):
    row = _row_of_step(5)  # the row is in one batch of every epoch
    state, info = run(data=tiny_data(nan_rows=[row]), nan_policy="skip")
    assert info["skipped_steps"] == EPOCHS and info["steps"] == TOTAL
    assert [r["skipped_steps"] for r in info["history"]] == [1, 2, 3]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
    assert all(np.isfinite(r["train_loss"]) for r in info["history"])
    with pytest.raises(ValueError, match="nan_policy='skip' needs a train_fn built with"):
        fit(
            make_state(),
            train_step(),
            make_batches(*tiny_data()[:2]),
            settings(nan_policy="skip"),
        )


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "field,value,match",
    [
        ("num_epochs", 0, r"num_epochs=0 must be an int >= 1"),
        ("steps_per_epoch", 1.5, r"steps_per_epoch=1.5 must be an int >= 1"),
        ("eval_every_epochs", True, r"eval_every_epochs=True"),
        ("sync_every_steps", 0, r"sync_every_steps=0"),
        ("checkpoint_every_steps", -1, r"checkpoint_every_steps=-1 must be an int >= 0"),
        ("checkpoint_keep", 0, r"checkpoint_keep=0"),
        ("checkpoint_every_seconds", -1.0, r"checkpoint_every_seconds=-1.0 must be a number"),
        ("nan_policy", "ignore", r"nan_policy='ignore'.*'error', 'skip'"),
    ],
)
def test_bad_settings_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        training.check_settings(settings(**{field: value}))
    with pytest.raises(TypeError, match="settings must be a FitSettings"):
        training.check_settings({"num_epochs": 1})


def test_batches_must_yield_steps_per_epoch_batches():
    x, y, *_ = tiny_data()
    with pytest.raises(ValueError, match=r"batches\(0, 0\) yielded 6 batches; expected 7"):
        fit(
            make_state(),
            train_step(),
            make_batches(x, y),
            FitSettings(num_epochs=1, steps_per_epoch=7),
        )


# ------------------------------------------------- SIGKILL during a checkpoint write
HANG_IN_FINALIZE = """
import os, runpy, sys, time
from orbax.checkpoint._src.path import atomicity

_finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize(self, *args, **kwargs):
    if self.get_final().name == os.environ["HANG_AT_STEP"]:  # data written, not renamed
        open(os.environ["HANG_MARKER"], "w").close()
        while True:
            time.sleep(1)
    return await _finalize(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.argv = sys.argv[1:]  # [script, workdir]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_sigkilled_run_resumes_bitwise_equal_and_skips_the_partial_write(tmp_path):
    workdir = tmp_path / "run"
    marker = tmp_path / "hanging"
    env = {**COMPILATION_CACHE, **os.environ, "JAX_PLATFORMS": "cpu"}
    env.update(HANG_AT_STEP="12", HANG_MARKER=str(marker))
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    proc = subprocess.Popen(
        [sys.executable, "-c", HANG_IN_FINALIZE, os.path.abspath(__file__), str(workdir)],
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
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt_dir = workdir / "checkpoints"
    assert any(p.name.startswith("12.orbax-checkpoint-tmp") for p in ckpt_dir.iterdir())
    assert Checkpointer(ckpt_dir).all_steps() == [4, 8]
    got = run(workdir, checkpoint_every_steps=4, resume=True)
    assert got[1]["resumed_from_step"] == 8
    assert_same_run(got, reference())


if __name__ == "__main__":
    run(sys.argv[1], checkpoint_every_steps=4)
