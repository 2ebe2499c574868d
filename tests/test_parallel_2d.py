"""Tests for training.sharded: FSDP and tensor parallelism on a 2-D ("data", "tensor") mesh.

The multi-device checks run this file as a script in a subprocess with 8 simulated CPU
devices (``XLA_FLAGS`` must be set before JAX starts its backend): a tiny causal LM trained
for 20 steps in every mode gives the losses of the one-device run.
"""

import functools
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import REPORT_PREFIX, ROOT, print_report, run_on_simulated_devices
from jax.sharding import PartitionSpec as P

from jaxopt_models import models, training
from jaxopt_models.recipes import build, lm
from jaxopt_models.training.sharded import (
    SHARDED_MODES,
    ShardedStep,
    check_param_specs,
    fsdp_specs,
    make_device_mesh,
    per_device_bytes,
    state_shardings,
)

NUM_DEVICES = 8
NUM_STEPS = 20
BATCH, LENGTH, VOCAB = 16, 16, 64
# name -> (mode, mesh shape, mesh_specs' mesh_axes or None for the engine's FSDP default)
RUNS = {
    "fsdp": ("fsdp", {"data": 8, "tensor": 1}, None),
    "tensor2": ("tensor", {"data": 1, "tensor": 2}, ("tensor",)),
    "tensor4": ("tensor", {"data": 1, "tensor": 4}, ("tensor",)),
    "data4_tensor2": ("tensor", {"data": 4, "tensor": 2}, ("tensor",)),
    "fsdp4_tensor2": ("fsdp", {"data": 4, "tensor": 2}, {"fsdp": "data", "tensor": "tensor"}),
}


# ---------------------------------------------------------------- shared helpers
def tiny_lm() -> models.CausalLM:
    return models.CausalLM(
        vocab_size=VOCAB, num_layers=2, num_heads=4, embed_dim=32, max_len=LENGTH
    )


SAMPLE = np.zeros((1, LENGTH), np.int32)


def lm_loss(logits, targets):
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def lm_data(num_steps: int = NUM_STEPS, seed: int = 0) -> np.ndarray:
    """Learnable windows: each counts up from a random start by a random stride (mod VOCAB)."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, VOCAB, (num_steps, BATCH, 1))
    stride = rng.integers(1, 4, (num_steps, BATCH, 1))
    return (start + stride * np.arange(LENGTH + 1)) % VOCAB


def lm_batch(windows: np.ndarray) -> dict[str, np.ndarray]:
    windows = windows.astype(np.int32)
    return {"tokens": windows[:, :-1], "targets": windows[:, 1:]}


@functools.cache
def _host_lm_state():
    state = training.create_train_state(tiny_lm(), jax.random.key(0), SAMPLE, optax.adamw(1e-2))
    return jax.device_get(state.replace(rng=jax.random.key_data(state.rng)))


def lm_state():
    """A fresh single-copy initial state (new buffers: the steps donate their input)."""
    state = jax.tree.map(jnp.array, _host_lm_state())
    return state.replace(rng=jax.random.wrap_key_data(state.rng))


def lm_step(parallel: str, mesh=None, param_specs=None):
    kwargs = {} if parallel == "none" else {"mesh": mesh, "param_specs": param_specs}
    return training.make_train_step(
        loss_fn=lm_loss, input_key="tokens", label_key="targets", parallel=parallel, **kwargs
    )


def train_lm(step, num_steps: int = NUM_STEPS):
    """``num_steps`` steps; returns the losses, the final single copy and the placed state
    before the first step's bytes per device."""
    data = lm_data(num_steps)
    state = step.place_state(lm_state())
    tree_bytes = per_device_bytes((state.params, state.opt_state))
    metrics = []
    for i in range(num_steps):
        state, m = step(state, lm_batch(data[i]))
        metrics.append(m)
    losses = [float(step.host_metrics(m)["loss"]) for m in metrics]
    after = per_device_bytes((state.params, state.opt_state))
    return np.asarray(losses), state, {"before": tree_bytes, "after": after}


def max_abs_diff(got, ref) -> float:
    """The largest absolute difference between two params trees.

    Adam turns the reduction-order noise of a near-zero gradient into an update of either
    sign, so the params of two layouts part by up to a fraction of ``lr`` (1e-2) here; a
    wrong layout (a misplaced shard) moves them by the params' own size (about 0.2).
    """
    pairs = zip(jax.tree.leaves(jax.device_get(got)), jax.tree.leaves(ref), strict=True)
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)


def eval_loss(params) -> float:
    """The loss of ``params`` on a fixed batch, on one device (checks the gathered copy)."""
    batch = lm_batch(lm_data(1, seed=1)[0])
    logits = tiny_lm().apply({"params": jax.device_get(params)}, batch["tokens"])
    return float(lm_loss(logits, batch["targets"]).mean())


def error_message(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def fit_with_resume(step, workdir: str):
    """20 steps through ``fit`` in two runs: 10 steps with a checkpoint, then a resume."""
    data = lm_data()

    def batches(epoch, start):
        for i in range(start, 10):
            yield lm_batch(data[epoch * 10 + i])

    settings = training.FitSettings(num_epochs=1, steps_per_epoch=10, checkpoint_every_steps=10)
    training.fit(lm_state(), step, batches, settings, workdir=workdir)
    settings = settings._replace(num_epochs=2, resume=True)
    return training.fit(lm_state(), step, batches, settings, workdir=workdir)


def worker(out_dir: str) -> None:
    """Trains the tiny LM in every mode on the simulated devices; reports the numbers."""
    assert jax.device_count() == NUM_DEVICES, jax.devices()
    report = {"devices": jax.device_count()}
    total = sum(x.nbytes for x in jax.tree.leaves((lm_state().params, lm_state().opt_state)))
    report["total_bytes"] = int(total)
    with jax.default_matmul_precision("highest"):
        ref_losses, ref_state, _ = train_lm(lm_step("none"))
        ref_params = jax.device_get(ref_state.params)
        report["none_losses"] = ref_losses.tolist()
        report["none_eval_loss"] = eval_loss(ref_params)
        for name, (mode, shape, mesh_axes) in RUNS.items():
            mesh = make_device_mesh(shape, jax.devices()[: shape["data"] * shape["tensor"]])
            specs = None if mesh_axes is None else models.mesh_specs(tiny_lm(), SAMPLE, mesh_axes)
            step = lm_step(mode, mesh, specs)
            losses, state, tree_bytes = train_lm(step)
            report[f"{name}_losses"] = losses.tolist()
            report[f"{name}_bytes"] = tree_bytes
            final = step.local(state)
            report[f"{name}_param_diff"] = max_abs_diff(final.params, ref_params)
            report[f"{name}_eval_loss"] = eval_loss(final.params)
            block = state.params["block_0"]
            report[f"{name}_specs"] = {
                "query": str(block["attn"]["query"]["kernel"].sharding.spec),
                "up": str(block["mlp"]["up"]["kernel"].sharding.spec),
                "embedding": str(state.params["embed"]["embedding"].sharding.spec),
                "mu_query": str(
                    state.opt_state[0].mu["block_0"]["attn"]["query"]["kernel"].sharding.spec
                ),
                "count": str(state.opt_state[0].count.sharding.spec),
            }
            report[f"{name}_step"] = int(step.local(state).step)
            if name == "fsdp":
                with tempfile.TemporaryDirectory() as workdir:
                    final, info = fit_with_resume(step, workdir)
                report["fit_resumed_from"] = info["resumed_from_step"]
                report["fit_steps"] = info["steps"]
                report["fit_param_diff"] = max_abs_diff(final.params, ref_params)
                report["fit_eval_loss"] = eval_loss(final.params)
                report["fit_final_on_one_device"] = len(
                    final.params["embed"]["embedding"].devices()
                )
    wide = make_device_mesh({"data": 1, "tensor": 8})
    report["bad_mesh"] = error_message(lambda: make_device_mesh({"data": 3, "tensor": 2}))
    report["heads_not_divisible"] = error_message(
        lambda: check_param_specs(
            lm_state().params, models.mesh_specs(tiny_lm(), SAMPLE, ("tensor",)), wide
        )
    )
    step = lm_step("fsdp")
    state = step.place_state(lm_state())
    report["batch_not_divisible"] = error_message(lambda: step(state, lm_batch(lm_data(1)[0][:12])))
    # the LM recipe end to end through the config switch: FSDP + tensor parallel on 4 x 2
    config = _lm_config(parallel="fsdp", batch_size=8, **{"mesh.data": 4, "mesh.tensor": 2})
    _, results = lm.run(config, None)
    report["recipe"] = {k: results[k] for k in ("parallel", "num_devices", "steps", "val_loss")}
    print_report(report)


# Compiling six transformer steps dominates the run; a lower CPU backend optimisation
# level halves it and changes no result beyond float reduction order.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="module")
def multi_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel_2d")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XLA_FLAGS", (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE).strip())
        return run_on_simulated_devices(__file__, out, NUM_DEVICES, timeout=600)


# ------------------------------------------------------------ multi-device tests
@pytest.mark.parametrize("name", list(RUNS))
def test_sharded_modes_give_the_losses_of_one_device(multi_device, name):
    report = multi_device
    assert report["devices"] == NUM_DEVICES
    ref = np.asarray(report["none_losses"])
    got = np.asarray(report[f"{name}_losses"])
    assert got.shape == (NUM_STEPS,) and ref[-1] < ref[0]  # it trains
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert report[f"{name}_step"] == NUM_STEPS
    # the gathered single copy: the same model as the one-device run
    np.testing.assert_allclose(report[f"{name}_eval_loss"], report["none_eval_loss"], rtol=1e-5)
    assert report[f"{name}_param_diff"] < 1e-3


@pytest.mark.parametrize("name", ["fsdp", "fsdp4_tensor2"])
def test_fsdp_holds_an_eighth_of_params_and_optimizer_state_per_device(multi_device, name):
    report = multi_device
    total = report["total_bytes"]
    for when in ("before", "after"):  # placed, and as the compiled step returns it
        assert report[f"{name}_bytes"][when] <= 1.15 / 8 * total, (when, report[f"{name}_bytes"])
    assert report["tensor4_bytes"]["before"] > 0.25 * total  # tensor mode replicates norms


def test_tensor_mode_splits_heads_mlp_and_vocab(multi_device):
    report = multi_device
    for name in ("tensor2", "tensor4", "data4_tensor2"):
        specs = report[f"{name}_specs"]
        assert specs["query"] == str(P(None, "tensor")), specs
        assert specs["up"] == str(P(None, "tensor")), specs
        assert specs["embedding"] == str(P("tensor")), specs
        assert specs["mu_query"] == specs["query"]  # Adam's moments follow their param
        assert specs["count"] == str(P())
    fsdp = report["fsdp_specs"]
    assert "data" in fsdp["query"] and "data" in fsdp["embedding"] and "data" in fsdp["up"]
    both = report["fsdp4_tensor2_specs"]
    assert both["query"] == str(P("data", "tensor")), both


def test_fit_checkpoints_and_resumes_in_fsdp_mode(multi_device):
    report = multi_device
    assert report["fit_resumed_from"] == 10 and report["fit_steps"] == NUM_STEPS
    np.testing.assert_allclose(report["fit_eval_loss"], report["none_eval_loss"], rtol=1e-5)
    assert report["fit_param_diff"] < 1e-3
    assert report["fit_final_on_one_device"] == 1


def test_bad_layouts_are_clear_errors_on_8_devices(multi_device):
    report = multi_device
    assert report["bad_mesh"].startswith("ValueError") and "holds 6 devices" in report["bad_mesh"]
    msg = report["heads_not_divisible"]
    assert msg.startswith("ValueError") and "param_specs['block_0']['attn']" in msg, msg
    assert "over 8 devices" in msg
    msg = report["batch_not_divisible"]
    assert msg.startswith("ValueError") and "12" in msg and "multiple of 8" in msg, msg


def test_lm_recipe_trains_with_fsdp_and_tensor_parallel_on_8_devices(multi_device):
    recipe = multi_device["recipe"]
    assert recipe["parallel"] == "fsdp" and recipe["num_devices"] == 4 and recipe["steps"] == 2
    assert np.isfinite(recipe["val_loss"])


# ------------------------------------------------------------ single-device tests
@pytest.mark.parametrize(
    ("shape", "spec", "expected"),
    [
        ((16, 64), P(), P(None, "data")),
        ((64,), P(), P("data")),
        ((64, 64), P(), P("data")),  # ties: the first dimension
        ((3, 5), P(), P()),  # nothing divisible: replicated
        ((0, 8), P(), P(None, "data")),  # an empty dimension is never split
        ((16, 64), P(None, "tensor"), P("data", "tensor")),
        ((5, 64), P(None, "tensor"), P(None, ("tensor", "data"))),
        ((5, 24), P(None, "tensor"), P(None, "tensor")),  # 24 % 16: stays as it was
        ((16, 64), P("data"), P("data")),
    ],
)
def test_fsdp_specs_split_the_largest_free_divisible_dimension(shape, spec, expected):
    params = {"w": jax.ShapeDtypeStruct(shape, jnp.float32)}
    got = fsdp_specs(params, {"data": 8, "tensor": 2}, {"w": spec})
    assert got["w"] == expected


def test_fsdp_specs_default_and_bad_sizes():
    params = {"kernel": np.zeros((16, 64)), "bias": np.zeros(64), "scale": np.zeros(())}
    got = fsdp_specs(params, {"data": 8})
    assert got == {"kernel": P(None, "data"), "bias": P("data"), "scale": P()}
    assert fsdp_specs(params, {"data": 1}) == jax.tree.map(lambda _: P(), params)
    with pytest.raises(ValueError, match=r"axis_sizes=\{'tensor': 2\}.*'data'"):
        fsdp_specs(params, {"tensor": 2})
    with pytest.raises(ValueError, match=r"axis_sizes\['data'\]=0"):
        fsdp_specs(params, {"data": 0})


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ({"data": 2, "tensor": 1}, r"holds 2 devices but there are 1"),
        ({"data": -1, "tensor": -1}, r"at most one axis size may be -1"),
        ({"data": 0}, r"size of axis 'data' is 0"),
        ({"data": 1.0}, r"size of axis 'data' is 1.0"),
        ({"": 1}, r"axis name '' must be a non-empty str"),
    ],
)
def test_make_device_mesh_refuses_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        make_device_mesh(shape)


def test_make_device_mesh_default_and_minus_one():
    mesh = make_device_mesh()
    assert dict(mesh.shape) == {"data": jax.device_count(), "tensor": 1}
    mesh = make_device_mesh({"tensor": -1, "data": 1})
    assert mesh.axis_names == ("tensor", "data")
    with pytest.raises(TypeError, match="must be a non-empty mapping"):
        make_device_mesh([("data", 1)])


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ({"w": P()}, r"params without a spec: \[\"\['b'\]\"\]"),
        ({"w": P(), "b": P(), "c": P()}, r"specs without a param: \[\"\['c'\]\"\]"),
        (
            {"w": P("model"), "b": P()},
            r"param_specs\['w'\]=.*'model'.*mesh axes: \('data', 'tensor'\)",
        ),
        ({"w": P("data", "data"), "b": P()}, r"names a mesh axis twice"),
        ({"w": P(), "b": P(None, "data")}, r"has 2 entries but the param has 1 dimensions"),
        ({"w": "data", "b": P()}, r"must be a jax.sharding.PartitionSpec"),
    ],
)
def test_check_param_specs_refuses_specs_that_do_not_fit(specs, match):
    params = {"w": np.zeros((4, 8)), "b": np.zeros(8)}
    with pytest.raises((ValueError, TypeError), match=match):
        check_param_specs(params, specs, make_device_mesh())


def test_state_shardings_mirror_params_in_the_optimizer_state():
    params = {"dense": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones(8)}}
    tx = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)), 2)
    state = training.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state={},
        rng=jax.random.key(0),
        apply_fn=None,
        tx=tx,
    )
    marks = {"dense": {"kernel": "K", "bias": "B"}}
    out = state_shardings(state, marks, "R")
    assert out.params == marks
    assert out.opt_state.acc_grads == marks  # accumulated gradients
    adam = out.opt_state.inner_opt_state[1][0]
    assert adam.mu == marks and adam.nu == marks and adam.count == "R"
    assert out.opt_state.mini_step == "R" and out.step == "R" and out.rng == "R"
    # a tree without params / opt_state is replicated whole
    assert state_shardings({"params": params}, marks, "R") == {
        "params": {"dense": {"kernel": "R", "bias": "R"}}
    }


def test_mesh_specs_map_logical_names_to_the_mesh_axes():
    specs = models.mesh_specs(tiny_lm(), SAMPLE, ("tensor",))
    block = specs["block_0"]
    assert block["attn"]["query"]["kernel"] == P(None, "tensor")
    assert block["attn"]["query"]["bias"] == P("tensor")
    assert block["attn"]["out"]["kernel"] == P("tensor")
    assert block["mlp"]["up"]["kernel"] == P(None, "tensor")
    assert block["mlp"]["down"]["kernel"] == P("tensor")
    assert block["attn_norm"]["scale"] == P()
    assert specs["embed"]["embedding"] == P("tensor")
    both = models.mesh_specs(tiny_lm(), SAMPLE, {"fsdp": "data", "tensor": "tensor"})
    assert both["block_0"]["attn"]["query"]["kernel"] == P("data", "tensor")
    assert both["block_0"]["mlp"]["down"]["kernel"] == P("tensor", "data")
    assert both["block_0"]["attn_norm"]["scale"] == P("data")
    assert both["embed"]["embedding"] == P("tensor", "data")
    # one mesh axis serving two rule axes is named once per spec
    once = models.mesh_specs(tiny_lm(), SAMPLE, {"fsdp": "x", "tensor": "x"})
    assert once["block_0"]["attn"]["query"]["kernel"] == P("x")
    with pytest.raises(TypeError, match="mesh_axes='tensor'"):
        models.mesh_specs(tiny_lm(), SAMPLE, "tensor")


def test_make_train_step_arguments_of_the_sharded_modes():
    with pytest.raises(ValueError, match=r"parallel='dp'.*'none', 'sharding', 'pmap', 'fsdp'"):
        training.make_train_step(parallel="dp")
    with pytest.raises(ValueError, match=r"parallel='tensor' needs param_specs="):
        training.make_train_step(parallel="tensor")
    with pytest.raises(ValueError, match=r"param_specs= is only used with parallel in"):
        training.make_train_step(parallel="sharding", param_specs={})
    with pytest.raises(ValueError, match=r"axis_name='batch' is not an axis of the mesh"):
        training.make_train_step(parallel="fsdp", mesh=make_device_mesh(), axis_name="batch")
    step = training.make_train_step(parallel="fsdp")
    assert isinstance(step, ShardedStep) and step.mode == "fsdp"
    assert step.num_devices == jax.device_count() and step.process_rows(8) == slice(0, 8)
    assert set(SHARDED_MODES) == {"fsdp", "tensor"}


def _mlp_state():
    model = models.MLP(features=(32,), num_classes=10)
    x = np.zeros((1, 16), np.float32)
    return training.create_train_state(model, jax.random.key(0), x, optax.adam(1e-2))


def test_fsdp_on_one_device_agrees_with_none_also_with_bound_extra_arguments():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8, 16)).astype(np.float32)
    y = rng.integers(0, 10, (3, 8)).astype(np.int32)

    def step_fn(state, batch, scale):  # an extra argument, bound with bind_extra
        new_state, metrics = training.train_step(state, batch)
        return new_state, {**metrics, "loss": metrics["loss"] * scale}

    results = {}
    for mode in ("none", "fsdp"):
        step = training.bind_extra(training.make_train_step(step_fn, parallel=mode), 2.0)
        state = step.place_state(_mlp_state())
        for i in range(3):
            state, metrics = step(state, {"image": x[i], "label": y[i]})
        results[mode] = (step, step.local(state), step.host_metrics(metrics))
    (_, ref, ref_m), (step, got, got_m) = results["none"], results["fsdp"]
    assert isinstance(step, ShardedStep) and step.mode == "fsdp"  # bind_extra kept the layout
    close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    jax.tree.map(close, jax.device_get(got.params), jax.device_get(ref.params))
    assert int(got.step) == 3
    np.testing.assert_allclose(got_m["loss"], ref_m["loss"], rtol=1e-6)
    assert isinstance(got.rng, jax.Array) and jnp.issubdtype(got.rng.dtype, jax.dtypes.prng_key)


# ------------------------------------------------------------ the LM recipe's switch
def _lm_config(**overrides):
    c = lm.default_config()
    c.dataset.max_bytes = 20_000
    c.model.num_layers = 1
    c.model.num_heads = 2
    c.model.embed_dim = 32
    c.context = 16
    c.batch_size = 4
    c.num_steps = 2
    c.eval_every_steps = 2
    c.eval_max_batches = 1
    c.optimizer.warmup_steps = 1
    c.checkpoint.every_seconds = 0.0
    c.plots = False
    c.save_model = False
    c.generate.num_samples = 0
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (c[section] if section else c)[field] = value
    return c


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"parallel": "fsdp", "mesh.tensor": 3},
            r"config\.model\.num_heads=2 .*tensor axis size 3",
        ),
        (
            {"parallel": "tensor", "mesh.data": 2},
            r"config\.mesh: .*holds 2 devices but there are 1",
        ),
        ({"parallel": "fsdp", "mesh.data": 0}, r"config\.mesh\.data=0"),
        ({"parallel": "fsdp", "mesh.data": -1, "mesh.tensor": -1}, r"at most one size may be -1"),
        ({"parallel": "sharding", "mesh.tensor": 2}, r"config\.mesh=.*only used with"),
        ({"parallel": "zero"}, r"config\.parallel='zero'"),
    ],
)
def test_lm_parallel_config_errors_name_the_field(overrides, match, tmp_path):
    with pytest.raises(build.ConfigError, match=match):
        lm.run(_lm_config(**overrides), str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad" / "metrics.jsonl")


@pytest.mark.parametrize("parallel", ["fsdp", "tensor", "sharding"])
def test_lm_parallel_layout_passes_mesh_and_specs(parallel):
    config = _lm_config(parallel=parallel)
    model = models.get_model(config.model.name, **lm.model_kwargs(config, 256))
    layout = lm.parallel_layout(config, model, np.zeros((1, config.context), np.int32))
    if parallel == "sharding":
        assert layout == {}
        return
    assert dict(layout["mesh"].shape) == {"data": jax.device_count(), "tensor": 1}
    query = layout["param_specs"]["block_0"]["attn"]["query"]["kernel"]
    assert query == (P("data", "tensor") if parallel == "fsdp" else P(None, "tensor"))


@pytest.mark.parametrize(
    ("parallel", "vocab", "data", "embedding", "down"),
    [
        ("fsdp", 256, 4, P("tensor", "data"), P("tensor", "data")),
        ("fsdp", 257, 4, P(None, "data"), P("tensor", "data")),  # 257 % 2: vocab not split
        ("fsdp", 256, 3, P("tensor"), P("tensor")),  # 32 % 3: the engine picks the dimension
        ("tensor", 256, 4, P("tensor"), P("tensor")),
    ],
)
def test_lm_param_specs_drop_axes_that_do_not_divide(parallel, vocab, data, embedding, down):
    config = _lm_config()
    model = models.get_model(config.model.name, **lm.model_kwargs(config, vocab))
    specs = lm.param_specs(parallel, model, np.zeros((1, 16), np.int32), data, tensor=2)
    assert specs["embed"]["embedding"] == embedding
    assert specs["block_0"]["mlp"]["down"]["kernel"] == down


# ------------------------------------------------------------ two processes
def process_worker() -> None:
    """One of two processes (4 devices each): FSDP + tensor parallel on a 4 x 2 mesh whose
    middle data slots span both processes, so each process loads three quarters of every
    batch (rows [0, 12) and [4, 16)) and the slots it shares hold the same rows."""
    training.initialize_distributed()
    assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
    (a0, a1, a2, a3), (b0, b1, b2, b3) = (
        [d for d in jax.devices() if d.process_index == p] for p in range(2)
    )
    devices = [a0, a1, a2, b0, a3, b1, b2, b3]  # rows of the mesh: data slots 0..3
    mesh = make_device_mesh({"data": 4, "tensor": 2}, devices)
    specs = models.mesh_specs(tiny_lm(), SAMPLE, {"fsdp": "data", "tensor": "tensor"})
    step = lm_step("fsdp", mesh, specs)
    state = step.place_state(lm_state())
    rows = step.process_rows(BATCH)
    data = lm_data()
    losses = []
    with jax.default_matmul_precision("highest"):
        for i in range(NUM_STEPS):
            batch = lm_batch(data[i])
            state, metrics = step(state, {k: v[rows] for k, v in batch.items()})
            losses.append(float(step.host_metrics(metrics)["loss"]))
    final = step.local(state)  # a collective: every process calls it
    print_report(
        {"rows": [rows.start, rows.stop], "losses": losses, "eval_loss": eval_loss(final.params)}
    )


@pytest.mark.slow
def test_two_processes_match_the_one_device_run(multi_device, tmp_path):
    ref_losses, ref_eval = multi_device["none_losses"], multi_device["none_eval_loss"]
    flags = f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}"
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    codes = training.launch_local(
        [os.path.abspath(__file__), "--processes"],
        2,
        env=env,
        log_dir=str(tmp_path),
        timeout=400,
    )
    logs = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    reports = []
    for log in logs:
        lines = [ln for ln in log.splitlines() if ln.startswith(REPORT_PREFIX)]
        reports.append(json.loads(lines[-1][len(REPORT_PREFIX) :]))
    assert [r["rows"] for r in reports] == [[0, 12], [4, 16]]
    for r in reports:
        np.testing.assert_allclose(r["losses"], ref_losses, rtol=1e-5)
        np.testing.assert_allclose(r["eval_loss"], ref_eval, rtol=1e-5)


if __name__ == "__main__":
    if sys.argv[1] == "--processes":
        process_worker()
    else:
        worker(sys.argv[1])
