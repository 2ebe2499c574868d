"""Tests for the sort-free exact selection in jaxopt_models.pruning._select."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxopt_models.pruning import _select

TINY = np.finfo(np.float32).tiny


def reference(groups, ks):
    """float64 reference: the k lowest per group are dropped, ties by lowest index first."""
    out = []
    for arrays, k in zip(groups, ks, strict=True):
        flat = np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays]).astype(
            np.float64
        )
        flat = np.where(np.isnan(flat), -np.inf, flat)
        flat = np.where(np.abs(flat) < TINY, 0.0, flat)
        order = np.lexsort((np.arange(flat.size), flat))
        sel = np.zeros(flat.size, bool)
        sel[order[:k]] = True
        out.append(sel)
    return out


@jax.jit
def run(a, b, c, ks):
    groups = [[_select.canonical(a), _select.canonical(b)], [_select.canonical(c)]]
    return _select.drop_bottom_k(groups, ks)


values = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 3.0]),
    st.floats(width=32),  # includes nan, +-inf and subnormals
    st.floats(-10, 10, width=32),
)


@settings(max_examples=40, deadline=None)
@given(
    a=hnp.arrays(np.float32, (5, 7), elements=values),
    b=hnp.arrays(np.float32, (3,), elements=values),
    c=hnp.arrays(np.float32, (64,), elements=values),
    fa=st.floats(0, 1),
    fc=st.floats(0, 1),
)
def test_drop_bottom_k_matches_reference_across_groups(a, b, c, fa, fc):
    ks = [round(fa * 38), round(fc * 64)]
    got = run(a, b, c, jnp.asarray(ks, jnp.int32))
    want = reference([[a, b], [c]], ks)
    got_flat = [~np.concatenate([np.asarray(x).ravel() for x in g]) for g in got]
    for g, w, k in zip(got_flat, want, ks, strict=True):
        assert g.sum() == k
        np.testing.assert_array_equal(g, w)


def test_key_roundtrip_and_order():
    x = np.array([-np.inf, -3.5, -TINY, 0.0, TINY, 1e-20, 2.0, np.inf], np.float32)
    keys = np.asarray(_select.to_key(jnp.asarray(x)))
    assert (np.diff(keys.astype(np.int64)) > 0).all()
    np.testing.assert_array_equal(_select.from_key(jnp.asarray(keys), jnp.float32), x)


def test_large_atoms_and_heavy_tails():
    rng = np.random.default_rng(0)
    lognormal = rng.lognormal(0, 4, 50_000).astype(np.float32)
    atom = np.where(rng.random(50_000) < 0.7, 0.0, rng.standard_normal(50_000)).astype(np.float32)
    ints = rng.integers(0, 3, 50_000).astype(np.float32)
    f = jax.jit(lambda x, k: ~_select.drop_bottom_k([[_select.canonical(x)]], k[None])[0][0])
    for x in (lognormal, atom, ints):
        for frac in (0.01, 0.5, 0.69, 0.7, 0.71, 0.99):
            k = round(frac * x.size)
            np.testing.assert_array_equal(np.asarray(f(x, jnp.int32(k))), reference([[x]], [k])[0])


@jax.jit
def run_blocks(a, b, ks):
    return _select.drop_bottom_k([[_select.canonical(a), _select.canonical(b)]], ks)


@settings(max_examples=25, deadline=None)
@given(
    a=hnp.arrays(np.float32, (20, 30), elements=st.sampled_from([0.0, 1.0, 2.0])),
    b=hnp.arrays(np.float32, (500,), elements=st.sampled_from([0.0, 1.0, 2.0])),
    frac=st.floats(0, 1),
)
def test_ties_straddling_blocks_and_arrays(a, b, frac):
    k = round(frac * (a.size + b.size))
    (got,) = run_blocks(a, b, jnp.asarray([k], jnp.int32))
    got = ~np.concatenate([np.asarray(x).ravel() for x in got])
    np.testing.assert_array_equal(got, reference([[a, b]], [k])[0])
