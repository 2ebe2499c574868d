"""The LM throughput benchmark on tiny shapes, and the CPU formulations it measures.

``benchmarks/lm_throughput.py`` times the library's LM step against a minimal loop, cached
decoding against recomputation, and the transformer's CPU kernels (``_rows_matmul``,
``_softmax_attention``); the kernels must give the plain formulations' values and gradients.
"""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models.models import transformer

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
TINY = {"layers": 1, "heads": 2, "width": 16, "context": 8, "batch": 2}


def _benchmark_module(name: str):
    """Imports ``benchmarks/<name>.py`` (with ``benchmarks/`` on the path while in use)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(BENCHMARKS)


@pytest.fixture(scope="module")
def bench():
    yield from _benchmark_module("lm_throughput")


def test_train_steps_train_the_same_model_and_give_a_ratio(bench):
    steps = bench.train_steps(TINY, naive=False)  # (the naive Flax model: benchmark only)
    assert set(steps) == {"ours", "minimal"}
    first = {name: float(step()) for name, step in steps.items()}  # compiles each
    np.testing.assert_allclose(first["ours"], first["minimal"], rtol=1e-5)  # same init, loss
    assert 3.5 < first["ours"] < 5.0  # about log(65) at initialisation
    times = bench.time_interleaved(steps, rounds=2, iters=1, warmup=0)
    for seconds in times.values():
        assert len(seconds) == 2 and all(0 < s < 60 for s in seconds)
    assert float(steps["ours"]()) < first["ours"]  # the recipe's step learns the batch
    ratio = bench.median(times["minimal"]) / bench.median(times["ours"])
    assert 0.05 < ratio < 20


def test_cached_decoding_equals_recomputation(bench):
    out = bench.measure_decode(TINY, context=16, prompt_len=3, rounds=1)
    assert out["identical"], out["first_mismatch"]
    assert out["new_tokens"] == 13
    assert set(out["times"]) == {"kv cache", "recompute"}
    cached, full = (bench.median(out["times"][k]) for k in ("kv cache", "recompute"))
    assert cached > 0 and full > 0


def test_blocked_causal_attention_measurement_is_causal_attention(bench):
    rng = np.random.default_rng(4)
    q, k, v, r = (jnp.asarray(rng.normal(size=(2, 3, 12, 8)), jnp.float32) for _ in range(4))
    heads = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731

    def plain(q, k, v):
        return heads(jax.nn.dot_product_attention(*map(heads, (q, k, v)), is_causal=True))

    def blocked(q, k, v):
        return bench.blocked_causal_attention(q, k, v, 4)

    np.testing.assert_allclose(blocked(q, k, v), plain(q, k, v), atol=1e-5)
    grad = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * r), argnums=(0, 1, 2))(q, k, v)  # noqa: E731
    for a, b in zip(grad(blocked), grad(plain), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------- CPU kernels


def _attention_reference(q, k, v, mask):
    """Float64 NumPy attention; ``mask`` (T, S) or (B, 1, T, S) bool, GQA by head groups."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v)


@pytest.mark.parametrize(
    "heads,kv_heads,t,s,causal,padded",
    [(4, 4, 6, 6, True, False), (4, 2, 6, 6, True, False), (2, 1, 5, 5, False, True),
     (4, 2, 1, 7, False, True), (2, 2, 3, 3, True, True)],
)  # fmt: skip
def test_library_attention_matches_reference_and_dot_product_attention(
    heads, kv_heads, t, s, causal, padded
):
    rng = np.random.default_rng(heads * 10 + t)
    q = jnp.asarray(rng.normal(size=(2, t, heads, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, s, kv_heads, 8)), jnp.float32) for _ in range(2))
    mask = None
    if padded:  # the second sequence's last key is padding
        keep = np.ones((2, 1, 1, s), bool)
        keep[1, ..., -1] = False
        mask = jnp.asarray(keep)
    allowed = np.ones((t, s), bool)
    if causal:
        allowed = np.tril(allowed)
    if mask is not None:
        allowed = allowed & np.asarray(mask)
    got = jax.jit(transformer._attention, static_argnums=4)(q, k, v, mask, causal)
    np.testing.assert_allclose(got, _attention_reference(q, k, v, allowed), atol=2e-5)

    r = jnp.asarray(rng.normal(size=got.shape), jnp.float32)

    def loss(attention):
        grad = jax.grad(lambda *a: jnp.sum(attention(*a) * r), argnums=(0, 1, 2))
        return jax.jit(grad)(q, k, v)

    ours = loss(lambda q, k, v: transformer._attention(q, k, v, mask, causal))
    plain = loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal))
    for a, b in zip(ours, plain, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
        assert float(jnp.abs(a).max()) > 0


def test_library_attention_in_bfloat16_stays_close():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 6, 2, 8)), jnp.float32) for _ in range(3))
    want = transformer._attention(q, k, v, None, True)
    bf = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    got = transformer._attention(*bf, None, True)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.05)
    grad = jax.jit(jax.grad(lambda q: jnp.sum(transformer._attention(q, *bf[1:], None, True))))
    grads = grad(bf[0])
    assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads)))


@pytest.mark.parametrize("lead", [(6,), (2, 3)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_linear_dot_general_values_and_gradients(lead, dtype):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(*lead, 4, 5)), dtype)
    w = jnp.asarray(rng.normal(size=(4, 5, 3)), dtype)
    dims = (((x.ndim - 2, x.ndim - 1), (0, 1)), ((), ()))
    want = np.einsum("...ij,ijk->...k", np.asarray(x, np.float64), np.asarray(w, np.float64))
    got = transformer._dot_general(x, w, dims)
    assert got.shape == (*lead, 3) and got.dtype == dtype
    tol = 1e-4 if dtype == jnp.float32 else 0.1
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=tol, rtol=tol)

    def grads(dot_general):
        f = lambda x, w: jnp.sum(dot_general(x, w, dims).astype(jnp.float32) ** 2)  # noqa: E731
        return jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)

    for a, b in zip(grads(transformer._dot_general), grads(jax.lax.dot_general), strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol)


def test_linear_dot_general_falls_back_for_other_contractions():
    x, w = jnp.ones((2, 3)), jnp.ones((4, 3))
    y = transformer._dot_general(x, w, (((1,), (1,)), ((), ())))  # x @ w.T
    np.testing.assert_allclose(y, np.full((2, 4), 3.0))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gelu_kernel_matches_autodiff(dtype):
    rng = np.random.default_rng(2)
    x = jnp.asarray(3 * rng.normal(size=(5, 7)), dtype)
    r = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
    plain = lambda a: jax.nn.gelu(a, approximate=True)  # noqa: E731
    np.testing.assert_array_equal(transformer._gelu_tanh(x), plain(x))  # the same forward

    def grad(f):
        return jax.jit(jax.grad(lambda a: jnp.sum(f(a).astype(jnp.float32) * r)))(x)

    ours, plain_grad = grad(transformer._gelu_tanh), grad(plain)
    assert ours.dtype == plain_grad.dtype == dtype
    # the float64 derivative of the tanh GELU at the (rounded) inputs
    a, c = np.asarray(x, np.float64), np.sqrt(2 / np.pi)
    t = np.tanh(c * (a + 0.044715 * a**3))
    want = np.asarray(r, np.float64) * (
        0.5 * (1 + t) + 0.5 * a * (1 - t * t) * c * (1 + 3 * 0.044715 * a * a)
    )
    err = np.abs(np.asarray(ours, np.float64) - want)
    # float32: to rounding; bfloat16: to the output's rounding, and no worse than autodiff
    tol = 1e-5 if dtype == jnp.float32 else 8e-3
    np.testing.assert_allclose(np.asarray(ours, np.float64), want, rtol=tol, atol=tol)
    assert err.max() <= np.abs(np.asarray(plain_grad, np.float64) - want).max() + 1e-6
    assert float(jnp.abs(ours.astype(jnp.float32)).max()) > 0


def test_layer_norm_kernel_matches_flax_layer_norm():
    import flax.linen as nn

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(6, 10)) * 2 + 1, jnp.float32)
    r = jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)
    ours, plain = transformer._CPULayerNorm(epsilon=1e-5), nn.LayerNorm(epsilon=1e-5)
    params = plain.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), atol=1e-5)

    def grads(module):
        loss = lambda p, x: jnp.sum(module.apply(p, x) * r)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

    for a, b in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(plain)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- step profile


@pytest.fixture(scope="module")
def profiler():
    yield from _benchmark_module("lm_step_profile")


def test_op_categories_follow_the_op_names(profiler):
    cat = profiler.op_category
    step = "jit(train_step)/transpose(jvp(CausalLM))/block_0"
    assert cat("ynn_fusion.3", f"{step}/mlp/up/dot_general", True) == "linear layers"
    assert cat("ynn_fusion.4", f"{step}/attn/dot_general", True) == "attention core"
    assert cat("transpose_copy_fusion", f"{step}/attn/key/transpose", False) == "layout copies"
    assert cat("multiply_tanh_fusion", f"{step}/mlp/tanh", False) == "MLP activation"
    assert cat("add_rsqrt_fusion", f"{step}/mlp_norm/rsqrt", False) == "norms"
    assert cat("wrapped_reduce", "jit(train_step)/jvp(lm_loss)/reduce_sum", False) == "other"
    assert cat("multiply_add_fusion", "jit(train_step)/mul", False) == "optimizer"


def test_step_profile_attributes_the_compiled_step(profiler):
    out = profiler.profile_jax(TINY, steps=2)
    cats = out["categories"]
    assert set(cats) <= set(profiler.CATEGORIES)
    for category in ("linear layers", "attention core", "norms", "optimizer"):
        assert cats.get(category, 0.0) > 0, category
    assert out["step_ms"] > 0
    # every op XLA runs has an op name except a few constants and copies
    assert out["unattributed_ms"] < 0.5 * sum(cats.values())
