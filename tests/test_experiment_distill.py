"""End-to-end smoke test of experiments/distill.py on the small digits dataset."""

import json

import ml_collections
import numpy as np
import pytest

from experiments import distill
from experiments.configs import (
    fashion_mnist_kd_hinton,
    fashion_mnist_kd_jitter,
    fashion_mnist_kd_mlp,
    fashion_mnist_kd_unlabeled,
)
from jaxopt_models.training import compute_teacher_logits, load_dataset


def digits_config():
    """The ``:quick`` distillation config, moved to 8x8 digits with tiny models."""
    c = fashion_mnist_kd_unlabeled.get_config("quick")
    c.dataset.name = "digits"
    c.dataset.num_train = None
    c.dataset.num_test = None
    c.eval_batch_size = 128
    c.batch_size = 32
    c.model.features = (8,)
    c.num_epochs = 2
    c.seeds = (0,)
    c.distill.temperatures = (2, 8)
    c.distill.teacher_num_train = 400
    c.distill.student_num_train = 200
    c.distill.transfer_num_train = 600
    c.distill.num_epochs = 1
    c.distill.teacher_batch_size = 256
    c.teacher.model.name = "mlp"
    c.teacher.model.features = (32,)
    c.teacher.num_epochs = 3
    c.teacher.batch_size = 32
    c.teacher.eval_batch_size = 128
    return c


@pytest.mark.slow
def test_distill_experiment_runs_end_to_end_and_saves_its_teacher(tmp_path, capsys):
    config = digits_config()
    summary = distill.run(config, str(tmp_path))
    distill.print_summary(summary)
    out = capsys.readouterr().out
    assert "student distilled T=8" in out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(
        (tmp_path / "summary.json").read_text()
    )

    assert summary["dataset"] == "digits"
    assert summary["teacher"]["num_train"] == 400
    assert (summary["student_num_train"], summary["transfer_num_train"]) == (200, 600)
    assert len(summary["student"]["runs"]) == 1
    assert set(summary["distilled"]) == {"2", "8"}
    for entry in summary["distilled"].values():
        assert 0.0 <= entry["mean"] <= 1.0
        assert entry["gap_closed"] is None or isinstance(entry["gap_closed"], float)
    for sub in ("teacher", "student/seed_0", "kd_T2/seed_0", "kd_T8/seed_0"):
        assert (tmp_path / sub / "results.json").exists(), sub
    kd_results = json.loads((tmp_path / "kd_T8" / "seed_0" / "results.json").read_text())
    assert kd_results["num_train"] == 600 and kd_results["distill"]["temperature"] == 8.0
    teacher_results = json.loads((tmp_path / "teacher" / "results.json").read_text())
    assert teacher_results["num_train"] == 400
    assert summary["teacher"]["test_accuracy"] == pytest.approx(teacher_results["test_accuracy"])

    # the saved teacher is what a later run loads with --teacher_dir
    ds = load_dataset(config)
    teacher = distill.load_teacher(distill.teacher_config(config), ds, str(tmp_path / "teacher"))
    logits = compute_teacher_logits(teacher, ds.x_test)
    acc = float((np.argmax(logits, -1) == ds.y_test).mean())
    assert acc == summary["teacher"]["test_accuracy"]


def test_transfer_set_keeps_labels_of_the_labelled_part_only():
    ds = load_dataset(digits_config())
    logits = np.zeros((50, ds.num_classes), np.float32)
    logits[:, 3] = 1.0
    kd_ds = distill.transfer_set(ds, logits, 20)
    assert kd_ds.x_train.shape[0] == 50 and kd_ds.y_train.shape == (50,)
    np.testing.assert_array_equal(kd_ds.y_train[:20], ds.y_train[:20])
    np.testing.assert_array_equal(kd_ds.y_train[20:], 3)
    np.testing.assert_array_equal(kd_ds.x_test, ds.x_test)


def test_bad_data_sizes_are_rejected(tmp_path):
    config = digits_config()
    config.distill.transfer_num_train = 100  # fewer than the student's 200 labelled images
    with pytest.raises(ValueError, match="transfer_num_train=100"):
        distill.run(config, str(tmp_path))
    config.distill.transfer_num_train = -5
    with pytest.raises(ValueError, match=r"config.distill.transfer_num_train=-5"):
        distill.run(config, str(tmp_path))


def test_configs_and_quick_variants():
    full = fashion_mnist_kd_mlp.get_config()
    quick = fashion_mnist_kd_mlp.get_config("quick")
    assert tuple(full.distill.temperatures) == (1, 2, 4, 8, 20)
    assert len(full.seeds) >= 3
    assert quick.dataset.num_train < 60000 and quick.num_epochs < full.num_epochs
    unl = fashion_mnist_kd_unlabeled.get_config()
    assert unl.distill.teacher_num_train == unl.distill.student_num_train == 3000
    assert unl.distill.transfer_num_train == 60000
    assert distill.teacher_config(unl).dataset.name == "fashion_mnist"


def test_augmented_distillation_with_its_control(tmp_path):
    config = digits_config()
    config.distill.transfer_num_train = None  # the student's own 200 images
    config.distill.temperatures = (2,)
    config.distill.augment = ml_collections.ConfigDict({"shift": 1, "flip": False, "mode": "edge"})
    config.distill.augmented_alone_control = True
    summary = distill.run(config, str(tmp_path))
    assert summary["distill_augment"] == {"shift": 1, "flip": False, "mode": "edge"}
    assert set(summary["student_augmented"]) >= {"mean", "std", "runs", "gap_closed"}
    kd = json.loads((tmp_path / "kd_T2" / "seed_0" / "results.json").read_text())
    assert kd["distill"]["augment"] is True
    assert kd["distill"]["precomputed_teacher_logits"] is False
    alone = json.loads((tmp_path / "student" / "seed_0" / "results.json").read_text())
    control = json.loads((tmp_path / "student_augmented" / "seed_0" / "results.json").read_text())
    assert alone["config"]["augment"]["shift"] == 0
    assert control["config"]["augment"]["shift"] == 1
    bad = digits_config()
    bad.distill.augmented_alone_control = True
    with pytest.raises(ValueError, match="augmented_alone_control needs config.distill.augment"):
        distill.run(bad, str(tmp_path / "bad"))


def test_same_data_configs():
    h = fashion_mnist_kd_hinton.get_config()
    assert h.distill.teacher_num_train == h.distill.student_num_train == 3000
    assert h.distill.transfer_num_train is None  # no image beyond the student's
    assert h.teacher.augment.shift == 2 and h.teacher.model.dropout_rate == 0.5
    assert h.augment.shift == 0  # the student alone and distilled: plain
    full = fashion_mnist_kd_hinton.get_config("full")
    assert full.distill.student_num_train is None and full.distill.teacher_num_train is None
    j = fashion_mnist_kd_jitter.get_config()
    assert j.distill.augment.shift == 2 and j.distill.augmented_alone_control
