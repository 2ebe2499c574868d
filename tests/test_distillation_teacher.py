"""Tests of the frozen teacher and the per-example distillation loss (distillation/teacher.py)."""

import jax
import numpy as np
import optax
import pytest

from jaxopt_models import distillation, training
from jaxopt_models.distillation import Teacher, make_distill_loss, teacher_logits
from jaxopt_models.models import MLP

X = np.random.default_rng(0).normal(size=(37, 8)).astype(np.float32)


def teacher() -> Teacher:
    model = MLP(features=(16,), num_classes=5)
    return Teacher(model.apply, model.init(jax.random.key(0), X[:1]))


def test_the_teacher_is_its_model_in_inference_mode():
    t = teacher()
    np.testing.assert_array_equal(t(X), t.apply_fn(t.variables, X, train=False))
    state = training.create_train_state(
        MLP(features=(16,), num_classes=5), jax.random.key(1), X[:1], optax.adam(1e-3)
    )
    from_state = Teacher.from_state(state)
    assert set(from_state.variables) == {"params"}  # no optimizer state
    np.testing.assert_array_equal(from_state(X), state.apply_fn(state.variables, X))


@pytest.mark.parametrize("batch_size", [1, 10, 37, 100])
def test_teacher_logits_match_one_full_pass_whatever_the_batch_size(batch_size):
    t = teacher()
    calls = []

    def counting_apply(variables, x, train):
        calls.append(x.shape)
        return t.apply_fn(variables, x, train=train)

    logits = teacher_logits(Teacher(counting_apply, t.variables), X, batch_size=batch_size)
    assert logits.shape == (37, 5) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, t(X), rtol=1e-6, atol=1e-6)
    assert calls == [(batch_size, 8)]  # the last batch is padded: one trace, one compile


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_teacher_logits_refuse_a_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match=f"batch_size={batch_size!r} must be a positive int"):
        teacher_logits(teacher(), X, batch_size=batch_size)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.9), (2.0, 0.0), (3.0, 1.0)])
def test_kl_loss_matches_a_float64_reference(temperature, alpha):
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 6, 5)) * 3
    y = rng.integers(0, 5, 6)
    got = make_distill_loss("kl", temperature=temperature, alpha=alpha)(
        s.astype(np.float32), t.astype(np.float32), y
    )
    p_t = np.exp(_log_softmax(t / temperature))
    kl = (p_t * (_log_softmax(t / temperature) - _log_softmax(s / temperature))).sum(-1)
    ce = -_log_softmax(s)[np.arange(6), y]
    want = alpha * temperature**2 * kl + (1 - alpha) * ce
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)
    direct = distillation.distillation_loss(s, t, y, temperature=temperature, alpha=alpha)
    np.testing.assert_allclose(got, direct, rtol=1e-6)


def test_mse_loss_matches_a_float64_reference():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(2, 4, 5))
    y = np.array([0, 1, 2, 3])
    got = make_distill_loss("mse", temperature=1.0, alpha=0.25)(
        s.astype(np.float32), t.astype(np.float32), y
    )
    mse = distillation.mse_logits_loss(s.astype(np.float32), t.astype(np.float32))
    ce = -_log_softmax(s)[np.arange(4), y]
    np.testing.assert_allclose(got, 0.25 * np.asarray(mse, np.float64) + 0.75 * ce, rtol=1e-5)
    pure = make_distill_loss("mse", temperature=1.0, alpha=1.0)(s, t, y)
    np.testing.assert_allclose(pure, mse, rtol=1e-6)
    assert (
        float(np.asarray(make_distill_loss("mse", temperature=1.0, alpha=1.0)(s, s, y)).max()) == 0
    )


def test_make_distill_loss_errors_name_the_argument():
    with pytest.raises(
        ValueError, match=r"kind='l2' is not known; allowed values: \('kl', 'mse'\)"
    ):
        make_distill_loss("l2", temperature=1.0, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        make_distill_loss(temperature=0.0, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        make_distill_loss(temperature=1.0, alpha=1.01)
