import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxopt_models import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 7, 300))
    p[p == 6] = 5  # class 6 never predicted: zero_division handling
    np.testing.assert_array_equal(
        metrics.confusion_matrix(y, p, 7), skm.confusion_matrix(y, p, labels=range(7))
    )
    for avg in ("macro", "micro", "weighted"):
        ours = metrics.precision_recall_f1(y, p, 7, avg)
        prec, rec, f1, _ = skm.precision_recall_fscore_support(
            y, p, labels=range(7), average=avg, zero_division=0
        )
        assert ours["precision"] == pytest.approx(prec)
        assert ours["recall"] == pytest.approx(rec)
        assert ours["f1"] == pytest.approx(f1)
    per = metrics.precision_recall_f1(y, p, 7, None)
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, p, labels=range(7), zero_division=0)
    np.testing.assert_allclose(per["precision"], prec)
    np.testing.assert_allclose(per["f1"], f1)
    np.testing.assert_array_equal(per["support"], sup)


def test_accuracy_with_mask():
    logits = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    labels = jnp.array([1, 1, 0])
    assert float(metrics.accuracy(logits, labels)) == pytest.approx(2 / 3)
    assert float(metrics.accuracy(logits, labels, jnp.array([1, 0, 1]))) == 1.0


def test_errors():
    with pytest.raises(ValueError, match="average"):
        metrics.precision_recall_f1([0, 1], [0, 1], average="harmonic")
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix([0, 5], [0, 1], num_classes=3)

