import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxopt_models import models, training


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


@pytest.mark.parametrize("name", training.OPTIMIZERS)
@pytest.mark.parametrize("schedule", training.SCHEDULES)
def test_make_optimizer_reduces_loss(name, schedule):
    cfg = {
        "name": name,
        "learning_rate": 0.05,
        "schedule": schedule,
        "warmup_steps": 2,
        "weight_decay": 1e-4,
    }
    tx = training.make_optimizer(cfg, total_steps=30)
    state = _state(tx=tx)
    step = training.make_train_step()
    batch = _batch(16)
    state, first = step(state, batch)
    for _ in range(29):
        state, m = step(state, batch)
    assert float(m["loss"]) < float(first["loss"])


def test_optimizer_errors_name_argument_and_allowed_values():
    with pytest.raises(ValueError, match=r"optimizer.name='rmsprop2'.*allowed values"):
        training.make_optimizer({"name": "rmsprop2", "learning_rate": 0.1})
    for lr in (0.0, -1.0):
        with pytest.raises(ValueError, match="learning_rate"):
            training.make_optimizer({"name": "sgd", "learning_rate": lr})
    with pytest.raises(ValueError, match="schedule.*allowed values"):
        training.make_optimizer({"name": "sgd", "learning_rate": 0.1, "schedule": "zigzag"})


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
    out = training.make_eval_step()(state, _batch())
    assert out["pred"].shape == (4,)


def test_params_fn_is_applied_inside_the_loss():
    state = _state(tx=optax.sgd(0.1))
    zero = lambda p: jax.tree.map(jnp.zeros_like, p)
    step = training.make_train_step(params_fn=zero, donate=False)
    new, m = step(state, _batch())
    assert float(m["loss"]) == pytest.approx(np.log(10), rel=1e-5)  # zero params: uniform


def test_augment_fn_runs_on_the_batch_inside_the_step_with_a_derived_key():
    from jaxopt_models.data import make_augment
    from jaxopt_models.training.steps import augment_images, step_rng

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
    with pytest.raises(TypeError, match="augment_fn configure the default train_step"):
        training.make_train_step(training.train_step, augment_fn=aug)


def _tiny_config(**overrides):
    c = training.default_config()
    c.dataset.name = "digits"
    c.dataset.num_train = 256
    c.dataset.num_test = 100
    c.model.name = "mlp"
    c.model.features = (32,)
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 3
    c.optimizer.learning_rate = 1e-2
    c.progress = False
    for k, v in overrides.items():
        c[k] = v
    return c


def test_train_and_evaluate_writes_results(tmp_path):
    state, results = training.train_and_evaluate(_tiny_config(), str(tmp_path))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    for key in ("test_accuracy", "test_macro_f1", "params", "train_seconds", "config"):
        assert key in on_disk
    assert on_disk["test_accuracy"] == results["test_accuracy"] > 0.5
    assert on_disk["params"] == 64 * 32 + 32 + 32 * 10 + 10
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["epoch"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_train_and_evaluate_with_augmentation_and_its_config_errors():
    c = _tiny_config()
    c.augment.shift = 1  # (flips do not preserve digit labels)
    _, plain = training.train_and_evaluate(_tiny_config(), None)
    _, augmented = training.train_and_evaluate(c, None)
    assert augmented["test_accuracy"] > 0.5
    assert augmented["test_loss"] != plain["test_loss"]
    for field, value, match in (
        ("shift", -1, "config.augment: augment shift must be an int >= 0"),
        ("flip", "yes", "config.augment: augment flip must be True or False"),
        ("mode", "wrap", r"config.augment: augment mode='wrap' is not one of"),
    ):
        bad = _tiny_config(num_epochs=1)
        fields = {"shift": 0, "flip": False, "mode": "edge", field: value}
        bad.augment = ml_collections.ConfigDict(fields)  # (a typed field would refuse "yes")
        with pytest.raises(ValueError, match=match):
            training.train_and_evaluate(bad, None)


def test_train_and_evaluate_is_reproducible():
    _, a = training.train_and_evaluate(_tiny_config(num_epochs=1), None)
    _, b = training.train_and_evaluate(_tiny_config(num_epochs=1), None)
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"]


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("batch_size", 0, "batch_size"),
        ("batch_size", -3, "batch_size"),
        ("num_epochs", 0, "num_epochs"),
    ],
)
def test_bad_config_values(key, value, match):
    with pytest.raises(ValueError, match=match):
        training.train_and_evaluate(_tiny_config(**{key: value}), None)


def test_bad_names_in_config():
    c = _tiny_config()
    c.model.name = "nope"
    with pytest.raises(ValueError, match="model name='nope'.*allowed"):
        training.train_and_evaluate(c, None)
    c = _tiny_config()
    c.dataset.name = "nope"
    with pytest.raises(ValueError, match="dataset name='nope'.*allowed"):
        training.train_and_evaluate(c, None)
    c = _tiny_config()
    c.optimizer.learning_rate = -0.1
    with pytest.raises(ValueError, match="learning_rate"):
        training.train_and_evaluate(c, None)


def test_wrong_input_shape_is_a_clear_error():
    state = _state()  # built for 8x8x1 = 64 features
    step = training.make_train_step(donate=False)
    with pytest.raises(Exception, match="64|shape"):
        step(state, _batch(shape=(5, 5, 1)))


def test_kfold_cross_validate_reports_mean_and_std():
    from jaxopt_models.metrics import kfold_cross_validate

    cv = kfold_cross_validate(_tiny_config(num_epochs=2), k=3)
    assert len(cv["folds"]) == 3
    assert 0.3 < cv["mean"]["accuracy"] <= 1.0 and cv["std"]["accuracy"] >= 0.0
