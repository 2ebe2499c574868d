"""Tests of saving / loading trained model variables (training/model_io.py)."""

import jax
import numpy as np
import pytest

from jaxopt_models import training
from jaxopt_models.data import get_dataset
from jaxopt_models.models import get_model


def _config(features=(8,)):
    c = training.default_config()
    c.model.name = "mlp"
    c.model.features = features
    return c


def test_variables_round_trip_exactly_and_mismatches_fail_loudly(tmp_path):
    ds = get_dataset("digits").subset(num_train=16, num_test=8)
    cfg = _config()
    model = get_model("mlp", features=(8,), num_classes=10)
    variables = model.init(jax.random.key(3), ds.x_train[:1])
    path = training.save_variables(str(tmp_path), variables)
    assert path.endswith("variables.msgpack")
    loaded, rebuilt = training.load_variables(str(tmp_path), cfg, ds.x_train[:1], 10)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        model.apply(variables, ds.x_test), rebuilt.apply(loaded, ds.x_test)
    )
    with pytest.raises(ValueError, match="does not hold variables of model 'mlp'"):
        training.load_variables(str(tmp_path), _config((8, 8)), ds.x_train[:1], 10)
    with pytest.raises(FileNotFoundError, match="no saved model variables"):
        training.load_variables(str(tmp_path / "nowhere"), cfg, ds.x_train[:1], 10)
