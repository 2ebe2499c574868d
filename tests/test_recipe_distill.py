"""Distillation with the engine and the distill recipe (recipes/distill.py).

The student's step is the engine's ``train_step`` with ``target_fn``: the teacher's logits
are computed inside the step from its variables (an extra, frozen argument) or read from
the batch (computed once). Only the student is differentiated.

The data-parallel check runs this file as a script in a subprocess with 4 simulated CPU
devices (``XLA_FLAGS`` must be set before JAX starts its backend).
"""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from _helpers import (
    assert_trees_bitwise_equal,
    print_report,
    run_on_simulated_devices,
    use_compilation_cache,
)

from jaxopt_models import pruning, training
from jaxopt_models.data import get_dataset, make_augment
from jaxopt_models.distillation import Teacher, make_distill_loss, teacher_logits
from jaxopt_models.models import MLP, DeepCNN
from jaxopt_models.recipes import build, distill
from jaxopt_models.recipes import train as train_recipe
from jaxopt_models.training.steps import augment_images, step_rng

use_compilation_cache()


def online_target(x, batch, teacher_variables, *, apply_fn):
    """The teacher's logits on the step's (augmented) inputs, from its frozen variables."""
    return apply_fn(teacher_variables, x, train=False)


def precomputed_target(x, batch):
    """Logits computed once, carried by the batch."""
    return batch["teacher_logits"]


@functools.lru_cache(maxsize=1)
def small_digits():
    return get_dataset("digits").subset(num_train=256, num_test=128)


@functools.lru_cache(maxsize=1)
def split_digits() -> build.Data:
    return build.load_data(student_config(), small_digits())


def student_config(**distillation):
    """An MLP 64-16-10 student; 230 training digits in batches of 32: 7 steps per epoch."""
    c = train_recipe.default_config()
    c.model.features = (16,)
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 2
    c.plots = False
    c.distillation = ml_collections.ConfigDict(
        {"loss": "kl", "temperature": 4.0, "alpha": 0.9, **distillation}
    )
    return c


def student_loss(config):
    d = config.distillation
    return make_distill_loss(d.loss, temperature=d.temperature, alpha=d.alpha)


@functools.lru_cache(maxsize=1)
def bn_teacher() -> Teacher:
    """A DeepCNN teacher with dropout and non-trivial batch_stats (random, untrained)."""
    ds = small_digits()
    model = DeepCNN(stages=((4,), (8,)), hidden=(), num_classes=10, dropout_rate=0.2)
    variables = jax.jit(model.init)(jax.random.key(1), ds.x_train[:1])
    rng = np.random.default_rng(1)
    stats = jax.tree.map(
        lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype), variables["batch_stats"]
    )
    return Teacher(model.apply, {"params": variables["params"], "batch_stats": stats})


def snapshot(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def make_student(x, tx=None, features=(16,)):
    model = MLP(features=features, num_classes=10)
    return training.create_train_state(model, jax.random.key(0), x[:1], tx or optax.sgd(0.1))


def batch_of(ds, n=32, start=0):
    return {"image": ds.x_train[start : start + n], "label": ds.y_train[start : start + n]}


def distill_train(config, data, teacher, *, precompute, **kwargs):
    """``recipes.train.train`` of a distilled student, the teacher online or precomputed."""
    if precompute:
        logits = teacher_logits(teacher, data.x_train)
        teaching = {"target_fn": precomputed_target, "batch_extra": {"teacher_logits": logits}}
    else:
        target = functools.partial(online_target, apply_fn=teacher.apply_fn)
        teaching = {"target_fn": target, "extra": (teacher.variables,)}
    return train_recipe.train(
        config, data, None, loss_fn=student_loss(config), **teaching, **kwargs
    )


# ---------------------------------------------------------------- the teacher stays frozen
@pytest.mark.parametrize("precompute", [True, False])
def test_teacher_variables_are_bitwise_unchanged_and_not_in_the_student_state(precompute):
    data = split_digits()
    teacher = bn_teacher()
    before = snapshot(teacher.variables)
    assert set(before) == {"params", "batch_stats"}
    config = student_config(temperature=2.0, alpha=0.7)
    state, results = distill_train(config, data, teacher, precompute=precompute)
    assert_trees_bitwise_equal(snapshot(teacher.variables), before)

    # the student's state holds the student only: its params, and optimizer state built
    # from them; no array of the teacher's shapes appears anywhere in it
    student = make_student(data.x_train, training.make_optimizer(config.optimizer, 14))
    assert jax.tree.structure(state.params) == jax.tree.structure(student.params)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(student.opt_state)
    assert state.model_state == {}
    teacher_shapes = {x.shape for x in jax.tree.leaves(before)} - {
        x.shape for x in jax.tree.leaves(student.params)
    }
    assert teacher_shapes
    assert not teacher_shapes & {np.shape(x) for x in jax.tree.leaves(state)}
    assert results["params"] == training.count_params(state.params)
    assert int(state.step) == 2 * 7


def test_the_gradient_never_reaches_the_teacher():
    ds = small_digits()
    teacher = Teacher.from_state(make_student(ds.x_train, features=(24,)))
    state = make_student(ds.x_train)
    loss_fn = make_distill_loss(temperature=3.0, alpha=1.0)
    target = functools.partial(online_target, apply_fn=teacher.apply_fn)

    def objective(t_vars):
        _, m = training.train_step(state, batch_of(ds), t_vars, loss_fn=loss_fn, target_fn=target)
        return m["loss"]

    grads = jax.jit(jax.grad(objective))(teacher.variables)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))
    assert float(objective(teacher.variables)) > 0  # (the loss does depend on the teacher)


# ---------------------------------------------------------------- the step itself
def test_online_and_precomputed_teachers_give_the_same_update():
    ds = small_digits()
    teacher = bn_teacher()
    loss_fn = make_distill_loss(temperature=4.0, alpha=0.5)
    batch = batch_of(ds, start=64)
    online = training.make_train_step(
        loss_fn=loss_fn,
        target_fn=functools.partial(online_target, apply_fn=teacher.apply_fn),
        donate=False,
    )
    s0 = make_student(ds.x_train)
    s1, m1 = online(s0, batch, teacher.variables)

    logits = teacher_logits(teacher, ds.x_train, batch_size=100)
    pre = training.make_train_step(loss_fn=loss_fn, target_fn=precomputed_target, donate=False)
    s2, m2 = pre(s0, {**batch, "teacher_logits": logits[64:96]})
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(s1.step) == int(s2.step) == 1


def test_the_teacher_labels_the_same_augmented_images_the_student_sees():
    ds = small_digits()
    teacher = bn_teacher()
    loss_fn = make_distill_loss(temperature=2.0, alpha=0.7)
    aug = make_augment(shift=1, flip=True)
    batch = batch_of(ds, start=32)
    s0 = make_student(ds.x_train)
    online = training.make_train_step(
        loss_fn=loss_fn,
        target_fn=functools.partial(online_target, apply_fn=teacher.apply_fn),
        augment_fn=aug,
        donate=False,
    )
    s1, m1 = online(s0, batch, teacher.variables)
    # reference: augment by hand, let the teacher label those images, no augmentation
    x = np.asarray(augment_images(step_rng(s0), jnp.asarray(batch["image"]), aug))
    assert not np.array_equal(x, batch["image"])
    t_logits = teacher_logits(teacher, x, batch_size=32)
    pre = training.make_train_step(loss_fn=loss_fn, target_fn=precomputed_target, donate=False)
    s2, m2 = pre(s0, {"image": x, "label": batch["label"], "teacher_logits": t_logits})
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_alpha_zero_is_the_plain_cross_entropy_step():
    ds = small_digits()
    batch = batch_of(ds)
    s0 = make_student(ds.x_train)
    plain, m_plain = jax.jit(training.train_step)(s0, batch)
    loss_fn = make_distill_loss(temperature=2.0, alpha=0.0)
    t_logits = np.random.default_rng(0).standard_normal((32, 10)).astype(np.float32)
    step = functools.partial(training.train_step, loss_fn=loss_fn, target_fn=precomputed_target)
    kd, m_kd = jax.jit(step)(s0, {**batch, "teacher_logits": t_logits})
    np.testing.assert_allclose(m_plain["loss"], m_kd["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_plain["accuracy"], m_kd["accuracy"])
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(kd.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_student_equal_to_its_teacher_gets_zero_kd_loss_and_no_update():
    ds = small_digits()
    student = make_student(ds.x_train)
    teacher = Teacher.from_state(student)
    step = training.make_train_step(
        loss_fn=make_distill_loss(temperature=5.0, alpha=1.0),
        target_fn=functools.partial(online_target, apply_fn=teacher.apply_fn),
        donate=False,
    )
    new, m = step(student, batch_of(ds), teacher.variables)
    assert float(m["loss"]) == 0.0
    # the gradient T * (softmax(s/T) - softmax(t/T)) is zero up to float rounding
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(student.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)


def test_distillation_moves_the_student_towards_the_teacher_and_compiles_once():
    ds = small_digits()
    teacher = bn_teacher()
    logits = teacher_logits(teacher, ds.x_train)
    traces = []
    kd = make_distill_loss(temperature=2.0, alpha=1.0)

    def counting_loss(s, t, y):
        traces.append(1)
        return kd(s, t, y)

    state = make_student(ds.x_train, optax.adam(3e-3))
    step = training.make_train_step(loss_fn=counting_loss, target_fn=precomputed_target)
    losses = []
    for i in range(30):
        rows = slice(32 * (i % 4), 32 * (i % 4 + 1))
        batch = {**batch_of(ds, start=rows.start), "teacher_logits": logits[rows]}
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert len(traces) == 1


def test_params_fn_is_used_in_the_distill_step_and_in_evaluation():
    """Weight QAT: a straight-through rounding of the weights to multiples of 1/4."""
    ds = small_digits()
    teacher = bn_teacher()

    def params_fn(params):
        return jax.tree.map(lambda w: w + jax.lax.stop_gradient(jnp.round(4 * w) / 4 - w), params)

    loss_fn = make_distill_loss(temperature=2.0, alpha=0.5)
    state = make_student(ds.x_train)
    batch = batch_of(ds)
    step = training.make_train_step(
        loss_fn=loss_fn,
        params_fn=params_fn,
        target_fn=functools.partial(online_target, apply_fn=teacher.apply_fn),
        donate=False,
    )
    new, m = step(state, batch, teacher.variables)
    t_logits = teacher.apply_fn(teacher.variables, batch["image"], train=False)
    s_logits = state.apply_fn({"params": params_fn(state.params)}, batch["image"])
    np.testing.assert_allclose(
        m["loss"], loss_fn(s_logits, t_logits, batch["label"]).mean(), rtol=1e-5
    )
    # the float params change (gradients flow through the rounding)
    assert not np.allclose(new.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])

    data = split_digits()
    config = student_config(temperature=2.0, alpha=0.5)
    final, results = distill_train(config, data, teacher, precompute=True, params_fn=params_fn)
    q_logits = np.asarray(final.apply_fn({"params": params_fn(final.params)}, data.x_test))
    f_logits = np.asarray(final.apply_fn(final.variables, data.x_test))
    q_loss = float(optax.softmax_cross_entropy_with_integer_labels(q_logits, data.y_test).mean())
    f_loss = float(optax.softmax_cross_entropy_with_integer_labels(f_logits, data.y_test).mean())
    assert results["test_accuracy"] == float((q_logits.argmax(-1) == data.y_test).mean())
    assert results["test_loss"] == pytest.approx(q_loss, rel=1e-5)
    assert abs(q_loss - f_loss) > 1e-3  # the evaluation really used the quantized weights


def test_any_optax_chain_works_so_a_pruned_student_stays_pruned():
    data = split_digits()
    teacher = bn_teacher()
    template = make_student(data.x_train)
    rng = np.random.default_rng(0)
    masks = jax.tree.map(lambda p: rng.random(p.shape) > 0.5, template.params)
    # the transform's state (and so the mask arrays it holds) is donated with the train state
    tx = optax.chain(optax.adam(1e-2), pruning.keep_masks(jax.tree.map(jnp.asarray, masks)))
    config = student_config(temperature=4.0, alpha=0.9)
    state, results = distill_train(config, data, teacher, precompute=False, tx=tx)
    assert int(state.step) == 2 * 7
    for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks), strict=True):
        assert np.all(np.asarray(p)[~m] == 0)
        assert np.any(np.asarray(p)[m] != 0)
    history = results["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # it still learns


# ---------------------------------------------------------------- the recipe
def recipe_config(**overrides):
    c = distill.default_config()
    c.dataset.num_train = 256
    c.dataset.num_test = 128
    c.model.features = (16,)
    c.batch_size = 32
    c.eval_batch_size = 128
    c.num_epochs = 1
    c.plots = False
    c.teacher.model.name = "mlp"
    c.teacher.model.features = (64,)
    c.teacher.num_epochs = 2
    c.teacher.plots = False
    c.protocol.temperatures = (2.0,)
    c.update_from_flattened_dict(overrides)
    return c


def test_the_recipe_runs_the_protocol_honours_pruning_and_reuses_a_teacher(tmp_path):
    config = recipe_config(
        **{"pruning.method": "magnitude", "pruning.sparsity": 0.5, "pruning.schedule": "one_shot"}
    )
    summary = distill.run(config, str(tmp_path / "a"))
    on_disk = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert set(summary["distilled"]) == {"2"} and summary["best_temperature"]["temperature"] == 2
    assert summary["teacher"]["num_train"] == 230 and summary["pruning"]["sparsity"] == 0.5
    student = json.loads((tmp_path / "a" / "student" / "seed_0" / "results.json").read_text())
    kd = json.loads((tmp_path / "a" / "kd_T2" / "seed_0" / "results.json").read_text())
    for run in (student, kd):  # both student runs are pruned to the target
        assert run["pruning"]["prunable"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert kd["distillation"]["temperature"] == 2.0 and kd["distillation"]["alpha"] == 0.9
    assert kd["teacher_params"] == 64 * 64 + 64 + 64 * 10 + 10
    assert summary["distilled"]["2"]["runs"] == [kd["test_accuracy"]]
    assert summary["student"]["runs"] == [student["test_accuracy"]]
    teacher_acc = summary["teacher"]["test_accuracy"]
    gap = summary["distilled"]["2"]["gap_closed"]
    if teacher_acc > student["test_accuracy"]:
        want = (kd["test_accuracy"] - student["test_accuracy"]) / (
            teacher_acc - student["test_accuracy"]
        )
        assert gap == pytest.approx(want)

    again = distill.run(config, str(tmp_path / "b"), teacher_dir=str(tmp_path / "a" / "teacher"))
    assert not (tmp_path / "b" / "teacher").exists()
    assert again["teacher"]["test_accuracy"] == teacher_acc
    assert again["distilled"] == summary["distilled"] and again["student"] == summary["student"]
    with pytest.raises(build.ConfigError, match="already holds a finished run"):
        distill.run(config, str(tmp_path / "a"))


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"distillation.alpha": 2.0}, "alpha"),
        ({"distillation.loss": "l2"}, r"config.distillation.loss='l2' is not known"),
        ({"protocol.temperatures": (0.0,)}, "temperature"),
        ({"protocol.augment.shift": 1}, r"needs the teacher inside the step: set config"),
        ({"protocol.student_num_train": 1000}, r"config.protocol needs student_num_train=1000"),
        ({"seeds": ()}, "config.seeds must name at least one seed"),
        ({"pruning.sparsity": 1.5}, r"config.pruning.sparsity=1.5"),
    ],
)
def test_recipe_config_errors_come_before_anything_trains(tmp_path, overrides, match):
    with pytest.raises(build.ConfigError, match=match):
        distill.run(recipe_config(**overrides), str(tmp_path))
    assert not (tmp_path / "teacher").exists()


# ---------------------------------------------------------------- data-parallel modes
NUM_DEVICES = 4


def parallel_worker(out_dir: str) -> None:
    """A distilled student in every parallel mode, both teacher paths; saves the params."""
    assert jax.device_count() == NUM_DEVICES, jax.devices()
    data = split_digits()
    teacher = bn_teacher()
    before = snapshot(teacher.variables)
    report = {}
    for precompute in (True, False):
        for parallel in training.PARALLEL_MODES:
            config = student_config(temperature=3.0, alpha=0.8)
            config.parallel = parallel
            config.sync_every_steps = 4
            state, results = distill_train(config, data, teacher, precompute=precompute)
            name = f"{'pre' if precompute else 'online'}_{parallel}"
            np.savez(
                os.path.join(out_dir, name + ".npz"),
                *[np.asarray(x) for x in jax.tree.leaves(state.params)],
            )
            report[name] = [int(state.step), results["test_accuracy"]]
    assert_trees_bitwise_equal(snapshot(teacher.variables), before)
    print_report(report)


@pytest.mark.slow
def test_a_distilled_student_agrees_across_parallel_modes(tmp_path):
    report = run_on_simulated_devices(__file__, tmp_path, NUM_DEVICES, timeout=600)
    for path in ("pre", "online"):
        ref = np.load(tmp_path / f"{path}_none.npz")
        for parallel in ("sharding", "pmap"):
            got = np.load(tmp_path / f"{path}_{parallel}.npz")
            for k in ref.files:
                np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6)
            assert report[f"{path}_{parallel}"][0] == 2 * 7
            assert report[f"{path}_{parallel}"][1] == report[f"{path}_none"][1]


if __name__ == "__main__":
    parallel_worker(sys.argv[1])
