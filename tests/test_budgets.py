"""models.budgets: the knapsack solver against brute force, OWL's rule (exact mean, bounds,
outlier ratios vs NumPy), the sensitivity allocations (exact mean sparsity, bit and byte
budgets, costs vs NumPy), the rules under compress_model for every method, clear errors
before any measurement, and the printed / saved report."""

import itertools
import json

import jax
import numpy as np
import pytest
from _helpers import np_init, use_compilation_cache

from jaxopt_models import quantization as qz
from jaxopt_models.models import (
    MLP,
    ConvNet,
    allocation_dict,
    choose_levels,
    collect_stats,
    compress_model,
    find_layers,
    format_allocation,
    measure_costs,
    outlier_ratio,
    owl_sparsity,
    save_allocation,
    sensitivity_bits,
    sensitivity_sparsity,
    uniform_allocation,
    wanda_scores,
)
from jaxopt_models.models import budgets as bg
from jaxopt_models.models.transformer import CausalLM
from jaxopt_models.tree import best_rule

use_compilation_cache()


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    model = MLP(features=(32, 16), num_classes=8)
    x = rng.standard_normal((64, 24)).astype(np.float32)
    x[:, 3] *= 20.0  # an outlier input feature, as in transformer activations
    variables = np_init(model, x[:1], 1)
    return model, variables, [x[:32], x[32:]]


@pytest.fixture(scope="module")
def mlp_stats(mlp):
    model, variables, batches = mlp
    return collect_stats(model, variables, batches)


@pytest.fixture(scope="module")
def mlp_costs(mlp, mlp_stats):
    model, variables, batches = mlp
    return measure_costs(
        model, variables, batches, method="wanda", levels=(0.3, 0.5, 0.7, 0.9), stats=mlp_stats
    )


@pytest.fixture(scope="module")
def gpt():
    model = CausalLM(vocab_size=32, num_layers=2, num_heads=2, embed_dim=16, max_len=8)
    tokens = np.random.default_rng(2).integers(0, 32, (8, 8)).astype(np.int32)
    return model, np_init(model, tokens[:1], 3), [tokens[:4], tokens[4:]]


def _mean(alloc):
    n = np.array([b.params for b in alloc.layers], np.float64)
    return float(np.sum(n * np.array([b.level for b in alloc.layers])) / n.sum())


# ----------------------------------------------------------------------------- solver
@pytest.mark.parametrize("seed", range(6))
def test_choose_levels_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_layers, n_levels = 4, 3
    weights = rng.integers(1, 9, (n_layers, n_levels)) * 5
    costs = rng.random((n_layers, n_levels))
    lightest = weights.min(axis=1).sum()
    capacity = int(lightest + rng.integers(0, weights.max(axis=1).sum() - lightest + 1))
    pick = choose_levels(costs, weights, capacity)
    best = min(
        sum(costs[i, k] for i, k in enumerate(ks))
        for ks in itertools.product(range(n_levels), repeat=n_layers)
        if sum(weights[i, k] for i, k in enumerate(ks)) <= capacity
    )
    assert sum(weights[i, k] for i, k in enumerate(pick)) <= capacity
    assert sum(costs[i, k] for i, k in enumerate(pick)) == pytest.approx(best, abs=1e-12)


def test_choose_levels_coarse_budget_stays_feasible():
    rng = np.random.default_rng(7)
    weights = rng.random((6, 4)) * 1000.0  # not integers: weights rounded up to budget units
    costs = rng.random((6, 4))
    capacity = float(weights.min(axis=1).sum() + 900.0)
    pick = choose_levels(costs, weights, capacity, resolution=50)
    assert weights[np.arange(6), pick].sum() <= capacity


def test_choose_levels_refuses_an_impossible_capacity():
    with pytest.raises(ValueError, match="capacity=2 is below 4"):
        choose_levels([[0.0, 1.0], [0.0, 1.0]], [[3, 2], [3, 2]], 2)
    with pytest.raises(ValueError, match="must both be"):
        choose_levels([[0.0, 1.0]], [[1, 2, 3]], 5)


# ----------------------------------------------------------------------------- OWL
def test_outlier_ratio_and_wanda_scores_match_numpy(mlp, mlp_stats):
    assert outlier_ratio(np.array([1.0, 1.0, 1.0, 9.0]), 2.0) == 0.25
    _, variables, batches = mlp
    x = np.concatenate(batches).astype(np.float64)
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    ref = np.abs(w) * np.linalg.norm(x, axis=0)[:, None]
    np.testing.assert_allclose(wanda_scores(w, mlp_stats["Dense_0"]), ref, rtol=1e-4)


def test_owl_mean_is_exact_bounds_hold_and_outliers_get_less_sparsity(mlp, mlp_stats):
    model, variables, batches = mlp
    target, lam = 0.6, 0.1
    alloc = owl_sparsity(model, variables, batches, target=target, lam=lam, m=3.0)
    assert _mean(alloc) == pytest.approx(target, abs=1e-12)
    assert alloc.achieved == pytest.approx(target, abs=1e-12)
    levels = np.array([b.level for b in alloc.layers])
    assert np.all(levels >= target - lam - 1e-12) and np.all(levels <= target + lam + 1e-12)
    ratios = []
    for b in alloc.layers:
        w = np.asarray(variables["params"][b.path]["kernel"])
        ratios.append(outlier_ratio(wanda_scores(w, mlp_stats[b.path]), 3.0))
        assert b.outlier_ratio == pytest.approx(ratios[-1])
    order = np.argsort(ratios)
    assert np.all(np.diff(levels[order]) <= 1e-12)  # more outliers, lower sparsity
    assert alloc.rules == {b.path: {"sparsity": b.level} for b in alloc.layers}


def test_owl_clips_at_zero_and_keeps_the_mean(mlp, mlp_stats):
    model, variables, batches = mlp
    alloc = owl_sparsity(model, variables, batches, target=0.05, lam=0.2, stats=mlp_stats)
    levels = np.array([b.level for b in alloc.layers])
    assert levels.min() >= 0.0 and levels.max() <= 0.25 + 1e-12
    assert _mean(alloc) == pytest.approx(0.05, abs=1e-12)
    flat = owl_sparsity(model, variables, batches, target=0.5, lam=0.0, stats=mlp_stats)
    assert all(b.level == pytest.approx(0.5) for b in flat.layers)


def test_owl_per_block_gives_one_sparsity_per_block(gpt):
    model, variables, batches = gpt
    alloc = owl_sparsity(model, variables, batches, target=0.7, lam=0.1, groups="block")
    by_block = {}
    for b in alloc.layers:
        by_block.setdefault(b.path.split("/")[0], set()).add(round(b.level, 12))
    assert set(by_block) == {"block_0", "block_1"}
    assert all(len(v) == 1 for v in by_block.values())
    assert _mean(alloc) == pytest.approx(0.7, abs=1e-12)


def test_full_paths_rules_each_match_exactly_their_layer(gpt):
    model, variables, batches = gpt
    alloc = owl_sparsity(model, variables, batches, target=0.5, lam=0.1)
    layers = find_layers(model, variables, batches[0])
    assert {layer.path for layer in layers} == set(alloc.rules)
    for layer in layers:
        assert best_rule(alloc.rules, layer.name) == layer.path
    _, report = compress_model(model, variables, batches, method="wanda", layers=alloc.rules)
    for row in report.layers:
        assert row.rule == row.path
        assert row.settings["sparsity"] == alloc.rules[row.path]["sparsity"]


# ----------------------------------------------------------------------------- sensitivity
def test_sensitivity_sparsity_mean_is_exact_and_costs_no_more_than_uniform(mlp, mlp_costs):
    model, variables, batches = mlp
    levels = (0.3, 0.5, 0.7, 0.9)
    for target in (0.5, 0.62, 0.7):
        alloc = sensitivity_sparsity(
            model, variables, batches, target=target, method="wanda", levels=levels,
            costs=mlp_costs,
        )  # fmt: skip
        assert _mean(alloc) == pytest.approx(target, abs=1e-9)
        total = sum(b.cost for b in alloc.layers)
        uniform = sum(np.interp(target, levels, [mlp_costs[b.path][s] for s in levels])
                      for b in alloc.layers)  # fmt: skip
        assert total <= uniform + 1e-12


def test_synthetic_costs_put_sparsity_where_it_is_cheap(mlp):
    model, variables, batches = mlp
    levels = (0.3, 0.5, 0.7, 0.9)
    # Dense_0 is cheap to prune, the head expensive.
    scale = {"Dense_0": 0.01, "Dense_1": 1.0, "Dense_2": 100.0}
    costs = {p: {s: scale[p] * s**2 for s in levels} for p in scale}
    alloc = sensitivity_sparsity(
        model, variables, batches, target=0.6, method="magnitude", levels=levels, costs=costs
    )
    level = {b.path: b.level for b in alloc.layers}
    assert level["Dense_0"] > level["Dense_1"] >= level["Dense_2"] == 0.3
    assert _mean(alloc) == pytest.approx(0.6, abs=1e-9)


def test_output_error_cost_matches_numpy(mlp, mlp_stats):
    model, variables, batches = mlp
    costs = measure_costs(
        model, variables, batches, method="magnitude", levels=(0.0, 0.5), cost="output_error",
        stats=mlp_stats,
    )  # fmt: skip
    x = np.concatenate(batches).astype(np.float64)
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    k = round(0.5 * w.size)
    w_hat = w.copy().ravel()
    w_hat[np.argsort(np.abs(w_hat), kind="stable")[:k]] = 0.0
    ref = np.sum((x @ (w - w_hat.reshape(w.shape))) ** 2) / len(x)
    assert costs["Dense_0"][0.0] == 0.0
    assert costs["Dense_0"][0.5] == pytest.approx(ref, rel=1e-4)


def test_loss_fn_cost_is_the_loss_increase(mlp):
    model, variables, batches = mlp
    labels = [np.arange(len(b)) % 8 for b in batches]

    def loss_fn(v, batch):
        x, y = batch
        logp = jax.nn.log_softmax(model.apply(v, x))
        return -logp[np.arange(len(y)), y].mean()

    costs = measure_costs(
        model, variables, batches, method="magnitude", levels=(0.0, 0.9), exclude=["Dense_0"],
        loss_fn=loss_fn, cost_batches=list(zip(batches, labels, strict=True)),
    )  # fmt: skip
    assert set(costs) == {"Dense_1", "Dense_2"}
    assert costs["Dense_1"][0.0] == 0.0 and costs["Dense_1"][0.9] != 0.0


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "rtn", "gptq"])
def test_every_method_takes_its_allocation(mlp, mlp_stats, method):
    model, variables, batches = mlp
    if method in bg.SPARSITY_METHODS:
        alloc = sensitivity_sparsity(
            model, variables, batches, target=0.6, method=method, levels=(0.4, 0.6, 0.8),
            stats=mlp_stats,
        )  # fmt: skip
        key = "sparsity"
    else:
        alloc = sensitivity_bits(
            model, variables, batches, method=method, average_bits=3, levels=(2, 4),
            settings={"group_size": 8}, stats=mlp_stats,
        )  # fmt: skip
        key = "bits"
        assert alloc.achieved <= 3
    settings = {"group_size": 8} if key == "bits" else None
    _, report = compress_model(
        model, variables, batches, method=method, settings=settings, layers=alloc.rules
    )
    for row in report.layers:
        assert row.settings[key] == alloc.rules[row.path][key]
        if key == "sparsity":  # Wanda rounds per output, SparseGPT per block of inputs
            realised = 1 - row.nonzeros / row.size
            assert realised == pytest.approx(row.settings["sparsity"], abs=1 / row.view[0])


def test_byte_budget_counts_the_stored_kernels(mlp, mlp_stats):
    model, variables, batches = mlp
    settings = {"group_size": 8}
    uni = uniform_allocation(model, variables, batches[0][:1], bits=3, settings=settings)
    alloc = sensitivity_bits(
        model, variables, batches, method="rtn", max_bytes=uni.details["bytes"],
        levels=(2, 4, 8), settings=settings, cost="output_error", stats=mlp_stats,
    )  # fmt: skip
    assert alloc.achieved <= uni.details["bytes"]
    _, report = compress_model(
        model, variables, batches, method="rtn", settings=settings, layers=alloc.rules
    )
    for b in alloc.layers:
        q = report.qparams[b.path]["kernel"]
        assert qz.size_bytes(qz.pack(q)) == b.bytes


def test_a_cnn_takes_owl_and_mixed_precision():
    model = ConvNet(features=(4, 8), kernel_size=3, hidden=(16,), num_classes=4)
    x = np.random.default_rng(4).standard_normal((16, 8, 8, 1)).astype(np.float32)
    variables = np_init(model, x[:1], 5)
    batches = [x[:8], x[8:]]
    owl = owl_sparsity(model, variables, batches, target=0.5, lam=0.1)
    assert [b.path for b in owl.layers] == ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]
    assert _mean(owl) == pytest.approx(0.5, abs=1e-12)
    _, report = compress_model(model, variables, batches, method="magnitude", layers=owl.rules)
    assert [r.settings["sparsity"] for r in report.layers] == [b.level for b in owl.layers]
    mixed = sensitivity_bits(
        model, variables, batches, method="rtn", average_bits=3, levels=(2, 4),
        exclude=["Conv_0"], cost="output_error",
    )  # fmt: skip
    assert mixed.rules["Conv_0"] == "skip" and mixed.achieved <= 3


# ----------------------------------------------------------------------------- errors
@pytest.fixture
def no_measuring(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("measured before checking the target")

    monkeypatch.setattr(bg, "_measure", fail)
    monkeypatch.setattr(bg.cal, "collect_stats", fail)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, v, b: sensitivity_bits(m, v, b, method="gptq", average_bits=1.5),
         r"average_bits=1.5 cannot be met .* average_bits >= 2"),
        (lambda m, v, b: sensitivity_bits(m, v, b, method="rtn", max_bytes=10),
         r"max_bytes=10 cannot be met .* feasible range is \[\d+, \d+\]"),
        (lambda m, v, b: sensitivity_sparsity(m, v, b, target=0.95, method="wanda"),
         r"target=0.95 cannot be met .* \[0.3, 0.9\]"),
        (lambda m, v, b: sensitivity_sparsity(m, v, b, target=0.2, method="wanda"),
         r"target=0.2 cannot be met"),
        (lambda m, v, b: owl_sparsity(m, v, b, target=1.0),
         r"target=1.0 must be a number in \[0.0, 0.99\]"),
        (lambda m, v, b: owl_sparsity(m, v, b, target=0.5, groups="head"),
         r"groups='head' is not known"),
        (lambda m, v, b: sensitivity_bits(m, v, b, method="rtn", average_bits=3, max_bytes=9),
         r"exactly one of average_bits and max_bytes"),
        (lambda m, v, b: sensitivity_sparsity(m, v, b, target=0.5, method="gptq"),
         r"method='gptq' does not prune"),
        (lambda m, v, b: sensitivity_sparsity(m, v, b, target=0.5, method="wanda",
                                              settings={"n_m": "2:4"}),
         r"settings.n_m='2:4'"),
        (lambda m, v, b: sensitivity_bits(m, v, b, method="gptq", average_bits=3,
                                          settings={"group_size": 7}),
         r"group_size=7 does not fit"),
        (lambda m, v, b: owl_sparsity(m, v, b, target=0.5, exclude=["Conv"]),
         r"exclude names 'Conv', which matches no layer"),
    ],
)  # fmt: skip
def test_bad_targets_fail_before_any_measurement(mlp, no_measuring, call, match):
    model, variables, batches = mlp
    with pytest.raises(ValueError, match=match):
        call(model, variables, batches)


# ----------------------------------------------------------------------------- report
def test_exclude_format_and_save(mlp, mlp_stats, tmp_path):
    model, variables, batches = mlp
    alloc = owl_sparsity(
        model, variables, batches, target=0.5, lam=0.1, exclude=["Dense_2"], stats=mlp_stats
    )
    assert alloc.rules["Dense_2"] == "skip"
    assert [b.path for b in alloc.layers] == ["Dense_0", "Dense_1"]
    new_vars, _ = compress_model(model, variables, batches, method="wanda", layers=alloc.rules)
    np.testing.assert_array_equal(
        new_vars["params"]["Dense_2"]["kernel"], variables["params"]["Dense_2"]["kernel"]
    )
    text = format_allocation(alloc)
    assert "owl sparsity allocation" in text and "Dense_2" in text and "skip" in text
    path = tmp_path / "alloc.json"
    save_allocation(alloc, path)
    saved = json.loads(path.read_text())
    assert saved == allocation_dict(alloc)
    assert saved["rules"]["Dense_0"]["sparsity"] == alloc.rules["Dense_0"]["sparsity"]
