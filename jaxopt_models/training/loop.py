"""``train_and_evaluate``: the training loop behind every experiment script."""

import os
import time
from typing import Any

import jax
import numpy as np

from jaxopt_models.data import Dataset, eval_batches, get_dataset, steps_per_epoch, train_batches
from jaxopt_models.metrics import classification_report
from jaxopt_models.models import get_model
from jaxopt_models.training.io import append_jsonl, atomic_write_json
from jaxopt_models.training.optimizers import make_optimizer
from jaxopt_models.training.state import TrainState, count_params, create_train_state
from jaxopt_models.training.steps import cross_entropy, make_eval_step, make_train_step


def dataset_kwargs(config) -> dict[str, Any]:
    """The ``get_dataset`` keyword arguments of ``config.dataset`` (all but ``name``)."""
    return {k: v for k, v in config.dataset.items() if k != "name" and v is not None}


def model_kwargs(config, num_classes: int) -> dict[str, Any]:
    """The ``get_model`` keyword arguments of ``config.model`` (all but ``name``)."""
    kwargs = {k: v for k, v in config.model.items() if k != "name" and v is not None}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    kwargs.setdefault("num_classes", num_classes)
    return kwargs


def _positive_int(config, key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.{key}={value!r} must be a positive int")
    return value


def evaluate(
    state: TrainState,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    eval_fn=None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Evaluates ``state`` on every example of ``(x, y)`` exactly once.

    Args:
      state: the train state.
      x: inputs ``(N, ...)``.
      y: labels ``(N,)``.
      batch_size: evaluation batch size (the last batch is padded and masked).
      eval_fn: a compiled eval step (default ``make_eval_step()``).
      num_classes: number of classes for the per-class metrics.

    Returns:
      ``{"loss", "accuracy", "macro_precision", "macro_recall", "macro_f1"}`` and the
      predictions under ``"pred"`` (``(N,)`` NumPy array).
    """
    eval_fn = eval_fn or make_eval_step()
    outs, masks = [], []
    for batch in eval_batches(x, y, batch_size):
        masks.append(batch.pop("mask"))
        outs.append(eval_fn(state, batch))
    outs = jax.device_get(outs)
    mask = np.concatenate(masks)
    pred = np.concatenate([o["pred"] for o in outs])[mask]
    loss = np.concatenate([o["loss"] for o in outs])[mask]
    report = classification_report(y, pred, num_classes)
    return {"loss": float(loss.mean()), **report, "pred": pred}


def _print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 22 + "+"
    print(line)
    for k, v in rows:
        print(f"| {k:<{width}} | {v:>20} |")
    print(line)


def load_dataset(config, dataset: Dataset | None = None) -> Dataset:
    """``dataset`` if given, else the dataset named by ``config.dataset``."""
    if dataset is not None:
        return dataset
    return get_dataset(config.dataset.name, **dataset_kwargs(config))


def train_and_evaluate(
    config, workdir: str | None, *, dataset: Dataset | None = None
) -> tuple[TrainState, dict[str, Any]]:
    """Trains the config's model on its dataset, evaluating on the test split.

    Writes ``<workdir>/metrics.jsonl`` (one line per epoch) and ``<workdir>/results.json``
    (atomically) with at least ``test_accuracy``, ``test_macro_f1``, ``params``,
    ``train_seconds`` and ``config``.

    Args:
      config: a ``ConfigDict`` shaped like ``training.default_config()``.
      workdir: output directory; ``None`` writes nothing.
      dataset: use this ``Dataset`` instead of loading ``config.dataset`` (k-fold CV).

    Returns:
      ``(final_state, results)``.

    Example:
      >>> state, results = train_and_evaluate(get_config(), "runs/digits")
      >>> results["test_accuracy"]
    """
    batch_size = _positive_int(config, "batch_size")
    num_epochs = _positive_int(config, "num_epochs")
    ds = load_dataset(config, dataset)
    model = get_model(config.model.name, **model_kwargs(config, ds.num_classes))
    total_steps = steps_per_epoch(len(ds.x_train), batch_size) * num_epochs
    tx = make_optimizer(config.optimizer, total_steps)
    state = create_train_state(model, jax.random.key(config.seed), ds.x_train[:1], tx)
    loss_fn = lambda logits, labels: cross_entropy(logits, labels, config.label_smoothing)
    return fit(
        config,
        state,
        ds,
        workdir,
        train_fn=make_train_step(loss_fn=loss_fn),
        eval_fn=make_eval_step(loss_fn=loss_fn),
    )


def fit(
    config,
    state: TrainState,
    ds: Dataset,
    workdir: str | None,
    *,
    train_fn,
    eval_fn,
    extra_results: dict[str, Any] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Runs the epochs of ``train_fn`` over ``ds``, evaluates, logs and writes results.

    Args:
      config: the experiment config (``batch_size``, ``num_epochs``, ``eval_batch_size``,
        ``log_every_epochs``, ``sync_every_steps``, ``progress``, ``seed``).
      state: the initial train state.
      ds: the dataset (train split for training, test split for evaluation).
      workdir: output directory; ``None`` writes nothing.
      train_fn: compiled ``(state, batch) -> (state, {"loss", "accuracy"})``.
      eval_fn: compiled ``(state, batch) -> {"pred", "loss"}``.
      extra_results: more keys for ``results.json``.

    Returns:
      ``(final_state, results)``.
    """
    batch_size = _positive_int(config, "batch_size")
    eval_batch_size = _positive_int(config, "eval_batch_size")
    num_epochs = _positive_int(config, "num_epochs")
    log_every = _positive_int(config, "log_every_epochs")
    sync_every = _positive_int(config, "sync_every_steps")
    n_steps = steps_per_epoch(len(ds.x_train), batch_size)
    total_steps = n_steps * num_epochs

    metrics_path = results_path = None
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        results_path = os.path.join(workdir, "results.json")
        if os.path.exists(metrics_path):
            os.unlink(metrics_path)

    progress = None
    if config.progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        progress = tqdm(total=total_steps, desc=f"{config.model.name}/{ds.name}", leave=False)
    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    test = None
    for epoch in range(num_epochs):
        t0 = time.perf_counter()
        step_metrics = []
        batches = train_batches(ds.x_train, ds.y_train, batch_size, seed=config.seed, epoch=epoch)
        for i, batch in enumerate(batches):
            state, m = train_fn(state, batch)
            step_metrics.append(m)
            if (i + 1) % sync_every == 0:
                jax.block_until_ready(m)
            if progress is not None:
                progress.update(1)
        step_metrics = jax.device_get(step_metrics)
        train_seconds += time.perf_counter() - t0
        record = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * n_steps,
            "train_loss": float(np.mean([m["loss"] for m in step_metrics])),
            "train_accuracy": float(np.mean([m["accuracy"] for m in step_metrics])),
            "train_seconds": train_seconds,
        }
        if (epoch + 1) % log_every == 0 or epoch + 1 == num_epochs:
            test = evaluate(state, ds.x_test, ds.y_test, eval_batch_size, eval_fn, ds.num_classes)
            record.update(
                test_loss=test["loss"],
                test_accuracy=test["accuracy"],
                test_macro_f1=test["macro_f1"],
            )
        if progress is not None:
            progress.set_postfix(
                loss=f"{record['train_loss']:.4f}",
                test_acc=f"{test['accuracy']:.4f}" if test else "-",
            )
        history.append(record)
        if metrics_path is not None:
            append_jsonl(metrics_path, record)
    if progress is not None:
        progress.close()

    results = {
        "dataset": ds.name,
        "model": config.model.name,
        "num_train": len(ds.x_train),
        "num_test": len(ds.x_test),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_macro_precision": test["macro_precision"],
        "test_macro_recall": test["macro_recall"],
        "test_macro_f1": test["macro_f1"],
        "params": count_params(state.params),
        "train_seconds": train_seconds,
        "steps": int(state.step),
        "history": history,
        **(extra_results or {}),
        "config": config.to_dict(),
    }
    if results_path is not None:
        atomic_write_json(results_path, results)
    return state, results


def print_results(results: dict[str, Any]) -> None:
    """Prints the headline numbers of a ``train_and_evaluate`` result as a table."""
    _print_table(
        [
            ("model / dataset", f"{results['model']} / {results['dataset']}"),
            ("test accuracy", f"{results['test_accuracy']:.4f}"),
            ("test macro precision", f"{results['test_macro_precision']:.4f}"),
            ("test macro recall", f"{results['test_macro_recall']:.4f}"),
            ("test macro F1", f"{results['test_macro_f1']:.4f}"),
            ("parameters", f"{results['params']:,}"),
            ("train seconds", f"{results['train_seconds']:.1f}"),
        ]
    )
