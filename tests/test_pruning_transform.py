"""Tests for jaxopt_models.pruning.transform: prune() keeps pruned weights exactly zero."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_models.pruning import (
    KeepMasksState,
    PruneState,
    compute_masks,
    erk_sparsity,
    find_prune_state,
    get_scorer,
    keep_masks,
    magnitude_scores,
    n_by_m,
    one_shot,
    polynomial,
    prune,
    random_scores,
    replace_masks,
    saliency_scores,
)


def init_params(seed=0):
    k = jax.random.split(jax.random.key(seed), 2)
    return {
        "Dense_0": {"kernel": jax.random.normal(k[0], (12, 16)) * 0.5, "bias": jnp.zeros(16)},
        "Dense_1": {"kernel": jax.random.normal(k[1], (16, 4)) * 0.5, "bias": jnp.zeros(4)},
    }


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    out = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    return jnp.mean((out - y) ** 2)


def batch(seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (32, 12)), jax.random.normal(ky, (32, 4))


def make_step(tx, pass_grads=False):
    def step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        extra = {"grads": grads} if pass_grads else {}
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    return step


def kernels(tree):
    return [tree["Dense_0"]["kernel"], tree["Dense_1"]["kernel"]]


OPTIMIZERS = {
    "sgd": lambda: optax.sgd(0.05),
    "momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-4),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_for_200_steps(name):
    """90% gradual (mask changes every 10 steps up to step 100), then 100 steady steps."""
    schedule = polynomial(0.9, begin_step=0, end_step=100, frequency=10)
    tx = optax.chain(OPTIMIZERS[name](), prune("magnitude", schedule))
    params = init_params()
    state = tx.init(params)
    step = jax.jit(make_step(tx))
    x, y = batch()
    previous = [np.ones(k.shape, bool) for k in kernels(params)]
    mask_changes = 0
    for t in range(200):
        params, state = step(params, state, x, y)
        prune_state = state[-1]
        assert isinstance(prune_state, PruneState)
        masks = [np.asarray(m) for m in kernels(prune_state.masks)]
        changed = any((m != p).any() for m, p in zip(masks, previous, strict=True))
        mask_changes += changed
        for w, m, p in zip(kernels(params), masks, previous, strict=True):
            w = np.asarray(w)
            assert (w[~m] == 0.0).all(), f"step {t}: a pruned weight is not exactly 0.0"
            assert not (m & ~p).any(), f"step {t}: a pruned weight was revived"
            assert (w[m] != 0.0).all()  # kept weights are trained, not zeroed
        previous = masks
        assert int(prune_state.count) == t + 1
        # Exactly round(schedule(t) * n) zeros per kernel (float32, as in the step).
        s = np.float32(schedule(t))
        for w in kernels(params):
            assert int((np.asarray(w) == 0).sum()) == int(np.round(s * np.float32(w.size)))
    assert mask_changes >= 9
    assert float(state[-1].sparsity) == pytest.approx(0.9)
    for w in kernels(params):
        assert int((np.asarray(w) == 0).sum()) == round(0.9 * w.size)
    # Biases are not pruned.
    assert bool(jnp.all(state[-1].masks["Dense_0"]["bias"]))


def test_second_step_does_not_retrace():
    tx = optax.chain(optax.adam(1e-2), prune("magnitude", polynomial(0.5, 0, 20, frequency=2)))
    params = init_params()
    state = tx.init(params)
    step = jax.jit(chex.assert_max_traces(make_step(tx), n=1))
    x, y = batch()
    for _ in range(4):  # includes update and non-update steps
        params, state = step(params, state, x, y)


def test_one_shot_prunes_at_the_given_step():
    tx = optax.chain(optax.sgd(0.05), prune("magnitude", one_shot(0.75, step=3)))
    params = init_params()
    state = tx.init(params)
    step = jax.jit(make_step(tx))
    x, y = batch()
    for t in range(5):
        params, state = step(params, state, x, y)
        zeros = sum(int((np.asarray(w) == 0).sum()) for w in kernels(params))
        expected = 0 if t < 3 else round(0.75 * 12 * 16) + round(0.75 * 16 * 4)
        assert zeros == expected


def test_masks_match_compute_masks_on_the_pre_update_params():
    tx = prune("magnitude", 0.6)
    params = init_params()
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, state = jax.jit(tx.update)(grads, state, params)
    expected = compute_masks(jax.tree.map(jnp.abs, params), 0.6)
    # The traced sparsity is float32: round(0.6f * n) equals round(0.6 * n) for these sizes.
    jax.tree.map(np.testing.assert_array_equal, state.masks, expected)


def test_saliency_scorer_uses_grads_extra_arg():
    tx = optax.chain(optax.sgd(0.01), prune("saliency", 0.5))
    params = init_params()
    state = tx.init(params)
    x, y = batch()
    grads = jax.grad(loss_fn)(params, x, y)
    _, state = jax.jit(make_step(tx, pass_grads=True))(params, state, x, y)
    expected = compute_masks(saliency_scores(params, grads), 0.5)
    jax.tree.map(np.testing.assert_array_equal, state[-1].masks, expected)


def test_user_scorer_plug_in_and_random_scorer_determinism():
    params = init_params()
    grads = jax.tree.map(jnp.ones_like, params)
    largest_first = lambda params: jax.tree.map(lambda w: -jnp.abs(w), params)
    _, state = prune(largest_first, 0.5).update(
        grads, prune(largest_first, 0.5).init(params), params
    )
    w = np.asarray(params["Dense_1"]["kernel"])
    m = np.asarray(state.masks["Dense_1"]["kernel"])
    assert np.abs(w[~m]).min() >= np.abs(w[m]).max()  # the largest half was pruned

    def random_masks(seed):
        tx = prune("random", 0.5, seed=seed)
        return tx.update(grads, tx.init(params), params)[1].masks

    a, b, c = random_masks(0), random_masks(0), random_masks(1)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["Dense_0"]["kernel"], c["Dense_0"]["kernel"])


def test_global_scope_erk_and_per_layer_dict():
    params = init_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    n0, n1 = 12 * 16, 16 * 4

    def pruned_counts(tx):
        masks = tx.update(grads, tx.init(params), params)[1].masks
        return [int((~np.asarray(m)).sum()) for m in kernels(masks)]

    assert sum(pruned_counts(prune("magnitude", 0.8, scope="global"))) == round(0.8 * (n0 + n1))
    erk = erk_sparsity(params, 0.8)
    assert pruned_counts(prune("magnitude", 0.8, distribution="erk")) == [
        round(erk["Dense_0"]["kernel"] * n0),
        round(erk["Dense_1"]["kernel"] * n1),
    ]
    counts = pruned_counts(prune("magnitude", 0.8, distribution={"Dense_1": lambda s: s / 2}))
    assert counts == [round(0.8 * n0), round(0.4 * n1)]


def test_n_by_m_structure_in_prune():
    tx = optax.chain(optax.adam(1e-2), prune("magnitude", 0.5, structure=n_by_m(2, 4)))
    params = init_params()
    state = tx.init(params)
    step = jax.jit(make_step(tx))
    x, y = batch()
    for _ in range(5):
        params, state = step(params, state, x, y)
    for w in kernels(params):
        nonzero = (np.asarray(w) != 0).reshape(-1, 4)
        np.testing.assert_array_equal(nonzero.sum(-1), 2)


def test_channel_structure_in_prune_zeroes_whole_neurons():
    tx = optax.chain(optax.sgd(0.05), prune("magnitude", 0.5, structure="channels"))
    params = init_params()
    state = tx.init(params)
    params, state = jax.jit(make_step(tx))(params, state, *batch())
    w = np.asarray(params["Dense_0"]["kernel"])
    dead = (w == 0).all(0)
    assert int(dead.sum()) == 8 and ((w != 0).all(0) | dead).all()


def test_keep_masks_keeps_fixed_masks_exactly_zero():
    params = init_params()
    masks = compute_masks(jax.tree.map(jnp.abs, params), 0.7)
    masks["Dense_1"]["bias"] = None  # None = dense
    tx = optax.chain(optax.adamw(1e-2, weight_decay=1e-4), keep_masks(masks))
    state = tx.init(params)
    assert isinstance(state[-1], KeepMasksState)
    step = jax.jit(make_step(tx))
    x, y = batch()
    for _ in range(20):
        params, state = step(params, state, x, y)
    for w, m in zip(kernels(params), kernels(masks), strict=True):
        assert (np.asarray(w)[~np.asarray(m)] == 0.0).all()


def test_errors_are_clear():
    params = init_params()
    tx = prune("magnitude", 0.5)
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="sparsity must be in \\[0, 1\\)"):
        prune("magnitude", 1.0)
    with pytest.raises(ValueError, match="scope must be"):
        prune("magnitude", 0.5, scope="net")
    with pytest.raises(ValueError, match="distribution must be"):
        prune("magnitude", 0.5, distribution="gaussian")
    with pytest.raises(ValueError, match="scope='global' needs distribution='uniform'"):
        prune("magnitude", 0.5, scope="global", distribution="erk")
    with pytest.raises(ValueError, match=r"scorer='taylor' is not known; allowed values"):
        prune("taylor", 0.5)
    with pytest.raises(ValueError, match="not a multiple of m=3"):
        prune("magnitude", 0.5, structure=n_by_m(1, 3)).init(params)
    with pytest.raises(ValueError, match="does not match params tree"):
        keep_masks({"Dense_0": None}).init(params)


def test_fixed_schedules_compute_masks_in_init_and_step_without_a_branch():
    params = init_params()
    grads = jax.tree.map(jnp.ones_like, params)
    dynamic = prune("magnitude", lambda t: jnp.float32(0.6))  # no constant_sparsity marker
    results = {}
    for name, tx in {
        "number": prune("magnitude", 0.6),
        "one_shot0": prune("magnitude", one_shot(0.6)),
        "dynamic": dynamic,
    }.items():
        state = tx.init(params)
        has_cond = " cond[" in str(jax.make_jaxpr(tx.update)(grads, state, params))
        assert has_cond == (name == "dynamic"), name
        _, state = jax.jit(tx.update)(grads, state, params)
        results[name] = state.masks
    jax.tree.map(np.testing.assert_array_equal, results["number"], results["dynamic"])
    jax.tree.map(np.testing.assert_array_equal, results["one_shot0"], results["dynamic"])


# ------------------------------------------------------------------ scorer signatures
def _both(params, grads, key):
    """A user scorer of the full form: saliency with a small random tie-break."""
    noise = random_scores(params, key)
    return jax.tree.map(lambda s, r: s + 1e-3 * r, saliency_scores(params, grads), noise)


def _key_then_grads(params, key, grads):
    return _both(params, grads, key)


def _keyword_only_key(params, *, key, scale=2.0):
    return jax.tree.map(lambda r: scale * r, random_scores(params, key))


# scorer -> the scores it must give for (params, grads, key)
SCORER_FORMS = {
    "magnitude_scores": (magnitude_scores, lambda p, g, k: magnitude_scores(p)),
    "saliency_scores": (saliency_scores, lambda p, g, k: saliency_scores(p, g)),
    "random_scores": (random_scores, lambda p, g, k: random_scores(p, k)),
    "f(params, grads, key)": (_both, _both),
    "f(params, key, grads)": (_key_then_grads, _both),
    "f(params, *, key, scale=2.0)": (
        _keyword_only_key,
        lambda p, g, k: jax.tree.map(lambda r: 2.0 * r, random_scores(p, k)),
    ),
}


@pytest.mark.parametrize("form", sorted(SCORER_FORMS))
def test_get_scorer_hands_each_form_the_params_grads_and_key_it_names(form):
    scorer, reference = SCORER_FORMS[form]
    params = init_params()
    grads = jax.tree.map(lambda w: jnp.cos(3.0 * w), params)
    key = jax.random.key(7)
    got = get_scorer(scorer)(params, grads, key)
    chex.assert_trees_all_equal(got, reference(params, grads, key))
    # the reference reads what the form names: other grads / another key change it
    other_key = reference(params, grads, jax.random.key(8))
    other_grads = reference(params, jax.tree.map(jnp.sin, grads), key)
    changed = lambda a: (
        not all(
            np.array_equal(x, y)
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(got), strict=True)
        )
    )
    reads_key = form.startswith("random") or "key" in form
    reads_grads = form.startswith("saliency") or "grads" in form
    assert changed(other_key) == reads_key and changed(other_grads) == reads_grads


@functools.cache
def _train_pruned(scorer, steps=20):
    """``steps`` jitted steps of adam + gradual pruning to 75% (raw grads passed)."""
    schedule = polynomial(0.75, begin_step=0, end_step=10, frequency=2)
    tx = optax.chain(optax.adam(1e-2), prune(scorer, schedule, seed=3))
    params = init_params()
    state = tx.init(params)
    step = jax.jit(make_step(tx, pass_grads=True))
    x, y = batch()
    for _ in range(steps):
        params, state = step(params, state, x, y)
    return params, state[-1].masks


TRAINED_FORMS = ["magnitude_scores", "saliency_scores", "random_scores", "f(params, grads, key)"]


@pytest.mark.parametrize("form", TRAINED_FORMS)
def test_prune_with_a_scorer_function_reaches_exact_sparsity_after_adam(form):
    params, masks = _train_pruned(SCORER_FORMS[form][0])
    for w, m in zip(kernels(params), kernels(masks), strict=True):
        w, m = np.asarray(w), np.asarray(m)
        assert int((~m).sum()) == round(0.75 * w.size)  # exact sparsity per kernel
        assert (w[~m] == 0.0).all()
        assert (w[m] != 0.0).all()


def test_scorer_functions_choose_different_weights_in_training():
    """The scorers' inputs reach them inside the step: four different sets of masks."""
    masks = [
        np.asarray(_train_pruned(SCORER_FORMS[f][0])[1]["Dense_0"]["kernel"]) for f in TRAINED_FORMS
    ]
    for i in range(len(masks)):
        for j in range(i):
            assert not np.array_equal(masks[i], masks[j]), (TRAINED_FORMS[i], TRAINED_FORMS[j])


def _momentum_scores(params, grads, momentum):
    return params


def _grads_first(grads, params):
    return params


def _no_arguments():
    return {}


@pytest.mark.parametrize(
    "scorer,name",
    [
        (_momentum_scores, "_momentum_scores"),
        (_grads_first, "_grads_first"),
        (_no_arguments, "_no_arguments"),
        (lambda p, g: p, "<lambda>"),
    ],
)
def test_a_wrong_scorer_signature_is_refused_at_construction(scorer, name):
    with pytest.raises(TypeError, match=rf"scorer '{name}' has signature .*`grads` and/or `key`"):
        prune(scorer, 0.5)


def test_the_prune_state_is_found_in_an_optimizer_state():
    params = init_params()
    tx = optax.chain(optax.adam(1e-3), prune("magnitude", 0.5))
    state = tx.init(params)
    assert find_prune_state(state) is state[-1] and isinstance(state[-1], PruneState)
    assert find_prune_state(optax.adam(1e-3).init(params)) is None
    masks = compute_masks(jax.tree.map(jnp.abs, params), 0.7)
    fixed = optax.chain(optax.sgd(0.1), keep_masks(masks)).init(params)
    assert isinstance(find_prune_state(fixed), KeepMasksState)
    other = jax.tree.map(jnp.logical_not, masks)
    swapped = find_prune_state(replace_masks(fixed, other)).masks
    jax.tree.map(np.testing.assert_array_equal, swapped, other)
