"""Tests for jaxopt_models.pruning.schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models.pruning import constant, one_shot, polynomial


def ref_polynomial(t, final, begin, end, initial, power, frequency):
    """float64 Zhu & Gupta reference."""
    if t < begin:
        return 0.0
    if t >= end:
        return final
    elapsed = ((t - begin) // frequency) * frequency
    return final + (initial - final) * (1.0 - elapsed / (end - begin)) ** power


@settings(max_examples=30, deadline=None)
@given(
    final=st.floats(0.0, 0.99),
    begin=st.integers(0, 50),
    length=st.integers(1, 500),
    initial_frac=st.floats(0.0, 1.0),
    power=st.sampled_from([1.0, 2.0, 3.0]),
    frequency=st.integers(1, 50),
    t=st.integers(0, 700),
)
def test_polynomial_matches_reference(final, begin, length, initial_frac, power, frequency, t):
    initial = final * initial_frac
    s = polynomial(final, begin, begin + length, initial, power, frequency)
    expected = ref_polynomial(t, final, begin, begin + length, initial, power, frequency)
    assert float(s(t)) == pytest.approx(expected, abs=1e-6)


def test_polynomial_changes_only_every_frequency_steps_and_is_monotone():
    s = jax.jit(polynomial(0.9, begin_step=10, end_step=110, frequency=10))
    values = np.array([float(s(t)) for t in range(130)])
    changes = np.nonzero(np.diff(values))[0] + 1
    assert set(changes) <= set(range(10, 111, 10))
    assert (np.diff(values) >= 0).all()
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.9)
    assert s(jnp.int32(5)).dtype == jnp.float32


def test_polynomial_cubic_value():
    s = polynomial(0.9, begin_step=0, end_step=1000, frequency=100)
    assert float(s(100)) == pytest.approx(0.9 - 0.9 * 0.9**3, abs=1e-6)


def test_one_shot_and_constant():
    s = one_shot(0.8, step=5)
    assert [float(s(t)) for t in (0, 4)] == [0.0, 0.0]
    assert float(s(5)) == pytest.approx(0.8) and float(s(10**6)) == pytest.approx(0.8)
    c = constant(0.3)
    assert float(c(0)) == pytest.approx(0.3) and float(jax.jit(c)(7)) == pytest.approx(0.3)


def test_begin_equal_to_end_is_one_shot():
    s = polynomial(0.5, begin_step=4, end_step=4)
    assert float(s(3)) == 0.0 and float(s(4)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(final=1.0, begin_step=0, end_step=10), "final must be in"),
        (dict(final=0.5, begin_step=10, end_step=5), "end_step must be >="),
        (dict(final=0.5, begin_step=0, end_step=10, frequency=0), "frequency must be >= 1"),
        (dict(final=0.5, begin_step=0, end_step=10, initial=0.6), "initial must be <="),
        (dict(final=0.5, begin_step=0, end_step=10, power=0.0), "power must be > 0"),
        (dict(final=0.5, begin_step=-1, end_step=10), "begin_step must be >= 0"),
    ],
)
def test_polynomial_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        polynomial(**kwargs)


def test_schedule_validation():
    with pytest.raises(ValueError, match="sparsity must be in"):
        constant(-0.1)
    with pytest.raises(ValueError, match="sparsity must be in"):
        one_shot(1.0)
    with pytest.raises(TypeError, match="step must be an int"):
        one_shot(0.5, step=2.5)
