"""The train recipe: one model on one dataset, with optional pruning, QAT and augmentation.

``run(config, workdir)`` loads the splits, builds and checks everything from the config,
then trains with the engine's ``fit``: the validation split is evaluated every
``log_every_epochs`` (``metrics.jsonl``), the test split once, at the end. The workdir
receives ``results.json`` (validation and test metrics, parameters, seconds, pruning report,
the resolved config), ``variables.msgpack`` (the trained model; ``recipes.load_trained``
reads it back), ``curves.png`` and, with ``tensorboard=True``, event files.

:func:`train` is the same loop for other recipes (a distillation student, a pipeline stage):
it takes an already-built model, optimizer and step options.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxopt_models.pruning import format_summary
from jaxopt_models.recipes import build
from jaxopt_models.recipes import config as schema
from jaxopt_models.recipes.report import plot_curves
from jaxopt_models.training import (
    EventWriter,
    TrainState,
    atomic_write_json,
    bind_extra,
    count_params,
    create_train_state,
    fit,
    initialize_distributed,
    make_eval_step,
    make_optimizer,
    make_train_step,
    save_variables,
)

RESULTS_FILE = "results.json"


def default_config() -> ml_collections.ConfigDict:
    """The train recipe's config: ``base_config()`` plus ``pruning`` and ``quantization``.

    Example:
      >>> c = default_config()
      >>> c.pruning.method = "magnitude"; c.pruning.sparsity = 0.9
    """
    c = schema.base_config()
    c.pruning = schema.pruning_section()
    c.quantization = schema.quantization_section()
    return c


def train(
    config,
    data: build.Data,
    workdir: str | None,
    *,
    model=None,
    tx=None,
    params_fn=None,
    loss_fn=None,
    target_fn=None,
    extra: tuple = (),
    batch_extra: dict[str, np.ndarray] | None = None,
    init_variables=None,
    description: str = "",
    results_extra=None,
) -> tuple[TrainState, dict[str, Any]]:
    """Trains a model with the loop fields of ``config`` and reports val and test metrics.

    Args:
      config: a config with ``base_config()``'s loop fields (and ``pruning`` /
        ``quantization`` sections unless ``tx`` / ``model`` / ``params_fn`` are given).
      data: the splits (``build.load_data``).
      workdir: output directory or ``None``.
      model: the Flax module (default: ``config.model`` with ``config.quantization``'s
        ``act_quant``).
      tx: the optimizer (default: ``config.optimizer`` followed by ``config.pruning``).
      params_fn: the QAT weight transform (default: ``config.quantization``'s).
      loss_fn: the per-example training loss (default: cross-entropy with
        ``config.label_smoothing``; with ``target_fn`` it takes ``(logits, targets,
        labels)``).
      target_fn / extra: frozen targets of the step (e.g. a teacher), see
        ``training.train_step``; ``extra`` is bound to every call.
      batch_extra: arrays gathered per batch with the same permutation (e.g. precomputed
        teacher logits).
      init_variables: start from these variables instead of a fresh init.
      description: the progress bar's label.
      results_extra: ``final_state -> dict`` of more results.

    Returns:
      ``(final_state, results)``.
    """
    with build.config_errors():
        quant = config.get("quantization")
        prune_section = config.get("pruning")
        if model is None:
            model = build.build_model(config.model, data.num_classes, quant)
        if params_fn is None:
            params_fn = build.qat_params_fn(quant)
        n_steps = build.num_steps(len(data.x_train), config.batch_size)
        settings = build.fit_settings(config, n_steps, description or config.model.name)
        total = n_steps * settings.num_epochs
        if tx is None:
            shapes = build.param_shapes(model, data.x_train[:1])
            prune = build.build_pruning(
                prune_section, total, steps_per_epoch=n_steps, seed=config.seed, params=shapes
            )
            tx = build.with_pruning(make_optimizer(config.optimizer, total), prune)
        augment_fn = build.build_augment(config.get("augment"))
        if loss_fn is None:
            if target_fn is not None:
                raise ValueError("train(target_fn=...) needs loss_fn=(logits, targets, labels)")
            loss_fn = build.loss_fn_of(config)
        state = create_train_state(model, jax.random.key(config.seed), data.x_train[:1], tx)
        if init_variables is not None:
            variables = jax.tree.map(np.array, dict(init_variables))
            params = variables.pop("params")
            state = state.replace(params=params, opt_state=tx.init(params), model_state=variables)
        # the step donates its state: the optimizer state may hold arrays the caller keeps
        # (masks, shared indices), so it gets its own copies
        state = state.replace(opt_state=jax.tree.map(jnp.copy, state.opt_state))
        step = make_train_step(
            loss_fn=loss_fn,
            params_fn=params_fn,
            augment_fn=augment_fn,
            target_fn=target_fn,
            parallel=config.parallel,
            skip_nonfinite=config.nan_policy == "skip",
        )
        if extra:
            step = bind_extra(step, *extra)
        eval_fn = make_eval_step(loss_fn=build.loss_fn_of(config), params_fn=params_fn)
        evaluate = None
        if len(data.x_val):
            evaluate = _metrics_only(
                build.classification_eval(
                    data.x_val, data.y_val, config.eval_batch_size, eval_fn, data.num_classes
                )
            )
    writer = None
    if workdir is not None and config.get("tensorboard") and jax.process_index() == 0:
        writer = EventWriter(os.path.join(workdir, "tensorboard"))
    try:
        final, info = fit(
            state,
            step,
            build.batches_fn(
                data.x_train, data.y_train, config.batch_size, config.seed, batch_extra
            ),
            settings,
            evaluate=evaluate,
            workdir=workdir,
            on_epoch=None if writer is None else writer.write_record,
        )
    finally:
        if writer is not None:
            writer.close()
    test = build.evaluate_classifier(
        final, data.x_test, data.y_test, config.eval_batch_size, eval_fn, data.num_classes
    )
    results: dict[str, Any] = {
        "dataset": data.name,
        "model": config.model.name,
        "num_train": len(data.x_train),
        "num_val": len(data.x_val),
        "num_test": len(data.x_test),
        "num_classes": data.num_classes,
        "params": count_params(final.params),
        **{f"val_{k}": v for k, v in (info["last_eval"] or {}).items()},
        **{f"test_{k}": v for k, v in test.items() if k != "pred"},
        **{k: v for k, v in info.items() if k != "last_eval"},
    }
    if build.pruning_enabled(prune_section) and tx is not None:
        results["pruning"] = build.pruning_report(final.params, final.opt_state, prune_section)
    if results_extra is not None:
        results.update(results_extra(final))
    results["config"] = config.to_dict()
    if workdir is not None and jax.process_index() == 0:
        if config.get("save_model", True):
            save_variables(workdir, final.variables)
        if config.get("plots", False):
            plot_curves(info["history"], os.path.join(workdir, "curves.png"))
        atomic_write_json(os.path.join(workdir, RESULTS_FILE), results)
    return final, results


def _metrics_only(evaluate):
    return lambda state: {k: v for k, v in evaluate(state).items() if k != "pred"}


def run(
    config, workdir: str | None, *, dataset=None, overwrite: bool = False
) -> tuple[TrainState, dict[str, Any]]:
    """Trains ``config``'s model; writes and returns the results (see the module docstring).

    Args:
      config: ``default_config()`` with overrides; a field this recipe does not read is
        an error.
      workdir: output directory (``None`` writes nothing). A workdir holding a finished
        run is refused unless ``overwrite`` (or ``config.resume``).
      dataset: a ``data.Dataset`` to use instead of ``config.dataset``'s.
      overwrite: replace a finished run in ``workdir``.

    Returns:
      ``(final_state, results)``.

    Example:
      >>> state, results = run(default_config(), "runs/digits")
      >>> results["test_accuracy"]
    """
    with build.config_errors():
        schema.check_fields(config, default_config(), "train")
        build.prepare_workdir(
            workdir, overwrite=overwrite, resume=config.resume, marker=RESULTS_FILE
        )
        initialize_distributed(config)
        data = build.load_data(config, dataset)
    return train(config, data, workdir)


def print_results(results: dict[str, Any]) -> None:
    """Prints the headline numbers of a train result as a table."""
    rows = [
        ("model / dataset", f"{results['model']} / {results['dataset']}"),
    ]
    if "val_accuracy" in results:
        rows.append(("validation accuracy", f"{results['val_accuracy']:.4f}"))
    rows += [
        ("test accuracy", f"{results['test_accuracy']:.4f}"),
        ("test macro precision", f"{results['test_macro_precision']:.4f}"),
        ("test macro recall", f"{results['test_macro_recall']:.4f}"),
        ("test macro F1", f"{results['test_macro_f1']:.4f}"),
        ("parameters", f"{results['params']:,}"),
    ]
    if "pruning" in results:
        info = results["pruning"]
        rows += [
            ("nonzero parameters", f"{info['total']['nonzeros']:,}"),
            ("sparsity (kernels)", f"{100 * info['prunable']['sparsity']:.2f}%"),
            ("sparsity (total)", f"{100 * info['total']['sparsity']:.2f}%"),
        ]
    rows.append(("train seconds", f"{results['train_seconds']:.1f}"))
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 22 + "+"
    print(line)
    for k, v in rows:
        print(f"| {k:<{width}} | {v:>20} |")
    print(line)
    if "pruning" in results:
        print(format_summary(results["pruning"]))
