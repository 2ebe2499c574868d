"""The distillation configs and ``experiments.distill`` (``recipes.distill``) end to end on the
small digits dataset."""

import json
import os

import jax
import numpy as np
import pytest
from _helpers import load_config, run_script, set_fields, use_compilation_cache

from jaxopt_models import data
from jaxopt_models.recipes import build, distill, load_trained

use_compilation_cache()

# the :quick unlabelled-transfer config, moved to 8x8 digits with tiny models
OVERRIDES = {
    "dataset.name": "digits",  # num_train / num_test of :quick exceed digits: all of it
    "eval_batch_size": 128,
    "batch_size": 32,
    "model.features": (8,),
    "num_epochs": 2,
    "plots": False,
    "seeds": (0,),
    "protocol.temperatures": (2, 8),
    "protocol.teacher_num_train": 400,
    "protocol.student_num_train": 200,
    "protocol.transfer_num_train": 600,
    "protocol.num_epochs": 1,
    "distillation.teacher_batch_size": 256,
    "teacher.model.name": "mlp",
    "teacher.model.features": (32,),
    "teacher.num_epochs": 3,
    "teacher.batch_size": 32,
    "teacher.eval_batch_size": 128,
    "teacher.plots": False,
}


def digits_config(**more):
    return set_fields(load_config("fashion_mnist_kd_unlabeled", "quick"), {**OVERRIDES, **more})


def read(path) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    """The whole protocol once: teacher, student alone, distilled at T = 2 and 8."""
    workdir = tmp_path_factory.mktemp("kd")
    return distill.run(digits_config(), str(workdir)), workdir


def test_distill_runs_end_to_end_and_saves_its_teacher(kd_run, capsys):
    summary, workdir = kd_run
    assert read(workdir / "summary.json") == json.loads(json.dumps(summary))
    assert summary["dataset"] == "digits"
    assert summary["teacher"]["num_train"] == 400
    assert (summary["student_num_train"], summary["transfer_num_train"]) == (200, 600)
    assert set(summary["distilled"]) == {"2", "8"}
    teacher = read(workdir / "teacher" / "results.json")
    alone = read(workdir / "student" / "seed_0" / "results.json")
    assert teacher["num_train"] == 400 and alone["num_train"] == 200
    assert summary["teacher"]["test_accuracy"] == pytest.approx(teacher["test_accuracy"])
    assert summary["student"]["runs"] == [alone["test_accuracy"]]
    gap = summary["teacher"]["test_accuracy"] - alone["test_accuracy"]
    val = {}
    for t in ("2", "8"):
        kd = read(workdir / f"kd_T{t}" / "seed_0" / "results.json")
        assert kd["num_train"] == 600 and kd["distillation"]["temperature"] == float(t)
        assert kd["config"]["num_epochs"] == 1  # protocol.num_epochs
        entry = summary["distilled"][t]
        assert entry["runs"] == [kd["test_accuracy"]] and entry["mean"] == kd["test_accuracy"]
        expected = (kd["test_accuracy"] - alone["test_accuracy"]) / gap if gap > 0 else None
        assert entry["gap_closed"] == pytest.approx(expected)
        val[float(t)] = kd["val_accuracy"]
    best = summary["best_temperature"]
    assert best["temperature"] == max(val, key=val.get)  # chosen on validation, not test
    distill.print_summary(summary)
    out = capsys.readouterr().out
    assert "student distilled T=8" in out and f"{summary['teacher']['test_accuracy']:.4f}" in out
    # the saved teacher is what a later run loads with --teacher_dir
    model, variables = load_trained(str(workdir / "teacher"))
    ds = build.load_data(digits_config())
    logits = jax.jit(lambda x: model.apply(variables, x, train=False))(ds.x_test)
    accuracy = float((np.argmax(logits, -1) == ds.y_test).mean())
    assert accuracy == pytest.approx(summary["teacher"]["test_accuracy"], abs=1e-6)


def test_the_unlabelled_part_of_the_transfer_set_is_never_read(kd_run, tmp_path):
    """The same distilled run with the true labels of images 200..599 scrambled."""
    _, workdir = kd_run
    c = digits_config(**{"protocol.temperatures": (8,)})
    ds = data.get_dataset("digits")
    train_idx, _ = data.validation_split(len(ds.x_train), c.dataset.validation_fraction, 0)
    reference = read(workdir / "kd_T8" / "seed_0" / "results.json")

    def kd_with_scrambled(part, out):
        y = ds.y_train.copy()
        y[part] = (y[part] + 1) % 10
        scrambled = ds._replace(y_train=y)
        distill.run(c, str(out), teacher_dir=str(workdir / "teacher"), dataset=scrambled)
        return read(out / "kd_T8" / "seed_0" / "results.json")

    kd = kd_with_scrambled(train_idx[200:600], tmp_path / "unlabelled")
    assert kd["test_loss"] == reference["test_loss"]
    assert kd["test_accuracy"] == reference["test_accuracy"]
    # the control: the labels of the first 200 images are read
    kd = kd_with_scrambled(train_idx[:200], tmp_path / "labelled")
    assert kd["test_loss"] != reference["test_loss"]


def test_distill_script_reuses_a_teacher(kd_run, tmp_path):
    _, workdir = kd_run
    teacher_dir = str(workdir / "teacher")
    overrides = {**OVERRIDES, "protocol.temperatures": (8,)}
    out = run_script(
        "distill",
        "--config",
        "experiments/configs/fashion_mnist_kd_hinton.py:quick",  # an MLP teacher, as saved
        "--workdir",
        str(tmp_path),
        "--teacher_dir",
        teacher_dir,
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = read(tmp_path / "summary.json")
    assert summary["teacher"]["source"] == teacher_dir
    assert not (tmp_path / "teacher").exists()  # not trained again
    assert "student distilled T=8" in out.stdout
    # the same student and distilled runs as the in-process ones (every field they read is
    # overridden alike; the teacher is loaded)
    kd = read(tmp_path / "kd_T8" / "seed_0" / "results.json")
    assert (
        kd["test_accuracy"] == read(workdir / "kd_T8" / "seed_0" / "results.json")["test_accuracy"]
    )


def test_bad_data_sizes_are_rejected(tmp_path):
    config = digits_config(**{"protocol.transfer_num_train": 100})  # < the student's 200
    with pytest.raises(build.ConfigError, match="transfer_num_train=100"):
        distill.run(config, str(tmp_path))
    config.protocol.transfer_num_train = -5
    with pytest.raises(build.ConfigError, match=r"config.protocol.transfer_num_train=-5"):
        distill.run(config, str(tmp_path))
    assert not os.listdir(tmp_path)


def test_configs_and_quick_variants():
    full = load_config("fashion_mnist_kd_mlp")
    quick = load_config("fashion_mnist_kd_mlp", "quick")
    assert tuple(full.protocol.temperatures) == (1, 2, 4, 8, 20)
    assert len(full.seeds) >= 3 and full.distillation.alpha == 0.9
    assert quick.dataset.num_train < 60000 and quick.num_epochs < full.num_epochs
    unl = load_config("fashion_mnist_kd_unlabeled")
    assert unl.protocol.teacher_num_train == unl.protocol.student_num_train == 3000
    assert unl.protocol.transfer_num_train == 54000  # the whole training split
    assert distill.teacher_config(unl).dataset.name == "fashion_mnist"


def test_augmented_distillation_with_its_control(kd_run, tmp_path):
    _, workdir = kd_run
    augment = {"shift": 1, "flip": False, "mode": "edge"}
    config = digits_config(
        **{
            "protocol.transfer_num_train": None,  # the student's own 200 images
            "protocol.temperatures": (2,),
            "protocol.augment": augment,
            "protocol.augmented_alone_control": True,
            "distillation.precompute_teacher": False,
        }
    )
    summary = distill.run(config, str(tmp_path), teacher_dir=str(workdir / "teacher"))
    assert summary["distill_augment"] == augment
    kd = read(tmp_path / "kd_T2" / "seed_0" / "results.json")
    assert kd["config"]["augment"] == augment and kd["num_train"] == 200
    assert kd["config"]["distillation"]["precompute_teacher"] is False
    alone = read(tmp_path / "student" / "seed_0" / "results.json")
    control = read(tmp_path / "student_augmented" / "seed_0" / "results.json")
    assert alone["config"]["augment"]["shift"] == 0 and control["config"]["augment"]["shift"] == 1
    assert control["test_loss"] != alone["test_loss"]  # the jitter changed the training
    assert summary["student_augmented"]["runs"] == [control["test_accuracy"]]
    bad = digits_config(**{"protocol.augmented_alone_control": True})
    with pytest.raises(build.ConfigError, match="augmented_alone_control needs config.protocol"):
        distill.run(bad, str(tmp_path / "bad"))
    bad = digits_config(**{"protocol.augment": augment})  # precompute_teacher=True
    with pytest.raises(build.ConfigError, match="precompute_teacher=False"):
        distill.run(bad, str(tmp_path / "bad"))


def test_same_data_configs():
    h = load_config("fashion_mnist_kd_hinton")
    assert h.protocol.teacher_num_train == h.protocol.student_num_train == 3000
    assert h.protocol.transfer_num_train is None  # no image beyond the student's
    assert h.teacher.augment.shift == 2 and h.teacher.model.dropout_rate == 0.5
    assert h.augment.shift == 0  # the student alone and distilled: plain
    full = load_config("fashion_mnist_kd_hinton", "full")
    assert full.protocol.student_num_train is None and full.protocol.teacher_num_train is None
    k1 = load_config("fashion_mnist_kd_hinton", "1k")
    assert k1.protocol.student_num_train == k1.protocol.teacher_num_train == 1000
    j = load_config("fashion_mnist_kd_jitter")
    assert j.protocol.augment.shift == 2 and j.protocol.augmented_alone_control
    assert j.distillation.precompute_teacher is False  # the teacher sees the jittered images
