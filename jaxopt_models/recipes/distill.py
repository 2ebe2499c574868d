"""The distillation recipe: teacher, the student alone, and the student distilled.

Trains (or loads) the teacher, then for every seed trains the student alone and distilled
from the teacher at every temperature of ``protocol.temperatures``. The student runs — alone
and distilled alike — honour the config's ``pruning`` and ``quantization`` sections, so a
90%-sparse distilled student is compared with a 90%-sparse student alone. Only the student
is differentiated: the teacher's variables are a frozen input of the compiled step (or its
logits are computed once, ``distillation.precompute_teacher``), never in the optimizer state
or a checkpoint. The temperature is chosen on the validation split; test accuracies are
reported for every run, with the fraction of the teacher-student gap closed.

Writes ``teacher/`` (``variables.msgpack``, ``results.json``), ``student/seed_<s>/``,
``kd_T<T>/seed_<s>/`` (each a train run) and ``summary.json``.
"""

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from ml_collections import config_dict

from jaxopt_models.distillation import Teacher, teacher_logits
from jaxopt_models.recipes import build
from jaxopt_models.recipes import config as schema
from jaxopt_models.recipes.train import train
from jaxopt_models.training import atomic_write_json, initialize_distributed, load_variables

SUMMARY_FILE = "summary.json"


def teacher_section() -> ml_collections.ConfigDict:
    """The ``teacher`` section: a training config without ``dataset`` (it uses the run's)."""
    t = schema.base_config()
    for key in ("dataset", "distributed", "parallel", "resume", "checkpoint"):
        del t[key]
    return t


def default_config() -> ml_collections.ConfigDict:
    """The distill recipe's config.

    Fields (beyond ``base_config()``, which configures the student):
      pruning / quantization: applied to every student run (alone and distilled).
      distillation: ``distillation_section()`` (loss, temperature unused here: see
        ``protocol.temperatures``, alpha, precompute_teacher, teacher_batch_size).
      teacher: the teacher's training fields (``teacher_section()``).
      seeds: student seeds.
      protocol.temperatures: the distilled runs' temperatures.
      protocol.num_epochs: epochs of the distilled runs (``None``: the student's).
      protocol.teacher_num_train / student_num_train: the first N training examples the
        teacher / the students learn from (``None``: all).
      protocol.transfer_num_train: images the distilled student sees (default: the
        student's); those beyond ``student_num_train`` are unlabelled (the teacher's top
        class is their hard label; their true labels are never read).
      protocol.augment: augmentation of the distilled runs only (the teacher labels the
        augmented images inside the step); shift 0 and flip False: off.
      protocol.augmented_alone_control: also train the student alone with that
        augmentation, as a control.
    """
    c = schema.base_config()
    c.pruning = schema.pruning_section()
    c.quantization = schema.quantization_section()
    c.distillation = schema.distillation_section()
    c.teacher = teacher_section()
    c.seeds = (0,)
    p = ml_collections.ConfigDict()
    p.temperatures = (4.0,)
    p.num_epochs = config_dict.placeholder(int)
    p.teacher_num_train = config_dict.placeholder(int)
    p.student_num_train = config_dict.placeholder(int)
    p.transfer_num_train = config_dict.placeholder(int)
    p.augment = ml_collections.ConfigDict({"shift": 0, "flip": False, "mode": "edge"})
    p.augmented_alone_control = False
    c.protocol = p
    return c


def teacher_config(config) -> ml_collections.ConfigDict:
    """The teacher's full training config: ``config.teacher`` on ``config.dataset``."""
    c = ml_collections.ConfigDict(config.teacher.to_dict())
    for key in ("dataset", "distributed", "checkpoint"):
        c[key] = ml_collections.ConfigDict(config[key].to_dict())
    c.parallel = config.parallel
    c.resume = False
    return c


def _mean_std(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, np.float64)
    std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "runs": values}


def _optional_int(value, field: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.{field}={value!r} must be a positive int or None")
    return value


def _augment_on(section) -> bool:
    return bool(section.shift) or bool(section.flip)


def check(config, data: build.Data) -> dict[str, int]:
    """Checks every section up front; returns the data sizes of the protocol."""
    schema.check_fields(config, default_config(), "distill")
    p = config.protocol
    n_all = len(data.x_train)
    n_teacher = _optional_int(p.teacher_num_train, "protocol.teacher_num_train", n_all)
    n_student = _optional_int(p.student_num_train, "protocol.student_num_train", n_all)
    n_transfer = _optional_int(p.transfer_num_train, "protocol.transfer_num_train", n_student)
    if not n_student <= n_transfer <= n_all or n_teacher > n_all:
        raise ValueError(
            f"config.protocol needs student_num_train={n_student} <= transfer_num_train="
            f"{n_transfer} <= {n_all} training examples and teacher_num_train={n_teacher} "
            f"<= {n_all}"
        )
    temps = tuple(p.temperatures)
    if not temps:
        raise ValueError("config.protocol.temperatures must name at least one temperature")
    for t in temps:
        section = ml_collections.ConfigDict(config.distillation.to_dict())
        section.temperature = float(t)
        build.build_distill_loss(section)
    if not config.seeds:
        raise ValueError("config.seeds must name at least one seed")
    build.build_augment(p.augment)
    if p.augmented_alone_control and not _augment_on(p.augment):
        raise ValueError("config.protocol.augmented_alone_control needs config.protocol.augment")
    if _augment_on(p.augment) and config.distillation.precompute_teacher:
        raise ValueError(
            "config.protocol.augment needs the teacher inside the step: set "
            "config.distillation.precompute_teacher=False"
        )
    _optional_int(p.num_epochs, "protocol.num_epochs", 1)
    # the student's and the teacher's sections, built once before anything trains
    tcfg = teacher_config(config)
    for cfg, n in ((config, n_student), (tcfg, n_teacher)):
        model = build.build_model(cfg.model, data.num_classes, cfg.get("quantization"))
        steps = build.num_steps(n, cfg.batch_size)
        build.fit_settings(cfg, steps)
        build.build_augment(cfg.get("augment"))
        build.loss_fn_of(cfg)
        if cfg is config:
            build.qat_params_fn(cfg.quantization)
            build.build_pruning(
                cfg.pruning,
                steps * cfg.num_epochs,
                steps_per_epoch=steps,
                seed=cfg.seed,
                params=build.param_shapes(model, data.x_train[:1]),
            )
    return {"teacher": n_teacher, "student": n_student, "transfer": n_transfer}


def run(
    config,
    workdir: str,
    *,
    teacher_dir: str | None = None,
    dataset=None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Runs the whole protocol; returns the summary (also ``<workdir>/summary.json``).

    Args:
      config: ``default_config()`` with overrides.
      workdir: output directory.
      teacher_dir: a finished teacher run (``variables.msgpack``) to reuse.
      dataset: a ``data.Dataset`` instead of ``config.dataset``'s.
      overwrite: replace a finished run in ``workdir``.

    Returns:
      ``{"teacher", "student", "distilled": {T: mean/std + gap_closed}, "best_temperature",
      ...}`` (test accuracies; validation accuracies under ``val``).
    """
    with build.config_errors():
        schema.check_fields(config, default_config(), "distill")
        if teacher_dir is not None:
            build.check_saved_run(teacher_dir, "teacher_dir")
        build.prepare_workdir(workdir, overwrite=overwrite, resume=False, marker=SUMMARY_FILE)
        initialize_distributed(config)
        data = build.load_data(config, dataset)
        sizes = check(config, data)
    tcfg = teacher_config(config)
    if teacher_dir is not None:
        model = build.build_model(tcfg.model, data.num_classes)
        template = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
            data.x_train[:1]
        )
        teacher = Teacher(model.apply, load_variables(teacher_dir, template))
        teacher_source = teacher_dir
    else:
        teacher_out = os.path.join(workdir, "teacher")
        state, _ = train(tcfg, data.subset(sizes["teacher"]), teacher_out, description="teacher")
        teacher = Teacher.from_state(state)
        teacher_source = teacher_out
    bs = config.distillation.teacher_batch_size
    t_test = float((teacher_logits(teacher, data.x_test, bs).argmax(-1) == data.y_test).mean())
    t_val = float((teacher_logits(teacher, data.x_val, bs).argmax(-1) == data.y_val).mean())
    print(f"teacher {tcfg.model.name}: test accuracy {t_test:.4f}", flush=True)

    student_data = data.subset(sizes["student"])
    transfer = teacher_logits(teacher, data.x_train[: sizes["transfer"]], bs)
    n_lab = sizes["student"]
    pseudo = np.argmax(transfer[n_lab:], -1).astype(data.y_train.dtype)
    kd_data = data._replace(
        x_train=data.x_train[: sizes["transfer"]],
        y_train=np.concatenate([data.y_train[:n_lab], pseudo]),
    )
    p = config.protocol
    augment = _augment_on(p.augment)
    precompute = bool(config.distillation.precompute_teacher)
    alone: dict[str, list[float]] = {"test": [], "val": []}
    alone_aug: dict[str, list[float]] = {"test": [], "val": []}
    distilled = {float(t): {"test": [], "val": []} for t in p.temperatures}
    for seed in config.seeds:
        cfg = config.copy_and_resolve_references()
        cfg.seed = int(seed)
        _, res = train(cfg, student_data, os.path.join(workdir, "student", f"seed_{seed}"))
        _record(alone, res, f"seed {seed} student alone")
        kd_cfg = cfg.copy_and_resolve_references()
        if augment:
            kd_cfg.augment = ml_collections.ConfigDict(p.augment.to_dict())
        if p.augmented_alone_control:
            out = os.path.join(workdir, "student_augmented", f"seed_{seed}")
            _, res = train(kd_cfg, student_data, out)
            _record(alone_aug, res, f"seed {seed} student alone, augmented")
        if p.num_epochs is not None:
            kd_cfg.num_epochs = p.num_epochs
        for t in distilled:
            section = ml_collections.ConfigDict(config.distillation.to_dict())
            section.temperature = t
            loss_fn = build.build_distill_loss(section)
            if precompute:
                kwargs = {
                    "target_fn": lambda x, batch: batch["teacher_logits"],
                    "batch_extra": {"teacher_logits": transfer},
                }
            else:
                kwargs = {
                    "target_fn": lambda x, batch, tv: teacher.apply_fn(tv, x, train=False),
                    "extra": (teacher.variables,),
                }
            out = os.path.join(workdir, f"kd_T{t:g}", f"seed_{seed}")
            _, res = train(
                kd_cfg,
                kd_data,
                out,
                loss_fn=loss_fn,
                results_extra=lambda _s, t=t: {
                    "distillation": {**section.to_dict(), "temperature": t},
                    "teacher_params": int(
                        sum(np.size(x) for x in jax.tree.leaves(teacher.variables["params"]))
                    ),
                },
                **kwargs,
            )
            _record(distilled[t], res, f"seed {seed} distilled T={t:g}")

    student = _mean_std(alone["test"])
    gap = t_test - student["mean"]

    def with_gap_closed(accs: dict[str, list[float]]) -> dict[str, Any]:
        entry = _mean_std(accs["test"])
        entry["gap_closed"] = (entry["mean"] - student["mean"]) / gap if gap > 0 else None
        entry["val"] = _mean_std(accs["val"])
        return entry

    summary: dict[str, Any] = {
        "dataset": data.name,
        "teacher": {
            "model": tcfg.model.name,
            "test_accuracy": t_test,
            "val_accuracy": t_val,
            "num_train": sizes["teacher"],
            "source": teacher_source,
        },
        "student_model": config.model.name,
        "student_num_train": sizes["student"],
        "transfer_num_train": sizes["transfer"],
        "alpha": config.distillation.alpha,
        "seeds": list(config.seeds),
        "student": {**student, "val": _mean_std(alone["val"])},
        "pruning": config.pruning.to_dict() if build.pruning_enabled(config.pruning) else None,
        "quantization": config.quantization.to_dict()
        if build.quantization_enabled(config.quantization)
        else None,
        "distill_augment": p.augment.to_dict() if augment else None,
        "distilled": {f"{t:g}": with_gap_closed(a) for t, a in distilled.items()},
    }
    if p.augmented_alone_control:
        summary["student_augmented"] = with_gap_closed(alone_aug)
    best = max(distilled, key=lambda t: np.mean(distilled[t]["val"]))
    summary["best_temperature"] = {
        "by": "mean validation accuracy",
        "temperature": best,
        **summary["distilled"][f"{best:g}"],
    }
    if jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, SUMMARY_FILE), summary)
    return summary


def _record(into: dict[str, list[float]], results: dict[str, Any], label: str) -> None:
    into["test"].append(results["test_accuracy"])
    into["val"].append(results.get("val_accuracy", float("nan")))
    print(f"{label}: test accuracy {results['test_accuracy']:.4f}", flush=True)


def print_summary(summary: dict[str, Any]) -> None:
    """Prints the summary as a table (test accuracy, mean ± std over seeds, gap closed)."""
    n = len(summary["seeds"])
    head = f"test accuracy (mean ± std, {n} seeds)"
    print(f"\n{'run':<28} {head:>40} {'gap closed':>11}")
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
    b = summary["best_temperature"]
    print(f"temperature chosen on validation: T={b['temperature']:g}")
