"""models.calibration: layer-input Hessians (float64 references), the conv patches view,
batch accumulation, sequential vs parallel calibration, per-layer rules and clear errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import np_init, use_compilation_cache
from _one_shot import np_grid

from jaxopt_models import quantization as qz
from jaxopt_models.models import (
    MLP,
    _linear,
    apply_with_qtensors,
    capture_layer_inputs,
    check_settings,
    collect_hessians,
    collect_stats,
    compress_layer,
    compress_model,
    find_layers,
    input_groups,
    output_error,
    plan_compression,
)
from jaxopt_models.models.transformer import HeadProjection, TransformerConfig

# Inputs and weights come from NumPy: compiling jax.random's samplers costs seconds of CPU.

use_compilation_cache()


class Mixed(nn.Module):
    """A Conv, a DenseGeneral over two axes, two head projections reading the same input and
    a Dense; every kernel's matrix view is 8 x 8 (so each primitive compiles once)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (2, 2), (2, 1), "SAME", name="conv")(x))
        x = x.reshape(x.shape[0], -1, 2, 4)
        x = nn.DenseGeneral(8, axis=(-2, -1), name="mix")(x)  # kernel (2, 4, 8)
        cfg = TransformerConfig(
            vocab_size=8, num_layers=1, num_heads=2, num_kv_heads=2, embed_dim=8, head_dim=4,
            mlp_dim=8, max_len=8, dropout_rate=0.0, positions="rope", norm="rmsnorm",
            mlp="gelu", norm_eps=1e-6, rope_theta=1e4, use_bias=True, remat=False,
            dtype=jnp.float32, param_dtype=jnp.float32, init_std=0.5,
        )  # fmt: skip
        q = HeadProjection(2, "heads", cfg, name="query")(x)  # kernel (8, 2, 4)
        k = HeadProjection(2, "heads", cfg, name="key")(x)
        y = (q * k).reshape(*x.shape[:2], 8).mean(axis=1)
        return nn.Dense(8, name="head")(nn.relu(y))


def _mlp(seed=0, n_in=32):
    """Every kernel is 32 x 32, so each one-shot primitive compiles once for the file."""
    model = MLP(features=(32, 32), num_classes=32)
    rng = np.random.default_rng(seed)
    mix = np.eye(n_in) + 0.5 * rng.standard_normal((n_in, n_in))
    x = jnp.asarray(rng.standard_normal((512, n_in)) @ mix, jnp.float32)
    return model, np_init(model, x[:1], seed + 1), x


@pytest.fixture(scope="module")
def mixed():
    model = Mixed()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((10, 6, 4, 2)), jnp.float32)
    return model, np_init(model, x, 1), x


def _np_rows(path, inputs):
    """float64 rows of a layer's captured input, by the layer's matrix view."""
    x = np.asarray(inputs, np.float64)
    if path == "mix":  # contracts the last two axes
        return x.reshape(-1, x.shape[-2] * x.shape[-1])
    return x.reshape(-1, x.shape[-1])


def test_hessian_of_dense_layers_is_gram_of_their_inputs_float64():
    model, variables, x = _mlp()
    hessians = collect_hessians(model, variables, [x])
    captured = capture_layer_inputs(model, variables, x)
    assert sorted(hessians) == ["Dense_0", "Dense_1", "Dense_2"]
    for path, (h, count) in hessians.items():
        rows = np.asarray(captured[path], np.float64)
        ref = rows.T @ rows
        assert h.dtype == jnp.float32 and int(count) == len(rows)
        np.testing.assert_allclose(np.asarray(h), ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())


def test_hessians_of_dense_general_and_head_projections(mixed):
    model, variables, x = mixed
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and _linear.linear_kind(context.module):
            seen[_linear.module_path(context.module)] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(variables, x)
    stats = collect_stats(model, variables, [x])
    for path in ("mix", "query", "key", "head"):
        rows = _np_rows(path, seen[path])
        ref = rows.T @ rows
        np.testing.assert_allclose(
            np.asarray(stats[path].hessian), ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max()
        )
        np.testing.assert_allclose(np.asarray(stats[path].abs_max), np.abs(rows).max(0), 1e-6)
        np.testing.assert_allclose(
            np.asarray(stats[path].abs_sum), np.abs(rows).sum(0), rtol=1e-5, atol=1e-5
        )
    # query and key read the same input: one accumulator, one calibration group
    assert stats["query"].hessian is stats["key"].hessian
    layers = find_layers(model, variables, x)
    assert [layer.path for layer in layers] == ["conv", "mix", "query", "key", "head"]
    assert [[layer.path for layer in g] for g in input_groups(layers)] == [
        ["conv"], ["mix"], ["query", "key"], ["head"]
    ]  # fmt: skip
    assert {layer.view for layer in layers} == {(8, 8)}
    assert [layer.shape for layer in layers] == [
        (2, 2, 2, 8),
        (2, 4, 8),
        (8, 2, 4),
        (8, 2, 4),
        (8, 8),
    ]  # noqa: E501


CONVS = [
    (nn.Conv(4, (3, 3), (2, 1), "SAME", kernel_dilation=(1, 2)), (2, 7, 6, 3)),
    (nn.Conv(3, (2, 3), padding="CIRCULAR"), (2, 5, 6, 2)),
    (nn.Conv(3, (3, 3), padding=((1, 0), (2, 1))), (2, 5, 5, 2)),
    (nn.Conv(4, (3,), padding="CAUSAL", kernel_dilation=2), (2, 9, 3)),
    (nn.Conv(2, (3,), strides=2, padding="SAME"), (9, 2)),  # unbatched
]


def test_conv_patches_view_reproduces_the_convolution():
    """``patches @ kernel.reshape(-1, out) + bias`` is the convolution (float64 product), for
    strides, dilation, SAME / CIRCULAR / explicit / CAUSAL padding and 1-D / unbatched inputs
    """

    rng = np.random.default_rng(0)
    for conv, shape in CONVS:
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        variables = np_init(conv, x, 1)
        y, patches = jax.jit(lambda v, x, c=conv: (c.apply(v, x), _linear.conv_rows(c, x)))(
            variables, x
        )
        kernel = variables["params"]["kernel"]
        w = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
        assert patches.shape[1] == w.shape[0], conv
        ref = np.asarray(patches, np.float64) @ w + np.asarray(variables["params"]["bias"])
        np.testing.assert_allclose(ref.reshape(np.shape(y)), y, atol=1e-5, err_msg=repr(conv))


def test_conv_hessian_is_gram_of_patches(mixed):
    model, variables, x = mixed
    h, count = collect_hessians(model, variables, [x])["conv"]
    conv = nn.Conv(8, (2, 2), strides=(2, 1), padding="SAME")  # the view needs no params
    p = np.asarray(_linear.conv_rows(conv, x), np.float64)
    assert int(count) == 10 * 3 * 4 and p.shape == (120, 8)
    np.testing.assert_allclose(np.asarray(h), p.T @ p, rtol=2e-5, atol=1e-4)


def test_batches_accumulate_to_the_one_big_batch(mixed):
    model, variables, x = mixed
    one = collect_stats(model, variables, [x])
    parts = collect_stats(model, variables, [x[:3], x[3:7], x[7:]])
    for path in one:
        for a, b in zip(one[path], parts[path], strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "method, settings", [("sparsegpt", {"sparsity": 0.7}), ("gptq", {"bits": 2})]
)
def test_sequential_calibrates_on_the_compressed_layers_and_is_better(method, settings):
    """Dense_0 sees the same input in both modes, so Dense_1's input in the compressed model
    is the same too; sequential mode fits Dense_1 to that input, parallel mode to the float
    model's, so sequential reconstructs Dense_1 better on what it really receives."""
    model, variables, x = _mlp()
    batches = [x[:256], x[256:]]
    runs = {
        seq: compress_model(model, variables, batches, method=method, settings=settings,
                            sequential=seq)
        for seq in (True, False)
    }  # fmt: skip
    (seq_vars, seq_rep), (par_vars, par_rep) = runs[True], runs[False]
    k = lambda v, p: v["params"][p]["kernel"]  # noqa: E731
    np.testing.assert_array_equal(k(seq_vars, "Dense_0"), k(par_vars, "Dense_0"))
    assert not np.array_equal(k(seq_vars, "Dense_1"), k(par_vars, "Dense_1"))
    # the reported Hessian rows are those of the compressed model's inputs in sequential mode
    inputs = capture_layer_inputs(model, seq_vars, x)["Dense_1"]
    h = inputs.T @ inputs
    w = k(variables, "Dense_1")
    err_seq = output_error(w, k(seq_vars, "Dense_1"), h)
    err_par = output_error(w, k(par_vars, "Dense_1"), h)
    assert err_seq < 0.99 * err_par, (err_seq, err_par)
    assert seq_rep.layers[1].rel_error == pytest.approx(err_seq, rel=1e-3)
    assert seq_rep.sequential and not par_rep.sequential


def test_per_layer_rules_apply():
    model, variables, x = _mlp()
    layers = {"Dense": {"sparsity": 0.25}, "Dense_0": {"sparsity": 0.75}, "Dense_2": "skip"}
    new, report = compress_model(
        model, variables, [x], method="sparsegpt", settings={"sparsity": 0.5}, layers=layers
    )  # noqa: E501
    zeros = {p: int(jnp.sum(new["params"][p]["kernel"] == 0)) for p in ("Dense_0", "Dense_1")}
    assert zeros == {"Dense_0": round(0.75 * 32 * 32), "Dense_1": round(0.25 * 32 * 32)}
    np.testing.assert_array_equal(
        new["params"]["Dense_2"]["kernel"], variables["params"]["Dense_2"]["kernel"]
    )
    rules = [(r.path, r.rule, r.settings and r.settings["sparsity"]) for r in report.layers]
    assert rules == [
        ("Dense_0", "Dense_0", 0.75),
        ("Dense_1", "Dense", 0.25),
        ("Dense_2", "Dense_2", None),
    ]  # noqa: E501
    # an n_m rule replaces the global sparsity of the layers it matches
    new, _ = compress_model(
        model,
        variables,
        [x],
        method="wanda",
        settings={"sparsity": 0.5},
        layers={"Dense_1": {"n_m": (1, 4)}},
    )  # noqa: E501
    kept = (np.asarray(new["params"]["Dense_1"]["kernel"]) != 0).reshape(8, 4, 32).sum(1)
    assert np.all(kept == 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"settings": {"bits": 9}}, r"settings\.bits=9 must be an int in \[2, 8\]"),
        ({"settings": {"bits": 1}}, r"settings\.bits=1 must be an int in \[2, 8\]"),
        (
            {"method": "sparsegpt", "settings": {"sparsity": 1.0}},
            r"settings\.sparsity=1\.0 .*\[0, 1\)",
        ),  # noqa: E501
        ({"method": "sparsegpt", "settings": {"sparsity": -0.1}}, r"settings\.sparsity=-0\.1"),
        (
            {"method": "wanda", "settings": {"n_m": (2, 3)}},
            r"settings\.n_m=2:3 does not fit layer 'Dense_0' .*m=3 must divide its 32 inputs",
        ),  # noqa: E501
        ({"settings": {"group_size": 7}}, r"settings\.group_size=7 does not fit layer 'Dense_0'"),
        (
            {"settings": {"act_order": True}, "method": "rtn"},
            r"settings\.act_order is not read by method 'rtn'",
        ),  # noqa: E501
        ({"layers": {"Dense_9": "skip"}}, r"layers names \['Dense_9'\], which match no layer"),
        (
            {"layers": {"Dense_1": {"bits": 12}}},
            r"layers\['Dense_1'\]\.bits=12 must be an int in \[2, 8\]",
        ),  # noqa: E501
        (
            {"layers": {"Dense_1": {"group_size": 5}}},
            r"layers\['Dense_1'\]\.group_size=5 does not fit layer 'Dense_1' .*\(32, 32\)",
        ),  # noqa: E501
        (
            {"layers": {"Dense_1": 3}},
            r"layers\['Dense_1'\]=3 must be a mapping of settings or 'skip'",
        ),  # noqa: E501
        ({"method": "quantize"}, r"method='quantize' is not known"),
    ],
)
def test_errors_name_the_layer_and_the_setting(kwargs, match):
    model, variables, x = _mlp()
    kwargs = {"method": "gptq", **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        compress_model(model, variables, [x[:64]], **kwargs)


def test_errors_name_the_recipe_field_and_fail_before_calibrating():
    model, variables, x = _mlp()
    shapes = jax.eval_shape(lambda: variables)
    with pytest.raises(ValueError, match=r"config\.one_shot\.n_m=2:3 does not fit layer 'Dense_0'"):
        plan_compression(model, shapes, x[:1], method="sparsegpt", settings={"n_m": "2:3"},
                         field="config.one_shot")  # fmt: skip


def test_nan_hessian_and_bad_batches_are_refused():
    model, variables, x = _mlp()
    bad = x.at[3, 5].set(jnp.nan)
    with pytest.raises(ValueError, match=r"layer 'Dense_0': its calibration hessian holds .*NaN"):
        compress_model(model, variables, [bad], method="sparsegpt")
    with pytest.raises(ValueError, match=r"batches\[1\] has per-example shape \(31,\)"):
        compress_model(model, variables, [x, x[:, :31]], method="sparsegpt")
    with pytest.raises(ValueError, match="batches is empty"):
        compress_model(model, variables, [], method="sparsegpt")
    with pytest.raises(TypeError, match="not one array"):
        compress_model(model, variables, x, method="sparsegpt")


def test_smoothquant_refuses_a_convolution(mixed):
    model, variables, x = mixed
    with pytest.raises(ValueError, match=r"'smoothquant' .*layer 'conv'.*\{'conv': 'skip'\}"):
        compress_model(model, variables, [x], method="smoothquant")


@pytest.mark.parametrize(
    "method, settings",
    [("rtn", {"bits": 4, "group_size": 2}), ("gptq", {"bits": 3}), ("awq", {"n_grid": 4})],
)
def test_stored_qparams_compute_the_returned_float_model(mixed, method, settings):
    """Every layer kind (conv, DenseGeneral, head projections, Dense) round-trips through its
    stored form, and quantized kernels hold exactly the values the float kernels have."""
    model, variables, x = mixed
    new, report = compress_model(
        model, variables, [x], method=method, settings=settings, sequential=False
    )
    stored = {**variables, "params": report.qparams}

    @jax.jit
    def outputs(new, stored):
        return (
            model.apply(new, x),
            apply_with_qtensors(model, stored, x),
            apply_with_qtensors(model, stored, x, on_the_fly=False),
        )

    ref, on_the_fly, dequantized = outputs(new, stored)
    np.testing.assert_allclose(on_the_fly, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dequantized, ref, rtol=1e-4, atol=1e-4)
    kinds = {p: type(report.qparams[p]["kernel"]).__name__ for p in ("conv", "query", "head")}
    expected = "QuantizedKernel" if method == "awq" else "QTensor"
    assert kinds == {"conv": "QuantizedKernel", "query": "QuantizedKernel", "head": expected}


# ----------------------------------------------------------------------- joint sweep
def np_sparse_gptq(w, h, sparsity, bits, block, damp=0.01, symmetric=False):
    """SparseGPT with quantization in the sweep (per-column grids from the original kernel),
    loop form, float64."""
    w, h = np.array(w, np.float64), np.array(h, np.float64)
    n_in, n_out = w.shape
    scale, zp, qmin, qmax = np_grid(w, bits, symmetric)
    hd = h + damp * np.mean(np.diag(h)) * np.eye(n_in)
    u = np.linalg.cholesky(np.linalg.inv(hd)).T
    d = np.diag(u)
    q = np.zeros_like(w)
    pruned = np.zeros(w.shape, bool)
    for i in range(n_in):
        if i % block == 0:
            end = min(i + block, n_in)
            sal = (w[i:end] / d[i:end, None]) ** 2
            k = round(sparsity * n_out * end) - round(sparsity * n_out * i)
            mask = np.zeros(sal.size, bool)
            mask[np.argsort(sal.ravel(), kind="stable")[:k]] = True
            pruned[i:end] = mask.reshape(end - i, n_out)
        r = (np.clip(np.round(w[i] / scale) + zp, qmin, qmax) - zp) * scale
        q[i] = np.where(pruned[i], 0.0, r)
        err = (w[i] - q[i]) / u[i, i]
        w[i:] -= np.outer(u[i, i:], err)
    return q


def test_sparsegpt_gptq_matches_a_float64_loop_and_keeps_exact_zeros(symmetric=False):
    model, variables, x = _mlp()
    new, report = compress_model(
        model,
        variables,
        [x],
        method="sparsegpt+gptq",
        settings={"sparsity": 0.5, "bits": 4, "block_size": 16, "symmetric": symmetric},
        layers={"Dense_1": "skip", "Dense_2": "skip"},
    )
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    h = np.asarray(x, np.float64).T @ np.asarray(x, np.float64)
    ref = np_sparse_gptq(w, h, 0.5, 4, 16, symmetric=symmetric)
    out = np.asarray(new["params"]["Dense_0"]["kernel"], np.float64)
    assert np.mean((out == 0) == (ref == 0)) > 0.98
    xf = np.asarray(x, np.float64)
    e, e_ref = (np.sum((xf @ (w - v)) ** 2) for v in (out, ref))
    assert abs(e - e_ref) <= 0.05 * e_ref, (e, e_ref)
    assert int(np.sum(out == 0)) >= round(0.5 * w.size)
    q = report.qparams["Dense_0"]["kernel"]
    np.testing.assert_array_equal(np.asarray(qz.dequantize(q)), out.astype(np.float32))


@pytest.mark.parametrize("target", [{"sparsity": 0.6}, {"n_m": "2:4"}])
def test_magnitude_against_numpy(target):
    w = np.random.default_rng(3).standard_normal((32, 12)).astype(np.float32)
    w_hat, stored = compress_layer(
        "magnitude", jnp.asarray(w), None, check_settings("magnitude", target)
    )
    w_hat = np.asarray(w_hat)
    assert stored is None
    if "sparsity" in target:  # the round(0.6 * 384) smallest |w| of the whole kernel
        ref = np.where(np.abs(w) > np.sort(np.abs(w).ravel())[round(0.6 * w.size) - 1], w, 0)
    else:  # the 2 largest |w| of every 4 consecutive inputs of each column
        groups = np.abs(w).reshape(8, 4, 12)
        keep = np.argsort(np.argsort(-groups, axis=1), axis=1) < 2
        ref = np.where(keep.reshape(w.shape), w, 0)
    np.testing.assert_array_equal(w_hat, ref)
