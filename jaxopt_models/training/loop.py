"""``train_and_evaluate``: the training loop behind every experiment script."""

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxopt_models.checks import check_one_of
from jaxopt_models.data import (
    Dataset,
    epoch_permutation,
    eval_batches,
    get_dataset,
    steps_per_epoch,
    train_batches,
)
from jaxopt_models.metrics import classification_report
from jaxopt_models.models import get_model
from jaxopt_models.pruning import format_summary
from jaxopt_models.training.checkpoint import Checkpointer
from jaxopt_models.training.config import augment_from_config
from jaxopt_models.training.distributed import initialize_distributed
from jaxopt_models.training.io import append_jsonl, atomic_write_bytes, atomic_write_json
from jaxopt_models.training.optimizers import make_optimizer
from jaxopt_models.training.parallel import PARALLEL_MODES, as_parallel_step
from jaxopt_models.training.pruning_config import (
    pruning_enabled,
    pruning_results,
    with_pruning,
)
from jaxopt_models.training.quant_config import quant_model_kwargs, quant_params_fn
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
    ``train_seconds`` and ``config``. With ``config.pruning.method`` set, the optimizer is
    followed by ``pruning.prune`` (see ``training.with_pruning``) and the results hold the
    final ``pruning`` summary (per-layer and total sparsity).

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
    initialize_distributed(config)
    batch_size = _positive_int(config, "batch_size")
    num_epochs = _positive_int(config, "num_epochs")
    ds = load_dataset(config, dataset)
    model = get_model(
        config.model.name, **model_kwargs(config, ds.num_classes), **quant_model_kwargs(config)
    )
    params_fn = quant_params_fn(config)  # weight QAT (None: float)
    total_steps = steps_per_epoch(len(ds.x_train), batch_size) * num_epochs
    tx = with_pruning(make_optimizer(config.optimizer, total_steps), config, total_steps)
    state = create_train_state(model, jax.random.key(config.seed), ds.x_train[:1], tx)
    loss_fn = lambda logits, labels: cross_entropy(logits, labels, config.label_smoothing)
    return fit(
        config,
        state,
        ds,
        workdir,
        train_fn=make_train_step(
            loss_fn=loss_fn,
            params_fn=params_fn,
            augment_fn=augment_from_config(config),
            parallel=config.get("parallel", "none"),
            skip_nonfinite=config.get("nan_policy") == "skip",
        ),
        eval_fn=make_eval_step(loss_fn=loss_fn, params_fn=params_fn),
        extra_results=(
            (lambda final: {"pruning": pruning_results(final.params, final.opt_state, config)})
            if pruning_enabled(config)
            else None
        ),
    )


NAN_POLICIES = ("error", "skip")
# Seen on simulated CPU devices: 40+ queued steps with collectives deadlock; 30 never did.
MAX_UNSYNCED_PARALLEL_STEPS = 25


def _choice(config, key: str, allowed: tuple[str, ...], default: str) -> str:
    value = config.get(key, default)
    return check_one_of(f"config.{key}", default if value is None else value, allowed)


def _is_prng_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key)


def _checkpoint_settings(config) -> tuple[int, int]:
    """``(every_steps, keep)`` of ``config.checkpoint`` (``every_steps=0``: no checkpoints)."""
    section = config.get("checkpoint") or {}
    every, keep = section.get("every_steps", 0), section.get("keep", 3)
    every = 0 if every is None else every
    keep = 3 if keep is None else keep
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"config.checkpoint.every_steps={every!r} must be an int >= 0")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"config.checkpoint.keep={keep!r} must be an int >= 1")
    return every, keep


def _process_batches(x, y, batch_size: int, *, seed: int, epoch: int, start_step: int, rows):
    """``train_batches`` restricted to this process's ``rows`` of every global batch."""
    if rows == slice(0, batch_size):
        yield from train_batches(x, y, batch_size, seed=seed, epoch=epoch, start_step=start_step)
        return
    perm = epoch_permutation(len(x), seed, epoch)
    for i in range(start_step, steps_per_epoch(len(x), batch_size)):
        idx = perm[i * batch_size : (i + 1) * batch_size][rows]
        yield {"image": x[idx], "label": y[idx]}


def _check_resume(meta: dict[str, Any], config, n_steps: int, total_steps: int) -> None:
    """Raises ``ValueError`` if the checkpoint's data order differs from ``config``'s."""
    for key, value in (
        ("seed", config.seed),
        ("batch_size", config.batch_size),
        ("steps_per_epoch", n_steps),
    ):
        if meta.get(key) != value:
            raise ValueError(
                f"cannot resume: the checkpoint was written with {key}={meta.get(key)!r} but "
                f"this run has {key}={value!r}, so the data order would differ"
            )
    if meta["step"] > total_steps:
        raise ValueError(
            f"cannot resume: the checkpoint is at step {meta['step']}, past this run's "
            f"{total_steps} steps (config.num_epochs={config.num_epochs})"
        )


def _nonfinite_error(what: str, step: int, n_steps: int, ckpt, last_saved) -> FloatingPointError:
    epoch, batch = divmod(step - 1, n_steps)
    if ckpt is None:
        kept = "no checkpoints are configured (config.checkpoint.every_steps=0)"
    elif last_saved is None:
        kept = f"no checkpoint was written yet in {ckpt.directory}"
    else:
        kept = f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
    return FloatingPointError(
        f"non-finite {what} at step {step} (epoch {epoch + 1}, batch {batch + 1}); training "
        f"stopped and {kept}. Lower the learning rate, clip gradients, or set "
        f"config.nan_policy='skip'"
    )


def fit(
    config,
    state: TrainState,
    ds: Dataset,
    workdir: str | None,
    *,
    train_fn,
    eval_fn,
    extra_results: dict[str, Any] | Callable[[TrainState], dict[str, Any]] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Runs the epochs of ``train_fn`` over ``ds``, evaluates, logs, checkpoints, writes results.

    In a multi-process run every process calls ``fit`` and feeds only its rows of each
    global batch; process 0 alone logs and writes files (checkpoints are collective).

    Args:
      config: the experiment config (``batch_size``, ``num_epochs``, ``eval_batch_size``,
        ``log_every_epochs``, ``sync_every_steps`` (at most 25 in the parallel modes),
        ``progress``, ``seed``, and optionally
        ``parallel``, ``checkpoint.every_steps``/``keep``, ``resume``, ``nan_policy``).
      state: the initial train state (single copy; also the template a resumed
        checkpoint is validated against).
      ds: the dataset (train split for training, test split for evaluation).
      workdir: output directory (``metrics.jsonl``, ``results.json``, ``checkpoints/``);
        ``None`` writes nothing.
      train_fn: ``(state, batch) -> (state, {"loss", "accuracy"})``: a ``ParallelStep``
        from ``make_train_step(parallel=config.parallel)`` or any compiled function
        (``parallel="none"`` only).
      eval_fn: compiled ``(state, batch) -> {"pred", "loss"}`` (runs on one device).
      extra_results: more keys for ``results.json``, or a function of the final state
        returning them.

    Returns:
      ``(final_state, results)``; the state is a single-device copy.

    Raises:
      FloatingPointError: a non-finite loss or state with ``nan_policy="error"``; the
        message names the step, and no checkpoint after the last good one is written.
    """
    batch_size = _positive_int(config, "batch_size")
    eval_batch_size = _positive_int(config, "eval_batch_size")
    num_epochs = _positive_int(config, "num_epochs")
    log_every = _positive_int(config, "log_every_epochs")
    sync_every = _positive_int(config, "sync_every_steps")
    nan_policy = _choice(config, "nan_policy", NAN_POLICIES, "error")
    parallel = _choice(config, "parallel", PARALLEL_MODES, "none")
    every_steps, keep = _checkpoint_settings(config)
    resume = bool(config.get("resume", False))
    step_fn = as_parallel_step(train_fn)
    if step_fn.mode != parallel:
        raise ValueError(
            f"config.parallel={parallel!r} but train_fn runs parallel={step_fn.mode!r}; "
            "build it with make_train_step(..., parallel=config.parallel)"
        )
    if nan_policy == "skip" and not step_fn.skip_nonfinite:
        raise ValueError(
            "config.nan_policy='skip' needs a train_fn built with "
            "make_train_step(..., skip_nonfinite=True)"
        )
    rows = step_fn.process_rows(batch_size)
    if step_fn.mode != "none":  # long unsynced queues of collective steps can deadlock
        sync_every = min(sync_every, MAX_UNSYNCED_PARALLEL_STEPS)
    n_steps = steps_per_epoch(len(ds.x_train), batch_size)
    total_steps = n_steps * num_epochs
    is_main = jax.process_index() == 0

    metrics_path = results_path = ckpt = None
    if workdir is not None:
        if is_main:
            os.makedirs(workdir, exist_ok=True)
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        results_path = os.path.join(workdir, "results.json")
        if every_steps > 0:
            ckpt = Checkpointer(
                os.path.join(workdir, "checkpoints"), keep=keep, every_steps=every_steps
            )
    if resume and ckpt is None:
        raise ValueError("config.resume=True needs a workdir and config.checkpoint.every_steps > 0")

    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    sums = {"loss": 0.0, "accuracy": 0.0, "count": 0}
    skipped = 0
    start = 0
    last_saved = ckpt.latest_step() if ckpt is not None else None
    if last_saved is not None and not resume:
        raise ValueError(
            f"{ckpt.directory} already holds checkpoints (latest step {last_saved}); "
            "continue them with --resume (config.resume=True) or use another workdir"
        )
    if last_saved is not None:
        state, meta = ckpt.restore(state)
        _check_resume(meta, config, n_steps, total_steps)
        start = int(meta["step"])
        history = list(meta["history"])
        sums = dict(meta["epoch_sums"])
        skipped = int(meta["skipped_steps"])
        train_seconds = float(meta["train_seconds"])
    if is_main and metrics_path is not None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
        if history or os.path.exists(metrics_path):
            atomic_write_bytes(metrics_path, lines.encode())

    progress = None
    if config.progress and is_main:
        from tqdm.auto import tqdm  # noqa: PLC0415

        progress = tqdm(
            total=total_steps, initial=start, desc=f"{config.model.name}/{ds.name}", leave=False
        )
    state = step_fn.place_state(state)
    pending: list[tuple[int, Any]] = []

    def drain() -> None:
        """Fetches the pending metrics (a device sync), checks them, adds them up."""
        nonlocal skipped
        if not pending:
            return
        values = step_fn.host_metrics([m for _, m in pending])
        for (gstep, _), v in zip(pending, values, strict=True):
            if int(v.get("skipped", 0)):
                skipped += 1
                continue
            loss = float(v["loss"])
            if not np.isfinite(loss):
                raise _nonfinite_error(f"loss {loss}", gstep, n_steps, ckpt, last_saved)
            sums["loss"] += loss
            sums["accuracy"] += float(v.get("accuracy", np.nan))
            sums["count"] += 1
        pending.clear()

    def save(gstep: int) -> None:
        nonlocal last_saved
        drain()
        host = jax.tree.map(
            lambda x: x if _is_prng_key(x) else np.asarray(jax.device_get(x)),
            step_fn.local(state),
        )
        for leaf in jax.tree.leaves(host):
            if isinstance(leaf, np.ndarray) and np.issubdtype(leaf.dtype, np.inexact):
                if not np.all(np.isfinite(leaf)):
                    raise _nonfinite_error("train state", gstep, n_steps, ckpt, last_saved)
        epoch, in_epoch = divmod(gstep, n_steps)
        meta = {
            "step": gstep,
            "epoch": epoch,
            "step_in_epoch": in_epoch,
            "steps_per_epoch": n_steps,
            "batch_size": batch_size,
            "seed": config.seed,
            "history": history,
            "epoch_sums": sums,
            "skipped_steps": skipped,
            "train_seconds": train_seconds,
        }
        ckpt.save(gstep, host, meta)
        last_saved = gstep

    test = None
    try:
        epoch0, first_step = divmod(start, n_steps)
        for epoch in range(epoch0, num_epochs):
            t0 = time.perf_counter()
            first = first_step if epoch == epoch0 else 0
            batches = _process_batches(
                ds.x_train,
                ds.y_train,
                batch_size,
                seed=config.seed,
                epoch=epoch,
                start_step=first,
                rows=rows,
            )
            for i, batch in enumerate(batches, start=first):
                state, m = step_fn(state, batch)
                gstep = epoch * n_steps + i + 1
                pending.append((gstep, m))
                if len(pending) >= sync_every:
                    drain()
                if progress is not None:
                    progress.update(1)
                if ckpt is not None and i + 1 < n_steps and ckpt.should_save(gstep):
                    train_seconds += time.perf_counter() - t0
                    save(gstep)
                    t0 = time.perf_counter()
            drain()
            train_seconds += time.perf_counter() - t0
            count = max(sums["count"], 1)
            record = {
                "epoch": epoch + 1,
                "step": (epoch + 1) * n_steps,
                "train_loss": sums["loss"] / count if sums["count"] else float("nan"),
                "train_accuracy": sums["accuracy"] / count if sums["count"] else float("nan"),
                "train_seconds": train_seconds,
            }
            if nan_policy == "skip":
                record["skipped_steps"] = skipped
            sums = {"loss": 0.0, "accuracy": 0.0, "count": 0}
            if (epoch + 1) % log_every == 0 or epoch + 1 == num_epochs:
                test = evaluate(
                    step_fn.local(state),
                    ds.x_test,
                    ds.y_test,
                    eval_batch_size,
                    eval_fn,
                    ds.num_classes,
                )
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
            if is_main and metrics_path is not None:
                append_jsonl(metrics_path, record)
            gstep = (epoch + 1) * n_steps
            if ckpt is not None and (ckpt.should_save(gstep) or epoch + 1 == num_epochs):
                save(gstep)
    finally:
        if progress is not None:
            progress.close()
        if ckpt is not None:
            ckpt.close()

    final = step_fn.local(state)
    if test is None:  # resumed from the final checkpoint: nothing left to train
        test = evaluate(final, ds.x_test, ds.y_test, eval_batch_size, eval_fn, ds.num_classes)
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
        "params": count_params(final.params),
        "train_seconds": train_seconds,
        "steps": int(jax.device_get(final.step)),
        "parallel": step_fn.mode,
        "num_devices": step_fn.num_devices,
        "num_processes": jax.process_count(),
        "resumed_from_step": start,
        "history": history,
        **({"skipped_steps": skipped} if nan_policy == "skip" else {}),
        **(extra_results(final) if callable(extra_results) else extra_results or {}),
        "config": config.to_dict(),
    }
    if is_main and results_path is not None:
        atomic_write_json(results_path, results)
    return final, results


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
            *_pruning_rows(results),
            ("train seconds", f"{results['train_seconds']:.1f}"),
        ]
    )
    if "pruning" in results:
        print(format_summary(results["pruning"]))


def _pruning_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows for a pruned run's sparsity (none for a dense run)."""
    if "pruning" not in results:
        return []
    info = results["pruning"]
    return [
        ("nonzero parameters", f"{info['total']['nonzeros']:,}"),
        ("sparsity (kernels)", f"{100 * info['prunable']['sparsity']:.2f}%"),
        ("sparsity (total)", f"{100 * info['total']['sparsity']:.2f}%"),
    ]
