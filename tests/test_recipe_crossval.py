"""Tests of the cross-validation recipe (recipes/crossval.py)."""

import json

import numpy as np
import pytest
from _helpers import synthetic_dataset, use_compilation_cache

from jaxopt_models.recipes import build, crossval

use_compilation_cache()


def tiny_config(k=3):
    c = crossval.default_config()
    c.dataset.num_train = 150
    c.dataset.num_test = 50
    c.model.features = (16,)
    c.batch_size = 10
    c.eval_batch_size = 50
    c.num_epochs = 2
    c.optimizer.learning_rate = 1e-2
    c.plots = False
    c.crossval.k = k
    return c


def test_each_fold_trains_on_the_rest_and_the_summary_is_mean_and_sample_std(tmp_path, monkeypatch):
    ds = synthetic_dataset(n_train=150, n_test=30)
    seen = []
    real = crossval.train

    def spy(config, data, workdir, **kwargs):
        seen.append(data)
        return real(config, data, workdir, **kwargs)

    monkeypatch.setattr(crossval, "train", spy)
    cv = crossval.run(tiny_config(), str(tmp_path), dataset=ds)
    assert cv["k"] == 3 and len(cv["folds"]) == 3 and len(seen) == 3
    # the held-out folds partition the training split; the test split is never used
    held_out = [set(d.x_test[:, 0]) for d in seen]
    assert set().union(*held_out) == set(ds.x_train[:, 0])
    assert sum(len(h) for h in held_out) == 150 and sorted(map(len, held_out)) == [50, 50, 50]
    for d, h in zip(seen, held_out, strict=True):
        assert set(d.x_train[:, 0]) == set(ds.x_train[:, 0]) - h and len(d.x_val) == 0
    accs = np.array([f["accuracy"] for f in cv["folds"]])
    assert np.all((accs > 0.4) & (accs <= 1.0))
    assert accs.std() > 0  # (so a wrong spread below would show)
    assert cv["mean"]["accuracy"] == pytest.approx(accs.mean(), rel=1e-12)
    assert cv["std"]["accuracy"] == pytest.approx(accs.std(ddof=1), rel=1e-12)
    assert json.loads((tmp_path / "cv.json").read_text())["mean"] == cv["mean"]
    for i in range(3):
        assert (tmp_path / f"fold_{i}" / "results.json").exists()


def test_crossval_needs_no_validation_split_and_a_valid_k():
    c = tiny_config()
    c.dataset.validation_fraction = 0.1
    with pytest.raises(build.ConfigError, match=r"validation_fraction=0.1 must be 0"):
        crossval.run(c, None)
    with pytest.raises(build.ConfigError, match=r"k=1 must be an int with 2 <= k <= 150"):
        crossval.run(tiny_config(k=1), None)
