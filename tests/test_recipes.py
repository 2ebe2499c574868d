"""Every recipe honours every config section it documents: changing a setting changes the
outcome, and a section or value a recipe cannot use is refused before anything trains.

All runs are tiny (digits, a few hundred images, one or two epochs, small MLPs).
"""

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from _helpers import set_fields, use_compilation_cache

from jaxopt_models import data
from jaxopt_models.recipes import build, compress, crossval, distill, load_trained, lottery, ptq
from jaxopt_models.recipes import train as train_recipe
from jaxopt_models.training import cross_entropy

use_compilation_cache()


def tiny(c, features=(16,)):
    """A recipe's config shrunk to a few seconds on 8x8 digits."""
    c.dataset.name = "digits"
    c.dataset.num_train = 300  # 270 train / 30 validation
    c.dataset.num_test = 100
    c.model.features = features
    c.num_epochs = 2
    c.batch_size = 30
    c.eval_batch_size = 100
    c.plots = False
    c.save_model = False
    c.checkpoint.every_seconds = 0.0
    return c


def read(path) -> dict:
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- train
@pytest.fixture(scope="module")
def train_base(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("train_base"))
    _, results = train_recipe.run(tiny(train_recipe.default_config()), workdir)
    return workdir, results


@pytest.mark.parametrize(
    "field,value",
    [
        ("optimizer.learning_rate", 1e-2),
        ("quantization.weight_bits", 2),
        ("augment.shift", 1),
        ("label_smoothing", 0.2),
        ("pruning.method", "magnitude"),
    ],
)
def test_train_setting_changes_the_outcome(field, value, train_base):
    _, base = train_base
    c = tiny(train_recipe.default_config())
    set_fields(c, {field: value})
    _, results = train_recipe.run(c, None)
    assert results["test_loss"] != base["test_loss"]
    assert results["steps"] == base["steps"] and results["num_train"] == base["num_train"]
    if field == "pruning.method":  # the default target, 90% of the kernels
        assert results["pruning"]["prunable"]["sparsity"] == pytest.approx(0.9, abs=2e-3)
        assert "pruning" not in base


def test_train_output_settings_write_their_files_only(train_base, tmp_path):
    base_dir, base = train_base
    for name in ("variables.msgpack", "curves.png", "tensorboard", "checkpoints"):
        assert not os.path.exists(os.path.join(base_dir, name)), name
    c = tiny(train_recipe.default_config())
    c.save_model = True
    c.plots = True
    c.tensorboard = True
    c.checkpoint.every_steps = 9
    _, results = train_recipe.run(c, str(tmp_path))
    assert results["test_loss"] == base["test_loss"]  # outputs do not change training
    assert (tmp_path / "variables.msgpack").exists()
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))
    assert os.listdir(tmp_path / "checkpoints")
    model, variables = load_trained(str(tmp_path))
    ds = data.get_dataset("digits", num_train=300, num_test=100)
    logits = model.apply(variables, jnp.asarray(ds.x_test), train=False)
    loss = float(jnp.mean(cross_entropy(logits, jnp.asarray(ds.y_test))))
    assert loss == pytest.approx(results["test_loss"], rel=1e-5)


# ----------------------------------------------------------------------------- distill
@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A finished train run used as the teacher (``run(..., teacher_dir=)``)."""
    workdir = str(tmp_path_factory.mktemp("teacher"))
    c = tiny(train_recipe.default_config(), features=(32,))
    c.num_epochs = 3
    c.save_model = True
    train_recipe.run(c, workdir)
    return workdir


def kd_config():
    c = tiny(distill.default_config(), features=(8,))
    c.teacher.model.features = (32,)  # the saved teacher's model
    c.protocol.temperatures = (4.0,)
    c.protocol.student_num_train = 200
    return c


def run_distill(c, workdir, teacher_dir):
    summary = distill.run(c, str(workdir), teacher_dir=teacher_dir)
    alone = read(os.path.join(workdir, "student", "seed_0", "results.json"))
    kd = read(os.path.join(workdir, "kd_T4", "seed_0", "results.json"))
    return summary, alone, kd


@pytest.fixture(scope="module")
def kd_base(teacher_dir, tmp_path_factory):
    return run_distill(kd_config(), tmp_path_factory.mktemp("kd_base"), teacher_dir)


def test_distillation_alpha_changes_the_distilled_student_only(kd_base, teacher_dir, tmp_path):
    c = kd_config()
    c.distillation.alpha = 0.1
    summary, alone, kd = run_distill(c, tmp_path, teacher_dir)
    base_summary, base_alone, base_kd = kd_base
    assert alone["test_loss"] == base_alone["test_loss"]  # the student alone has no teacher
    assert kd["test_loss"] != base_kd["test_loss"]
    assert (kd["distillation"]["alpha"], base_kd["distillation"]["alpha"]) == (0.1, 0.9)
    assert summary["teacher"]["source"] == teacher_dir
    assert summary["teacher"]["test_accuracy"] == base_summary["teacher"]["test_accuracy"]


def test_distill_prunes_and_quantizes_every_student(teacher_dir, tmp_path):
    c = kd_config()
    c.pruning.method = "magnitude"
    c.pruning.sparsity = 0.9
    c.quantization.weight_bits = 4
    c.save_model = True
    summary, alone, kd = run_distill(c, tmp_path, teacher_dir)
    assert summary["pruning"]["sparsity"] == 0.9 and summary["quantization"]["weight_bits"] == 4
    for results in (alone, kd):  # alone and distilled alike: 90%-sparse kernels
        assert results["pruning"]["prunable"]["sparsity"] == pytest.approx(0.9, abs=2e-3)
        assert results["pruning"]["target_sparsity"] == 0.9
    # the distilled student's reported loss is that of its 4-bit kernels
    kd_dir = os.path.join(tmp_path, "kd_T4", "seed_0")
    c_kd = ml_collections.ConfigDict(kd["config"])
    assert c_kd.quantization.weight_bits == 4
    model, variables = load_trained(kd_dir)
    ds = data.get_dataset("digits", num_train=300, num_test=100)
    quantize = build.qat_params_fn(c_kd.quantization)
    x, y = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)

    def loss_of(params):
        logits = model.apply({**variables, "params": params}, x, train=False)
        return float(jnp.mean(cross_entropy(logits, y)))

    assert loss_of(quantize(variables["params"])) == pytest.approx(kd["test_loss"], rel=1e-5)
    assert loss_of(variables["params"]) != pytest.approx(kd["test_loss"], rel=1e-5)
    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
    assert np.mean(kernel == 0) == pytest.approx(0.9, abs=2e-3)


# ----------------------------------------------------------------------------- lottery
def lottery_config(**fields):
    c = tiny(lottery.default_config())
    c.num_epochs = 1
    c.lottery.rounds = 1
    c.lottery.prune_fraction = 0.2
    c.lottery.scope = "global"
    for k, v in fields.items():
        c.lottery[k] = v
    return c


@pytest.fixture(scope="module")
def lottery_base(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lottery_base")
    return lottery.run(lottery_config(), str(workdir)), workdir


def test_lottery_rewind_steps_changes_the_tickets(lottery_base, tmp_path):
    base, base_dir = lottery_base
    summary = lottery.run(lottery_config(rewind_steps=3), str(tmp_path))
    rows, base_rows = summary["rounds"], base["rounds"]
    # every round, round 0 included, starts from the weights after 3 dense steps
    for r in (0, 1):
        ticket = read(tmp_path / "ticket" / f"round_{r}" / "results.json")
        base_ticket = read(base_dir / "ticket" / f"round_{r}" / "results.json")
        assert ticket["test_loss"] != base_ticket["test_loss"]
        assert rows[r]["kernel_sparsity"] == base_rows[r]["kernel_sparsity"]  # same targets
    assert summary["lottery"]["rewind_steps"] == 3 and base["lottery"]["rewind_steps"] == 0


def test_lottery_fraction_scope_rounds_and_reinit(lottery_base, tmp_path):
    base, _ = lottery_base
    c = lottery_config(prune_fraction=0.5, scope="layer", rounds=2, random_reinit=True)
    summary = lottery.run(c, str(tmp_path))
    rows = summary["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2] and len(base["rounds"]) == 2
    kernels = {"Dense_0/kernel": 64 * 16, "Dense_1/kernel": 16 * 10}
    for r, kept in ((1, 0.5), (2, 0.25)):  # per layer: exactly half of the survivors go
        zeros = sum(round(n * (1 - kept)) for n in kernels.values())
        assert rows[r]["kernel_sparsity"] == pytest.approx(zeros / sum(kernels.values()))
    assert base["rounds"][1]["kernel_sparsity"] == pytest.approx(0.2, abs=1e-3)
    for path in kernels:  # layer scope: every kernel at the same sparsity
        assert summary["final_layer_sparsity"][path] == pytest.approx(0.75, abs=2e-3)
    assert rows[0]["reinit_accuracy"] is None
    assert rows[1]["reinit_accuracy"] is not None and base["rounds"][1]["reinit_accuracy"] is None
    assert (tmp_path / "reinit" / "round_2" / "results.json").exists()


# ----------------------------------------------------------------------------- ptq
@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("float"))
    c = tiny(train_recipe.default_config())
    c.save_model = True
    train_recipe.run(c, workdir)
    return workdir


def run_ptq(float_dir, workdir, **ptq_fields):
    c = tiny(ptq.default_config())
    c.compare_float = False
    c.ptq.calibration_examples = 200
    for k, v in ptq_fields.items():
        c.ptq[k] = v
    return ptq.run(c, str(workdir), float_dir=float_dir)["ptq"]


def test_ptq_calibration_settings_change_the_ranges(float_dir, tmp_path):
    base = run_ptq(float_dir, tmp_path / "minmax")
    percentile = run_ptq(float_dir, tmp_path / "percentile", calibration="percentile")
    fewer = run_ptq(float_dir, tmp_path / "fewer", calibration_examples=20)
    assert set(base["ranges"]) == {"Dense_0", "Dense_1"}
    for other in (percentile, fewer):
        assert other["ranges"] != base["ranges"]
    # min-max ranges cover every calibration value: a percentile range lies inside them
    for layer, (lo, hi) in percentile["ranges"].items():
        assert base["ranges"][layer][0] <= lo and hi <= base["ranges"][layer][1]
    # the float model is the one trained in float_dir
    assert base["float_accuracy"] == read(os.path.join(float_dir, "results.json"))["test_accuracy"]


def test_ptq_act_bits_changes_the_integer_path(float_dir, tmp_path):
    base = run_ptq(float_dir, tmp_path / "a8")
    low = run_ptq(float_dir, tmp_path / "a2", act_bits=2)
    assert low["ranges"] == base["ranges"]  # min-max ranges do not depend on the width
    assert low["int8_vs_float_agreement"] < base["int8_vs_float_agreement"]


# ----------------------------------------------------------------------------- compress
def compress_config(**fields):
    c = tiny(compress.default_config())
    c.stages.prune.epochs = 1
    c.stages.share.epochs = 1
    c.stages.student.epochs = 1
    c.stages.student.model = {"name": "mlp", "features": (8,)}
    c.quantization.act_bits = 2
    c.sharing.bits = 2
    c.sweep.sparsities = ()
    c.sweep.bits = ()
    c.latency.rounds = 1
    c.latency.iters = 1
    c.latency.batch_size = 10
    for k, v in fields.items():
        set_fields(c, {k: v})
    return c


@pytest.fixture(scope="module")
def compress_base(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("compress_base")
    _, results = compress.run(compress_config(), str(workdir))
    return results, workdir


def test_compress_scores_the_dense_stage_with_the_trained_qat_model(compress_base):
    results, workdir = compress_base
    rows = {r["stage"]: r for r in results["stages"]}
    dense = read(workdir / "dense" / "results.json")
    assert dense["config"]["quantization"]["act_bits"] == 2
    assert rows["dense"]["accuracy"] == dense["test_accuracy"]
    assert rows["dense"]["loss"] == pytest.approx(dense["test_loss"], rel=1e-6)


def test_compress_sharing_bits_and_student_stage(compress_base, tmp_path):
    base, _ = compress_base
    _, results = compress.run(
        compress_config(**{"sharing.bits": 4, "stages.student.enabled": True}), str(tmp_path)
    )
    rows = {r["stage"]: r for r in results["stages"]}
    base_rows = {r["stage"]: r for r in base["stages"]}
    assert list(base_rows) == ["dense", "pruned", "shared", "quantized", "file"]
    assert list(rows) == ["dense", "pruned", "shared", "student", "quantized", "file"]
    for stage in ("dense", "pruned"):  # the stages before sharing are the same
        for key in ("accuracy", "bytes", "nonzeros"):
            assert rows[stage][key] == base_rows[stage][key], (stage, key)
    assert rows["shared"]["bytes"] > base_rows["shared"]["bytes"]  # 4-bit codes, not 2-bit
    assert rows["student"]["params"] == 64 * 8 + 8 + 8 * 10 + 10  # the student's MLP


# ----------------------------------------------------------------------------- crossval
@pytest.mark.parametrize("k", [2, 3])
def test_crossval_k_sets_the_folds(k, tmp_path):
    c = tiny(crossval.default_config(), features=(8,))
    c.num_epochs = 1
    c.crossval.k = k
    cv = crossval.run(c, str(tmp_path))
    assert cv["k"] == k and len(cv["folds"]) == k
    sizes = [read(tmp_path / f"fold_{i}" / "results.json")["num_test"] for i in range(k)]
    assert sum(sizes) == 300 and max(sizes) - min(sizes) <= 1  # every example held out once


# ----------------------------------------------------------------------------- refusals
RECIPES = {
    "train": train_recipe,
    "distill": distill,
    "lottery": lottery,
    "ptq": ptq,
    "crossval": crossval,
    "compress": compress,
}


@pytest.mark.parametrize(
    "recipe,section,source",
    [
        ("train", "sharing", compress),
        ("train", "stages", compress),
        ("distill", "lottery", lottery),
        ("lottery", "pruning", train_recipe),
        ("ptq", "sharing", compress),
        ("crossval", "protocol", distill),
        ("compress", "lottery", lottery),
    ],
)
def test_a_section_the_recipe_cannot_use_is_refused(recipe, section, source, tmp_path):
    c = RECIPES[recipe].default_config()
    c[section] = source.default_config()[section]
    workdir = tmp_path / "run"
    with pytest.raises(build.ConfigError, match=f"config.{section} is not read by the '{recipe}'"):
        RECIPES[recipe].run(c, str(workdir))
    assert not workdir.exists()


@pytest.mark.parametrize(
    "recipe,field,value,match",
    [
        ("train", "quantization.weight_bits", 33, "config.quantization.weight_bits=33"),
        ("train", "augment.shift", -1, "config.augment"),
        ("train", "pruning.layers", {"Dense_9": 0.5}, "Dense_9"),
        ("lottery", "quantization.act_bits", 99, "config.quantization.act_bits=99"),
        ("compress", "sharing.bits", 0, "config.sharing.bits=0"),
        ("compress", "stages.prune.slim", True, "slim=True needs"),
        ("compress", "stages.student.teacher", "oracle", "teacher='oracle'"),
        ("compress", "pruning.layers", {"Dense_7": 0.5}, "Dense_7"),
    ],
)
def test_a_bad_value_is_refused_before_training(recipe, field, value, match, tmp_path):
    c = tiny(RECIPES[recipe].default_config())
    set_fields(c, {field: value})
    with pytest.raises(build.ConfigError, match=match):
        RECIPES[recipe].run(c, str(tmp_path))
    assert not os.listdir(tmp_path)
