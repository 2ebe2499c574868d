"""Pruning through a config: the ``pruning`` section (recipes/config.py), its builder
(``recipes.build.build_pruning`` / ``with_pruning``) and the train recipe that honours it."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from _helpers import assert_trees_bitwise_equal, use_compilation_cache

from jaxopt_models import pruning
from jaxopt_models.recipes import build, train
from jaxopt_models.training import Checkpointer

use_compilation_cache()

STEPS = 7  # 230 training digits (256 less the validation tenth) in batches of 32
MLP_SHAPES = {
    name: {
        "kernel": jax.ShapeDtypeStruct((n_in, n_out), jnp.float32),
        "bias": jax.ShapeDtypeStruct((n_out,), jnp.float32),
    }
    for name, n_in, n_out in (("Dense_0", 64, 32), ("Dense_1", 32, 10))
}


def _config(num_epochs=3, **pruning_fields):
    """The MLP 64-32-10 on 256 digits, 7 steps per epoch."""
    c = train.default_config()
    c.dataset.num_train = 256
    c.dataset.num_test = 128
    c.model.features = (32,)
    c.batch_size = 32
    c.eval_batch_size = 128
    c.num_epochs = num_epochs
    c.optimizer.learning_rate = 1e-2
    c.plots = False
    for k, v in pruning_fields.items():
        c.pruning[k] = v
    return c


def _build(c, total_steps=100, params=None):
    return build.build_pruning(
        c.pruning, total_steps, steps_per_epoch=10, seed=0, params=params or MLP_SHAPES
    )


def _check_exact(state, sparsity):
    """Every kernel: exactly round(s * n) pruned entries, all exactly 0.0; biases dense."""
    masks = pruning.find_prune_state(state.opt_state).masks
    for name, layer in state.params.items():
        kernel, mask = np.asarray(layer["kernel"]), np.asarray(masks[name]["kernel"])
        assert int((~mask).sum()) == round(sparsity * kernel.size), name
        assert np.all(kernel[~mask] == 0.0), name
        assert np.asarray(masks[name]["bias"]).all()


@pytest.mark.parametrize(
    "method,schedule,optimizer,end_fraction",
    [
        ("magnitude", "polynomial", "adam", 1.0),  # the target on the very last update
        ("magnitude", "one_shot", "adamw", 0.5),
        ("random", "constant", "momentum", 0.5),
        ("saliency", "polynomial", "sgd", 0.5),
    ],
)
def test_a_pruning_config_reaches_exact_sparsity_with_pruned_weights_exactly_zero(
    method, schedule, optimizer, end_fraction
):
    c = _config(
        method=method, schedule=schedule, sparsity=0.8, frequency=2, end_fraction=end_fraction
    )
    c.optimizer.name = optimizer
    c.optimizer.weight_decay = 1e-3 if optimizer == "adamw" else 0.0
    c.optimizer.learning_rate = 0.1 if optimizer in ("sgd", "momentum") else 1e-2
    state, results = train.run(c, None)
    _check_exact(state, 0.8)
    kept = sum(n - round(0.8 * n) for n in (64 * 32, 32 * 10))  # exact per layer
    nonzeros = results["pruning"]["prunable"]["nonzeros"]
    # A kept weight may be 0.0 when its score ties at 0 (saliency of a weight without
    # gradient, e.g. from a constant input pixel); magnitude keeps only nonzero weights.
    assert nonzeros == kept if method == "magnitude" else nonzeros <= kept
    assert results["test_accuracy"] > 0.3  # still learns (10 classes)


def test_gradual_schedule_reaches_the_target_at_its_end_step_and_keeps_it():
    # 21 steps; pruning from step 4 to step 12, every 2 steps
    c = _config(method="magnitude", sparsity=0.75, begin_step=4, end_step=12, frequency=2)
    state, results = train.run(c, None)
    _check_exact(state, 0.75)
    assert float(pruning.find_prune_state(state.opt_state).sparsity) == pytest.approx(0.75)
    assert results["pruning"]["prunable"]["sparsity"] == pytest.approx(0.75, abs=1e-3)


def test_global_scope_and_two_by_four_structure():
    _, results = train.run(
        _config(1, method="magnitude", sparsity=0.9, scope="global", schedule="one_shot"), None
    )
    info = results["pruning"]["prunable"]
    assert info["params"] - info["nonzeros"] == round(0.9 * info["params"])
    state, _ = train.run(
        _config(1, method="magnitude", structure="2:4", structure_axis=0, schedule="one_shot"),
        None,
    )
    masks = pruning.find_prune_state(state.opt_state).masks
    for name in state.params:  # groups of 4 along the input axis (a multiple of 4 here)
        groups = np.asarray(masks[name]["kernel"]).T.reshape(-1, 4)
        assert np.all(groups.sum(-1) == 2), name
        kernel = np.asarray(state.params[name]["kernel"]).T.reshape(-1, 4)
        assert np.all(kernel[~groups] == 0.0), name


def test_erk_distribution_prunes_the_larger_layer_more():
    _, results = train.run(
        _config(1, method="magnitude", distribution="erk", schedule="one_shot", sparsity=0.7),
        None,
    )
    layers = results["pruning"]["layers"]
    assert layers["Dense_0/kernel"]["sparsity"] > layers["Dense_1/kernel"]["sparsity"]
    total = results["pruning"]["prunable"]
    assert total["params"] - total["nonzeros"] == pytest.approx(0.7 * total["params"], abs=2)


def test_results_json_and_printed_table_hold_the_summary(tmp_path, capsys):
    c = _config(1, method="magnitude", sparsity=0.5, schedule="one_shot")
    c.pruning.layers = {"Dense_1": 0.3}
    state, results = train.run(c, str(tmp_path))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    info = on_disk["pruning"]
    assert set(info["layers"]) == {
        "Dense_0/bias",
        "Dense_0/kernel",
        "Dense_1/bias",
        "Dense_1/kernel",
    }
    assert info["layers"]["Dense_0/kernel"]["nonzeros"] == 64 * 32 // 2
    assert info["layers"]["Dense_1/kernel"]["nonzeros"] == 32 * 10 - round(0.3 * 32 * 10)
    assert info["layers"]["Dense_1/bias"]["sparsity"] <= 0.5  # biases are not pruned
    kernels = 64 * 32 + 32 * 10
    assert info["prunable"]["params"] == kernels
    assert info["prunable"]["nonzeros"] == kernels - 64 * 32 // 2 - round(0.3 * 32 * 10)
    nonzeros = sum(int(np.count_nonzero(x)) for x in jax.tree.leaves(state.params))
    assert info["total"]["nonzeros"] == nonzeros
    assert info["total"]["params"] == on_disk["params"] == kernels + 32 + 10
    assert (info["target_sparsity"], info["method"], info["schedule"]) == (
        0.5,
        "magnitude",
        "one_shot",
    )
    assert info["target_layers"] == {"Dense_1": 0.3}
    assert info == json.loads(json.dumps(results["pruning"]))
    train.print_results(results)
    out = capsys.readouterr().out
    assert "sparsity (kernels)" in out and f"{100 * info['prunable']['sparsity']:.2f}%" in out
    assert "Dense_0/kernel" in out and "total" in out


def test_pruning_is_off_by_default_and_leaves_the_optimizer_alone():
    c = _config(1)
    assert c.pruning.method == "none" and not build.pruning_enabled(c.pruning)
    tx = optax.adam(1e-3)
    assert _build(c) is None and build.with_pruning(tx, None) is tx
    state, results = train.run(c, None)
    assert "pruning" not in results
    assert pruning.find_prune_state(state.opt_state) is None


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("method", "lottery", r"config.pruning.method='lottery' is not known; allowed values"),
        ("sparsity", 1.0, r"config.pruning.sparsity=1.0 must be a number in \[0, 1\)"),
        ("sparsity", -0.1, r"config.pruning.sparsity=-0.1"),
        ("schedule", "cubic", r"config.pruning.schedule='cubic' is not known; allowed values"),
        ("scope", "net", r"config.pruning.scope='net' is not known"),
        ("structure", "3:2", r"config.pruning.structure='3:2' is not valid"),
        ("structure", "blocks", r"config.pruning.structure='blocks' is not valid"),
        ("distribution", "lognormal", r"config.pruning.distribution='lognormal' is not known"),
        ("frequency", -1, r"config.pruning.frequency=-1 must be an int >= 0"),
        ("begin_fraction", 1.5, r"config.pruning.begin_fraction=1.5"),
        ("end_step", 100, r"config.pruning.end_step=100 must be an int in \[0, total_steps - 1"),
        ("begin_step", -1, r"config.pruning.begin_step=-1 must be an int"),
        ("initial_sparsity", 0.95, r"config.pruning.initial_sparsity=0.95 must be <="),
        ("power", 0.0, r"config.pruning.power=0.0 must be a number > 0"),
        ("seed", 1.5, r"config.pruning.seed=1.5 must be an int or None"),
    ],
)
def test_config_errors_name_the_field_before_anything_trains(field, value, match):
    c = _config(method="magnitude")
    # (an untyped section: a typed field would refuse some of these values on assignment)
    c.pruning = ml_collections.ConfigDict({**c.pruning.to_dict(), field: value})
    with pytest.raises(ValueError, match=match):
        _build(c)
    with pytest.raises(build.ConfigError, match=match):
        train.run(c, None)


def test_config_errors_for_combinations():
    for fields, match in (
        ({"layers": {"Dense_0": 1.5}}, r"config.pruning.layers\['Dense_0'\]=1.5"),
        ({"layers": {"Conv": 0.5}}, r"config.pruning.layers names \['Conv'\], which match no"),
        (
            {"layers": {"Dense_0": 0.5}, "distribution": "erk"},
            "config.pruning.layers needs config.pruning.distribution='uniform'",
        ),
        ({"begin_step": 60, "end_step": 40}, "begins at step 60 after it ends at step 40"),
        ({"begin_fraction": 0.8, "end_fraction": 0.2}, "begin_fraction <= end_fraction"),
        (
            {"scope": "global", "distribution": "erk"},
            "scope='global' needs config.pruning.distribution='uniform'",
        ),
        (
            {"scope": "global", "layers": {"Dense_0": 0.5}},
            "scope='global' needs .* and no config.pruning.layers",
        ),
    ):
        with pytest.raises(ValueError, match=match):
            _build(_config(method="magnitude", **fields))


def test_schedule_steps_from_fractions_or_steps():
    c = _config(method="magnitude", begin_fraction=0.1, end_fraction=0.6)
    assert build.schedule_steps(c.pruning, 1000) == (100, 600)
    c.pruning.begin_step = 5
    assert build.schedule_steps(c.pruning, 1000) == (5, 600)
    c.pruning.end_step = 50
    assert build.schedule_steps(c.pruning, 1000) == (5, 50)
    c = _config(method="magnitude", begin_fraction=0.5, end_fraction=1.0)
    assert build.schedule_steps(c.pruning, 8) == (4, 7)  # capped at the last update


def test_frequency_zero_updates_the_masks_every_tenth_of_an_epoch():
    c = _config(method="magnitude", sparsity=0.5, frequency=0, begin_step=0, end_step=90)
    params = {"Dense_0": {"kernel": jnp.arange(1.0, 101.0).reshape(10, 10), "bias": jnp.ones(10)}}
    tx = _build(c, params=params)  # 10 steps per epoch: a mask update every step
    state = tx.init(params)
    zeros = []
    for _ in range(3):
        _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        zeros.append(int((~np.asarray(state.masks["Dense_0"]["kernel"])).sum()))
    assert zeros[0] == 0 and 0 < zeros[1] < zeros[2]  # it moved at steps 1 and 2


def test_saliency_scores_see_the_raw_gradients_not_adam_updates():
    # |w * g| keeps entries 0 and 1; Adam's updates (about -lr * sign(g)) would rank like
    # |w| and keep entries 2 and 3. One-shot pruning at step 1 (saliency needs gradients).
    params = {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    grads = {"kernel": jnp.array([[4.0, 3.0], [0.1, 0.1]])}
    c = _config(method="saliency", sparsity=0.5, schedule="one_shot", begin_step=1)
    tx = build.with_pruning(optax.adam(1e-3), _build(c, total_steps=10, params=params))
    state = tx.init(params)
    new = params
    for _ in range(2):
        updates, state = tx.update(grads, state, new)
        new = optax.apply_updates(new, updates)
    mask = np.asarray(pruning.find_prune_state(state).masks["kernel"])
    np.testing.assert_array_equal(mask, [[True, True], [False, False]])
    np.testing.assert_array_equal(np.asarray(new["kernel"])[1], [0.0, 0.0])


def test_per_layer_targets_from_the_config():
    params = {
        "Dense_0": {"kernel": jnp.arange(1.0, 41.0).reshape(8, 5), "bias": jnp.ones(5)},
        "Dense_1": {"kernel": jnp.arange(1.0, 11.0).reshape(5, 2), "bias": jnp.ones(2)},
    }
    c = _config(method="magnitude", sparsity=0.8, schedule="constant")
    c.pruning.layers = {"Dense_0": 0.5}  # Dense_1 follows the section's sparsity (0.8)
    tx = build.with_pruning(optax.sgd(0.0), _build(c, total_steps=10, params=params))
    state = tx.init(params)
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    new = optax.apply_updates(params, updates)
    assert int((np.asarray(new["Dense_0"]["kernel"]) == 0).sum()) == 20
    assert int((np.asarray(new["Dense_1"]["kernel"]) == 0).sum()) == 8
    np.testing.assert_array_equal(np.asarray(new["Dense_1"]["kernel"]).ravel()[-2:], [9.0, 10.0])


class Crash(Exception):
    pass


def test_a_pruned_run_resumes_from_a_crash_bitwise_equal(tmp_path, monkeypatch):
    """The masks live in the optimizer state, so checkpoints carry them: a pruned run that
    crashes mid-schedule and resumes ends bitwise equal to an uninterrupted one."""
    c = _config(method="magnitude", sparsity=0.8, begin_step=4, end_step=18, frequency=4)
    c.checkpoint.every_steps = 8
    ref, _ = train.run(c, None)
    real = build.batches_fn

    def crashing_batches_fn(*args, **kwargs):  # dies before step 13, after the save at 8
        batches = real(*args, **kwargs)

        def wrapped(epoch, start):
            for i, batch in enumerate(batches(epoch, start), start):
                if epoch * STEPS + i + 1 == 13:
                    raise Crash("simulated crash")
                yield batch

        return wrapped

    with monkeypatch.context() as m:
        m.setattr(build, "batches_fn", crashing_batches_fn)
        with pytest.raises(Crash):
            train.run(c, str(tmp_path))
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [8]
    c.resume = True
    resumed, results = train.run(c, str(tmp_path))
    assert results["resumed_from_step"] == 8
    assert_trees_bitwise_equal(resumed.params, ref.params)
    assert_trees_bitwise_equal(
        pruning.find_prune_state(resumed.opt_state), pruning.find_prune_state(ref.opt_state)
    )
    _check_exact(resumed, 0.8)
