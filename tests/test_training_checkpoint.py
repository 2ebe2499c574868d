"""Tests of the engine's ``Checkpointer`` (training/checkpoint.py): bitwise round trips,
rotation, interrupted writes, unreadable checkpoints and checkpoints of another model.

``fit``'s use of it (resuming, falling back past a corrupt checkpoint) is tested in
``test_training_loop.py``.
"""

import functools
import os
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import assert_trees_bitwise_equal

from jaxopt_models import models, training
from jaxopt_models.training import Checkpointer, CheckpointMismatchError


class MaskState(NamedTuple):
    masks: dict


def keep_mask(threshold: float = 0.05) -> optax.GradientTransformation:
    """A pruning-like transform whose boolean masks live in the optimizer state."""

    def init(params):
        return MaskState(jax.tree.map(lambda w: jnp.abs(w) > threshold, params))

    def update(updates, state, params):
        masked = jax.tree.map(lambda u, m, p: jnp.where(m, u, -p), updates, state.masks, params)
        return masked, state

    return optax.GradientTransformation(init, update)


@functools.cache
def _host_state(features, optimizer):
    tx = optax.sgd(0.1) if optimizer == "sgd" else optax.chain(optax.adam(1e-2), keep_mask())
    model = models.MLP(features=features, num_classes=4)
    state = training.create_train_state(model, jax.random.key(0), np.zeros((1, 8)), tx)
    return jax.device_get(state.replace(rng=jax.random.key_data(state.rng)))


def make_state(features=(16,), optimizer="adam+mask"):
    """A fresh MLP train state (adam and a mask transform by default); new buffers each call."""
    state = jax.tree.map(jnp.array, _host_state(tuple(features), optimizer))
    return state.replace(rng=jax.random.wrap_key_data(state.rng))


def trained_like_state(seed=1):
    """A state whose every leaf differs from a fresh one (params, moments, step, key)."""
    state = make_state()
    rng = np.random.default_rng(seed)
    noisy = lambda x: x + rng.normal(size=np.shape(x)).astype(np.asarray(x).dtype)
    params = jax.tree.map(noisy, state.params)
    adam, masks = state.opt_state
    adam = jax.tree.map(
        lambda x: noisy(x) if jnp.issubdtype(x.dtype, jnp.floating) else x + 7, adam
    )
    return state.replace(
        step=jnp.int32(7),
        params=params,
        opt_state=(adam, keep_mask(0.5).init(params)),
        rng=jax.random.key(seed + 10),
    )


def paths(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_round_trip_is_bitwise_with_masks_rng_and_step(tmp_path):
    state = trained_like_state()
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    ckpt.save(7, state, {"epoch": 0, "note": "x"})
    restored, meta = ckpt.restore(make_state())
    ckpt.close()
    assert meta == {"epoch": 0, "note": "x"}
    assert paths(restored) == paths(state)
    assert_trees_bitwise_equal(restored, state)
    assert restored.opt_state[1].masks["Dense_0"]["kernel"].dtype == np.bool_
    assert not restored.opt_state[1].masks["Dense_0"]["kernel"].all()
    assert jnp.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
    assert int(restored.step) == 7


def test_keeps_only_the_last_few_and_saves_every_n_steps(tmp_path):
    state = make_state()
    ckpt = Checkpointer(tmp_path, keep=2, every_steps=3)
    for step in (3, 6, 9, 12):
        ckpt.save(step, state)
    assert ckpt.all_steps() == [9, 12] and ckpt.latest_step() == 12
    assert [s for s in range(0, 13) if ckpt.should_save(s)] == [3, 6, 9, 12]
    ckpt.delete(9)
    assert ckpt.all_steps() == [12]
    with pytest.raises(ValueError, match=r"step=9 has no checkpoint in .*; have \[12\]"):
        ckpt.delete(9)
    ckpt.close()
    assert Checkpointer(tmp_path).all_steps() == [12]


def test_an_interrupted_write_is_never_the_latest(tmp_path):
    state = trained_like_state()
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(10, state)
    ckpt.close()
    # What a write killed before its final rename leaves behind: a temporary directory.
    partial = tmp_path / "20.orbax-checkpoint-tmp-1700000000000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_step() == 10
    assert not partial.exists()  # removed when the directory is opened
    restored, _ = ckpt.restore(make_state())
    assert_trees_bitwise_equal(restored, state)
    ckpt.close()


def test_a_different_model_is_a_mismatch_error_naming_the_leaves(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, make_state(features=(16,)))
    with pytest.raises(
        CheckpointMismatchError, match=r"does not match.*Dense_0.*\(8, 16\).*\(8, 32\)"
    ):
        ckpt.restore(make_state(features=(32,)))
    with pytest.raises(CheckpointMismatchError, match=r"Dense_2.*is missing from the checkpoint"):
        ckpt.restore(make_state(features=(16, 16)))
    with pytest.raises(CheckpointMismatchError, match="is in the checkpoint but not in the model"):
        ckpt.restore(make_state(optimizer="sgd"))
    assert issubclass(CheckpointMismatchError, ValueError)
    ckpt.close()


def _corrupt(step_dir):
    (step_dir / "meta" / "metadata").write_text("{not json")


def test_restore_falls_back_past_unreadable_checkpoints_with_a_warning(tmp_path):
    states = {step: trained_like_state(seed=step) for step in (1, 2, 3)}
    ckpt = Checkpointer(tmp_path, keep=5)
    for step, state in states.items():
        ckpt.save(step, state, {"step": step})
    _corrupt(tmp_path / "3")
    with pytest.warns(RuntimeWarning, match=r"checkpoint step 3 in .* cannot be read") as w:
        restored, meta = ckpt.restore(make_state())
    assert meta == {"step": 2} and len([x for x in w if "step 3" in str(x.message)]) == 1
    assert_trees_bitwise_equal(restored, states[2])
    # an explicit step is not replaced by another one
    with pytest.raises(Exception):  # noqa: B017  (whatever the reader raises)
        ckpt.restore(make_state(), step=3)
    restored, _ = ckpt.restore(make_state(), step=1)
    assert_trees_bitwise_equal(restored, states[1])
    # none readable: the newest one's error, naming every step
    _corrupt(tmp_path / "2")
    _corrupt(tmp_path / "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(
            ValueError, match=r"no checkpoint in .* can be read \(steps \[1, 2, 3\]"
        ):
            ckpt.restore(make_state())
    ckpt.close()


def test_a_mismatch_is_not_skipped_as_corruption(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=5)
    ckpt.save(1, make_state(features=(32,)))
    ckpt.save(2, make_state(features=(16,)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointMismatchError, match="step 2"):
            ckpt.restore(make_state(features=(32,)))  # step 1 would fit; 2 is another model
    ckpt.close()


def test_empty_leaves_and_metadata(tmp_path):
    tree = {"empty": np.zeros((0, 3), np.float32), "x": np.arange(4, dtype=np.int64)}
    ckpt = Checkpointer(tmp_path)
    ckpt.save(5, tree, {"a": [1, 2]})
    restored, meta = ckpt.restore(
        {"empty": np.ones((0, 3), np.float32), "x": np.zeros(4, np.int64)}
    )
    assert restored["empty"].shape == (0, 3) and restored["empty"].dtype == np.float32
    np.testing.assert_array_equal(restored["x"], np.arange(4))
    assert meta == {"a": [1, 2]} and ckpt.metadata()["step"] == 5
    assert repr(ckpt) == f"Checkpointer({os.fspath(tmp_path)!r}, keep=3, every_steps=1)"
    ckpt.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"keep": 0}, "keep=0"), ({"every_steps": -1}, "every_steps=-1"), ({"keep": 1.5}, "keep=1.5")],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Checkpointer(tmp_path, **kwargs)


def test_restore_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Checkpointer(tmp_path).restore(make_state())
