"""Tests of the distillation losses (jaxopt_models.distillation)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models import distillation as kd
from jaxopt_models.models import MLP, DeepCNN

# ---------------------------------------------------------------- float64 NumPy references


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_kd_loss(s: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
    """T^2 * KL(softmax(t/T) || softmax(s/T)) in float64."""
    log_ps = np_log_softmax(np.asarray(s, np.float64) / temperature)
    log_pt = np_log_softmax(np.asarray(t, np.float64) / temperature)
    return temperature**2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)


def np_kd_grad(s: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
    """T * (softmax(s/T) - softmax(t/T)) in float64."""
    ps = np.exp(np_log_softmax(np.asarray(s, np.float64) / temperature))
    pt = np.exp(np_log_softmax(np.asarray(t, np.float64) / temperature))
    return temperature * (ps - pt)


def np_cross_entropy(s: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return -np.take_along_axis(np_log_softmax(s), labels[..., None], -1)[..., 0]


# A few fixed shapes keep the number of compilations small (the CPU is shared).
SHAPES = [(1, 2), (3, 10), (5, 7)]

kd_jit = jax.jit(lambda s, t, temp: kd.kd_loss(s, t, temperature=temp))
kd_grad_jit = jax.jit(jax.grad(lambda s, t, temp: kd.kd_loss(s, t, temperature=temp).sum()))
kd_jac_jit = jax.jit(jax.jacrev(lambda s, t, temp: kd.kd_loss(s, t, temperature=temp)))
distill_jit = jax.jit(
    lambda s, t, y, temp, a: kd.distillation_loss(s, t, y, temperature=temp, alpha=a)
)


@st.composite
def logits_pairs(draw, max_scale: float = 20.0):
    n, c = draw(st.sampled_from(SHAPES))
    scale = draw(st.floats(0.1, max_scale))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    s = (scale * rng.standard_normal((n, c))).astype(np.float32)
    t = (scale * rng.standard_normal((n, c))).astype(np.float32)
    return s, t


temperatures = st.floats(0.25, 25.0)


# ---------------------------------------------------------------- kd_loss


@settings(max_examples=25, deadline=None)
@given(pair=logits_pairs(), temperature=temperatures)
def test_kd_loss_matches_float64_reference(pair, temperature):
    s, t = pair
    got = np.asarray(kd_jit(s, t, temperature))
    want = np_kd_loss(s, t, temperature)
    assert got.shape == want.shape == (s.shape[0],)
    assert got.dtype == np.float32
    # float32 rounding of the log-probabilities (|log p| <= ~|logits|/T + log C), scaled
    # by T^2, bounds the absolute error.
    log_scale = np.abs(s).max() / temperature + np.log(s.shape[-1]) + 1.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=4e-7 * temperature**2 * log_scale)


@settings(max_examples=25, deadline=None)
@given(pair=logits_pairs(), temperature=temperatures)
def test_kd_loss_grad_is_t_times_softmax_difference_per_example(pair, temperature):
    s, t = pair
    # the gradient of the sum is the per-example gradient (each loss depends on its row)
    grad = kd_grad_jit(s, t, temperature)
    np.testing.assert_allclose(grad, np_kd_grad(s, t, temperature), atol=1e-5 * temperature)
    # and per example through the Jacobian: row i only depends on example i
    jac = kd_jac_jit(s, t, temperature)
    off_diag = jac * (1 - np.eye(s.shape[0]))[:, :, None]
    assert np.all(np.asarray(off_diag) == 0)


@settings(max_examples=25, deadline=None)
@given(pair=logits_pairs(), temperature=temperatures)
def test_kd_loss_is_nonnegative_and_exactly_zero_when_equal(pair, temperature):
    s, t = pair
    assert np.all(np.asarray(kd_jit(s, t, temperature)) >= -1e-5 * temperature**2)
    same = kd_jit(s, s, temperature)
    np.testing.assert_array_equal(same, np.zeros(s.shape[0], np.float32))
    grad = kd_grad_jit(s, s, temperature)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6 * temperature)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_kd_loss_finite_and_exact_for_logits_of_magnitude_1e4(temperature):
    rng = np.random.default_rng(0)
    s = (1e4 * rng.choice([-1.0, 1.0], (8, 10)) * rng.uniform(0.5, 1.0, (8, 10))).astype(np.float32)
    t = (1e4 * rng.choice([-1.0, 1.0], (8, 10)) * rng.uniform(0.5, 1.0, (8, 10))).astype(np.float32)
    t[0] = s[0]  # one example where they agree
    loss, grad = jax.jit(
        jax.value_and_grad(lambda z: kd.kd_loss(z, t, temperature=temperature).sum())
    )(s)
    per_example = kd.kd_loss(s, t, temperature=temperature)
    assert np.all(np.isfinite(per_example)) and np.isfinite(loss)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(per_example, np_kd_loss(s, t, temperature), rtol=1e-5)
    assert per_example[0] == 0
    np.testing.assert_allclose(grad, np_kd_grad(s, t, temperature), atol=1e-5 * temperature)


def test_kd_loss_at_high_temperature_tends_to_half_the_centred_logit_mse():
    rng = np.random.default_rng(1)
    s, t = rng.standard_normal((2, 5, 7)).astype(np.float32)
    hot = kd.kd_loss(s, t, temperature=200.0)
    mse = kd.mse_logits_loss(s, t, center=True)
    np.testing.assert_allclose(hot, 0.5 * np.asarray(mse), rtol=2e-2)


def test_kd_loss_broadcasts_over_leading_axes_and_keeps_input_dtype():
    rng = np.random.default_rng(2)
    s, t = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    out = kd.kd_loss(s, t, temperature=2.0)
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out, np_kd_loss(s, t, 2.0), rtol=1e-5, atol=1e-6)
    assert kd.kd_loss(s.astype(jnp.bfloat16), t.astype(jnp.bfloat16), temperature=2).dtype == (
        jnp.bfloat16
    )


def test_kd_loss_takes_a_traced_temperature_and_compiles_once():
    rng = np.random.default_rng(3)
    s, t = rng.standard_normal((2, 4, 6)).astype(np.float32)
    fn = jax.jit(chex.assert_max_traces(lambda a, b, temp: kd.kd_loss(a, b, temperature=temp), 1))
    for temp in (1.0, 2.0, 4.0):
        np.testing.assert_allclose(fn(s, t, temp), np_kd_loss(s, t, temp), rtol=1e-5, atol=1e-6)
    sweep = jax.vmap(lambda temp: kd.kd_loss(s, t, temperature=temp))(jnp.array([1.0, 8.0]))
    np.testing.assert_allclose(sweep[1], np_kd_loss(s, t, 8.0), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- distillation_loss, mse


@settings(max_examples=15, deadline=None)
@given(pair=logits_pairs(), temperature=temperatures, alpha=st.floats(0.0, 1.0))
def test_distillation_loss_is_alpha_kd_plus_one_minus_alpha_ce(pair, temperature, alpha):
    s, t = pair
    labels = np.random.default_rng(int(s.shape[1])).integers(0, s.shape[1], s.shape[0])
    got = distill_jit(s, t, labels.astype(np.int32), temperature, alpha)
    want = alpha * np_kd_loss(s, t, temperature) + (1 - alpha) * np_cross_entropy(s, labels)
    log_scale = np.abs(s).max() / temperature + np.log(s.shape[-1]) + 1.0
    np.testing.assert_allclose(
        got, want, rtol=1e-4, atol=4e-7 * max(temperature**2, 1.0) * log_scale + 1e-5
    )


def test_distillation_loss_endpoints():
    rng = np.random.default_rng(4)
    s, t = rng.standard_normal((2, 5, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0])
    only_kd = kd.distillation_loss(s, t, y, temperature=3.0, alpha=1.0)
    np.testing.assert_allclose(only_kd, kd.kd_loss(s, t, temperature=3.0), rtol=1e-6)
    only_ce = kd.distillation_loss(s, t, y, temperature=3.0, alpha=0.0)
    np.testing.assert_allclose(
        only_ce, optax.softmax_cross_entropy_with_integer_labels(s, y), rtol=1e-6
    )


@pytest.mark.parametrize("center", [False, True])
def test_mse_logits_loss_matches_reference(center):
    rng = np.random.default_rng(5)
    s, t = (3 * rng.standard_normal((2, 6, 5))).astype(np.float32)
    d = s.astype(np.float64) - t
    if center:
        d -= d.mean(-1, keepdims=True)
    np.testing.assert_allclose(kd.mse_logits_loss(s, t, center=center), (d**2).mean(-1), rtol=1e-5)
    grad = jax.grad(lambda z: kd.mse_logits_loss(z, t, center=center).sum())(s)
    np.testing.assert_allclose(grad, 2 * d / s.shape[-1], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- errors

S = np.zeros((4, 3), np.float32)
Y = np.zeros((4,), np.int32)


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_a_value_error_naming_it(temperature):
    with pytest.raises(ValueError, match=r"temperature=.* must be a finite number > 0"):
        kd.kd_loss(S, S, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        kd.distillation_loss(S, S, Y, temperature=temperature, alpha=0.5)


@pytest.mark.parametrize("temperature", [True, "4", None])
def test_temperature_of_the_wrong_type_is_a_type_error(temperature):
    with pytest.raises(TypeError, match="temperature"):
        kd.kd_loss(S, S, temperature=temperature)


def test_temperature_must_be_a_scalar():
    with pytest.raises(ValueError, match=r"temperature must be a scalar.*\(2,\)"):
        kd.kd_loss(S, S, temperature=np.array([1.0, 2.0]))
    kd.kd_loss(S, S, temperature=np.float32(2.0))  # NumPy and JAX scalars are fine
    kd.kd_loss(S, S, temperature=jnp.asarray(2.0))
    with pytest.raises(ValueError, match="temperature"):
        kd.kd_loss(S, S, temperature=jnp.asarray(-2.0))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval_is_a_value_error(alpha):
    with pytest.raises(ValueError, match=r"alpha=.* must be in \[0, 1\]"):
        kd.distillation_loss(S, S, Y, temperature=1.0, alpha=alpha)


def test_mismatched_logits_shapes_name_the_argument():
    with pytest.raises(ValueError, match=r"teacher_logits has shape \(4, 5\).*\(4, 3\)"):
        kd.kd_loss(S, np.zeros((4, 5)), temperature=1.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        kd.distillation_loss(S, np.zeros((3, 3)), Y, temperature=1.0, alpha=0.5)
    with pytest.raises(ValueError, match="teacher_logits"):
        kd.mse_logits_loss(S, np.zeros((4,)))
    with pytest.raises(ValueError, match="student_logits must have a class axis"):
        kd.kd_loss(np.float32(1.0), np.float32(1.0), temperature=1.0)


def test_bad_labels_name_the_argument():
    with pytest.raises(ValueError, match=r"labels has shape \(3,\)"):
        kd.distillation_loss(S, S, Y[:3], temperature=1.0, alpha=0.5)
    with pytest.raises(TypeError, match="labels must be integer"):
        kd.distillation_loss(S, S, Y.astype(np.float32), temperature=1.0, alpha=0.5)


@pytest.mark.parametrize("bad", [-1, 3, 1000])
@pytest.mark.parametrize("as_jax", [False, True])
def test_labels_outside_the_classes_raise_when_concrete(bad, as_jax):
    labels = np.array([0, 2, bad, 1], np.int32)
    labels = jnp.asarray(labels) if as_jax else labels
    with pytest.raises(ValueError, match=rf"class ids in \[0, 3\).*got {bad} at index \(2,\)"):
        kd.distillation_loss(S, S, labels, temperature=2.0, alpha=0.5)
    # alpha = 1 ignores the labels' values but not their validity.
    with pytest.raises(ValueError, match="1 labels out of range"):
        kd.distillation_loss(S, S, labels, temperature=2.0, alpha=1.0)


def test_labels_at_the_edges_of_the_classes_are_accepted():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((2, 3, 4)).astype(np.float32)
    y = np.array([[0, 3, 1], [3, 0, 2]], np.int32)  # leading axes, ids 0 and C - 1
    got = kd.distillation_loss(s, s, y, temperature=2.0, alpha=0.0)
    np.testing.assert_allclose(got, np_cross_entropy(s, y), rtol=1e-5, atol=1e-6)


def test_labels_under_jit_cannot_be_checked_and_give_nan():
    # Documented limit: traced labels have no values; an out-of-range id gives NaN.
    y = np.array([0, 5, 1, 2], np.int32)
    out = np.asarray(distill_jit(S, S, y, 1.0, 0.5))
    assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2, 3]]))


# ---------------------------------------------------------------- feature (hint) loss


def test_feature_loss_without_projection_matches_reference():
    rng = np.random.default_rng(6)
    s, t = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    want = ((s.astype(np.float64) - t) ** 2).reshape(4, -1).mean(-1)
    np.testing.assert_allclose(kd.feature_loss(s, t), want, rtol=1e-5)
    np.testing.assert_array_equal(kd.feature_loss(s, s), np.zeros(4, np.float32))


def test_feature_loss_with_projection_matches_reference_and_trains_the_projection():
    rng = np.random.default_rng(7)
    s = rng.standard_normal((16, 6)).astype(np.float32)
    t = rng.standard_normal((16, 9)).astype(np.float32)
    proj = kd.init_feature_projection(jax.random.key(0), 6, 9)
    assert proj.kernel.shape == (6, 9) and proj.bias.shape == (9,)
    np.testing.assert_array_equal(proj.bias, 0)
    proj = proj._replace(bias=jnp.asarray(rng.standard_normal(9), jnp.float32))
    want = ((s.astype(np.float64) @ np.asarray(proj.kernel) + np.asarray(proj.bias) - t) ** 2).mean(
        -1
    )
    np.testing.assert_allclose(kd.feature_loss(s, t, projection=proj), want, rtol=1e-5)

    # gradients reach the projection: a few SGD steps reduce the hint loss
    loss = lambda p: kd.feature_loss(s, t, projection=p).mean()
    grad_fn = jax.jit(jax.value_and_grad(loss))
    first, g = grad_fn(proj)
    assert np.abs(np.asarray(g.kernel)).sum() > 0 and np.abs(np.asarray(g.bias)).sum() > 0
    for _ in range(50):
        value, g = grad_fn(proj)
        proj = jax.tree.map(lambda p, d: p - 0.1 * d, proj, g)
    assert float(loss(proj)) < 0.8 * float(first)


def test_hidden_state_loss_per_position_matches_reference():
    rng = np.random.default_rng(8)
    s = rng.standard_normal((2, 5, 6)).astype(np.float32)
    t = rng.standard_normal((2, 5, 9)).astype(np.float32)
    proj = kd.init_feature_projection(jax.random.key(1), 6, 9)
    proj = proj._replace(bias=jnp.asarray(rng.standard_normal(9), jnp.float32))
    p = s.astype(np.float64) @ np.asarray(proj.kernel) + np.asarray(proj.bias)
    mse = kd.hidden_state_loss(s, t, kind="mse", projection=proj)
    assert mse.shape == (2, 5)  # one loss per position
    np.testing.assert_allclose(mse, ((p - t) ** 2).mean(-1), rtol=1e-5)
    cos = (p * t).sum(-1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1))
    np.testing.assert_allclose(
        kd.hidden_state_loss(s, t, kind="cosine", projection=proj), 1 - cos, rtol=1e-5, atol=1e-6
    )
    # cosine is scale free; both are zero for equal states
    np.testing.assert_allclose(kd.hidden_state_loss(3 * t, t, kind="cosine"), 0, atol=1e-6)
    np.testing.assert_array_equal(kd.hidden_state_loss(t, t, kind="mse"), 0)
    with pytest.raises(ValueError, match="kind"):
        kd.hidden_state_loss(t, t, kind="l1")
    with pytest.raises(ValueError, match="pass projection= when the widths differ"):
        kd.hidden_state_loss(s, t)


def test_feature_loss_errors_name_the_argument():
    s, t = np.zeros((4, 6)), np.zeros((4, 9))
    with pytest.raises(ValueError, match=r"teacher_features has shape .*pass projection="):
        kd.feature_loss(s, t)
    wrong = kd.init_feature_projection(jax.random.key(0), 5, 9)
    with pytest.raises(ValueError, match=r"student_features has width 6"):
        kd.feature_loss(s, t, projection=wrong)
    with pytest.raises(ValueError, match="student_features must have shape"):
        kd.feature_loss(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="student_width"):
        kd.init_feature_projection(jax.random.key(0), 0, 9)
    with pytest.raises(ValueError, match="teacher_width"):
        kd.init_feature_projection(jax.random.key(0), 3, 2.5)


def test_capture_features_returns_the_named_layer_outputs():
    model = MLP(features=(8, 4), num_classes=3)
    x = np.random.default_rng(8).standard_normal((5, 6)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    capture = jax.jit(
        lambda v, x: kd.capture_features(model.apply, v, x, ["Dense_1", "Dense_0"], train=False)
    )
    out, feats, updates = capture(variables, x)
    np.testing.assert_allclose(out, jax.jit(model.apply)(variables, x), rtol=1e-6)
    assert set(feats) == {"Dense_1", "Dense_0"} and updates == {}
    p = variables["params"]["Dense_0"]
    np.testing.assert_allclose(feats["Dense_0"], x @ p["kernel"] + p["bias"], rtol=1e-5, atol=1e-6)
    assert feats["Dense_1"].shape == (5, 4)
    with pytest.raises(ValueError, match=r"\['Dense_9'\] produced no output.*Dense_0"):
        kd.capture_features(model.apply, variables, x, ["Dense_9"])
    with pytest.raises(ValueError, match="layers"):
        kd.capture_features(model.apply, variables, x, "Dense_0")


def test_capture_features_with_batch_stats_and_sown_values():
    model = DeepCNN(stages=((4,), (4,)), hidden=(), num_classes=3)
    x = np.random.default_rng(9).standard_normal((2, 8, 8, 1)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    capture = jax.jit(
        lambda v, x: kd.capture_features(
            model.apply, v, x, ["BatchNorm_1"], mutable=["batch_stats"], train=True
        )
    )
    _, feats, updates = capture(variables, x)
    assert feats["BatchNorm_1"].shape == (2, 4, 4, 4)
    assert set(updates) == {"batch_stats"}

    class Sowing(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            h = nn.Dense(3, name="hidden")(x)
            self.sow("intermediates", "act", nn.relu(h))
            return h.sum(-1)

    m = Sowing()
    v = jax.jit(m.init)(jax.random.key(1), x.reshape(2, -1))
    capture = jax.jit(lambda v, x: kd.capture_features(m.apply, v, x, ["act", "hidden"]))
    _, feats, _ = capture(v, x.reshape(2, -1))
    np.testing.assert_allclose(feats["act"], jax.nn.relu(feats["hidden"]))
