"""Tests of the engine's steps, optimizers and state (steps.py, optimizers.py, state.py)."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import use_compilation_cache

from jaxopt_models import models, training
from jaxopt_models.data import make_augment
from jaxopt_models.training.steps import augment_images, step_rng

use_compilation_cache()


def _state(model=None, tx=None, shape=(4, 8, 8, 1)):
    model = model or models.MLP(features=(16,), num_classes=10)
    tx = tx or optax.adam(1e-2)
    return training.create_train_state(model, jax.random.key(0), jnp.zeros(shape), tx)


def _batch(n=4, shape=(8, 8, 1), seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(n, *shape)).astype(np.float32),
        "label": rng.integers(0, 10, n).astype(np.int32),
    }


# ----------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("name", training.OPTIMIZERS)
def test_every_optimizer_reduces_the_loss(name):
    tx = training.make_optimizer({"name": name, "learning_rate": 0.05}, total_steps=20)
    state = _state(tx=tx)
    step = training.make_train_step()
    batch = _batch(16)
    state, first = step(state, batch)
    for _ in range(19):
        state, m = step(state, batch)
    assert float(m["loss"]) < 0.5 * float(first["loss"])


def _reference_lr(name, t, lr, warmup, total):
    """The float64 learning rate of each schedule at step ``t``."""
    if name == "constant":
        return lr
    if name == "cosine":
        return lr * 0.5 * (1 + np.cos(np.pi * min(t, total) / total))
    if t < warmup:
        return lr * t / warmup
    if name == "warmup_constant":
        return lr
    return lr * 0.5 * (1 + np.cos(np.pi * min(t - warmup, total - warmup) / (total - warmup)))


@pytest.mark.parametrize("name", training.SCHEDULES)
def test_schedules_match_a_float64_reference(name):
    cfg = {"learning_rate": 0.3, "schedule": name, "warmup_steps": 10}
    schedule = training.make_schedule(cfg, total_steps=100)
    for t in (0, 1, 5, 10, 11, 50, 99, 100):
        want = _reference_lr(name, t, 0.3, 10, 100)
        assert float(schedule(t)) == pytest.approx(want, rel=1e-5, abs=1e-7), t


def test_weight_decay_and_gradient_clipping_enter_the_update():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([3.0, 0.0, -4.0])}  # norm 5
    lr, wd = 0.1, 0.01
    tx = training.make_optimizer({"name": "sgd", "learning_rate": lr, "weight_decay": wd})
    updates, _ = tx.update(grads, tx.init(params), params)
    want = -lr * (np.array([3.0, 0.0, -4.0]) + wd * np.array([1.0, -2.0, 3.0]))
    np.testing.assert_allclose(updates["w"], want, rtol=1e-6)
    tx = training.make_optimizer({"name": "sgd", "learning_rate": lr, "grad_clip_norm": 1.0})
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -lr * np.array([0.6, 0.0, -0.8]), rtol=1e-6)


@pytest.mark.parametrize(
    "cfg,total,match",
    [
        ({"name": "rmsprop2", "learning_rate": 0.1}, 1, r"optimizer.name='rmsprop2'.*allowed"),
        ({"name": "sgd", "learning_rate": 0.0}, 1, r"learning_rate=0.0 must be a number > 0"),
        ({"name": "sgd", "learning_rate": -1.0}, 1, r"learning_rate=-1.0"),
        ({"name": "sgd", "learning_rate": 0.1, "schedule": "zigzag"}, 1, "schedule.*allowed"),
        ({"name": "sgd", "learning_rate": 0.1, "weight_decay": -1e-4}, 1, "weight_decay"),
        ({"name": "sgd", "learning_rate": 0.1, "grad_clip_norm": -1.0}, 1, "grad_clip_norm"),
        ({"name": "momentum", "learning_rate": 0.1, "momentum": 1.0}, 1, r"momentum=1.0"),
        (
            {"name": "adam", "learning_rate": 0.1, "schedule": "warmup_cosine", "warmup_steps": 5},
            5,
            r"warmup_steps=5 must be in \[0, total_steps=5\)",
        ),
    ],
)
def test_optimizer_errors_name_the_field(cfg, total, match):
    with pytest.raises(ValueError, match=match):
        training.make_optimizer(cfg, total_steps=total)


# ----------------------------------------------------------------------------- steps
def test_train_step_matches_minimal_flax_optax_step():
    model = models.MLP(features=(16,), num_classes=10)
    tx = optax.sgd(0.1, momentum=0.9)
    state = _state(model, tx)
    params, opt_state = state.params, tx.init(state.params)
    step = training.make_train_step(donate=False)
    batch = _batch(8)

    def minimal(params, opt_state, batch):
        def loss(p):
            logits = model.apply({"params": p}, batch["image"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        g = jax.grad(loss)(params)
        u, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state

    for _ in range(3):
        state, _ = step(state, batch)
        params, opt_state = minimal(params, opt_state, batch)
    chex.assert_trees_all_close(state.params, params, rtol=1e-6, atol=1e-7)
    assert int(state.step) == 3


def test_train_step_compiles_once():
    state = _state()
    traces = []

    def counting_loss(logits, labels):
        traces.append(1)
        return training.cross_entropy(logits, labels)

    step = training.make_train_step(loss_fn=counting_loss)
    for seed in range(3):
        state, _ = step(state, _batch(seed=seed))
    assert len(traces) == 1


def test_batch_norm_state_is_updated_in_training_and_used_in_eval():
    model = models.DeepCNN(stages=((4,),), hidden=())
    state = _state(model, shape=(4, 8, 8, 1))
    before = jax.tree.map(np.asarray, state.model_state)
    state, _ = training.make_train_step()(state, _batch())
    after = state.model_state["batch_stats"]
    assert not np.allclose(
        before["batch_stats"]["BatchNorm_0"]["mean"], after["BatchNorm_0"]["mean"]
    )
    batch = _batch(seed=3)
    out = training.make_eval_step()(state, batch)
    logits = model.apply(state.variables, batch["image"], train=False)
    stale = model.apply({"params": state.params, **before}, batch["image"], train=False)
    assert not np.allclose(logits, stale)  # the running statistics matter here
    np.testing.assert_array_equal(out["pred"], np.argmax(logits, -1))
    np.testing.assert_allclose(
        out["loss"],
        optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
        rtol=1e-6,
    )


def test_params_fn_is_applied_inside_the_loss_and_in_eval():
    state = _state(tx=optax.sgd(0.1))
    zero = lambda p: jax.tree.map(jnp.zeros_like, p)
    step = training.make_train_step(params_fn=zero, donate=False)
    _, m = step(state, _batch())
    assert float(m["loss"]) == pytest.approx(np.log(10), rel=1e-5)  # zero params: uniform
    out = training.make_eval_step(params_fn=zero)(state, _batch())
    np.testing.assert_allclose(out["loss"], np.full(4, np.log(10)), rtol=1e-5)


def test_augment_fn_runs_on_the_batch_inside_the_step_with_a_derived_key():
    model = models.MLP(features=(16,), num_classes=10, dropout_rate=0.3)
    state = _state(model=model, tx=optax.sgd(0.1))
    batch = _batch(8)
    aug = make_augment(shift=1, flip=True)
    augmented, m_aug = training.make_train_step(augment_fn=aug, donate=False)(state, batch)
    # the same update as a plain step on the batch that augmentation produces
    x = augment_images(step_rng(state), jnp.asarray(batch["image"]), aug)
    assert not np.array_equal(np.asarray(x), batch["image"])
    plain, m_plain = training.make_train_step(donate=False)(state, {**batch, "image": x})
    chex.assert_trees_all_close(augmented.params, plain.params, rtol=1e-6, atol=1e-7)
    assert float(m_aug["loss"]) == pytest.approx(float(m_plain["loss"]), rel=1e-6)
    # an identity augmentation leaves the update bitwise as it was (same dropout key)
    ident, _ = training.make_train_step(augment_fn=lambda k, x: x, donate=False)(state, batch)
    base, _ = training.make_train_step(donate=False)(state, batch)
    chex.assert_trees_all_equal(ident.params, base.params)
    with pytest.raises(TypeError, match="augment_fn and target_fn configure the default"):
        training.make_train_step(training.train_step, augment_fn=aug)


def test_target_fn_feeds_frozen_targets_and_extra_arguments_to_the_loss():
    state = _state(tx=optax.sgd(0.5))
    batch = _batch(8)
    batch["soft"] = np.random.default_rng(1).normal(size=(8, 10)).astype(np.float32)
    scale = jnp.float32(3.0)

    def loss_fn(logits, targets, labels):  # matching scaled targets; labels unused
        return ((logits - targets) ** 2).mean(-1)

    def target_fn(x, b, s):
        return b["soft"] * s

    step = training.make_train_step(loss_fn=loss_fn, target_fn=target_fn, donate=False)
    new, m = step(state, batch, scale)

    def objective(params):
        logits = state.apply_fn({"params": params}, batch["image"])
        return ((logits - batch["soft"] * 3.0) ** 2).mean()

    loss, grads = jax.value_and_grad(objective)(state.params)
    assert float(m["loss"]) == pytest.approx(float(loss), rel=1e-6)
    want = jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads)
    chex.assert_trees_all_close(new.params, want, rtol=1e-5, atol=1e-6)
    # the targets are constants of the objective: no gradient reaches the extra argument
    d_scale = jax.grad(
        lambda s: training.train_step(state, batch, s, loss_fn=loss_fn, target_fn=target_fn)[1][
            "loss"
        ]
    )(scale)
    assert float(d_scale) == 0.0
    with pytest.raises(TypeError, match=r"got 1 extra argument\(s\) but no target_fn"):
        training.train_step(state, batch, scale)


def test_bound_extra_arguments_are_appended_to_every_call():
    state = _state(tx=optax.sgd(0.5))
    batch = {**_batch(8), "soft": np.ones((8, 10), np.float32)}
    loss_fn = lambda logits, targets, labels: ((logits - targets) ** 2).mean(-1)
    step = training.make_train_step(
        loss_fn=loss_fn, target_fn=lambda x, b, s: b["soft"] * s, donate=False
    )
    bound = training.bind_extra(step, jnp.float32(2.0))
    a, ma = bound(state, batch)
    b, mb = step(state, batch, jnp.float32(2.0))
    chex.assert_trees_all_equal(a.params, b.params)
    assert float(ma["loss"]) == float(mb["loss"])
    with pytest.raises(TypeError, match="step must be a ParallelStep"):
        training.bind_extra(lambda s, b: (s, {}), 1.0)


def test_wrong_input_shape_names_the_layer_and_both_shapes():
    state = _state()  # built for 8x8x1 = 64 input features
    step = training.make_train_step(donate=False)
    with pytest.raises(
        flax.errors.ScopeParamShapeError,
        match=r'"kernel" in "/Dense_0".*shape \(25, 16\).*shape \(64, 16\)',
    ):
        step(state, _batch(shape=(5, 5, 1)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_a_float64_reference(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)) * 3
    labels = rng.integers(0, 5, 6)
    got = training.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), smoothing)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.eye(5)[labels] * (1 - smoothing) + smoothing / 5
    np.testing.assert_allclose(got, -(target * logp).sum(-1), rtol=1e-5)


def test_create_train_state_and_count_params():
    state = _state(models.MLP(features=(16,), num_classes=10))
    assert int(state.step) == 0 and state.model_state == {}
    assert training.count_params(state.params) == 64 * 16 + 16 + 16 * 10 + 10
    assert jnp.issubdtype(state.rng.dtype, jax.dtypes.prng_key)
    assert set(state.variables) == {"params"}
