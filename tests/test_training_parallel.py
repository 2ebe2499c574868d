"""Tests of training/parallel.py: the three parallel modes agree (steps and ``fit``); errors.

The multi-device checks run this file as a script in a subprocess with 8 simulated CPU
devices (``XLA_FLAGS`` must be set before JAX starts its backend).
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import print_report, run_on_simulated_devices, use_compilation_cache

from jaxopt_models import models, pruning, quantization, training
from jaxopt_models.training.parallel import (
    PARALLEL_MODES,
    ParallelStep,
    as_parallel_step,
    cross_replica_mean,
    make_mesh,
)

use_compilation_cache()

NUM_DEVICES = 8
NUM_STEPS = 20
SYNC_EVERY = 10  # collectives on simulated CPU devices: never queue 40+ steps unsynced
# "pruned": the pruning transform (masks in the optimizer state); "distill": a step with the
# frozen teacher's variables as an extra argument; "pruned_qat": pruning and a QAT params_fn.
VARIANTS = ("plain", "pruned", "distill")
# Fake-quant rounding is discontinuous: once reduction-order noise (~1e-7) moves a weight
# across a rounding boundary, the trajectories of the modes part by about one quantization
# step. QAT is compared exactly where that cannot have happened yet (after the first step)
# and by its loss after NUM_STEPS.
RUNS = [*VARIANTS, "pruned_qat"]


# ---------------------------------------------------------------- shared helpers
def qat_params(params):
    """QAT: 8-bit fake quantization (straight-through gradient) of every weight tensor."""
    return jax.tree.map(lambda w: quantization.fake_quant(w, 8), params)


def distill_step(state, batch, teacher_variables, *, teacher_apply, axis_name=None):
    """A distillation-like step: the frozen teacher's variables are an extra argument."""
    rng = jax.random.fold_in(state.rng, state.step)
    t_logits = jax.lax.stop_gradient(teacher_apply(teacher_variables, batch["image"], train=False))

    def objective(params):
        logits = state.apply_fn(
            {"params": params}, batch["image"], train=True, rngs={"dropout": rng}
        )
        kd = optax.softmax_cross_entropy(logits / 2.0, jax.nn.softmax(t_logits / 2.0)) * 4.0
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return (0.5 * kd + 0.5 * ce).mean(), logits

    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grads = cross_replica_mean(grads, axis_name)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
    )
    acc = (jnp.argmax(logits, -1) == batch["label"]).mean()
    return new_state, cross_replica_mean({"loss": loss, "accuracy": acc}, axis_name)


def data(num_steps: int = NUM_STEPS, batch: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_steps, batch, 16)).astype(np.float32)
    y = rng.integers(0, 10, size=(num_steps, batch)).astype(np.int32)
    return x, y


@functools.cache
def _host_state(variant: str, seed: int):
    model = models.MLP(features=(32,), num_classes=10)
    tx = optax.adam(1e-2)
    if variant in ("pruned", "pruned_qat"):
        tx = optax.chain(tx, pruning.prune("magnitude", 0.5))
    x, _ = data(1)
    state = training.create_train_state(model, jax.random.key(seed), x[0], tx)
    return jax.device_get(state.replace(rng=jax.random.key_data(state.rng)))


def make_state(variant: str, seed: int = 0):
    """A fresh initial state (new buffers each call: steps donate their input)."""
    host = _host_state(variant, seed)
    state = jax.tree.map(jnp.array, host)
    return state.replace(rng=jax.random.wrap_key_data(state.rng))


def make_step(variant: str, parallel: str, **kwargs) -> ParallelStep:
    if variant == "pruned_qat":
        return training.make_train_step(params_fn=qat_params, parallel=parallel, **kwargs)
    if variant == "distill":
        teacher = make_state("plain", seed=1)
        fn = functools.partial(distill_step, teacher_apply=teacher.apply_fn)
        return training.make_train_step(fn, parallel=parallel, **kwargs)
    return training.make_train_step(parallel=parallel, **kwargs)


def run(variant: str, parallel: str, num_steps: int = NUM_STEPS, snapshots=()):
    """``num_steps`` steps of ``variant`` in ``parallel`` mode.

    Returns:
      The final single-copy state, its metrics and ``{k: (host state, metrics)}`` after
      each step count ``k`` in ``snapshots``.
    """
    x, y = data(num_steps)
    step = make_step(variant, parallel)
    state = step.place_state(make_state(variant))
    extra = (make_state("plain", seed=1).variables,) if variant == "distill" else ()
    taken = {}
    for i in range(num_steps):
        state, metrics = step(state, {"image": x[i], "label": y[i]}, *extra)
        if (i + 1) % SYNC_EVERY == 0:
            jax.block_until_ready(metrics)
        if i + 1 in snapshots:  # copied to the host: the next step donates the state
            taken[i + 1] = (jax.device_get(step.local(state)), step.host_metrics(metrics))
    return step.local(state), step.host_metrics(metrics), taken


def error_message(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


FIT_EPOCHS, FIT_STEPS = 2, 5


def fit_in_every_mode(out_dir: str) -> dict:
    """``fit`` (pruned variant, metrics synced every 3 steps) in each mode; params saved."""
    x, y = data(FIT_EPOCHS * FIT_STEPS, seed=1)
    batches = lambda epoch, start: (
        {"image": x[FIT_STEPS * epoch + i], "label": y[FIT_STEPS * epoch + i]}
        for i in range(start, FIT_STEPS)
    )
    settings = training.FitSettings(
        num_epochs=FIT_EPOCHS, steps_per_epoch=FIT_STEPS, sync_every_steps=3
    )
    report = {}
    for parallel in PARALLEL_MODES:
        state, info = training.fit(
            make_state("pruned"), make_step("pruned", parallel), batches, settings
        )
        np.savez(
            os.path.join(out_dir, f"fit_{parallel}.npz"),
            *[np.asarray(v) for v in jax.tree.leaves(state.params)],
        )
        report[f"fit_{parallel}"] = {
            "losses": [r["train_loss"] for r in info["history"]],
            "steps": info["steps"],
            "num_devices": info["num_devices"],
            "parallel": info["parallel"],
        }
    return report


def worker(out_dir: str) -> None:
    """Runs every variant in every mode on the simulated devices; saves params as .npz."""
    assert jax.device_count() == NUM_DEVICES, jax.devices()
    report = {"devices": jax.device_count()}
    for variant in RUNS:
        for parallel in PARALLEL_MODES:
            state, metrics, taken = run(variant, parallel, NUM_STEPS, snapshots=(1,))
            for num_steps, (s, m) in {NUM_STEPS: (state, metrics), **taken}.items():
                flat = {
                    jax.tree_util.keystr(p): np.asarray(v)
                    for p, v in jax.tree_util.tree_flatten_with_path(s.params)[0]
                }
                name = f"{variant}{num_steps}_{parallel}"
                np.savez(os.path.join(out_dir, f"{name}.npz"), **flat)
                report[f"{name}_step"] = int(s.step)
                report[f"{name}_loss"] = float(m["loss"])
            name = f"{variant}{NUM_STEPS}_{parallel}"
            if variant.startswith("pruned"):
                masks = state.opt_state[1].masks
                report[f"{name}_pruned_are_zero"] = bool(
                    all(
                        np.all(np.asarray(w)[~np.asarray(m)] == 0)
                        for w, m in zip(
                            jax.tree.leaves(state.params), jax.tree.leaves(masks), strict=True
                        )
                    )
                )
                kernels = [np.asarray(layer["kernel"]) for layer in state.params.values()]
                report[f"{name}_kernel_zero_fraction"] = float(
                    sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels)
                )
    report.update(fit_in_every_mode(out_dir))
    x, y = data(1, batch=60)
    for parallel in ("sharding", "pmap"):
        step = make_step("plain", parallel)
        state = step.place_state(make_state("plain"))
        report[f"indivisible_{parallel}"] = error_message(
            lambda: step(state, {"image": x[0], "label": y[0]})  # noqa: B023
        )
    report["bad_axis"] = error_message(
        lambda: training.make_train_step(parallel="sharding", mesh=make_mesh(), axis_name="batch")
    )
    print_report(report)


@pytest.fixture(scope="module")
def multi_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    return out, run_on_simulated_devices(__file__, out, NUM_DEVICES, timeout=300)


# ------------------------------------------------------------ multi-device tests
def assert_params_agree(out, report, run_name, parallel, num_steps):
    ref = np.load(os.path.join(out, f"{run_name}_none.npz"))
    got = np.load(os.path.join(out, f"{run_name}_{parallel}.npz"))
    assert sorted(ref.files) == sorted(got.files)
    for name in ref.files:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert report[f"{run_name}_{parallel}_step"] == num_steps
    np.testing.assert_allclose(
        report[f"{run_name}_{parallel}_loss"], report[f"{run_name}_none_loss"], rtol=1e-5
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("parallel", ["sharding", "pmap"])
def test_modes_agree_on_params_after_20_steps(multi_device, variant, parallel):
    out, report = multi_device
    assert report["devices"] == NUM_DEVICES
    assert_params_agree(out, report, f"{variant}{NUM_STEPS}", parallel, NUM_STEPS)


@pytest.mark.parametrize("parallel", ["sharding", "pmap"])
def test_qat_with_pruning_agrees_across_modes(multi_device, parallel):
    out, report = multi_device
    assert_params_agree(out, report, "pruned_qat1", parallel, 1)
    name = f"pruned_qat{NUM_STEPS}"
    np.testing.assert_allclose(
        report[f"{name}_{parallel}_loss"], report[f"{name}_none_loss"], rtol=1e-3
    )


@pytest.mark.parametrize("variant", ["pruned", "pruned_qat"])
def test_pruning_masks_stay_applied_in_every_mode(multi_device, variant):
    _, report = multi_device
    for parallel in PARALLEL_MODES:
        name = f"{variant}{NUM_STEPS}_{parallel}"
        assert report[f"{name}_pruned_are_zero"], parallel
        assert report[f"{name}_kernel_zero_fraction"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("parallel", ["sharding", "pmap"])
def test_batch_not_divisible_by_devices_is_a_clear_error(multi_device, parallel):
    _, report = multi_device
    msg = report[f"indivisible_{parallel}"]
    assert msg.startswith("ValueError"), msg
    assert "60" in msg and "8 devices" in msg and "multiple of 8" in msg


def test_unknown_mesh_axis_is_a_clear_error_on_8_devices(multi_device):
    _, report = multi_device
    msg = report["bad_axis"]
    assert msg.startswith("ValueError") and "'batch'" in msg and "('data',)" in msg, msg


@pytest.mark.parametrize("parallel", ["sharding", "pmap"])
def test_fit_gives_the_same_losses_and_params_in_every_mode(multi_device, parallel):
    out, report = multi_device
    ref, got = report["fit_none"], report[f"fit_{parallel}"]
    assert got["parallel"] == parallel and got["num_devices"] == NUM_DEVICES
    assert got["steps"] == ref["steps"] == FIT_EPOCHS * FIT_STEPS
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5)
    want, have = (
        np.load(os.path.join(out, "fit_none.npz")),
        np.load(os.path.join(out, f"fit_{parallel}.npz")),
    )
    for name in want.files:
        np.testing.assert_allclose(have[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)


# ------------------------------------------------------------ single-device tests
def test_unknown_mesh_axis_is_a_clear_error():
    mesh = make_mesh(axis_name="data")
    with pytest.raises(ValueError, match=r"axis_name='batch' is not an axis of the mesh.*'data'"):
        training.make_train_step(parallel="sharding", mesh=mesh, axis_name="batch")


def test_unknown_parallel_mode_lists_the_allowed_modes():
    with pytest.raises(ValueError, match=r"parallel='dp'.*'none', 'sharding', 'pmap'"):
        training.make_train_step(parallel="dp")


def test_mesh_is_rejected_outside_sharding_mode():
    with pytest.raises(ValueError, match="mesh= is only used with parallel='sharding'"):
        training.make_train_step(parallel="pmap", mesh=make_mesh())


def test_pmap_needs_a_step_with_axis_name():
    def step(state, batch):
        return state, {"loss": jnp.zeros(())}

    with pytest.raises(TypeError, match="axis_name"):
        training.make_train_step(step, parallel="pmap")


def test_step_fn_with_loss_fn_is_ambiguous():
    with pytest.raises(TypeError, match="bind them into step_fn"):
        training.make_train_step(training.train_step, loss_fn=training.cross_entropy)


def test_cross_replica_mean_is_identity_without_axis_and_keeps_ints():
    tree = {"a": jnp.ones(3), "n": jnp.arange(2)}
    assert cross_replica_mean(tree, None) is tree
    out = jax.pmap(lambda t: cross_replica_mean(t, "i"), axis_name="i")(
        jax.tree.map(lambda v: v[None], tree)
    )
    np.testing.assert_array_equal(out["a"][0], tree["a"])
    assert out["n"].dtype == tree["n"].dtype


@pytest.mark.parametrize("parallel", PARALLEL_MODES)
def test_modes_agree_on_one_device(parallel):
    ref, _, _ = run("plain", "none", num_steps=3)
    got, metrics, _ = run("plain", parallel, num_steps=3)
    chex_close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    jax.tree.map(chex_close, jax.device_get(got.params), jax.device_get(ref.params))
    assert int(got.step) == 3 and np.isfinite(float(metrics["loss"]))
    assert isinstance(got.rng, jax.Array) and jnp.issubdtype(got.rng.dtype, jax.dtypes.prng_key)


@pytest.mark.parametrize("parallel", PARALLEL_MODES)
def test_process_rows_is_the_whole_batch_with_one_process(parallel):
    step = training.make_train_step(parallel=parallel)
    assert step.process_rows(64) == slice(0, 64)


def test_extra_arguments_are_placed_once_and_reused():
    step = make_step("distill", "sharding")
    teacher = make_state("plain", seed=1).variables
    state = step.place_state(make_state("distill"))
    x, y = data(2)
    state, _ = step(state, {"image": x[0], "label": y[0]}, teacher)
    placed = step._extra_cache[2]
    state, _ = step(state, {"image": x[1], "label": y[1]}, teacher)
    assert step._extra_cache[2] is placed
    assert int(step.local(state).step) == 2


@pytest.mark.parametrize("parallel", PARALLEL_MODES)
def test_skip_nonfinite_undoes_the_step_but_advances_the_counter(parallel):
    step = make_step("plain", parallel, skip_nonfinite=True)
    state = make_state("plain")
    before = jax.device_get(state.params)
    x, y = data(2)
    bad = x[0].copy()
    bad[3, 2] = np.nan
    state = step.place_state(state)
    state, metrics = step(state, {"image": bad, "label": y[0]})
    local = step.local(state)
    assert int(local.step) == 1
    assert int(step.host_metrics(metrics)["skipped"]) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(local.params), before)
    state, metrics = step(state, {"image": x[1], "label": y[1]})
    assert int(step.host_metrics(metrics)["skipped"]) == 0
    assert int(step.local(state).step) == 2


@pytest.mark.parametrize("parallel", PARALLEL_MODES)
def test_lower_gives_the_program_the_step_runs_without_running_it(parallel):
    step = make_step("plain", parallel)
    state = step.place_state(make_state("plain"))
    x, y = data(1)
    batch = {"image": x[0], "label": y[0]}
    text = step.lower(state, batch).compile().as_text()
    assert "dot" in text and "ENTRY" in text
    assert int(step.local(state).step) == 0  # nothing ran, nothing was donated
    state, _ = step(state, batch)
    assert int(step.local(state).step) == 1
    bound = training.bind_extra(
        make_step("distill", parallel), make_state("plain", seed=1).variables
    )
    lowered = bound.lower(bound.place_state(make_state("distill")), batch)
    assert "ENTRY" in lowered.compile().as_text()
    with pytest.raises(TypeError, match="cannot be lowered"):
        as_parallel_step(lambda state, batch: (state, {})).lower(state, batch)


def test_plain_compiled_functions_are_wrapped_as_none_mode():
    fn = jax.jit(functools.partial(training.train_step, loss_fn=training.cross_entropy))
    step = as_parallel_step(fn)
    assert step.mode == "none" and step.num_devices == 1
    x, y = data(1)
    state, metrics = step(make_state("plain"), {"image": x[0], "label": y[0]})
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_fit_takes_a_step_of_any_mode_and_a_plain_compiled_function():
    x, y = data(6, batch=16)
    batches = lambda epoch, start: (
        {"image": x[3 * epoch + i], "label": y[3 * epoch + i]} for i in range(start, 3)
    )
    settings = training.FitSettings(num_epochs=2, steps_per_epoch=3)
    histories = {}
    for parallel in PARALLEL_MODES:
        step = training.make_train_step(parallel=parallel)
        state, info = training.fit(make_state("plain"), step, batches, settings)
        assert info["parallel"] == parallel and int(state.step) == 6
        histories[parallel] = [r["train_loss"] for r in info["history"]]
    plain = jax.jit(functools.partial(training.train_step, loss_fn=training.cross_entropy))
    _, info = training.fit(make_state("plain"), plain, batches, settings)
    assert info["parallel"] == "none"
    histories["jit"] = [r["train_loss"] for r in info["history"]]
    for name, losses in histories.items():
        np.testing.assert_allclose(losses, histories["none"], rtol=1e-6, err_msg=name)
    with pytest.raises(TypeError, match="train_fn=3 must be callable"):
        training.fit(make_state("plain"), 3, batches, settings)


if __name__ == "__main__":
    worker(sys.argv[1])
