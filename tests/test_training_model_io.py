"""Tests of saving / loading a trained model's variables (training/model_io.py)."""

import jax
import numpy as np
import pytest

from jaxopt_models import training
from jaxopt_models.models import DeepCNN, get_model


def test_variables_round_trip_exactly_with_every_collection(tmp_path):
    model = DeepCNN(stages=((4,),), hidden=(), num_classes=3)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
    variables = model.init(jax.random.key(3), x)
    stats = jax.tree.map(lambda v: v + 0.5, variables["batch_stats"])  # not the init values
    variables = {"params": variables["params"], "batch_stats": stats}
    path = training.save_variables(str(tmp_path), variables)
    assert path == str(tmp_path / "variables.msgpack")
    template = model.init(jax.random.key(0), x)
    loaded = training.load_variables(str(tmp_path), template)
    assert jax.tree.structure(loaded) == jax.tree.structure(jax.device_get(variables))
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        model.apply(variables, x, train=False), model.apply(loaded, x, train=False)
    )
    assert not (tmp_path / "variables.msgpack.tmp").exists()


def test_another_architecture_or_no_file_fails_loudly(tmp_path):
    x = np.zeros((1, 64), np.float32)
    small = get_model("mlp", features=(8,), num_classes=10)
    training.save_variables(str(tmp_path), small.init(jax.random.key(0), x))
    deeper = get_model("mlp", features=(8, 8), num_classes=10)
    with pytest.raises(ValueError, match="does not hold variables of the expected model"):
        training.load_variables(str(tmp_path), deeper.init(jax.random.key(0), x))
    with pytest.raises(FileNotFoundError, match="no saved model variables at"):
        training.load_variables(str(tmp_path / "nowhere"), small.init(jax.random.key(0), x))
