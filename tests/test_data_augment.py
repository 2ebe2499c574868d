"""Tests of the jittable batch augmentation (data/augment.py)."""

import itertools

import jax
import numpy as np
import pytest

from jaxopt_models.data import make_augment, random_flip, random_shift


def images(n=64, h=6, w=5, c=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, h, w, c)).astype(np.float32)


def shifted_reference(x, dy, dx, s, mode):
    """Example ``x`` (H, W, C) moved by (dy, dx) with NumPy, border as in ``mode``."""
    pad = ((s, s), (s, s), (0, 0))
    p = np.pad(x, pad, mode="edge") if mode == "edge" else np.pad(x, pad)
    h, w = x.shape[:2]
    return p[s - dy : s - dy + h, s - dx : s - dx + w]


@pytest.mark.parametrize("mode", ["edge", "constant"])
def test_every_example_is_a_shift_of_itself_and_every_offset_occurs(mode):
    s = 1
    x = images(n=400)
    out = np.asarray(random_shift(jax.random.key(3), x, s, mode=mode))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for xi, oi in zip(x, out, strict=True):
        hits = [
            (dy, dx)
            for dy, dx in itertools.product(range(-s, s + 1), repeat=2)
            if np.array_equal(oi, shifted_reference(xi, dy, dx, s, mode))
        ]
        assert len(hits) == 1, hits  # random data: exactly one offset explains each output
        seen.add(hits[0])
    assert seen == set(itertools.product(range(-s, s + 1), repeat=2))


def test_shift_of_one_dimensional_signals_and_zero_shift():
    x = np.random.default_rng(1).standard_normal((50, 12, 1)).astype(np.float32)
    out = np.asarray(random_shift(jax.random.key(0), x, 2))
    for xi, oi in zip(x, out, strict=True):
        p = np.pad(xi, ((2, 2), (0, 0)), mode="edge")
        assert any(np.array_equal(oi, p[k : k + 12]) for k in range(5))
    np.testing.assert_array_equal(random_shift(jax.random.key(0), x, 0), x)


def test_flip_flips_about_half_and_leaves_the_rest():
    x = images(n=1000, seed=2)
    out = np.asarray(random_flip(jax.random.key(5), x))
    flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x, strict=True)]
    kept = [np.array_equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 400 < sum(flipped) < 600
    vertical = np.asarray(random_flip(jax.random.key(5), x, axis=1))
    assert any(np.array_equal(o, xi[::-1]) for o, xi in zip(vertical, x, strict=True))


def test_make_augment_is_jittable_deterministic_and_keyed():
    x = images(n=32)
    assert make_augment() is None
    aug = make_augment(shift=2, flip=True)
    a = np.asarray(aug(jax.random.key(1), x))
    b = np.asarray(jax.jit(aug)(jax.random.key(1), x))
    np.testing.assert_array_equal(a, b)
    c = np.asarray(aug(jax.random.key(2), x))
    assert not np.array_equal(a, c)
    assert a.shape == x.shape


def test_errors_name_the_argument_and_allowed_values():
    x = images(n=4)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_shift must be an int >= 0"):
            random_shift(jax.random.key(0), x, bad)
        with pytest.raises(ValueError, match="augment shift must be an int >= 0"):
            make_augment(shift=bad)
    with pytest.raises(ValueError, match=r"mode='wrap' is not one of \('edge', 'constant'\)"):
        random_shift(jax.random.key(0), x, 1, mode="wrap")
    with pytest.raises(ValueError, match="augment flip must be True or False"):
        make_augment(flip="yes")
    with pytest.raises(ValueError, match="must be a spatial axis"):
        random_flip(jax.random.key(0), x, axis=0)
    with pytest.raises(ValueError, match="must be a spatial axis"):
        random_flip(jax.random.key(0), x, axis=-1)
    with pytest.raises(ValueError, match="out of range"):
        random_flip(jax.random.key(0), x, axis=4)
    with pytest.raises(ValueError, match="at least one spatial axis"):
        random_shift(jax.random.key(0), x[:, 0, 0], 1)
