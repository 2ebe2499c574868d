"""Tests for jaxopt_models.compression.slim (structural slimming after channel pruning)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models import models, pruning
from jaxopt_models.compression import layer_chain, rebuild_by_widths, slim


def _init(model, x, seed=0):
    v = jax.jit(model.init)(jax.random.key(seed), x)
    params = v["params"]
    state = {k: v[k] for k in v if k != "params"}
    return params, state


def _perturb(params, state, seed=1):
    """Non-zero biases / BN parameters and statistics, so constants are not trivially 0."""
    rng = np.random.default_rng(seed)
    noise = lambda p, scale: p + jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype)
    params = jax.tree.map(lambda p: noise(p, 0.2) if p.ndim == 1 else p, params)
    if "batch_stats" in state:
        stats = jax.tree.map(
            lambda v: v + jnp.abs(noise(jnp.zeros_like(v), 0.5)), state["batch_stats"]
        )
        state = {"batch_stats": stats}
    return params, state


def _channel_masks(params, fraction):
    """Masks pruning the ``fraction`` of lowest-L2-norm units of every hidden kernel."""
    chain = layer_chain(params)
    masks = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
    for layer in chain[:-1]:
        k = np.asarray(params[layer]["kernel"])
        norms = np.linalg.norm(k.reshape(-1, k.shape[-1]), axis=0)
        pruned = np.argsort(norms, kind="stable")[: int(round(fraction * k.shape[-1]))]
        masks[layer]["kernel"][..., pruned] = False
    return masks


def _masked_out(model, params, state, masks, x):
    return model.apply({"params": pruning.apply_masks(params, masks), **state}, x)


def _slim_out(s, x):
    return s.model.apply({"params": s.params, **s.model_state}, x)


def _size(tree):
    return sum(a.size for a in jax.tree.leaves(tree))


X_IMG = jax.random.normal(jax.random.key(7), (3, 16, 16, 1))

MODELS = {
    "mlp": lambda: models.MLP(features=(64, 32)),
    "lenet5": lambda: models.lenet5(),
    "lenet5_caffe": lambda: models.lenet5_caffe(),
    "deep_cnn": lambda: models.DeepCNN(stages=((8, 8), (16,)), hidden=(24,)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_slim_matches_masked_model_and_shrinks(name):
    model = MODELS[name]()
    params, state = _perturb(*_init(model, X_IMG))
    masks = _channel_masks(params, 0.5)
    ref = _masked_out(model, params, state, masks, X_IMG)
    s = slim(model, params, masks, model_state=state)
    out = _slim_out(s, X_IMG)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    assert _size(s.params) < _size(params)
    assert type(s.model) is type(model)
    # Every hidden layer lost at least the units whose constant output could be dropped.
    chain = layer_chain(params)
    for layer in chain[:-1]:
        width = params[layer]["kernel"].shape[-1]
        assert 1 <= len(s.kept[layer]) <= width
        assert s.params[layer]["kernel"].shape[-1] == len(s.kept[layer])
    # Masks are sliced like the params.
    jax.tree.map(lambda m, p: np.testing.assert_equal(m.shape, p.shape), s.masks, s.params)


def test_dense_consumers_fold_constants_of_dead_units():
    """Kernel-pruned units with a positive bias feed a constant: removed, folded into the bias."""
    model = models.MLP(features=(16, 8))
    params, _ = _init(model, X_IMG)
    params = jax.tree.map(lambda p: p + 0.5 if p.ndim == 1 else p, params)  # all biases > 0
    masks = _channel_masks(params, 0.5)
    s = slim(model, params, masks)
    assert len(s.kept["Dense_0"]) == 8 and len(s.kept["Dense_1"]) == 4
    assert s.model.features == (8, 4)
    np.testing.assert_allclose(
        np.asarray(_slim_out(s, X_IMG)),
        np.asarray(_masked_out(model, params, {}, masks, X_IMG)),
        rtol=1e-5,
        atol=1e-5,
    )
    # The folded constants changed the next layer's bias.
    assert not np.allclose(
        s.params["Dense_1"]["bias"], params["Dense_1"]["bias"][s.kept["Dense_1"]]
    )


def test_padded_conv_consumer_keeps_units_with_a_nonzero_constant():
    """A SAME conv pads with zeros, so a constant input channel is not a bias: the unit stays."""
    model = models.lenet5(features=(4, 6), padding="SAME", hidden=(10,))
    params, _ = _init(model, X_IMG)
    params["Conv_0"]["bias"] = jnp.array([1.0, -1.0, 1.0, -1.0])
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    masks["Conv_0"]["kernel"] = masks["Conv_0"]["kernel"].at[..., :2].set(False)  # units 0, 1
    s = slim(model, params, masks)
    # Unit 0 (relu(1) = 1 into a padded conv) stays; unit 1 (relu(-1) = 0) goes.
    np.testing.assert_array_equal(s.kept["Conv_0"], [0, 2, 3])
    np.testing.assert_allclose(
        np.asarray(_slim_out(s, X_IMG)),
        np.asarray(_masked_out(model, params, {}, masks, X_IMG)),
        rtol=1e-5,
        atol=1e-5,
    )
    # Masking the bias too makes the unit's output 0: it is removed.
    masks["Conv_0"]["bias"] = jnp.array([False, False, True, True])
    s = slim(model, params, masks)
    np.testing.assert_array_equal(s.kept["Conv_0"], [2, 3])


def test_units_nobody_reads_are_removed():
    """Zero weights on an input of the next layer make the unit useless whatever its kernel."""
    model = models.MLP(features=(12,))
    params, _ = _init(model, X_IMG)
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    masks["Dense_1"]["kernel"] = masks["Dense_1"]["kernel"].at[jnp.array([1, 5, 7])].set(False)
    s = slim(model, params, masks)
    np.testing.assert_array_equal(s.kept["Dense_0"], [0, 2, 3, 4, 6, 8, 9, 10, 11])
    np.testing.assert_allclose(
        np.asarray(_slim_out(s, X_IMG)),
        np.asarray(_masked_out(model, params, {}, masks, X_IMG)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_conv_to_dense_across_flatten_keeps_channel_positions():
    """After flatten the Dense rows of a removed channel are every C-th row (channels last)."""
    model = models.lenet5_caffe(features=(4, 6), hidden=(8,))
    params, _ = _init(model, X_IMG)
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    masks["Conv_1"]["kernel"] = masks["Conv_1"]["kernel"].at[..., jnp.array([0, 3])].set(False)
    masks["Conv_1"]["bias"] = jnp.array([False, True, True, False, True, True])
    s = slim(model, params, masks)
    np.testing.assert_array_equal(s.kept["Conv_1"], [1, 2, 4, 5])
    rows = params["Dense_0"]["kernel"].shape[0]
    assert s.params["Dense_0"]["kernel"].shape == (rows // 6 * 4, 8)
    np.testing.assert_array_equal(
        s.params["Dense_0"]["kernel"],
        np.asarray(params["Dense_0"]["kernel"]).reshape(-1, 6, 8)[:, [1, 2, 4, 5]].reshape(-1, 8),
    )
    np.testing.assert_allclose(
        np.asarray(_slim_out(s, X_IMG)),
        np.asarray(_masked_out(model, params, {}, masks, X_IMG)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_batchnorm_statistics_are_sliced_with_their_filters():
    model = models.DeepCNN(stages=((6,), (8,)), hidden=())
    params, state = _perturb(*_init(model, X_IMG))
    masks = _channel_masks(params, 0.5)
    s = slim(model, params, masks, model_state=state)
    for i in range(2):
        n = len(s.kept[f"Conv_{i}"])
        for leaf in ("scale", "bias"):
            assert s.params[f"BatchNorm_{i}"][leaf].shape == (n,)
        for leaf in ("mean", "var"):
            np.testing.assert_array_equal(
                s.model_state["batch_stats"][f"BatchNorm_{i}"][leaf],
                np.asarray(state["batch_stats"][f"BatchNorm_{i}"][leaf])[s.kept[f"Conv_{i}"]],
            )
    assert s.model.stages == ((len(s.kept["Conv_0"]),), (len(s.kept["Conv_1"]),))


def test_nothing_pruned_returns_the_same_model():
    model = models.MLP(features=(8,))
    params, _ = _init(model, X_IMG)
    s = slim(model, params)
    assert s.model is model
    jax.tree.map(np.testing.assert_array_equal, s.params, params)
    assert s.masks is None and s.model_state == {}


def test_all_units_pruned_keeps_one():
    model = models.MLP(features=(6,))
    params, _ = _init(model, X_IMG)
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    masks["Dense_0"]["kernel"] = jnp.zeros_like(masks["Dense_0"]["kernel"])
    s = slim(model, params, masks)
    assert s.model.features == (1,)
    np.testing.assert_allclose(
        np.asarray(_slim_out(s, X_IMG)),
        np.asarray(_masked_out(model, params, {}, masks, X_IMG)),
        rtol=1e-5,
        atol=1e-6,
    )


def _mlp_forward64(params, x, n_layers):
    """Float64 NumPy forward of an MLP ``Dense_0 .. Dense_{n_layers-1}`` with ReLUs."""
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    for i in range(n_layers):
        layer = params[f"Dense_{i}"]
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < n_layers - 1:
            h = np.maximum(h, 0.0)
    return h


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    bias_shift=st.sampled_from([-0.3, 0.0, 0.3]),
)
def test_random_mlp_channel_masks_match_a_float64_reference(widths, seed, bias_shift):
    rng = np.random.default_rng(seed)
    sizes = [7, *widths, 3]
    params = {
        f"Dense_{i}": {
            "kernel": rng.standard_normal((a, b)).astype(np.float32),
            "bias": (rng.standard_normal(b) * 0.1 + bias_shift).astype(np.float32),
        }
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    }
    masks = {
        k: {"kernel": np.ones(v["kernel"].shape, bool), "bias": None} for k, v in params.items()
    }
    for i in range(len(widths)):
        masks[f"Dense_{i}"]["kernel"][:, rng.random(widths[i]) < 0.5] = False
        masks[f"Dense_{i + 1}"]["kernel"][rng.random(widths[i]) < 0.2, :] = False
    model = models.MLP(features=tuple(widths), num_classes=3)
    s = slim(model, params, masks)
    x = rng.standard_normal((6, 7))
    masked = {
        k: {n: v if masks[k][n] is None else np.where(masks[k][n], v, 0) for n, v in d.items()}
        for k, d in params.items()
    }
    n = len(sizes) - 1
    np.testing.assert_allclose(
        _mlp_forward64(s.params, x, n), _mlp_forward64(masked, x, n), rtol=1e-5, atol=1e-5
    )
    assert s.model.features == tuple(len(s.kept[f"Dense_{i}"]) for i in range(len(widths)))
    rows = np.arange(sizes[0])  # inputs of layer i that are still there
    for i in range(len(widths)):  # exactly the units that are dead or unused are gone
        dead = ~masks[f"Dense_{i}"]["kernel"][rows].any(axis=0)
        unused = ~masks[f"Dense_{i + 1}"]["kernel"].any(axis=1)
        removable = unused | dead
        if removable.all():
            removable[0] = False
        rows = np.flatnonzero(~removable)
        np.testing.assert_array_equal(s.kept[f"Dense_{i}"], rows)


def test_rebuild_by_widths_keeps_nesting_and_finds_attributes():
    m = models.DeepCNN(stages=((4, 4), (8,)), hidden=(16,))
    old = {"Conv_0": 4, "Conv_1": 4, "Conv_2": 8, "Dense_0": 16}
    new = {"Conv_0": 2, "Conv_1": 3, "Conv_2": 5, "Dense_0": 7}
    r = rebuild_by_widths(m, old, new)
    assert r.stages == ((2, 3), (5,)) and r.hidden == (7,)
    mlp = models.MLP(features=(10, 5))
    assert rebuild_by_widths(
        mlp, {"Dense_0": 10, "Dense_1": 5}, {"Dense_0": 3, "Dense_1": 5}
    ).features == (3, 5)


def test_rebuild_by_widths_rejects_ambiguous_models():
    m = models.lenet5(features=(5, 5), kernel_size=(5, 5), hidden=(8,))
    with pytest.raises(ValueError, match="several attributes"):
        rebuild_by_widths(
            m, {"Conv_0": 5, "Conv_1": 5, "Dense_0": 8}, {"Conv_0": 3, "Conv_1": 5, "Dense_0": 8}
        )


class _Custom(nn.Module):
    w: int = 8

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.w, name="Dense_0")(x.reshape(x.shape[0], -1)))
        return nn.Dense(3, name="Dense_1")(x)


def test_custom_rebuild_is_used():
    model = _Custom(w=8)
    params, _ = _init(model, X_IMG)
    masks = _channel_masks(params, 0.5)
    calls = []

    def rebuild(m, widths):
        calls.append(widths)
        return m.clone(w=widths["Dense_0"])

    s = slim(model, params, masks, rebuild=rebuild)
    assert calls == [{"Dense_0": 4}] and s.model.w == 4
    np.testing.assert_allclose(
        np.asarray(_slim_out(s, X_IMG)),
        np.asarray(_masked_out(model, params, {}, masks, X_IMG)),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="no attribute"):
        slim(_Custom(w=9), params, masks)  # w=9 matches no width 8


def test_errors():
    model = models.MLP(features=(8,))
    params, _ = _init(model, X_IMG)
    with pytest.raises(ValueError, match="sequential stacks"):
        slim(model, {**params, "LayerNorm_0": {"scale": jnp.ones(8)}})
    bad = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    bad["Dense_0"]["kernel"] = jnp.ones((3, 3), bool)
    with pytest.raises(ValueError, match="mask Dense_0/kernel has shape"):
        slim(model, params, bad)
    with pytest.raises(ValueError, match="BatchNorm_0 has no matching Conv_0"):
        layer_chain({**params, "BatchNorm_0": {"scale": jnp.ones(8)}})
    with pytest.raises(TypeError, match="params must be a dict"):
        slim(model, [params])
    dn = models.DeepCNN(stages=((4,),), hidden=())
    p2, _ = _init(dn, X_IMG)
    with pytest.raises(ValueError, match="running statistics"):
        slim(dn, p2, _channel_masks(p2, 0.5))


def test_layer_chain_orders_convs_then_denses_by_index():
    tree = {n: {"kernel": jnp.zeros((2, 2))} for n in ("Dense_10", "Dense_2", "Conv_1", "Conv_0")}
    assert layer_chain(tree) == ["Conv_0", "Conv_1", "Dense_2", "Dense_10"]
