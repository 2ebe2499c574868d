r"""Knowledge distillation: the teacher alone, the student alone, the student distilled.

Trains (or loads) the teacher, then for every seed trains the student on its own and
distilled from the teacher at every temperature of ``config.distill.temperatures``, and
prints mean ± std test accuracies and the fraction of the teacher-student gap closed.

Usage:
  python -m experiments.distill --config experiments/configs/fashion_mnist_kd_mlp.py \
      --workdir runs/fm_kd
  # quick local try: --config=experiments/configs/fashion_mnist_kd_mlp.py:quick
  # one temperature: --config.distill.temperatures='(4,)'
  # reuse a teacher trained by an earlier run: --teacher_dir runs/fm_kd/teacher

Writes ``<workdir>/teacher/`` (``variables.msgpack``, ``results.json``),
``<workdir>/student/seed_<s>/`` and ``<workdir>/kd_T<T>/seed_<s>/`` (``results.json``
each) and ``<workdir>/summary.json``.
"""

import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jaxopt_models.training import (
    Teacher,
    atomic_write_json,
    compute_teacher_logits,
    load_dataset,
    load_variables,
    save_variables,
    train_and_distill,
    train_and_evaluate,
)

FLAGS = flags.FLAGS
if "workdir" not in FLAGS:  # several experiment modules may share a process
    flags.DEFINE_string("workdir", None, "Directory for the teacher, student and summary outputs.")
if "teacher_dir" not in FLAGS:  # several experiment modules may share a process
    flags.DEFINE_string("teacher_dir", None, "Load the teacher saved in this directory.")
if "config" not in FLAGS:  # several experiment modules may share a process
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The teacher's full training config: ``config.teacher`` on ``config.dataset``."""
    c = ml_collections.ConfigDict(config.teacher.to_dict())
    c.dataset = ml_collections.ConfigDict(config.dataset.to_dict())
    return c


def save_teacher(teacher: Teacher, directory: str) -> str:
    """Writes the teacher's variables to ``<directory>/variables.msgpack``."""
    return save_variables(directory, teacher.variables)


def load_teacher(tcfg: ml_collections.ConfigDict, ds, directory: str) -> Teacher:
    """Rebuilds the teacher model of ``tcfg`` and reads its variables from ``directory``."""
    variables, model = load_variables(directory, tcfg, ds.x_train[:1], ds.num_classes)
    return Teacher(apply_fn=model.apply, variables=variables)


def _mean_std(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "runs": values,
    }


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.argmax(logits, -1) == labels).mean())


def _optional_int(config, key: str, default: int) -> int:
    value = config.distill.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.distill.{key}={value!r} must be a positive int or None")
    return value


def transfer_set(ds, teacher_logits: np.ndarray, num_labeled: int):
    """The distillation training set: the first ``len(teacher_logits)`` training images.

    The first ``num_labeled`` keep their labels (the student's labelled data); the others
    are treated as unlabelled and get the teacher's top class as their hard label (used by
    the ``1 - alpha`` term), so no true label beyond ``num_labeled`` is ever read.
    """
    n = len(teacher_logits)
    pseudo = np.argmax(teacher_logits[num_labeled:], -1).astype(ds.y_train.dtype)
    return ds._replace(
        x_train=ds.x_train[:n], y_train=np.concatenate([ds.y_train[:num_labeled], pseudo])
    )


def run(config: ml_collections.ConfigDict, workdir: str, teacher_dir: str | None = None):
    """Runs the whole experiment and returns the summary dict (also in ``summary.json``).

    Data: the teacher trains on the first ``distill.teacher_num_train`` labelled training
    examples (all when ``None``), the student alone on the first
    ``distill.student_num_train`` (all when ``None``), and the distilled student on the
    first ``distill.transfer_num_train`` training images (default: the student's), of
    which only the student's are labelled; the teacher's logits are computed once for them.

    Args:
      config: a ``fashion_mnist_kd_*`` config: the student's fields at the top level,
        ``teacher`` (a full training config without ``dataset``), ``seeds`` and
        ``distill`` (``default_distill_config()`` plus ``temperatures``, ``num_epochs``
        of the distilled runs and the three ``*_num_train`` sizes). Optional
        ``distill.augment`` (fields as ``config.augment``): the distilled runs see
        augmented images that the teacher labels inside the step (the student alone is
        trained as configured); ``distill.augmented_alone_control=True`` also trains the
        student alone with that augmentation, as a control.
      workdir: output directory.
      teacher_dir: a directory with a saved teacher to reuse instead of training one.

    Returns:
      ``{"teacher": ..., "student": mean/std, "distilled": {T: mean/std + gap_closed}, ...}``.
    """
    ds = load_dataset(config)
    n_all = len(ds.x_train)
    n_teacher = _optional_int(config, "teacher_num_train", n_all)
    n_student = _optional_int(config, "student_num_train", n_all)
    n_transfer = _optional_int(config, "transfer_num_train", n_student)
    if not n_student <= n_transfer <= n_all or n_teacher > n_all:
        raise ValueError(
            f"need student_num_train={n_student} <= transfer_num_train={n_transfer} <= "
            f"{n_all} training examples and teacher_num_train={n_teacher} <= {n_all}"
        )
    tcfg = teacher_config(config)
    teacher_out = os.path.join(workdir, "teacher")
    if teacher_dir is not None:
        teacher = load_teacher(tcfg, ds, teacher_dir)
        teacher_source = teacher_dir
    else:
        teacher_ds = ds.subset(num_train=n_teacher)
        teacher_state, _ = train_and_evaluate(tcfg, teacher_out, dataset=teacher_ds)
        teacher = Teacher.from_state(teacher_state)
        save_teacher(teacher, teacher_out)
        teacher_source = teacher_out
    bs = config.distill.teacher_batch_size
    teacher_acc = _accuracy(compute_teacher_logits(teacher, ds.x_test, bs), ds.y_test)
    print(f"teacher {tcfg.model.name}: test accuracy {teacher_acc:.4f}", flush=True)

    student_ds = ds.subset(num_train=n_student)
    logits = compute_teacher_logits(teacher, ds.x_train[:n_transfer], bs)
    kd_ds = transfer_set(ds, logits, n_student)

    kd_augment = config.distill.get("augment")
    control = bool(config.distill.get("augmented_alone_control", False))
    if control and kd_augment is None:
        raise ValueError("config.distill.augmented_alone_control needs config.distill.augment")
    alone: list[float] = []
    alone_aug: list[float] = []
    distilled: dict[float, list[float]] = {float(t): [] for t in config.distill.temperatures}
    for seed in config.seeds:
        cfg = config.copy_and_resolve_references()
        cfg.seed = int(seed)
        _, res = train_and_evaluate(
            cfg, os.path.join(workdir, "student", f"seed_{seed}"), dataset=student_ds
        )
        alone.append(res["test_accuracy"])
        print(f"seed {seed} student alone: {res['test_accuracy']:.4f}", flush=True)
        if kd_augment is not None:
            # the distilled runs see augmented images, labelled by the teacher in the step
            cfg.augment = ml_collections.ConfigDict(kd_augment.to_dict())
            cfg.distill.precompute_teacher = False
        if control:
            _, res = train_and_evaluate(
                cfg, os.path.join(workdir, "student_augmented", f"seed_{seed}"), dataset=student_ds
            )
            alone_aug.append(res["test_accuracy"])
            print(f"seed {seed} student alone, augmented: {res['test_accuracy']:.4f}", flush=True)
        if config.distill.get("num_epochs") is not None:
            cfg.num_epochs = config.distill.num_epochs
        for t in distilled:
            cfg.distill.temperature = t
            _, res = train_and_distill(
                cfg,
                os.path.join(workdir, f"kd_T{t:g}", f"seed_{seed}"),
                teacher=teacher,
                dataset=kd_ds,
                teacher_logits=logits if kd_augment is None else None,
            )
            distilled[t].append(res["test_accuracy"])
            print(f"seed {seed} distilled T={t:g}: {res['test_accuracy']:.4f}", flush=True)

    student = _mean_std(alone)
    gap = teacher_acc - student["mean"]
    summary = {
        "dataset": ds.name,
        "teacher": {
            "model": tcfg.model.name,
            "test_accuracy": teacher_acc,
            "num_train": n_teacher,
            "transfer_set_accuracy_on_labelled": _accuracy(
                logits[:n_student], ds.y_train[:n_student]
            ),
            "source": teacher_source,
        },
        "student_model": config.model.name,
        "student_num_train": n_student,
        "transfer_num_train": n_transfer,
        "alpha": config.distill.alpha,
        "seeds": list(config.seeds),
        "student": student,
        "distill_augment": None if kd_augment is None else kd_augment.to_dict(),
        "distilled": {},
    }

    def with_gap_closed(accs: list[float]) -> dict[str, Any]:
        entry = _mean_std(accs)
        entry["gap_closed"] = (entry["mean"] - student["mean"]) / gap if gap > 0 else None
        return entry

    if control:
        summary["student_augmented"] = with_gap_closed(alone_aug)
    for t, accs in distilled.items():
        summary["distilled"][f"{t:g}"] = with_gap_closed(accs)
    os.makedirs(workdir, exist_ok=True)
    atomic_write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """Prints the summary as a table, then as one JSON line."""
    n = len(summary["seeds"])
    print(
        f"\n{'run':<28} {'test accuracy (mean ± std, ' + str(n) + ' seeds)':>40} {'gap closed':>11}"
    )
    t = summary["teacher"]
    print(f"{'teacher ' + t['model']:<28} {t['test_accuracy']:>40.4f}")
    s = summary["student"]
    print(f"{'student alone':<28} {s['mean']:>31.4f} ± {s['std']:.4f}")
    rows = [("student distilled T=" + temp, e) for temp, e in summary["distilled"].items()]
    if "student_augmented" in summary:
        rows.insert(0, ("student alone, augmented", summary["student_augmented"]))
    for label, e in rows:
        gap = "-" if e["gap_closed"] is None else f"{100 * e['gap_closed']:.0f}%"
        print(f"{label:<28} {e['mean']:>31.4f} ± {e['std']:.4f} {gap:>11}")
    print(json.dumps(summary, default=str))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    print_summary(run(FLAGS.config, FLAGS.workdir, FLAGS.teacher_dir))


if __name__ == "__main__":
    app.run(main)
