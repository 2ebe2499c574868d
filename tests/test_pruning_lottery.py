"""Tests for jaxopt_models.pruning.lottery (iterative magnitude pruning with rewinding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models.pruning import (
    LotteryRound,
    apply_masks,
    compute_masks,
    iterative_magnitude_pruning,
)


def init_params(seed=0):
    k = jax.random.split(jax.random.key(seed), 2)
    return {
        "Dense_0": {"kernel": jax.random.normal(k[0], (8, 16)), "bias": jnp.zeros(16)},
        "Dense_1": {"kernel": jax.random.normal(k[1], (16, 4)), "bias": jnp.zeros(4)},
    }


X = jax.random.normal(jax.random.key(5), (32, 8))
Y = jax.random.normal(jax.random.key(6), (32, 4))


def loss_fn(params):
    h = jnp.tanh(X @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    return jnp.mean((h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"] - Y) ** 2)


_grad = jax.jit(jax.grad(loss_fn))


class RecordingTrainer:
    """A train_fn: a few masked gradient steps; records what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, params, masks):
        self.calls.append((params, masks))
        for _ in range(5):
            params = jax.tree.map(lambda w, g: w - 0.1 * g, params, _grad(params))
            params = apply_masks(params, masks)
        return params


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_rounds_sparsity_nesting_and_rewinding(scope):
    init = init_params(0)
    rewind = init_params(1)  # e.g. weights after a few hundred steps
    trainer = RecordingTrainer()
    seen = []
    result = iterative_magnitude_pruning(
        init,
        trainer,
        rounds=3,
        prune_fraction=0.5,
        rewind_params=rewind,
        scope=scope,
        callback=seen.append,
    )
    assert len(trainer.calls) == 4 and len(result.rounds) == 4 and seen == result.rounds
    assert all(isinstance(r, LotteryRound) for r in result.rounds)
    assert [r.sparsity for r in result.rounds] == [0.0, 0.5, 0.75, 0.875]
    n0, n1 = 8 * 16, 16 * 4
    for r, (given_params, given_masks) in zip(result.rounds, trainer.calls, strict=True):
        pruned = [
            int((~np.asarray(given_masks[n]["kernel"])).sum()) for n in ("Dense_0", "Dense_1")
        ]
        if scope == "layer":
            assert pruned == [round(r.sparsity * n0), round(r.sparsity * n1)]
        else:
            assert sum(pruned) == round(r.sparsity * (n0 + n1))
        # Survivors are rewound to rewind_params, the rest is zero.
        jax.tree.map(np.testing.assert_array_equal, given_params, apply_masks(rewind, given_masks))
        assert bool(given_masks["Dense_0"]["bias"].all())
    for prev, cur in zip(result.rounds[:-1], result.rounds[1:], strict=True):
        for a, b in zip(jax.tree.leaves(prev.masks), jax.tree.leaves(cur.masks), strict=True):
            assert not (np.asarray(b) & ~np.asarray(a)).any()  # pruned stays pruned
        # Pruning is by magnitude of the previous round's trained weights.
        scores = jax.tree.map(lambda w, m: jnp.where(m, jnp.abs(w), -1.0), prev.params, prev.masks)
        expected = compute_masks(scores, cur.sparsity, scope=scope)
        jax.tree.map(np.testing.assert_array_equal, cur.masks, expected)
    jax.tree.map(np.testing.assert_array_equal, result.masks, result.rounds[-1].masks)
    jax.tree.map(np.testing.assert_array_equal, result.params, result.rounds[-1].params)


def test_defaults_rewind_to_init_and_zero_rounds():
    init = init_params(0)
    trainer = RecordingTrainer()
    result = iterative_magnitude_pruning(init, trainer, rounds=1)
    jax.tree.map(
        np.testing.assert_array_equal, trainer.calls[1][0], apply_masks(init, result.masks)
    )
    assert result.rounds[1].sparsity == pytest.approx(0.2)
    only_dense = iterative_magnitude_pruning(init, RecordingTrainer(), rounds=0)
    assert len(only_dense.rounds) == 1 and only_dense.rounds[0].sparsity == 0.0


def test_errors():
    init = init_params(0)
    with pytest.raises(ValueError, match="rounds must be an int >= 0"):
        iterative_magnitude_pruning(init, RecordingTrainer(), rounds=-1)
    with pytest.raises(ValueError, match="prune_fraction must be in"):
        iterative_magnitude_pruning(init, RecordingTrainer(), rounds=2, prune_fraction=1.0)
    with pytest.raises(ValueError, match="scope must be"):
        iterative_magnitude_pruning(init, RecordingTrainer(), rounds=2, scope="model")
    with pytest.raises(TypeError, match="train_fn must be callable"):
        iterative_magnitude_pruning(init, None, rounds=2)
    with pytest.raises(ValueError, match="does not match params tree"):
        iterative_magnitude_pruning(init, RecordingTrainer(), rounds=1, initial_masks={"a": None})
