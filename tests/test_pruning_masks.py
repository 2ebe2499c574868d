"""Tests for jaxopt_models.pruning.masks: exact sparsity, structures, thresholds, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxopt_models.pruning import (
    apply_masks,
    channels,
    check_masks,
    compute_masks,
    magnitude_scores,
    n_by_m,
)

SETTINGS = settings(max_examples=25, deadline=None)


def canonical_f64(scores) -> np.ndarray:
    """float64 copy with NaN -> -inf and float32 subnormals -> 0 (as the hardware compares)."""
    x = np.asarray(scores, np.float32).astype(np.float64)
    x = np.where(np.isnan(x), -np.inf, x)
    return np.where(np.abs(x) < np.finfo(np.float32).tiny, 0.0, x)


def ref_prune_lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """float64 reference: boolean 'pruned' of the k lowest (ties: lowest flat index first)."""
    flat = canonical_f64(scores).ravel()
    order = np.lexsort((np.arange(flat.size), flat))
    pruned = np.zeros(flat.size, bool)
    pruned[order[:k]] = True
    return pruned.reshape(np.shape(scores))


# Small value sets force many ties; wide floats (subnormals, infinities) exercise the search.
values = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
    st.floats(width=32),
)
sparsities = st.floats(0.0, 1.0, exclude_max=True)
# A few fixed layouts: every new set of shapes costs a compilation, values are what vary.
LAYOUTS = [((1, 1),), ((6, 7),), ((40, 25),), ((6, 7), (1, 3), (40, 25))]


@st.composite
def score_trees(draw, layouts=LAYOUTS):
    layout = draw(st.sampled_from(layouts))
    tree = {}
    for i, shape in enumerate(layout):
        tree[f"layer{i}"] = {
            "kernel": draw(hnp.arrays(np.float32, shape, elements=values)),
            "bias": np.zeros(shape[-1], np.float32),
        }
    return tree


@SETTINGS
@given(tree=score_trees(), sparsity=sparsities)
def test_layer_scope_exact_sparsity_matches_reference(tree, sparsity):
    masks = compute_masks(tree, sparsity)
    for name, leaf in tree.items():
        kernel = leaf["kernel"]
        k = round(sparsity * kernel.size)
        got = np.asarray(masks[name]["kernel"])
        assert (~got).sum() == k
        np.testing.assert_array_equal(~got, ref_prune_lowest(kernel, k))
        assert np.asarray(masks[name]["bias"]).all()


@SETTINGS
@given(tree=score_trees(), sparsity=sparsities)
def test_global_scope_exact_sparsity_matches_reference(tree, sparsity):
    masks = compute_masks(tree, sparsity, scope="global")
    names = sorted(tree)  # dict leaves flatten in sorted-key order
    flat = np.concatenate([tree[n]["kernel"].ravel() for n in names])
    k = round(sparsity * flat.size)
    got = np.concatenate([np.asarray(masks[n]["kernel"]).ravel() for n in names])
    assert (~got).sum() == k
    np.testing.assert_array_equal(~got, ref_prune_lowest(flat, k))


_jit_compute_masks = jax.jit(lambda tree, s: compute_masks(tree, s))


@SETTINGS
@given(tree=score_trees(layouts=LAYOUTS[-1:]), sparsity=sparsities)
def test_traced_sparsity_under_jit_equals_static(tree, sparsity):
    static = compute_masks(tree, sparsity)
    traced = _jit_compute_masks(tree, jnp.float32(sparsity))
    for name in tree:
        k_static = (~np.asarray(static[name]["kernel"])).sum()
        k_traced = (~np.asarray(traced[name]["kernel"])).sum()
        # float32 rounding of sparsity * n may differ from Python's float64 at .5 boundaries.
        assert abs(int(k_static) - int(k_traced)) <= 1
        k = int(k_traced)
        np.testing.assert_array_equal(
            ~np.asarray(traced[name]["kernel"]), ref_prune_lowest(tree[name]["kernel"], k)
        )


@SETTINGS
@given(tree=score_trees(), sparsity=sparsities, scope=st.sampled_from(["layer", "global"]))
def test_masks_are_deterministic(tree, sparsity, scope):
    a = compute_masks(tree, sparsity, scope=scope)
    b = compute_masks({k: dict(v) for k, v in tree.items()}, sparsity, scope=scope)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_large_layer_with_many_zero_ties_is_exact():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((400, 300)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0.0  # a big atom of zeros, as after earlier pruning
    for sparsity in (0.3, 0.6, 0.61, 0.9):
        k = round(sparsity * w.size)
        got = np.asarray(compute_masks({"k": np.abs(w)}, sparsity)["k"])
        np.testing.assert_array_equal(~got, ref_prune_lowest(np.abs(w), k))


def test_nan_scores_are_pruned_first_and_negative_zero_ties_with_zero():
    scores = {"k": np.array([[1.0, np.nan, -0.0, 0.0, 2.0, -1.0]], np.float32)}
    masks = np.asarray(compute_masks(scores, 0.5)["k"])
    # Order: nan (as -inf), -1, then the tie -0.0 / 0.0 broken by index (-0.0 first).
    np.testing.assert_array_equal(masks, [[True, False, False, True, True, False]])


def test_default_filter_keeps_biases_norms_and_embeddings_dense():
    params = {
        "Dense_0": {"kernel": jnp.arange(12.0).reshape(3, 4), "bias": jnp.arange(4.0)},
        "LayerNorm_0": {"scale": jnp.arange(4.0)},
        "Embed_0": {"embedding": jnp.arange(12.0).reshape(6, 2)},
    }
    masks = compute_masks(magnitude_scores(params), 0.5)
    assert int((~masks["Dense_0"]["kernel"]).sum()) == 6
    for leaf in (
        masks["Dense_0"]["bias"],
        masks["LayerNorm_0"]["scale"],
        masks["Embed_0"]["embedding"],
    ):
        assert bool(leaf.all())


def test_custom_filter_fn():
    params = {"a": jnp.arange(10.0), "b": jnp.arange(10.0).reshape(2, 5)}
    masks = compute_masks(params, 0.5, filter_fn=lambda path, leaf: path == "a")
    assert int((~masks["a"]).sum()) == 5
    assert bool(masks["b"].all())


def test_threshold_mode_prunes_below_threshold():
    w = jnp.array([[0.1, -0.3, 0.05], [0.2, -0.01, 1.0]])
    masks = compute_masks({"k": jnp.abs(w)}, threshold=0.1)
    np.testing.assert_array_equal(masks["k"], np.abs(np.asarray(w)) >= 0.1)


def test_threshold_mode_with_channels():
    w = jnp.array([[1.0, 0.1, 3.0], [1.0, 0.1, -3.0]])
    masks = compute_masks({"k": jnp.abs(w)}, threshold=0.5, structure=channels(norm="l1"))
    np.testing.assert_array_equal(masks["k"], [[True, False, True], [True, False, True]])


@SETTINGS
@given(
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 3)]),
    rows=st.sampled_from([1, 5]),
    groups=st.sampled_from([1, 3]),
    axis=st.sampled_from([0, -1]),
    data=st.data(),
)
def test_n_by_m_keeps_exactly_n_per_group(nm, rows, groups, axis, data):
    n, m = nm
    shape = (groups * m, rows) if axis == 0 else (rows, groups * m)
    scores = data.draw(hnp.arrays(np.float32, shape, elements=values))
    mask = np.asarray(compute_masks({"k": scores}, 0.5, structure=n_by_m(n, m, axis=axis))["k"])
    moved = np.moveaxis(mask, axis, -1).reshape(-1, m)
    np.testing.assert_array_equal(moved.sum(-1), n)
    # Reference: in each group prune the m - n lowest (ties: lowest index first).
    s = np.moveaxis(scores, axis, -1).reshape(-1, m)
    for row_s, row_m in zip(s, moved, strict=True):
        np.testing.assert_array_equal(~row_m, ref_prune_lowest(row_s, m - n))


def test_n_by_m_string_and_zero_sparsity_layer_stays_dense():
    scores = {"k": np.arange(16.0).reshape(2, 8)}
    mask = compute_masks(scores, 0.5, structure="2:4")["k"]
    assert int(mask.sum()) == 8
    assert bool(compute_masks(scores, 0.0, structure="2:4")["k"].all())


@pytest.mark.parametrize("norm", ["l1", "l2"])
@SETTINGS
@given(
    shape=st.sampled_from([(1, 1, 1), (3, 2, 4), (2, 5, 12)]), sparsity=sparsities, data=st.data()
)
def test_channel_pruning_removes_whole_filters_by_norm(norm, shape, sparsity, data):
    scores = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-100, 100, width=32)))
    scores = np.where(np.abs(scores) < 1e-30, 0.0, scores).astype(np.float32)
    mask = np.asarray(compute_masks({"k": scores}, sparsity, structure=channels(norm=norm))["k"])
    n_ch = shape[-1]
    k = round(sparsity * n_ch)
    per_channel = mask.reshape(-1, n_ch)
    assert (per_channel.all(0) | ~per_channel.any(0)).all()  # whole channels
    flat = np.abs(scores.reshape(-1, n_ch).astype(np.float64))
    norms = flat.sum(0) if norm == "l1" else np.sqrt((flat**2).sum(0))
    expected = ref_prune_lowest(norms.astype(np.float32), k)
    np.testing.assert_array_equal(~per_channel[0], expected)


def test_channel_axis_zero():
    w = np.array([[5.0, 5.0], [0.1, 0.1], [3.0, 3.0]], np.float32)
    mask = np.asarray(compute_masks({"k": w}, 1 / 3, structure=channels(axis=0))["k"])
    np.testing.assert_array_equal(mask, [[True, True], [False, False], [True, True]])


def test_per_leaf_sparsity_pytree():
    scores = {"a": np.arange(10.0).reshape(2, 5), "b": np.arange(20.0).reshape(4, 5)}
    masks = compute_masks(scores, {"a": 0.2, "b": 0.5})
    assert int((~masks["a"]).sum()) == 2
    assert int((~masks["b"]).sum()) == 10


def test_erk_and_dict_distributions_in_compute_masks():
    scores = {
        "Dense_0": {"kernel": np.random.rand(64, 32)},
        "Dense_1": {"kernel": np.random.rand(32, 4)},
    }
    masks = compute_masks(scores, 0.8, distribution={"Dense_1": 0.25})
    assert int((~masks["Dense_1"]["kernel"]).sum()) == 32
    assert int((~masks["Dense_0"]["kernel"]).sum()) == round(0.8 * 64 * 32)
    erk = compute_masks(scores, 0.8, distribution="erk")
    total = sum(int((~m).sum()) for m in jax.tree.leaves(erk))
    assert abs(total - 0.8 * (64 * 32 + 32 * 4)) <= 2


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_raises(bad):
    with pytest.raises(ValueError, match="sparsity must be in \\[0, 1\\)"):
        compute_masks({"k": np.ones((2, 2))}, bad)


def test_invalid_arguments_raise_clear_errors():
    scores = {"k": np.ones((4, 6)), "v": np.ones(6)}
    with pytest.raises(ValueError, match="n must satisfy 1 <= n <= m"):
        n_by_m(5, 4)
    with pytest.raises(ValueError, match="not a multiple of m=4"):
        compute_masks(scores, 0.5, structure=n_by_m(2, 4))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        compute_masks(scores, 0.5, structure=channels(), filter_fn=lambda p, x: True)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        compute_masks(scores, 0.5, structure=n_by_m(1, 2, axis=2))
    with pytest.raises(ValueError, match="scope must be one of"):
        compute_masks(scores, 0.5, scope="model")
    with pytest.raises(ValueError, match="unstructured sparsity only"):
        compute_masks(scores, 0.5, scope="global", structure=channels())
    with pytest.raises(ValueError, match="not both"):
        compute_masks(scores, 0.5, threshold=0.1)
    with pytest.raises(ValueError, match="got neither"):
        compute_masks(scores)
    with pytest.raises(ValueError, match="structure"):
        compute_masks(scores, 0.5, structure="3-4")
    with pytest.raises(ValueError, match="scores' structure"):
        compute_masks(scores, {"k": 0.5})


def test_apply_masks_exact_zero_and_dtype():
    params = {"k": jnp.array([[-1.5, 2.0], [3.0, -4.0]], jnp.bfloat16), "b": jnp.ones(2)}
    masks = {"k": jnp.array([[False, True], [True, False]]), "b": None}
    out = apply_masks(params, masks)
    assert out["k"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out["k"], np.float32), [[0.0, 2.0], [3.0, 0.0]])
    assert not np.signbit(np.asarray(out["k"], np.float32)).any()  # +0.0, not -0.0
    np.testing.assert_array_equal(out["b"], params["b"])


def test_mask_tree_mismatch_raises():
    params = {"k": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match="does not match params tree"):
        apply_masks(params, {"k": jnp.ones((2, 2), bool)})
    with pytest.raises(ValueError, match="has shape \\(3,\\)"):
        check_masks(params, {"k": jnp.ones((2, 2), bool), "b": jnp.ones(3, bool)})
