"""Tests of the held-out splits (data/splits.py): the validation split and k folds."""

import numpy as np
import pytest

from jaxopt_models.data import kfold_indices, validation_split


@pytest.mark.parametrize("n,fraction,n_val", [(1000, 0.1, 100), (23, 0.2, 5), (10, 0.01, 1)])
def test_validation_split_is_a_seeded_disjoint_cover(n, fraction, n_val):
    tr, va = validation_split(n, fraction, seed=3)
    assert len(va) == n_val and len(tr) == n - n_val
    assert not set(tr) & set(va)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(n))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)  # sorted
    again, other = validation_split(n, fraction, seed=3), validation_split(n, fraction, seed=4)
    np.testing.assert_array_equal(again[1], va)
    assert not np.array_equal(other[1], va)


def test_validation_split_of_zero_holds_out_nothing():
    tr, va = validation_split(7, 0.0)
    np.testing.assert_array_equal(tr, np.arange(7))
    assert va.shape == (0,)


@pytest.mark.parametrize("fraction", [1.0, -0.1, True, "0.1"])
def test_validation_split_refuses_bad_fractions(fraction):
    with pytest.raises(ValueError, match=r"validation fraction=.* must be a number in \[0, 1\)"):
        validation_split(10, fraction)
    with pytest.raises(ValueError, match="leaves none to train on"):
        validation_split(1, 0.5)


@pytest.mark.parametrize("n,k", [(23, 5), (10, 2), (6, 6)])
def test_kfold_indices_partition_the_examples(n, k):
    folds = kfold_indices(n, k, seed=1)
    assert len(folds) == k
    val = np.concatenate([v for _, v in folds])
    np.testing.assert_array_equal(np.sort(val), np.arange(n))
    sizes = sorted(len(v) for _, v in folds)
    assert sizes[-1] - sizes[0] <= 1  # as even as possible
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == n
    assert not np.array_equal(kfold_indices(n, k, seed=2)[0][1], folds[0][1]) or k == n


@pytest.mark.parametrize("k", [1, 11, 2.0, True])
def test_kfold_indices_refuses_bad_k(k):
    with pytest.raises(ValueError, match=r"k=.* must be an int with 2 <= k <= 10"):
        kfold_indices(10, k)
