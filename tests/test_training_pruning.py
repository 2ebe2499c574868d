"""Pruning in the training loop: ``config.pruning`` -> ``pruning.prune`` after the optimizer."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_models import pruning, training
from jaxopt_models.training import loop


def _config(**pruning_fields):
    """Tiny digits run (MLP 64-32-10, 256 examples, batch 32: 8 steps per epoch)."""
    c = training.default_config()
    c.dataset.name = "digits"
    c.dataset.num_train = 256
    c.dataset.num_test = 128
    c.model.features = (32,)
    c.batch_size = 32
    c.eval_batch_size = 128
    c.num_epochs = 3
    c.optimizer.learning_rate = 1e-2
    c.progress = False
    for k, v in pruning_fields.items():
        c.pruning[k] = v
    return c


def _check_exact(state, sparsity):
    """Every kernel: exactly round(s * n) pruned entries, all exactly 0.0; biases dense."""
    masks = training.find_prune_state(state.opt_state).masks
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
def test_loop_reaches_exact_sparsity_with_pruned_weights_exactly_zero(
    method, schedule, optimizer, end_fraction
):
    c = _config(
        method=method, schedule=schedule, sparsity=0.8, frequency=2, end_fraction=end_fraction
    )
    c.optimizer.name = optimizer
    c.optimizer.weight_decay = 1e-3 if optimizer == "adamw" else 0.0
    c.optimizer.learning_rate = 0.1 if optimizer in ("sgd", "momentum") else 1e-2
    state, results = training.train_and_evaluate(c, None)
    _check_exact(state, 0.8)
    kept = sum(n - round(0.8 * n) for n in (64 * 32, 32 * 10))  # exact per layer
    nonzeros = results["pruning"]["prunable"]["nonzeros"]
    # A kept weight may be 0.0 when its score ties at 0 (saliency of a weight without
    # gradient, e.g. from a constant input pixel); magnitude keeps only nonzero weights.
    assert nonzeros == kept if method == "magnitude" else nonzeros <= kept
    assert results["test_accuracy"] > 0.3  # still learns (10 classes)


def test_gradual_schedule_reaches_target_at_end_step_and_keeps_it():
    # 8 steps per epoch; pruning from step 4 to step 12, every 2 steps.
    c = _config(method="magnitude", sparsity=0.75, begin_step=4, end_step=12, frequency=2)
    state, _ = training.train_and_evaluate(c, None)  # 24 steps
    _check_exact(state, 0.75)
    assert float(training.find_prune_state(state.opt_state).sparsity) == pytest.approx(0.75)


def test_global_scope_and_two_by_four_structure():
    state, results = training.train_and_evaluate(
        _config(method="magnitude", sparsity=0.9, scope="global", schedule="one_shot"), None
    )
    info = results["pruning"]["prunable"]
    assert info["params"] - info["nonzeros"] == round(0.9 * info["params"])
    state, _ = training.train_and_evaluate(
        _config(method="magnitude", structure="2:4", structure_axis=0, schedule="one_shot"),
        None,
    )
    masks = training.find_prune_state(state.opt_state).masks
    for name in state.params:  # groups of 4 along the input axis (a multiple of 4 here)
        groups = np.asarray(masks[name]["kernel"]).T.reshape(-1, 4)
        assert np.all(groups.sum(-1) == 2), name
        kernel = np.asarray(state.params[name]["kernel"]).T.reshape(-1, 4)
        assert np.all(kernel[~groups] == 0.0), name


def test_erk_distribution_prunes_the_larger_layer_more():
    state, results = training.train_and_evaluate(
        _config(method="magnitude", distribution="erk", schedule="one_shot", sparsity=0.7), None
    )
    layers = results["pruning"]["layers"]
    assert layers["Dense_0/kernel"]["sparsity"] > layers["Dense_1/kernel"]["sparsity"]
    total = results["pruning"]["prunable"]
    assert total["params"] - total["nonzeros"] == pytest.approx(0.7 * total["params"], abs=2)


def test_results_json_and_printed_table_hold_the_summary(tmp_path, capsys):
    c = _config(method="magnitude", sparsity=0.5, schedule="one_shot")
    state, results = training.train_and_evaluate(c, str(tmp_path))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    info = on_disk["pruning"]
    assert set(info["layers"]) == {
        "Dense_0/bias",
        "Dense_0/kernel",
        "Dense_1/bias",
        "Dense_1/kernel",
    }
    assert info["layers"]["Dense_0/kernel"]["nonzeros"] == 64 * 32 // 2
    assert info["layers"]["Dense_1/bias"]["sparsity"] <= 0.5  # biases are not pruned
    kernels = 64 * 32 + 32 * 10
    assert info["prunable"] == {"params": kernels, "nonzeros": kernels // 2, "sparsity": 0.5}
    nonzeros = sum(int(np.count_nonzero(x)) for x in jax.tree.leaves(state.params))
    assert info["total"]["nonzeros"] == nonzeros
    assert info["total"]["params"] == on_disk["params"] == kernels + 32 + 10
    assert (info["target_sparsity"], info["method"], info["schedule"]) == (
        0.5,
        "magnitude",
        "one_shot",
    )
    assert info == json.loads(json.dumps(results["pruning"]))
    training.print_results(results)
    out = capsys.readouterr().out
    assert "sparsity (kernels)" in out and "50.00%" in out
    assert "Dense_0/kernel" in out and "total" in out


def test_pruning_off_by_default_leaves_the_optimizer_and_results_alone():
    c = _config()
    assert c.pruning.method == "none" and not training.pruning_enabled(c)
    tx = optax.adam(1e-3)
    assert training.with_pruning(tx, c, 100) is tx
    assert training.make_pruning(c, 100) is None
    c.num_epochs = 1
    state, results = training.train_and_evaluate(c, None)
    assert "pruning" not in results
    assert training.find_prune_state(state.opt_state) is None


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("method", "lottery", r"config.pruning.method='lottery' is not known; allowed values"),
        ("sparsity", 1.0, r"config.pruning.sparsity=1.0 must be a number in \[0.0, 1.0\)"),
        ("sparsity", -0.1, r"config.pruning.sparsity=-0.1"),
        ("schedule", "cubic", r"config.pruning.schedule='cubic' is not known; allowed values"),
        ("scope", "net", r"config.pruning.scope='net' is not known"),
        ("structure", "3:2", r"config.pruning.structure='3:2' is not valid"),
        ("structure", "blocks", r"config.pruning.structure='blocks' is not valid"),
        ("distribution", "lognormal", r"config.pruning.distribution='lognormal' is not known"),
        ("frequency", 0, r"config.pruning.frequency=0 must be an int >= 1"),
        ("begin_fraction", 1.5, r"config.pruning.begin_fraction=1.5"),
        ("end_step", 100, r"config.pruning.end_step=100 must be an int in \[0, total_steps - 1"),
        ("begin_step", -1, r"config.pruning.begin_step=-1 must be an int"),
        ("initial_sparsity", 0.95, r"config.pruning.initial_sparsity=0.95 must be <="),
        ("power", 0.0, r"config.pruning.power=0.0 must be a number > 0"),
    ],
)
def test_config_errors_name_the_field(field, value, match):
    c = _config(method="magnitude")
    c.pruning[field] = value
    with pytest.raises(ValueError, match=match):
        training.make_pruning(c, total_steps=100)
    with pytest.raises(ValueError, match=match):  # the loop checks before it trains
        training.train_and_evaluate(c, None)


def test_config_errors_for_combinations():
    c = _config(method="magnitude", layer_sparsity={"Dense_0": 1.5})
    with pytest.raises(ValueError, match=r"config.pruning.layer_sparsity\['Dense_0'\]=1.5"):
        training.make_pruning(c, total_steps=100)
    c = _config(method="magnitude", layer_sparsity={"Dense_0": 0.5}, distribution="erk")
    with pytest.raises(ValueError, match="layer_sparsity needs config.pruning.scope='layer'"):
        training.make_pruning(c, total_steps=100)
    c = _config(method="magnitude", begin_step=60, end_step=40)
    with pytest.raises(ValueError, match="begins at step 60 after it ends at step 40"):
        training.make_pruning(c, total_steps=100)
    c = _config(method="magnitude", begin_fraction=0.8, end_fraction=0.2)
    with pytest.raises(ValueError, match="begin_fraction <= end_fraction"):
        training.make_pruning(c, total_steps=100)
    c = _config(method="magnitude", scope="global", distribution="erk")
    with pytest.raises(ValueError, match="scope='global' needs config.pruning.distribution"):
        training.make_pruning(c, total_steps=100)


def test_schedule_steps_from_fractions_or_steps():
    c = _config(method="magnitude", begin_fraction=0.1, end_fraction=0.6)
    assert training.schedule_steps(c, 1000) == (100, 600)
    c.pruning.begin_step = 5
    assert training.schedule_steps(c, 1000) == (5, 600)
    c.pruning.end_step = 50
    assert training.schedule_steps(c, 1000) == (5, 50)
    c = _config(method="magnitude", begin_fraction=0.5, end_fraction=1.0)
    assert training.schedule_steps(c, 8) == (4, 7)  # capped at the last update


def test_saliency_scores_see_the_raw_gradients_not_adam_updates():
    # |w * g| keeps entries 0 and 1; Adam's updates (about -lr * sign(g)) would rank like
    # |w| and keep entries 2 and 3. One-shot pruning at step 1 (saliency needs gradients).
    params = {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    grads = {"kernel": jnp.array([[4.0, 3.0], [0.1, 0.1]])}
    c = _config(method="saliency", sparsity=0.5, schedule="one_shot", begin_step=1)
    tx = training.with_pruning(optax.adam(1e-3), c, total_steps=10)
    state = tx.init(params)
    new = params
    for _ in range(2):
        updates, state = tx.update(grads, state, new)
        new = optax.apply_updates(new, updates)
    mask = np.asarray(training.find_prune_state(state).masks["kernel"])
    np.testing.assert_array_equal(mask, [[True, True], [False, False]])
    np.testing.assert_array_equal(np.asarray(new["kernel"])[1], [0.0, 0.0])


def test_pruned_run_resumes_from_a_crash_bitwise_equal(tmp_path, monkeypatch):
    """The masks live in the optimizer state, so checkpoints carry them: a pruned run that
    crashes mid-schedule and resumes ends bitwise equal to an uninterrupted one."""
    c = _config(method="magnitude", sparsity=0.8, begin_step=4, end_step=20, frequency=4)
    c.checkpoint.every_steps = 8
    ref, _ = training.train_and_evaluate(c, str(tmp_path / "ref"))
    real = loop.make_train_step

    def crashing_step(**kwargs):  # dies at step 13, after the checkpoint at step 8
        step, calls = real(**kwargs), []

        def run(state, batch):
            calls.append(1)
            if len(calls) > 12:
                raise KeyboardInterrupt("simulated crash")
            return step(state, batch)

        return run

    with monkeypatch.context() as m:
        m.setattr(loop, "make_train_step", crashing_step)
        with pytest.raises(KeyboardInterrupt):
            training.train_and_evaluate(c, str(tmp_path / "run"))
    c.resume = True
    resumed, results = training.train_and_evaluate(c, str(tmp_path / "run"))
    assert results["resumed_from_step"] == 8
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    a, b = training.find_prune_state(resumed.opt_state), training.find_prune_state(ref.opt_state)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    _check_exact(resumed, 0.8)


def test_prune_state_is_found_in_the_optimizer_state():
    params = {"k": jnp.ones((4, 4))}
    tx = optax.chain(optax.adam(1e-3), pruning.prune("magnitude", 0.5))
    assert isinstance(training.find_prune_state(tx.init(params)), pruning.PruneState)
    assert training.find_prune_state(optax.adam(1e-3).init(params)) is None


def test_per_layer_distribution_dict_from_the_config():
    params = {
        "Dense_0": {"kernel": jnp.arange(1.0, 41.0).reshape(8, 5), "bias": jnp.ones(5)},
        "Dense_1": {"kernel": jnp.arange(1.0, 11.0).reshape(5, 2), "bias": jnp.ones(2)},
    }
    c = _config(method="magnitude", sparsity=0.8, schedule="constant")
    c.pruning.layer_sparsity = {"Dense_0": 0.5}  # Dense_1 follows the schedule (0.8)
    tx = training.with_pruning(optax.sgd(0.0), c, total_steps=10)
    state = tx.init(params)
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    new = optax.apply_updates(params, updates)
    assert int((np.asarray(new["Dense_0"]["kernel"]) == 0).sum()) == 20
    assert int((np.asarray(new["Dense_1"]["kernel"]) == 0).sum()) == 8
    np.testing.assert_array_equal(np.asarray(new["Dense_1"]["kernel"]).ravel()[-2:], [9.0, 10.0])
