"""Tests of the teacher-student train step and train_and_distill (training/distill.py).

The data-parallel check runs this file as a script in a subprocess with 4 simulated CPU
devices (``XLA_FLAGS`` must be set before JAX starts its backend).
"""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import print_report, run_on_simulated_devices

from jaxopt_models import training
from jaxopt_models.data import get_dataset
from jaxopt_models.models import MLP, DeepCNN


@functools.lru_cache(maxsize=1)
def small_digits():
    return get_dataset("digits").subset(num_train=256, num_test=128)


def student_config(**distill):
    c = training.default_config()
    c.dataset.name = "digits"
    c.model.name = "mlp"
    c.model.features = (16,)
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 2
    c.progress = False
    c.distill = training.default_distill_config()
    for k, v in distill.items():
        c.distill[k] = v
    return c


@functools.lru_cache(maxsize=1)
def bn_teacher() -> training.Teacher:
    """A DeepCNN teacher with dropout and non-trivial batch_stats (random, untrained)."""
    ds = small_digits()
    model = DeepCNN(stages=((4,), (8,)), hidden=(), num_classes=10, dropout_rate=0.2)
    variables = jax.jit(model.init)(jax.random.key(1), ds.x_train[:1])
    rng = np.random.default_rng(1)
    stats = jax.tree.map(
        lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype), variables["batch_stats"]
    )
    return training.Teacher(model.apply, {"params": variables["params"], "batch_stats": stats})


def snapshot(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def assert_trees_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8))


def make_student(ds, tx=None, features=(16,)):
    model = MLP(features=features, num_classes=10)
    return training.create_train_state(
        model, jax.random.key(0), ds.x_train[:1], tx or optax.sgd(0.1)
    )


def batch_of(ds, n=32, start=0):
    return {"image": ds.x_train[start : start + n], "label": ds.y_train[start : start + n]}


# ---------------------------------------------------------------- the teacher stays frozen


@pytest.mark.parametrize("precompute", [True, False])
def test_teacher_variables_are_bitwise_unchanged_and_not_in_the_student_state(precompute):
    ds = small_digits()
    teacher = bn_teacher()
    before = snapshot(teacher.variables)
    assert set(before) == {"params", "batch_stats"}
    config = student_config(precompute_teacher=precompute, temperature=2.0, alpha=0.7)
    state, results = training.train_and_distill(config, None, teacher=teacher, dataset=ds)
    assert_trees_bitwise_equal(snapshot(teacher.variables), before)

    # the student's state holds the student only: its params, and optimizer state built
    # from them; no array of the teacher's shapes appears anywhere in it
    student = make_student(ds, training.make_optimizer(config.optimizer, 16))
    assert jax.tree.structure(state.params) == jax.tree.structure(student.params)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(student.opt_state)
    assert state.model_state == {}
    teacher_shapes = {x.shape for x in jax.tree.leaves(before)} - {
        x.shape for x in jax.tree.leaves(student.params)
    }
    assert teacher_shapes
    assert not teacher_shapes & {np.shape(x) for x in jax.tree.leaves(state)}
    assert results["params"] == training.count_params(state.params)
    assert results["teacher_params"] == training.count_params(before["params"])
    assert results["distill"]["precomputed_teacher_logits"] is precompute


def test_gradient_never_reaches_the_teacher():
    ds = small_digits()
    teacher = bn_teacher()
    state = make_student(ds)
    loss_fn = training.make_distill_loss(temperature=3.0, alpha=1.0)
    batch = batch_of(ds)

    def objective(t_vars):
        _, m = training.distill_train_step(
            state, batch, t_vars, loss_fn=loss_fn, teacher_apply_fn=teacher.apply_fn
        )
        return m["loss"]

    grads = jax.jit(jax.grad(objective))(teacher.variables)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------- the step itself


def test_online_and_precomputed_steps_give_the_same_update():
    ds = small_digits()
    teacher = bn_teacher()
    loss_fn = training.make_distill_loss(temperature=4.0, alpha=0.5)
    batch = batch_of(ds, start=64)
    online = training.make_distill_train_step(
        loss_fn=loss_fn, teacher_apply_fn=teacher.apply_fn, donate=False
    )
    s0 = make_student(ds)
    s1, m1 = online(s0, batch, teacher.variables)

    logits = training.compute_teacher_logits(teacher, ds.x_train, batch_size=100)
    assert logits.shape == (len(ds.x_train), 10) and logits.dtype == np.float32
    direct = jax.jit(lambda t_vars, x: teacher.apply_fn(t_vars, x, train=False))(
        teacher.variables, ds.x_train
    )
    np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-5)

    pre = training.make_precomputed_distill_train_step(loss_fn=loss_fn, donate=False)
    idx = np.arange(64, 96, dtype=np.int32)
    s2, m2 = pre(s0, {"index": idx, "label": ds.y_train[idx]}, ds.x_train, logits)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(s1.step) == int(s2.step) == 1


def test_teacher_labels_the_same_augmented_images_the_student_sees():
    from jaxopt_models.data import make_augment
    from jaxopt_models.training.steps import augment_images, step_rng

    ds = small_digits()
    teacher = bn_teacher()
    loss_fn = training.make_distill_loss(temperature=2.0, alpha=0.7)
    aug = make_augment(shift=1, flip=True)
    batch = batch_of(ds, start=32)
    s0 = make_student(ds)
    online = training.make_distill_train_step(
        loss_fn=loss_fn, teacher_apply_fn=teacher.apply_fn, augment_fn=aug, donate=False
    )
    s1, m1 = online(s0, batch, teacher.variables)
    # reference: augment by hand, let the teacher label those images, precomputed step
    x = np.asarray(augment_images(step_rng(s0), jnp.asarray(batch["image"]), aug))
    assert not np.array_equal(x, batch["image"])
    t_logits = training.compute_teacher_logits(teacher, x, batch_size=32)
    pre = training.make_precomputed_distill_train_step(loss_fn=loss_fn, donate=False)
    idx = np.arange(32, dtype=np.int32)
    s2, m2 = pre(s0, {"index": idx, "label": batch["label"]}, x, t_logits)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # precomputed logits belong to un-augmented images: augmenting them is an error
    with pytest.raises(ValueError, match="augment_fn needs the teacher inside the step"):
        training.distill_train_step(
            s0, {**batch, "teacher_logits": t_logits}, loss_fn=loss_fn, augment_fn=aug
        )


def test_train_and_distill_with_augmentation_runs_the_teacher_in_the_step(tmp_path):
    ds = small_digits()
    teacher = bn_teacher()
    before = snapshot(teacher.variables)
    config = student_config(precompute_teacher=False, temperature=2.0)
    config.augment.shift = 1
    _, res = training.train_and_distill(config, str(tmp_path), teacher=teacher, dataset=ds)
    assert res["distill"]["augment"] is True
    assert res["distill"]["precomputed_teacher_logits"] is False
    assert_trees_bitwise_equal(snapshot(teacher.variables), before)
    on = student_config(precompute_teacher=True)
    on.augment.shift = 1
    with pytest.raises(ValueError, match="precompute_teacher=False"):
        training.train_and_distill(on, None, teacher=teacher, dataset=ds)


def test_alpha_zero_is_the_plain_cross_entropy_step():
    ds = small_digits()
    batch = batch_of(ds)
    s0 = make_student(ds)
    plain, m_plain = jax.jit(training.train_step)(s0, batch)
    loss_fn = training.make_distill_loss(temperature=2.0, alpha=0.0)
    t_logits = np.random.default_rng(0).standard_normal((32, 10)).astype(np.float32)
    kd, m_kd = jax.jit(functools.partial(training.distill_train_step, loss_fn=loss_fn))(
        s0, {**batch, "teacher_logits": t_logits}
    )
    np.testing.assert_allclose(m_plain["loss"], m_kd["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_plain["accuracy"], m_kd["accuracy"])
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(kd.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_student_equal_to_teacher_gets_zero_kd_loss_and_no_update():
    ds = small_digits()
    student = make_student(ds)
    teacher = training.Teacher.from_state(student)
    loss_fn = training.make_distill_loss(temperature=5.0, alpha=1.0)
    step = training.make_distill_train_step(
        loss_fn=loss_fn, teacher_apply_fn=teacher.apply_fn, donate=False
    )
    new, m = step(student, batch_of(ds), teacher.variables)
    assert float(m["loss"]) == 0.0
    # the gradient T * (softmax(s/T) - softmax(t/T)) is zero up to float rounding
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(student.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)


def test_distillation_moves_the_student_towards_the_teacher():
    ds = small_digits()
    teacher = bn_teacher()
    logits = training.compute_teacher_logits(teacher, ds.x_train)
    state = make_student(ds, optax.adam(3e-3))
    loss_fn = training.make_distill_loss(temperature=2.0, alpha=1.0)
    step = training.make_precomputed_distill_train_step(loss_fn=loss_fn)
    idx = np.arange(64, dtype=np.int32)
    losses = []
    for _ in range(30):
        state, m = step(state, {"index": idx, "label": ds.y_train[idx]}, ds.x_train, logits)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]


def test_step_compiles_once_and_needs_a_teacher():
    ds = small_digits()
    teacher = bn_teacher()
    traces = []

    def counting_loss(s, t, y):
        traces.append(1)
        return training.make_distill_loss(temperature=2.0, alpha=0.5)(s, t, y)

    step = training.make_distill_train_step(
        loss_fn=counting_loss, teacher_apply_fn=teacher.apply_fn
    )
    state = make_student(ds)
    for i in range(3):
        state, _ = step(state, batch_of(ds, start=32 * i), teacher.variables)
    assert len(traces) == 1

    no_teacher = training.make_distill_train_step(loss_fn=counting_loss)
    with pytest.raises(ValueError, match="teacher_apply_fn"):
        no_teacher(state, batch_of(ds), None)


def test_params_fn_is_used_in_the_distill_step_and_in_evaluation():
    """Weight QAT: a straight-through rounding of the weights to multiples of 1/4."""
    ds = small_digits()
    teacher = bn_teacher()

    def params_fn(params):
        return jax.tree.map(lambda w: w + jax.lax.stop_gradient(jnp.round(4 * w) / 4 - w), params)

    loss_fn = training.make_distill_loss(temperature=2.0, alpha=0.5)
    state = make_student(ds)
    batch = batch_of(ds)
    step = training.make_distill_train_step(
        loss_fn=loss_fn, teacher_apply_fn=teacher.apply_fn, params_fn=params_fn, donate=False
    )
    _, m = step(state, batch, teacher.variables)
    t_logits = teacher.apply_fn(teacher.variables, batch["image"], train=False)
    s_logits = state.apply_fn({"params": params_fn(state.params)}, batch["image"])
    np.testing.assert_allclose(
        m["loss"], loss_fn(s_logits, t_logits, batch["label"]).mean(), rtol=1e-5
    )
    # the float params change (gradients flow through the rounding)
    new, _ = step(state, batch, teacher.variables)
    assert not np.allclose(new.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])

    config = student_config(temperature=2.0, alpha=0.5)
    final, results = training.train_and_distill(
        config, None, teacher=teacher, dataset=ds, params_fn=params_fn
    )
    q_logits = final.apply_fn({"params": params_fn(final.params)}, ds.x_test)
    f_logits = final.apply_fn(final.variables, ds.x_test)
    q_loss = float(optax.softmax_cross_entropy_with_integer_labels(q_logits, ds.y_test).mean())
    f_loss = float(optax.softmax_cross_entropy_with_integer_labels(f_logits, ds.y_test).mean())
    assert results["test_accuracy"] == float((np.argmax(q_logits, -1) == ds.y_test).mean())
    assert results["test_loss"] == pytest.approx(q_loss, rel=1e-5)
    assert abs(q_loss - f_loss) > 1e-3  # the evaluation really used the quantized weights


def keep_masked_at_zero(mask) -> optax.GradientTransformation:
    """A stateful pruning-like transform: the mask lives in its state; masked weights -> 0."""

    def init_fn(params):
        return {"mask": mask}

    def update_fn(updates, state, params):
        new = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, state["mask"])
        return new, state

    return optax.GradientTransformation(init_fn, update_fn)


def test_any_optax_transform_chain_works_so_a_pruned_student_stays_pruned():
    ds = small_digits()
    teacher = bn_teacher()
    template = make_student(ds)
    rng = np.random.default_rng(0)
    mask = jax.tree.map(lambda p: rng.random(p.shape) > 0.5, template.params)
    # the transform's state (and so the mask arrays it holds) is donated with the train state
    tx = optax.chain(optax.adam(1e-2), keep_masked_at_zero(jax.tree.map(jnp.asarray, mask)))
    config = student_config(precompute_teacher=False, temperature=4.0, alpha=0.9)
    state, results = training.train_and_distill(config, None, teacher=teacher, dataset=ds, tx=tx)
    assert int(state.step) == 2 * (len(ds.x_train) // config.batch_size)
    for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask), strict=True):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
        assert np.any(np.asarray(p)[np.asarray(m)] != 0)
    history = results["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # it still learns


# ---------------------------------------------------------------- train_and_distill


def test_train_and_distill_writes_results_and_reuses_given_logits(tmp_path):
    ds = small_digits()
    teacher = bn_teacher()
    logits = training.compute_teacher_logits(teacher, ds.x_train)
    config = student_config(temperature=8.0, alpha=0.9, loss="kl")
    _, res_a = training.train_and_distill(config, str(tmp_path), teacher=teacher, dataset=ds)
    _, res_b = training.train_and_distill(
        config, None, teacher=None, dataset=ds, teacher_logits=logits
    )
    assert res_a["test_accuracy"] == res_b["test_accuracy"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["distill"] == {
        "loss": "kl",
        "temperature": 8.0,
        "alpha": 0.9,
        "precomputed_teacher_logits": True,
        "augment": False,
    }
    assert saved["config"]["distill"]["temperature"] == 8.0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == config.num_epochs


def test_make_distill_loss_kinds_and_errors():
    rng = np.random.default_rng(1)
    s, t = rng.standard_normal((2, 4, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    mse = training.make_distill_loss("mse", temperature=1.0, alpha=1.0)(s, t, y)
    np.testing.assert_allclose(mse, ((s - t) ** 2).mean(-1), rtol=1e-5)
    with pytest.raises(
        ValueError, match=r"kind='l2' is not known; allowed values: \('kl', 'mse'\)"
    ):
        training.make_distill_loss("l2", temperature=1.0, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        training.make_distill_loss(temperature=0.0, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        training.make_distill_loss(temperature=1.0, alpha=1.01)


def test_train_and_distill_errors():
    ds = small_digits()
    teacher = bn_teacher()
    config = student_config()
    with pytest.raises(ValueError, match="temperature"):
        training.train_and_distill(
            student_config(temperature=-1.0), None, teacher=teacher, dataset=ds
        )
    with pytest.raises(ValueError, match="alpha"):
        training.train_and_distill(student_config(alpha=2.0), None, teacher=teacher, dataset=ds)
    with pytest.raises(ValueError, match="teacher_logits"):
        training.train_and_distill(config, None, teacher=None, dataset=ds)
    with pytest.raises(ValueError, match=r"teacher_logits has shape \(3, 10\)"):
        training.train_and_distill(
            config, None, teacher=None, dataset=ds, teacher_logits=np.zeros((3, 10))
        )
    with pytest.raises(TypeError, match="teacher must be a Teacher"):
        training.train_and_distill(config, None, teacher={"params": {}}, dataset=ds)
    bare = training.default_config()
    with pytest.raises(ValueError, match="config.distill is missing"):
        training.train_and_distill(bare, None, teacher=teacher, dataset=ds)


# ---------------------------------------------------------------- data-parallel modes

NUM_DEVICES = 4


def parallel_worker(out_dir: str) -> None:
    """train_and_distill in every parallel mode, both teacher paths; saves the params."""
    assert jax.device_count() == NUM_DEVICES, jax.devices()
    ds = small_digits()
    teacher = bn_teacher()
    before = snapshot(teacher.variables)
    report = {}
    for precompute in (True, False):
        for parallel in training.PARALLEL_MODES:
            config = student_config(precompute_teacher=precompute, temperature=3.0, alpha=0.8)
            config.parallel = parallel
            config.sync_every_steps = 4
            state, results = training.train_and_distill(config, None, teacher=teacher, dataset=ds)
            name = f"{'pre' if precompute else 'online'}_{parallel}"
            np.savez(
                os.path.join(out_dir, name + ".npz"),
                *[np.asarray(x) for x in jax.tree.leaves(state.params)],
            )
            report[name] = [int(state.step), results["test_accuracy"]]
    assert_trees_bitwise_equal(snapshot(teacher.variables), before)
    print_report(report)


@pytest.mark.slow
def test_train_and_distill_agrees_across_parallel_modes(tmp_path):
    report = run_on_simulated_devices(__file__, tmp_path, NUM_DEVICES, timeout=600)
    steps = 2 * (256 // 32)
    for path in ("pre", "online"):
        ref = np.load(tmp_path / f"{path}_none.npz")
        for parallel in ("sharding", "pmap"):
            got = np.load(tmp_path / f"{path}_{parallel}.npz")
            for k in ref.files:
                np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6)
            assert report[f"{path}_{parallel}"][0] == steps
            assert report[f"{path}_{parallel}"][1] == report[f"{path}_none"][1]


if __name__ == "__main__":
    parallel_worker(sys.argv[1])
