"""LM distillation in the LM recipe: a frozen teacher run, per-token T²-scaled KL mixed with
cross-entropy, hidden-state losses, the student initialised from the teacher's blocks."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import use_compilation_cache
from flax import serialization

from jaxopt_models.data import lm_train_batch
from jaxopt_models.models import get_model
from jaxopt_models.recipes import build, lm
from jaxopt_models.training import create_train_state, load_variables, make_train_step

use_compilation_cache()


def _tiny(**overrides):
    c = lm.default_config()
    c.dataset.max_bytes = 40_000
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.embed_dim = 32
    c.context = 16
    c.batch_size = 4
    c.num_steps = 6
    c.eval_every_steps = 6
    c.eval_max_batches = 1
    c.eval_batch_size = 16
    c.optimizer.warmup_steps = 2
    c.checkpoint.every_seconds = 0.0
    c.plots = False
    c.generate.num_samples = 0
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        target = c
        for part in section.split(".") if section else ():
            target = target[part]
        target[field] = value
    return c


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A finished 3-block teacher run (width 32)."""
    workdir = str(tmp_path_factory.mktemp("teacher"))
    lm.run(_tiny(**{"model.num_layers": 3, "num_steps": 12, "eval_every_steps": 12}), workdir)
    return workdir


def _student(teacher_dir, **overrides):
    return _tiny(**{"model.num_layers": 1, "distillation.teacher_dir": teacher_dir, **overrides})


def _file_bytes(directory):
    with open(os.path.join(directory, "variables.msgpack"), "rb") as f:
        return f.read()


def _np_tree(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def test_teacher_is_frozen_and_kept_out_of_the_optimizer_and_the_saved_student(
    teacher_dir, tmp_path, monkeypatch
):
    before = _file_bytes(teacher_dir)
    loaded, load = [], lm.load_teacher

    def spy(directory):
        teacher = load(directory)
        loaded.append((teacher, _np_tree(teacher.variables)))
        return teacher

    monkeypatch.setattr(lm, "load_teacher", spy)
    workdir = str(tmp_path / "student")
    c = _student(teacher_dir, **{"distillation.student_init": "teacher_layers"})
    final, results = lm.run(c, workdir)
    teacher, snapshot = loaded[0]
    # the teacher the step read is bitwise what it was (and not donated away), as is its file
    jax.tree.map(np.testing.assert_array_equal, _np_tree(teacher.variables), snapshot)
    assert _file_bytes(teacher_dir) == before
    # the optimizer state holds moments of the student's params only (1 block, not 3)
    student_params = final.params
    assert set(student_params) == {"embed", "block_0", "final_norm"}
    n_student = sum(x.size for x in jax.tree.leaves(student_params))
    opt_floats = [x for x in jax.tree.leaves(final.opt_state) if jnp.ndim(x) > 0]
    assert sum(x.size for x in opt_floats) == 2 * n_student  # Adam's mu and nu
    assert results["params"] == n_student < results["distillation"]["teacher"]["params"]
    # the saved variables are the student model's, nothing else
    model = get_model("gpt", **lm.model_kwargs(c, results["vocab_size"]))
    template = model.init(jax.random.key(0), jnp.zeros((1, c.context), jnp.int32))
    saved = load_variables(workdir, template)
    raw = serialization.msgpack_restore(_file_bytes(workdir))
    assert set(raw) == {"params"} and set(raw["params"]) == {"embed", "block_0", "final_norm"}
    jax.tree.map(np.testing.assert_array_equal, saved["params"], _np_tree(final.params))
    assert results["distillation"]["teacher_in_step"] is True


def _state_and_batch(config, seed=0):
    model = get_model("gpt", **lm.model_kwargs(config, 256))
    tokens = np.zeros((1, config.context), np.int32)
    tx = optax.sgd(0.1)
    state = create_train_state(model, jax.random.key(seed), tokens, tx)
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, 256, 2_000).astype(np.int32)
    batch = lm_train_batch(stream, config.batch_size, config.context, seed=seed, step=0)
    return model, state, batch


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_step_loss_is_per_token_t2_scaled_kl_plus_ce_matching_numpy(teacher_dir):
    temperature, alpha = 2.0, 0.7
    c = _student(
        teacher_dir, **{"distillation.temperature": temperature, "distillation.alpha": alpha}
    )
    teacher = lm.load_teacher(teacher_dir)
    model, state, batch = _state_and_batch(c)
    s_logits = np.asarray(model.apply({"params": state.params}, batch["tokens"]), np.float64)
    t_logits = np.asarray(teacher.apply(teacher.variables, batch["tokens"]), np.float64)
    step = lm._distill_step(c, teacher, None, 1, {})
    _, metrics = step(state, batch)
    t = temperature
    log_ps, log_pt = _np_log_softmax(s_logits / t), _np_log_softmax(t_logits / t)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)  # (B, T): one KL per token
    ce = -np.take_along_axis(_np_log_softmax(s_logits), batch["targets"][..., None], -1)[..., 0]
    want = (alpha * t**2 * kl + (1 - alpha) * ce).mean()
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
    assert kl.mean() > 1e-3  # the teacher term is not trivially zero here


def test_alpha_zero_gives_the_plain_cross_entropy_first_step(teacher_dir, tmp_path):
    c = _student(teacher_dir, **{"distillation.alpha": 0.0})
    teacher = lm.load_teacher(teacher_dir)
    _, state, batch = _state_and_batch(c)
    _, state2, _ = _state_and_batch(c)
    kd_step = lm._distill_step(c, teacher, None, 1, {})  # the teacher in the step, weight 0
    ce_step = make_train_step(loss_fn=lm.lm_loss, input_key="tokens", label_key="targets")
    (kd_state, kd), (ce_state, ce) = kd_step(state, batch), ce_step(state2, batch)
    assert float(kd["loss"]) == pytest.approx(float(ce["loss"]), rel=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        kd_state.params,
        ce_state.params,
    )
    # the recipe keeps the teacher out of the step at alpha=0: the run is the plain run's
    short = {"model.num_layers": 1, "num_steps": 3, "eval_every_steps": 3}
    _, alone = lm.run(_tiny(**short), None)
    _, zero = lm.run(_student(teacher_dir, **short, **{"distillation.alpha": 0.0}), None)
    assert zero["history"][0]["train_loss"] == alone["history"][0]["train_loss"]
    assert zero["val_loss"] == alone["val_loss"]
    assert zero["distillation"]["teacher_in_step"] is False


def test_teacher_layers_init_copies_exactly_those_blocks(teacher_dir):
    c = _student(
        teacher_dir,
        **{
            "model.num_layers": 2,
            "distillation.student_init": "teacher_layers",
            "distillation.teacher_layers": (2, 0),
        },
    )
    teacher = lm.load_teacher(teacher_dir)
    model, state, _ = _state_and_batch(c)
    new = lm._distillation_state(c, state, model, teacher, state.tx)
    tp = teacher.variables["params"]
    for mine, theirs in (("block_0", "block_2"), ("block_1", "block_0")):
        jax.tree.map(np.testing.assert_array_equal, new.params[mine], tp[theirs])
    for name in ("embed", "final_norm"):
        jax.tree.map(np.testing.assert_array_equal, new.params[name], tp[name])
    assert set(new.params) == {"embed", "block_0", "block_1", "final_norm"}
    # scratch keeps the student's own init
    scratch = lm._distillation_state(
        _student(teacher_dir, **{"model.num_layers": 2}), state, model, teacher, state.tx
    )
    assert scratch is state
    # the default picks every (L_t // L_s)-th block from the first (DistilBERT)
    c.distillation.teacher_layers = None
    assert lm.teacher_layers(c.distillation, 2, 4) == (0, 2)
    assert lm.teacher_layers(c.distillation, 3, 6) == (0, 2, 4)
    # the hidden-state loss matches the same relative depth by default, last block to last
    assert lm.hidden_pairs(c.distillation, 2, 4) == ((0, 1), (1, 3))
    assert lm.hidden_pairs(c.distillation, 1, 3) == ((0, 2),)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dataset.tokenizer": "bpe"}, "config.dataset.tokenizer"),
        ({"model.vocab_size": 300}, "config.model.vocab_size"),
        ({"dataset.split_seed": 3}, "config.dataset.split_seed"),
        ({"dataset.val_fraction": 0.1}, "config.dataset.val_fraction"),
        ({"context": 64}, "config.context"),
        (
            {"distillation.student_init": "teacher_layers", "model.embed_dim": 16},
            "config.model.embed_dim",
        ),
        (
            {"distillation.student_init": "teacher_layers", "distillation.teacher_layers": (5,)},
            "config.distillation.teacher_layers",
        ),
        (
            {"distillation.hidden.loss": "cosine", "distillation.hidden.layers": ((0, 7),)},
            "config.distillation.hidden.layers",
        ),
        ({"distillation.alpha": 1.5}, "config.distillation"),
        ({"distillation.hidden.loss": "l1"}, "config.distillation.hidden.loss"),
        ({"distillation.teacher_layers": (0,)}, "config.distillation.teacher_layers"),
    ],
)
def test_a_teacher_the_student_cannot_learn_from_is_refused_before_training(
    teacher_dir, tmp_path, overrides, field
):
    workdir = tmp_path / "bad"
    with pytest.raises(build.ConfigError, match=field.replace(".", r"\.")):
        lm.run(_student(teacher_dir, **overrides), str(workdir))
    assert not os.path.exists(workdir / "metrics.jsonl")


def test_vocabulary_mismatch_names_the_field_and_both_sizes(teacher_dir, tmp_path):
    with pytest.raises(build.ConfigError, match=r"model\.vocab_size=300 differs.* 256"):
        lm.run(_student(teacher_dir, **{"model.vocab_size": 300}), str(tmp_path / "v"))


def test_settings_that_need_a_teacher_are_refused_without_one(tmp_path):
    for key, value in (
        ("distillation.student_init", "teacher_layers"),
        ("distillation.hidden.loss", "cosine"),
    ):
        with pytest.raises(build.ConfigError, match="needs a teacher"):
            lm.run(_tiny(**{key: value}), str(tmp_path / "x"))
    with pytest.raises(build.ConfigError, match="teacher_dir=.*holds no results.json"):
        lm.run(_tiny(**{"distillation.teacher_dir": str(tmp_path)}), str(tmp_path / "y"))


@pytest.mark.parametrize(("kind", "width"), [("mse", 16), ("cosine", 32)])
def test_hidden_state_loss_changes_the_step_and_trains_the_projection(teacher_dir, kind, width):
    c = _student(
        teacher_dir,
        **{
            "model.embed_dim": width,
            "distillation.hidden.loss": kind,
            "distillation.hidden.weight": 5.0,
        },
    )
    teacher = lm.load_teacher(teacher_dir)
    model, state, batch = _state_and_batch(c)
    state = lm._distillation_state(c, state, model, teacher, state.tx)
    assert (lm.PROJECTION_KEY in state.params) == (width != 32)
    kd_only = c.copy_and_resolve_references()
    kd_only.distillation.hidden.loss = "none"
    _, kd_state, _ = _state_and_batch(kd_only)
    _, kd = lm._distill_step(kd_only, teacher, None, 1, {})(kd_state, batch)
    before = _np_tree(state.params)
    new, hidden = lm._distill_step(c, teacher, None, 1, {})(state, batch)
    assert float(hidden["loss"]) > float(kd["loss"])  # the KD + CE loss plus a positive term
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), new.params, before)
    assert all(v > 0 for v in jax.tree.leaves(moved))  # the projection (if any) trained too


def test_hidden_state_loss_through_a_projection_trains_it_and_is_not_saved(teacher_dir, tmp_path):
    narrow = {"model.embed_dim": 16}
    workdir = str(tmp_path / "hidden")
    c = _student(
        teacher_dir,
        **narrow,
        **{"distillation.hidden.loss": "mse", "distillation.hidden.weight": 5.0},
    )
    final, hidden = lm.run(c, workdir)
    proj = final.params[lm.PROJECTION_KEY]
    assert proj["kernel"].shape == (16, 32) and proj["bias"].shape == (32,)
    assert float(np.abs(proj["bias"]).sum()) > 0  # it was trained (it starts at zero)
    assert hidden["distillation"]["projection_params"] == 16 * 32 + 32
    assert hidden["params"] == sum(x.size for x in jax.tree.leaves(lm.student_params(final.params)))
    raw = serialization.msgpack_restore(_file_bytes(workdir))
    assert lm.PROJECTION_KEY not in raw["params"]
    # the saved params are the trained model's, read back with the student's own template
    model = get_model("gpt", **lm.model_kwargs(c, hidden["vocab_size"]))
    template = model.init(jax.random.key(0), jnp.zeros((1, c.context), jnp.int32))
    saved = load_variables(workdir, template)
    jax.tree.map(np.testing.assert_array_equal, saved["params"], lm.student_params(final.params))
